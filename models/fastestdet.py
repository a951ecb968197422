"""FastestDet (dog-qiuqiu, 2022): ShuffleNetV2-0.5x, a one-scale SPP-like neck and a decoupled head.

The module layout (attribute names, ``nn.Sequential`` indices) mirrors the authors' ``module/`` code so that
their COCO state dict loads with ``strict=True``; the forward pass reproduces their ONNX export
(``FastestDet.onnx``) to float rounding. Upstream: github.com/dog-qiuqiu/FastestDet @ 50473cd (BSD-3-Clause).

About 400 lines: one file per architecture family (network, weights import, registry entry), as in timm and
``models/yolox.py``.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from devices.errors import ConfigError, ModelFileError
from devices.types import DecodeSpec, InputSpec, ModelSpec
from models.base import COCO80, COCO_ROWS, TARGET_CLASSES, PretrainedWeights
from models.hub import RemoteFile, resolve
from models.registry import register_model

log = logging.getLogger(__name__)

_UPSTREAM = "https://raw.githubusercontent.com/dog-qiuqiu/FastestDet/50473cd155cb088aa4a99e64ff6a4b3c24fa07e1"

#: Input contract of the authors' training and examples: 352x352 stretched, BGR, /255, no mean/std.
FASTESTDET_INPUT = InputSpec(width=352, height=352, resize="stretch", channel_order="BGR", scale=1 / 255)

FASTESTDET_COCO = PretrainedWeights(
    name="fastestdet-coco80-352",
    file=RemoteFile(
        # ':' in the upstream file name is percent-encoded so that the URL is valid everywhere.
        url=f"{_UPSTREAM}/weights/weight_AP05%3A0.253207_280-epoch.pth",
        sha256="7f688d478ee474c82dbdb9c10e0ede2f8f3cf5d603f0825d2efd925eb561d05e",
        mirror_path="weights/fastestdet/fastestdet_coco80_352.pth",
    ),
    license="BSD-3-Clause",
    license_file=RemoteFile(
        url=f"{_UPSTREAM}/LICENSE.md",
        sha256="1269ab6dbd957fa0499672227cf9c98ed9bfadeafcf85d391fc066d7551609ad",
        mirror_path="weights/fastestdet/LICENSE.md",
    ),
    categories=COCO80,
    input=FASTESTDET_INPUT,
    decode=DecodeSpec(kind="fastestdet", strides=(16,), num_classes=len(COCO80)),
    source_note=(
        "weights/weight_AP05:0.253207_280-epoch.pth at commit 50473cd; COCO val2017 mAP@0.5 25.3%, "
        "mAP@.5:.95 13.0% (authors' README)"
    ),
)

#: The authors' ONNX export of the same network (opset 11, 1x3x352x352 -> 1x85x22x22): the parity reference.
FASTESTDET_COCO_ONNX = RemoteFile(
    url=f"{_UPSTREAM}/example/onnx-runtime/FastestDet.onnx",
    sha256="31cb14c017fce347cb4c846ec62fdf00d76bb3beecdf4be21e7116ac67feb880",
    mirror_path="weights/fastestdet/FastestDet.onnx",
)

#: Backbone-only weights (stages 2-4, no conv5/fc) the authors start training from; pretraining data is not
#: documented upstream (presumably ImageNet). Saved with CUDA tensors, hence ``map_location="cpu"``.
SHUFFLENETV2_BACKBONE = RemoteFile(
    url=f"{_UPSTREAM}/module/shufflenetv2.pth",
    sha256="c9e6e3ac1c4997e05529cfb4897a3b5d29165e3ed4105cfb6897fc11efa72e4b",
    mirror_path="weights/fastestdet/shufflenetv2_0.5x_backbone.pth",
)

_STAGE_REPEATS = (4, 8, 4)
_STAGE_CHANNELS = (24, 48, 96, 192)  # stem, stage2, stage3, stage4 of ShuffleNetV2 0.5x
_CLS_HEAD = "detect_head.cls_layers.conv5x5"
# Per-class tensors of the last classification conv and its batch norm: what a class reordering touches.
_CLS_ROW_KEYS = tuple(f"{_CLS_HEAD}.{k}" for k in ("3.weight", "4.weight", "4.bias", "4.running_mean", "4.running_var"))


def _conv_bn(
    cin: int, cout: int, kernel: int, stride: int = 1, *, depthwise: bool = False, relu: bool = True
) -> list[nn.Module]:
    """Conv (no bias) + BatchNorm (+ ReLU); returned as a list so that Sequential indices match upstream."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=cin if depthwise else 1, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU())
    return layers


