"""YOLOX-Nano (Ge et al., 2021, arXiv:2107.08430) in PyTorch, loaded from the authors' ONNX export.

The architecture follows Megvii-BaseDetection/YOLOX (``darknet.py``, ``network_blocks.py``,
``yolo_pafpn.py``, ``yolo_head.py``) with the same module names, so ``state_dict`` keys read like
upstream's (``backbone.backbone.dark3.1.conv1.conv.weight``, ``head.cls_preds.0.bias``, ...).

The only COCO weights available are an ONNX graph with batch norm folded into the convolutions.
``import_onnx_weights`` writes each folded kernel into the bias-free ``Conv2d`` and the folded bias into
the following ``BatchNorm2d``'s ``bias``, with the batch norm otherwise set to the identity
(``weight=1``, ``running_mean=0``, ``running_var=1-eps``): in float32 ``(1 - 1e-3) + 1e-3`` rounds to
exactly 1.0, so eval-mode batch norm returns its input bit for bit and fine-tuning starts with batch norm
active from there.

Over 400 lines: one file per architecture family (network, weights import, registry entry), as in timm.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from devices.errors import ConfigError, ModelFileError, require
from devices.types import DecodeSpec, InputSpec, ModelSpec
from models.base import COCO80, COCO_ROWS, TARGET_CLASSES, PretrainedWeights
from models.hub import RemoteFile, resolve
from models.registry import register_model

log = logging.getLogger(__name__)

#: Batch-norm settings of YOLOX's ``init_yolo`` (exps/default/yolox_nano.py).
BN_EPS = 1e-3
BN_MOMENTUM = 0.03
STRIDES: tuple[int, ...] = (8, 16, 32)

YOLOX_LICENSE_URL = "https://raw.githubusercontent.com/Megvii-BaseDetection/YOLOX/main/LICENSE"

YOLOX_NANO_COCO = PretrainedWeights(
    name="yolox-nano-coco",
    file=RemoteFile(
        url=(
            "https://raw.githubusercontent.com/Bigisland1729/object-detection-models/"
            "7f3f2fa34b351e3d2af150893458106ad3f3a84f/yolox_nano.onnx"
        ),
        sha256="e8af074932d4ed7e232278e3055cefcdea3edf178874a3694ae292649fb464dd",
        mirror_path="weights/peers/yolox-nano-onnx/yolox_nano.onnx",
    ),
    license="Apache-2.0",
    license_file=None,
    license_url=YOLOX_LICENSE_URL,
    license_notice=(
        "This model was fine-tuned from the YOLOX-Nano COCO weights of Megvii (YOLOX,\n"
        "https://github.com/Megvii-BaseDetection/YOLOX), which are licensed under the\n"
        "Apache License, Version 2.0. Copyright (c) 2021-2022 Megvii Inc.\n\n"
        f"Full licence text: {YOLOX_LICENSE_URL}\n"
        "(also https://www.apache.org/licenses/LICENSE-2.0)\n"
    ),
    categories=COCO80,
    input=InputSpec(width=416, height=416, resize="letterbox", pad_value=114, channel_order="BGR", scale=1.0),
    decode=DecodeSpec(kind="yolox", strides=STRIDES, num_classes=80),
    source_note=(
        "Megvii YOLOX-Nano COCO-80 exported to ONNX (opset 11, pytorch 1.11.0, batch norm folded), copied "
        "from github.com/Bigisland1729/object-detection-models @ 7f3f2fa3 yolox_nano.onnx (that repository "
        "has no licence file; the model is Apache-2.0 upstream). The official release asset "
        "https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/yolox_nano.onnx is the "
        "same model but its sha256 may differ. Licence text: " + YOLOX_LICENSE_URL + " (no pinned copy, "
        "hence license_file=None)."
    ),
)


# --- building blocks (network_blocks.py) ---------------------------------------------------------------


class BaseConv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> SiLU, 'same' padding."""

    def __init__(self, cin: int, cout: int, ksize: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ksize, stride, (ksize - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class DWConv(nn.Module):
    """Depthwise kxk conv followed by a pointwise 1x1 conv, each a BaseConv."""

    def __init__(self, cin: int, cout: int, ksize: int, stride: int = 1) -> None:
        super().__init__()
        self.dconv = BaseConv(cin, cin, ksize, stride, groups=cin)
        self.pconv = BaseConv(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pconv(self.dconv(x))


def _conv(cin: int, cout: int, ksize: int, stride: int, depthwise: bool) -> nn.Module:
    return DWConv(cin, cout, ksize, stride) if depthwise else BaseConv(cin, cout, ksize, stride)


class Bottleneck(nn.Module):
    """1x1 conv then 3x3 conv, with a residual add when shapes allow."""

    def __init__(self, cin: int, cout: int, shortcut: bool, depthwise: bool) -> None:
        super().__init__()
        self.conv1 = BaseConv(cin, cout, 1)
        self.conv2 = _conv(cout, cout, 3, 1, depthwise)
        self.use_add = shortcut and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return y + x if self.use_add else y


class CSPLayer(nn.Module):
    """CSP block (YOLOv5's C3): two 1x1 branches, bottlenecks on one, concatenated and fused."""

    def __init__(self, cin: int, cout: int, n: int, shortcut: bool, depthwise: bool) -> None:
        super().__init__()
        hidden = cout // 2
        self.conv1 = BaseConv(cin, hidden, 1)
        self.conv2 = BaseConv(cin, hidden, 1)
        self.conv3 = BaseConv(2 * hidden, cout, 1)
        self.m = nn.Sequential(*[Bottleneck(hidden, hidden, shortcut, depthwise) for _ in range(n)])

    def forward(self, x: Tensor) -> Tensor:
        # conv2 before the bottlenecks, as upstream: the traced ONNX graph lists convs in this order.
        x_1, x_2 = self.conv1(x), self.conv2(x)
        return self.conv3(torch.cat((self.m(x_1), x_2), dim=1))


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling (max pools 5/9/13, stride 1) between two 1x1 convs."""

    def __init__(self, cin: int, cout: int, kernel_sizes: Sequence[int] = (5, 9, 13)) -> None:
        super().__init__()
        hidden = cin // 2
        self.conv1 = BaseConv(cin, hidden, 1)
        self.m = nn.ModuleList([nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernel_sizes])
        self.conv2 = BaseConv(hidden * (len(kernel_sizes) + 1), cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pool(x) for pool in self.m], dim=1))


class Focus(nn.Module):
    """Space-to-depth (2x2 pixels -> 4x channels) then a 3x3 conv, computed as one 6x6 stride-2 conv."""

    def __init__(self, cin: int, cout: int, ksize: int = 3) -> None:
        super().__init__()
        self.conv = BaseConv(cin * 4, cout, ksize)

    def forward(self, x: Tensor) -> Tensor:
        # Upstream's space-to-depth puts pixel (2i + dy, 2j + dx) of channel c in channel dx * 2C + dy * C + c
        # (top-left, bottom-left, top-right, bottom-right). A kxk conv over that equals a 2k x 2k conv of
        # stride 2 over the image, whose tap (2ky + dy, 2kx + dx) takes the weight of (ky, kx) in that block
        # (YOLOv5 6.0 made the same swap). Upstream's four stride-2 slices were STRIDED_SLICE ops that
        # XNNPACK cannot run: a third of the float TFLite latency (28.6 vs 19.5 ms, 1 thread).
        conv = self.conv
        weight = conv.conv.weight
        cout, _, k, _ = weight.shape
        cin = x.shape[1]
        kernel = weight.reshape(cout, 2, 2, cin, k, k).permute(0, 3, 4, 2, 5, 1).reshape(cout, cin, 2 * k, 2 * k)
        return conv.act(conv.bn(F.conv2d(x, kernel, conv.conv.bias, stride=2, padding=k - 1)))


# --- backbone, neck, head -----------------------------------------------------------------------------


class CSPDarknet(nn.Module):
    """CSPDarknet-53 scaled by ``depth``/``width``; returns the stride 8, 16 and 32 features."""

    def __init__(self, depth: float, width: float, depthwise: bool) -> None:
        super().__init__()
        ch = int(width * 64)
        n = max(round(depth * 3), 1)
        self.stem = Focus(3, ch)
        self.dark2 = nn.Sequential(_conv(ch, ch * 2, 3, 2, depthwise), CSPLayer(ch * 2, ch * 2, n, True, depthwise))
        self.dark3 = nn.Sequential(
            _conv(ch * 2, ch * 4, 3, 2, depthwise), CSPLayer(ch * 4, ch * 4, n * 3, True, depthwise)
        )
        self.dark4 = nn.Sequential(
            _conv(ch * 4, ch * 8, 3, 2, depthwise), CSPLayer(ch * 8, ch * 8, n * 3, True, depthwise)
        )
        self.dark5 = nn.Sequential(
            _conv(ch * 8, ch * 16, 3, 2, depthwise),
            SPPBottleneck(ch * 16, ch * 16),
            CSPLayer(ch * 16, ch * 16, n, False, depthwise),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c3 = self.dark3(self.dark2(self.stem(x)))
        c4 = self.dark4(c3)
        return c3, c4, self.dark5(c4)


class YOLOPAFPN(nn.Module):
    """CSPDarknet plus the path-aggregation FPN; returns P3, P4, P5 (strides 8, 16, 32)."""

    def __init__(self, depth: float, width: float, depthwise: bool) -> None:
        super().__init__()
        c3, c4, c5 = int(256 * width), int(512 * width), int(1024 * width)
        n = round(3 * depth)
        self.backbone = CSPDarknet(depth, width, depthwise)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.lateral_conv0 = BaseConv(c5, c4, 1)
        self.C3_p4 = CSPLayer(2 * c4, c4, n, False, depthwise)
        self.reduce_conv1 = BaseConv(c4, c3, 1)
        self.C3_p3 = CSPLayer(2 * c3, c3, n, False, depthwise)
        self.bu_conv2 = _conv(c3, c3, 3, 2, depthwise)
        self.C3_n3 = CSPLayer(2 * c3, c4, n, False, depthwise)
        self.bu_conv1 = _conv(c4, c4, 3, 2, depthwise)
        self.C3_n4 = CSPLayer(2 * c4, c5, n, False, depthwise)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x2, x1, x0 = self.backbone(x)
        # Top-down path.
        fpn_out0 = self.lateral_conv0(x0)
        f_out0 = self.C3_p4(torch.cat([self.upsample(fpn_out0), x1], 1))
        fpn_out1 = self.reduce_conv1(f_out0)
        pan_out2 = self.C3_p3(torch.cat([self.upsample(fpn_out1), x2], 1))
        # Bottom-up path.
        pan_out1 = self.C3_n3(torch.cat([self.bu_conv2(pan_out2), fpn_out1], 1))
        pan_out0 = self.C3_n4(torch.cat([self.bu_conv1(pan_out1), fpn_out0], 1))
        return pan_out2, pan_out1, pan_out0


class YOLOXHead(nn.Module):
    """Decoupled head: per level a 1x1 stem, then a class branch and a box/objectness branch."""

    def __init__(self, num_classes: int, width: float, depthwise: bool) -> None:
        super().__init__()
        hidden = int(256 * width)
        in_channels = [int(c * width) for c in (256, 512, 1024)]
        self.stems = nn.ModuleList([BaseConv(c, hidden, 1) for c in in_channels])
        self.cls_convs = nn.ModuleList(
            [nn.Sequential(*[_conv(hidden, hidden, 3, 1, depthwise) for _ in range(2)]) for _ in in_channels]
        )
        self.reg_convs = nn.ModuleList(
            [nn.Sequential(*[_conv(hidden, hidden, 3, 1, depthwise) for _ in range(2)]) for _ in in_channels]
        )
        self.cls_preds = nn.ModuleList([nn.Conv2d(hidden, num_classes, 1) for _ in in_channels])
        self.reg_preds = nn.ModuleList([nn.Conv2d(hidden, 4, 1) for _ in in_channels])
        self.obj_preds = nn.ModuleList([nn.Conv2d(hidden, 1, 1) for _ in in_channels])
        self.initialize_biases(1e-2)

    def initialize_biases(self, prior_prob: float) -> None:
        """Start class and objectness scores at ``prior_prob`` (focal-loss prior, Lin et al. 2017)."""
        bias = -math.log((1 - prior_prob) / prior_prob)
        with torch.no_grad():
            for conv in [*self.cls_preds, *self.obj_preds]:
                conv.bias.fill_(bias)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        outputs = []
        for k, x in enumerate(feats):
            x = self.stems[k](x)
            cls_out = self.cls_preds[k](self.cls_convs[k](x))
            reg_feat = self.reg_convs[k](x)
            out = torch.cat([self.reg_preds[k](reg_feat), self.obj_preds[k](reg_feat), cls_out], 1)
            outputs.append(out.flatten(start_dim=2))
        # (B, 5 + C, A) -> (B, A, 5 + C), anchors stride 8 then 16 then 32, row-major in each.
        return torch.cat(outputs, dim=2).permute(0, 2, 1)


class YOLOX(nn.Module):
    """YOLOX detector (Nano by default: depth 0.33, width 0.25, depthwise convs).

    Input: float (B, 3, H, W), BGR, 0-255, H and W divisible by 32 (see ``spec.input``).

    Attributes:
        spec: Input preprocessing, decode rule and labels.
        backbone: CSPDarknet + PAFPN.
        head: Decoupled YOLOX head.
    """

    def __init__(
        self,
        num_classes: int = 80,
        labels: Sequence[str] | None = None,
        depth: float = 0.33,
        width: float = 0.25,
        depthwise: bool = True,
        input_spec: InputSpec | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}", "pass the number of classes")
        if labels is None:
            labels = COCO80 if num_classes == 80 else tuple(f"class_{i}" for i in range(num_classes))
        if len(labels) != num_classes:
            raise ConfigError(
                f"{len(labels)} labels {tuple(labels)} for {num_classes} classes",
                "pass one label per output class",
            )
        self.num_classes = num_classes
        self.spec = ModelSpec(
            input=input_spec or YOLOX_NANO_COCO.input,
            decode=DecodeSpec(kind="yolox", strides=STRIDES, num_classes=num_classes),
            labels=tuple(labels),
        )
        self.backbone = YOLOPAFPN(depth, width, depthwise)
        self.head = YOLOXHead(num_classes, width, depthwise)

    def logits(self, x: Tensor) -> Tensor:
        """Pre-activation output (B, A, 5 + C): x, y, log w, log h (grid units), obj logit, class logits."""
        return self.head(self.backbone(x))

    @staticmethod
    def activate(logits: Tensor) -> Tensor:
        """Sigmoid on objectness and classes; box terms stay raw, as in the authors' ONNX export."""
        return torch.cat([logits[..., :4], logits[..., 4:].sigmoid()], dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """The raw output contract (B, A, 5 + C) that ``devices.processing.decode_yolox`` reads."""
        return self.activate(self.logits(x))


# --- ONNX weight import -------------------------------------------------------------------------------


def _execution_order(model: YOLOX) -> list[tuple[str, nn.Conv2d]]:
    """Every Conv2d of ``model`` in the order a forward pass runs them (the order of a traced graph)."""
    names = {module: name for name, module in model.named_modules()}
    order: list[tuple[str, nn.Conv2d]] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append((names[mod], mod)))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ] + [
        # Focus applies its conv's weight functionally (as a 6x6 kernel), so that Conv2d never runs itself.
        m.register_forward_pre_hook(lambda mod, _i: order.append((names[mod.conv.conv], mod.conv.conv)))
        for m in model.modules()
        if isinstance(m, Focus)
    ]
    # Eval mode so that the probe pass leaves the batch-norm running statistics alone.
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model.logits(torch.zeros(1, 3, 64, 64))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return order


def _onnx_convs(onnx_path: Path) -> list[dict]:
    """The Conv nodes of an ONNX file in graph order: weight, bias (numpy), group and strides."""
    onnx = require("onnx", "train", "importing YOLOX weights from ONNX")
    from google.protobuf.message import DecodeError
    from onnx import numpy_helper

    if not onnx_path.is_file():
        raise ModelFileError(f"ONNX file not found: {onnx_path}", "check the path, or use models.hub.resolve")
    try:
        graph = onnx.load(str(onnx_path)).graph
    except (OSError, DecodeError, ValueError) as exc:
        raise ModelFileError(
            f"cannot read ONNX file {onnx_path} ({onnx_path.stat().st_size} bytes): {exc}",
            "the file is truncated or corrupt: fetch it again (its sha256 is in models.yolox.YOLOX_NANO_COCO)",
        ) from exc
    inits = {t.name: t for t in graph.initializer}
    convs = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        missing = [name for name in node.input[1:] if name not in inits]
        if len(node.input) != 3 or missing:
            raise ModelFileError(
                f"{onnx_path}: Conv node '{node.name}' has inputs {list(node.input)}; expected a constant "
                "weight and bias (batch norm folded), as in the authors' YOLOX-Nano export",
                "pass the authors' yolox_nano.onnx (see models.yolox.YOLOX_NANO_COCO)",
            )
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        convs.append(
            {
                "node": node.name or node.output[0],
                "weight": numpy_helper.to_array(inits[node.input[1]]),
                "bias": numpy_helper.to_array(inits[node.input[2]]),
                "group": int(attrs.get("group", 1)),
                "stride": tuple(int(s) for s in attrs.get("strides", (1, 1))),
            }
        )
    return convs


def _check_match(
    onnx_path: Path, targets: list[tuple[str, nn.Conv2d]], convs: list[dict], class_rows: Sequence[int] | None
) -> None:
    """Raise ModelFileError listing every conv of the model the ONNX graph does not match."""
    if len(convs) != len(targets):
        raise ModelFileError(
            f"{onnx_path} has {len(convs)} convolutions, a YOLOX-Nano graph has {len(targets)}: "
            "it is not a YOLOX-Nano model (or not this width/depth)",
            "pass the authors' yolox_nano.onnx (see models.yolox.YOLOX_NANO_COCO)",
        )
    problems = []
    for (name, conv), src in zip(targets, convs, strict=True):
        want = tuple(conv.weight.shape)
        if class_rows is not None and ".cls_preds." in name:
            want = (src["weight"].shape[0], *want[1:])
        got = tuple(src["weight"].shape)
        if got != want or src["bias"].shape != (got[0],):
            problems.append(f"{name}: model {want}, file {got} (bias {tuple(src['bias'].shape)}) at {src['node']}")
        elif src["group"] != conv.groups or src["stride"] != tuple(conv.stride):
            problems.append(
                f"{name}: model groups={conv.groups} stride={tuple(conv.stride)}, "
                f"file groups={src['group']} stride={src['stride']} at {src['node']}"
            )
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ModelFileError(
            f"{onnx_path} does not match the YOLOX-Nano structure ({len(problems)} tensors differ): {shown}",
            "pass the authors' 80-class yolox_nano.onnx (see models.yolox.YOLOX_NANO_COCO)",
        )


def import_onnx_weights(model: YOLOX, onnx_path: str | os.PathLike, class_rows: Sequence[int] | None = None) -> YOLOX:
    """Copy the weights of the authors' YOLOX-Nano ONNX export into ``model``.

    Conv nodes are matched to the model's convolutions by execution order, and every shape, group and
    stride is checked before anything is written. Folded conv+BN pairs become conv weight + batch-norm
    bias with the batch norm otherwise identity (see the module docstring).

    Args:
        model: A YOLOX-Nano; its class count must equal the file's unless ``class_rows`` is given.
        onnx_path: The ONNX file (verify its hash first, e.g. with ``models.hub.resolve``).
        class_rows: For a model with fewer classes: the row of the file's class head that initialises
            each of the model's classes, in order (e.g. ``[0, 11]`` for person, stop sign).

    Returns:
        ``model``, modified in place.

    Raises:
        ModelFileError: The file cannot be parsed, or its graph is not a YOLOX-Nano of this structure.
        ConfigError: ``class_rows`` does not fit the model or the file.
    """
    onnx_path = Path(onnx_path)
    convs = _onnx_convs(onnx_path)
    targets = _execution_order(model)
    if class_rows is not None and len(class_rows) != model.num_classes:
        raise ConfigError(
            f"class_rows {list(class_rows)} has {len(class_rows)} entries for a {model.num_classes}-class model",
            "give one source row per model class",
        )
    _check_match(onnx_path, targets, convs, class_rows)
    file_classes = min(
        src["weight"].shape[0] for (name, _), src in zip(targets, convs, strict=True) if ".cls_preds." in name
    )
    if class_rows is not None and not all(0 <= r < file_classes for r in class_rows):
        raise ConfigError(
            f"class_rows {list(class_rows)} out of range for the file's {file_classes} classes",
            f"use rows in 0..{file_classes - 1}",
        )

    # Write: folded pairs into conv + identity BN, plain prediction convs directly.
    parents = {m.conv: m for m in model.modules() if isinstance(m, BaseConv)}
    with torch.no_grad():
        for (name, conv), src in zip(targets, convs, strict=True):
            weight, bias = torch.from_numpy(src["weight"].copy()), torch.from_numpy(src["bias"].copy())
            if class_rows is not None and ".cls_preds." in name:
                rows = torch.as_tensor(list(class_rows))
                weight, bias = weight[rows], bias[rows]
            conv.weight.copy_(weight)
            if conv in parents:
                bn = parents[conv].bn
                bn.weight.fill_(1.0)
                bn.bias.copy_(bias)
                # BaseConv's batch norm tracks running statistics: torch types them Optional for one that does not.
                assert bn.running_mean is not None and bn.running_var is not None
                assert bn.num_batches_tracked is not None
                bn.running_mean.zero_()
                # var + eps == 1 exactly in float32, so eval-mode BN is the identity.
                bn.running_var.fill_(1.0 - bn.eps)
                bn.num_batches_tracked.zero_()
            else:
                assert conv.bias is not None  # a prediction conv: no batch norm follows, so it has its bias
                conv.bias.copy_(bias)
    log.info("imported %d convolutions from %s", len(convs), onnx_path)
    return model


# --- factory ------------------------------------------------------------------------------------------


@register_model(
    "yolox-nano",
    weights=YOLOX_NANO_COCO,
    backbone_prefix="backbone.backbone.",
    class_rows_prefix="head.cls_preds.",
    output_prefixes=("head.cls_preds.", "head.reg_preds.", "head.obj_preds."),
    head_prefix="head.",
    # 512 gains small COCO people and loses 5-7 points on close-up stop signs (docs/training.md "Input size").
    size_candidates=(512,),
)
def yolox_nano(num_classes: int = 2, pretrained: bool = True, mirror: str | None = None) -> YOLOX:
    """YOLOX-Nano, 416x416 BGR 0-255 letterbox input.

    Args:
        num_classes: 80 for the COCO head, 2 for ``pedestrian``/``stop_sign`` (initialised from COCO rows
            person and stop sign); any count when ``pretrained`` is False.
        pretrained: Load the authors' COCO weights (verified by sha256) and return the model in eval mode.
        mirror: Mirror root holding the weights; defaults to ``EDGESIGHT_MIRROR``, else download.
    """
    if num_classes == 2:
        labels: tuple[str, ...] | None = TARGET_CLASSES
    elif num_classes == 80:
        labels = COCO80
    elif pretrained:
        raise ConfigError(
            f"pretrained yolox-nano has 80 (COCO) or 2 (pedestrian, stop_sign) classes, not {num_classes}",
            "use num_classes=2 or 80, or pretrained=False for a randomly initialised head",
        )
    else:
        labels = None
    model = YOLOX(num_classes=num_classes, labels=labels)
    if not pretrained:
        return model
    path = resolve(YOLOX_NANO_COCO.file, "yolox-nano weights", mirror)
    rows = [COCO_ROWS[name] for name in TARGET_CLASSES] if num_classes == 2 else None
    return import_onnx_weights(model, path, class_rows=rows).eval()