class ShuffleBlock(nn.Module):
    """ShuffleNetV2 unit (Ma et al., 2018): stride 1 splits the channels, stride 2 downsamples both branches."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        mid = cout // 2
        branch_in = cin if stride == 2 else cout // 2
        self.branch_main = nn.Sequential(
            *_conv_bn(branch_in, mid, 1),
            *_conv_bn(mid, mid, 3, stride, depthwise=True, relu=False),
            *_conv_bn(mid, cout - branch_in, 1),
        )
        self.branch_proj = (
            nn.Sequential(*_conv_bn(cin, cin, 3, 2, depthwise=True, relu=False), *_conv_bn(cin, cin, 1))
            if stride == 2
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch_proj is not None:
            return torch.cat((self.branch_proj(x), self.branch_main(x)), 1)
        # The upstream channel shuffle hands even channels to the identity path and odd ones to the branch.
        # Written as a reshape, not x[:, 0::2]: a stride-2 channel slice is a STRIDED_SLICE that XNNPACK
        # cannot run, which split the TFLite graph into 16 delegate partitions and doubled its latency.
        pairs = x.unflatten(1, (x.shape[1] // 2, 2))
        return torch.cat((pairs[:, :, 0], self.branch_main(pairs[:, :, 1])), 1)


class ShuffleNetV2Backbone(nn.Module):
    """ShuffleNetV2-0.5x stem and stages 2-4; returns the stride 8, 16 and 32 feature maps."""

    # Set by name in ``__init__`` (the upstream key names); declared so that the type checker knows them.
    stage2: nn.Sequential
    stage3: nn.Sequential
    stage4: nn.Sequential

    def __init__(self) -> None:
        super().__init__()
        self.first_conv = nn.Sequential(*_conv_bn(3, _STAGE_CHANNELS[0], 3, 2))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = _STAGE_CHANNELS[0]
        for name, repeats, cout in zip(
            ("stage2", "stage3", "stage4"), _STAGE_REPEATS, _STAGE_CHANNELS[1:], strict=True
        ):
            blocks = [ShuffleBlock(cin if i == 0 else cout, cout, 2 if i == 0 else 1) for i in range(repeats)]
            setattr(self, name, nn.Sequential(*blocks))
            cin = cout

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p1 = self.stage2(self.maxpool(self.first_conv(x)))
        p2 = self.stage3(p1)
        return p1, p2, self.stage4(p2)


class Conv1x1(nn.Module):
    """Pointwise conv + BN + ReLU (its own module only to keep the upstream key names)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1x1 = nn.Sequential(*_conv_bn(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1x1(x)


class SPP(nn.Module):
    """Three parallel stacks of 1, 2 and 3 depthwise 5x5 convs (receptive fields 5/9/13), fused residually."""

    def __init__(self, cin: int, channels: int) -> None:
        super().__init__()
        self.Conv1x1 = Conv1x1(cin, channels)

        def dw_stack(depth: int) -> nn.Sequential:
            return nn.Sequential(*[m for _ in range(depth) for m in _conv_bn(channels, channels, 5, depthwise=True)])

        self.S1, self.S2, self.S3 = dw_stack(1), dw_stack(2), dw_stack(3)
        self.output = nn.Sequential(*_conv_bn(3 * channels, channels, 1, relu=False))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv1x1(x)
        y = torch.cat((self.S1(x), self.S2(x), self.S3(x)), 1)
        return self.relu(x + self.output(y))


class Head(nn.Module):
    """Depthwise 5x5 + BN + ReLU, then a pointwise projection + BN to ``cout`` pre-activation channels."""

    def __init__(self, channels: int, cout: int) -> None:
        super().__init__()
        self.conv5x5 = nn.Sequential(
            *_conv_bn(channels, channels, 5, depthwise=True), *_conv_bn(channels, cout, 1, relu=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv5x5(x)


class DetectHead(nn.Module):
    """Shared 1x1 conv, then separate objectness (1), box (4) and class (``num_rows``) branches."""

    def __init__(self, channels: int, num_rows: int) -> None:
        super().__init__()
        self.conv1x1 = Conv1x1(channels, channels)
        self.obj_layers = Head(channels, 1)
        self.reg_layers = Head(channels, 4)
        self.cls_layers = Head(channels, num_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1x1(x)
        return torch.cat((self.obj_layers(x), self.reg_layers(x), self.cls_layers(x)), 1)


class FastestDet(nn.Module):
    """FastestDet: one 1/16-resolution grid, class-agnostic objectness, softmax classes.

    Output contract of ``forward`` (the authors' ONNX output): (B, 5 + C, H/16, W/16) with channel 0 the
    sigmoid objectness, 1-4 the raw box terms (tx, ty: tanh offsets within the cell; tw, th: sigmoid
    fractions of the input size it learned at, ``spec.decode.size_basis`` once run at another size) and 5..
    the softmax class probabilities. Input: float (B, 3, H, W), BGR,
    already scaled to 0-1; H and W multiples of 32 (352 for the pretrained weights).

    Keeping the other COCO classes: the classes are one softmax and the objectness does not say which
    class is present, so a head cut down to (pedestrian, stop_sign) would renormalise a car's probability
    mass onto those two and call every car a pedestrian. The target-class model therefore keeps the
    other ``num_other`` (K) COCO rows as "other" classes: ``logits`` has C + K class rows (target classes
    first, then the remaining COCO classes in COCO order, named in ``other_labels``), ``activate``
    softmaxes over all C + K and returns only the first C. Initialised from the COCO rows, its person and
    stop-sign probabilities equal those of the 80-class model. With ``num_other=0`` (the 80-class model,
    or a fresh head) the softmax is over the C classes alone.

    Attributes:
        spec: Input preprocessing, decode rule and labels of the C output classes.
        num_classes: C, the classes ``forward`` outputs.
        num_other: K, extra softmax rows that absorb the probability of classes outside the task.
        other_labels: Names of the K extra rows (empty when unnamed).
    """

    def __init__(
        self,
        num_classes: int = len(COCO80),
        num_other: int = 0,
        labels: tuple[str, ...] | None = None,
        other_labels: tuple[str, ...] = (),
    ) -> None:
        """Build an untrained network.

        Args:
            num_classes: C, classes in the output.
            num_other: K, extra softmax rows kept for classes outside the task (see the class docstring).
            labels: Names of the C classes; defaults to COCO-80 for 80 classes, else ``class0``...
            other_labels: Names of the K extra rows, if known.
        """
        super().__init__()
        if num_classes < 1 or num_other < 0:
            raise ConfigError(
                f"FastestDet needs num_classes >= 1 and num_other >= 0, got {num_classes} and {num_other}",
                "pass num_classes=2 (pedestrian, stop_sign) or 80 (COCO)",
            )
        if labels is None:
            labels = COCO80 if num_classes == len(COCO80) else tuple(f"class{i}" for i in range(num_classes))
        if len(labels) != num_classes or (other_labels and len(other_labels) != num_other):
            raise ConfigError(
                f"FastestDet got {len(labels)} labels / {len(other_labels)} other labels for "
                f"num_classes={num_classes}, num_other={num_other}",
                "give one label per output class (and per other row, or none)",
            )
        self.num_classes = num_classes
        self.num_other = num_other
        self.other_labels = tuple(other_labels)
        self.spec = ModelSpec(
            input=FASTESTDET_INPUT,
            decode=DecodeSpec(kind="fastestdet", strides=(16,), num_classes=num_classes),
            labels=tuple(labels),
        )

        c1, c2, c3 = _STAGE_CHANNELS[1:]
        self.backbone = ShuffleNetV2Backbone()
        # The neck brings the stride-8 and stride-32 maps to stride 16 and concatenates all three.
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.avg_pool = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
        self.SPP = SPP(c1 + c2 + c3, c2)
        self.detect_head = DetectHead(c2, num_classes + num_other)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation output (B, 5 + C + K, H/16, W/16): obj logit, 4 box terms, C + K class logits."""
        p1, p2, p3 = self.backbone(x)
        return self.detect_head(self.SPP(torch.cat((self.avg_pool(p1), p2, self.upsample(p3)), 1)))

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, 5 + C + K, H, W) logits -> (B, 5 + C, H, W): sigmoid obj, raw box, softmax over C + K (first C)."""
        obj, box, cls = logits.split((1, 4, self.num_classes + self.num_other), dim=1)
        return torch.cat((obj.sigmoid(), box, cls.softmax(dim=1)[:, : self.num_classes]), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.logits(x))


def load_state_file(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """Read a plain state dict with ``weights_only=True`` onto the CPU.

    Raises:
        ModelFileError: The file is missing, truncated, corrupt or not a state dict of tensors.
    """
    path = Path(path)
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        size = path.stat().st_size if path.is_file() else 0
        raise ModelFileError(
            f"{what}: cannot read {path} ({size} bytes): {exc}",
            "the file is truncated or corrupt: fetch it again (delete the cached copy) or fix the mirror",
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(
            f"{what}: {path} holds a {type(state).__name__}, not a state dict of tensors",
            "pass the authors' .pth state dict (an edgesight best.pt goes through models.checkpoint)",
        )
    return state


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str, path: Path) -> None:
    """``load_state_dict(strict=True)``, but a mismatch raises ModelFileError naming a few offending keys."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        raise ModelFileError(
            f"{what}: {path} does not fit {type(module).__name__} ({len(state)} keys, {len(expected)} expected): "
            f"missing {len(missing)} {missing[:3]}, unexpected {len(unexpected)} {unexpected[:3]}, "
            f"wrong shape {len(wrong)} {wrong[:3]}",
            "use the file this record names (a backbone-only file needs pretrained='backbone')",
        )
    module.load_state_dict(state, strict=True)


def coco_head_rows(classes: tuple[str, ...] = TARGET_CLASSES) -> list[int]:
    """COCO-80 row order for a target-class head: the target classes' rows first, then the others."""
    first = [COCO_ROWS[c] for c in classes]
    return first + [i for i in range(len(COCO80)) if i not in first]


def _reorder_class_rows(state: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
    out = dict(state)
    index = torch.as_tensor(rows)
    for key in _CLS_ROW_KEYS:
        out[key] = state[key].index_select(0, index)
    return out


# The classes share one softmax, so no class-score row stands alone (no class_rows_prefix).
@register_model(
    "fastestdet",
    weights=FASTESTDET_COCO,
    backbone_prefix="backbone.",
    # The pointwise projection (conv + batch norm) that ends each of the objectness, box and class branches.
    output_prefixes=tuple(f"detect_head.{b}_layers.conv5x5.{i}." for b in ("obj", "reg", "cls") for i in (3, 4)),
    head_prefix="detect_head.",
    size_candidates=(416,),
)
def fastestdet(
    num_classes: int = len(TARGET_CLASSES),
    pretrained: bool | Literal["backbone"] = True,
    mirror: str | os.PathLike | None = None,
) -> FastestDet:
    """Build FastestDet for the task's classes (2) or for COCO (80), in eval mode.

    The 2-class model keeps the other 78 COCO rows as extra softmax rows (see ``FastestDet``), whether
    pretrained or not, so that fine-tuned checkpoints always have the same shapes.

    Args:
        num_classes: 2 for ``TARGET_CLASSES`` (pedestrian, stop_sign), 80 for COCO; any other count only
            with an untrained head (``pretrained`` False or ``"backbone"``).
        pretrained: True loads the authors' COCO weights (class rows taken from ``COCO_ROWS`` for the
            2-class head); ``"backbone"`` loads only the ShuffleNetV2 backbone; False leaves all random.
        mirror: Mirror root holding the weights; defaults to ``EDGESIGHT_MIRROR``, else download.

    Raises:
        ConfigError: ``pretrained=True`` with a class count the COCO head cannot be mapped to.
        ModelFileError: The weights file is missing, fails its sha256, or does not load.
    """
    if pretrained not in (True, False, "backbone"):
        raise ConfigError(f"fastestdet: pretrained={pretrained!r}", "use True, False or 'backbone'")
    if num_classes == len(COCO80):
        model = FastestDet(num_classes)
    elif num_classes == len(TARGET_CLASSES):
        rows = coco_head_rows()
        others = tuple(COCO80[i] for i in rows[num_classes:])
        model = FastestDet(num_classes, len(others), TARGET_CLASSES, others)
    elif pretrained is True:
        raise ConfigError(
            f"fastestdet: the COCO head cannot be mapped to num_classes={num_classes}",
            f"use num_classes={len(TARGET_CLASSES)} or {len(COCO80)}, or pretrained='backbone'",
        )
    else:
        model = FastestDet(num_classes)

    if pretrained is True:
        what = f"{FASTESTDET_COCO.name} weights"
        path = resolve(FASTESTDET_COCO.file, what, mirror)
        state = load_state_file(path, what)
        if model.num_other:
            # Validate against the authors' layout before reordering, so a foreign file fails clearly.
            load_strict(FastestDet(len(COCO80)), state, what, path)
            state = _reorder_class_rows(state, coco_head_rows())
        load_strict(model, state, what, path)
        log.info("loaded %s from %s (%d classes + %d other rows)", what, path, num_classes, model.num_other)
    elif pretrained == "backbone":
        what = "ShuffleNetV2-0.5x backbone weights"
        path = resolve(SHUFFLENETV2_BACKBONE, what, mirror)
        load_strict(model.backbone, load_state_file(path, what), what, path)
        log.info("loaded %s from %s", what, path)
    return model.eval()
