"""Quantization-aware fine-tuning: teach a fine-tuned detector to keep its accuracy with 8-bit activations.

Why (YOLOX-Nano, measured with ``edgesight export``): post-training INT8 lost 8 AP points in both runtimes.
Weights are not the problem (int8 weights with 16-bit activations lose nothing); per-tensor 8-bit
activations are, and the error is spread over the network: fake-quantizing one tensor at a time, the stem
convolution's output (range -78..89 on 0-255 pixels) carried the most error, yet keeping the 2, 6 or 12
most sensitive tensors in float recovered -0.5, -0.3 and +1.4 of the 7.9 lost points. So the network
itself has to adapt (Jacob et al. 2018, arXiv:1712.05877; Krishnamoorthi 2018, arXiv:1806.08342).

How:

- batch norm is folded into the convolutions first (what both exporters do), so that the weights seen in
  training are the weights that get quantized; the batch-norm layer stays as a per-channel bias;
- weights are fake-quantized per output channel, int8 symmetric; the output of every convolution without
  a fused ReLU, and of every activation, per tensor, 8-bit asymmetric, in the ranges the ONNX export
  will calibrate (least expected error over the first batches), fixed during training;
- the student is pulled toward the float model it started from (self-distillation on objectness, classes
  and boxes), so no labels are needed and nothing the fine-tune learnt is traded away.

The result is a normal checkpoint (float weights, same architecture) that ``edgesight export`` quantizes
with its usual calibration; the fake quantization exists only during training.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader

from devices.errors import ConfigError
from models.base import TARGET_CLASSES
from models.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from toolkit.data import to_coco
from toolkit.datasets import default_splits
from toolkit.export_onnx import mse_range
from toolkit.loss import Dense, class_probs, distill_classes, read_dense, soft_kl
from toolkit.train import DetectionDataset, collate, lr_factor, one_per_group, seed_everything, validate

log = logging.getLogger(__name__)

#: At most about 2^14 values per tensor and batch are kept for the activation ranges.
SAMPLE_BITS = 14

#: Relative step per weight tensor (layer-wise normalised SGD); the best of 1e-5..1e-2 in the README sweep.
DEFAULT_LR = 1e-4

#: Batches observed (ranges only, no fake quantization) before training starts.
OBSERVE_BATCHES = 8

_ACTIVATIONS = (nn.SiLU, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.LeakyReLU)


# ---------------------------------------------------------------------------------------------- graph


def _sibling_pairs(model: nn.Module) -> Iterator[tuple[nn.Module, nn.Module | None]]:
    """(module, the module registered after it in the same parent, or None) for every leaf module."""
    for parent in model.modules():
        children = list(parent.children())
        for i, child in enumerate(children):
            if not list(child.children()):
                yield child, children[i + 1] if i + 1 < len(children) else None


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every Conv2d -> BatchNorm2d pair's statistics and scale into the convolution's weights.

    The batch norm keeps only its shift (weight 1, mean 0, variance 1 - eps, so it divides by exactly
    1), so the architecture and its state-dict keys are unchanged and the exporters fold it away.

    Returns:
        How many pairs were folded.
    """
    folded = 0
    with torch.no_grad():
        for conv, bn in _sibling_pairs(model):
            if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
                continue
            factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(factor.view(-1, 1, 1, 1))
            shift = bn.bias - bn.running_mean * factor
            if conv.bias is not None:
                shift = shift + conv.bias * factor
                conv.bias.zero_()
            bn.bias.copy_(shift)
            bn.weight.fill_(1.0)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            folded += 1
    return folded


class _PerChannelInt8(nn.Module):
    """Weight parametrization: int8 symmetric per output channel, straight-through gradient."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale = (weight.detach().abs().amax(dim=tuple(range(1, weight.dim()))) / 127.0).clamp(min=1e-12)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -127, 127)


class _ActivationQuant:
    """Forward hook: samples the output while observing, then fake-quantizes it to 8 bits in a fixed range.

    The range is the one ``edgesight export`` gives ONNX Runtime (``export_onnx.mse_range``: least
    expected quantization error), from the observed batches, and stays fixed during training.
    """

    def __init__(self) -> None:
        self.samples: list[np.ndarray] = []
        self.scale = self.zero = None

    def __call__(self, module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            flat = output.detach().flatten()
            self.samples.append(flat[:: max(1, flat.numel() >> SAMPLE_BITS)].float().cpu().numpy())
            return output
        return torch.fake_quantize_per_tensor_affine(output, self.scale, self.zero, 0, 255)

    def freeze(self) -> None:
        if not self.samples:  # a module the forward pass never reached
            return
        low, high = mse_range(np.concatenate(self.samples))
        self.samples = []
        self.scale = max((high - low) / 255.0, 1e-8)
        self.zero = min(255, max(0, round(-low / self.scale)))


@dataclass
class QuantSim:
    """The fake-quantization installed on a model (``prepare``); ``remove`` restores the float model."""

    model: nn.Module
    convs: list[nn.Conv2d]
    observers: list[_ActivationQuant]
    handles: list[torch.utils.hooks.RemovableHandle]

    def freeze_ranges(self) -> None:
        """Fix every activation range from what was observed, and start fake-quantizing."""
        for o in self.observers:
            o.freeze()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        for conv in self.convs:
            parametrize.remove_parametrizations(conv, "weight", leave_parametrized=False)


def prepare(model: nn.Module) -> QuantSim:
    """Fake-quantize a (batch-norm folded) model's weights and activation tensors as the exporters will.

    Quantized tensors: conv weights (per channel); the output of each activation module; the output of
    each convolution or batch norm unless an activation follows it (then the pair is one integer op in
    both runtimes when that activation is a ReLU, and for SiLU the sigmoid's input is quantized anyway).
    Concatenations and additions are not simulated: their inputs are already 8-bit.
    """
    convs: list[nn.Conv2d] = []
    observers: list[_ActivationQuant] = []
    handles = []
    for module, after in _sibling_pairs(model):
        if isinstance(module, nn.Conv2d):
            parametrize.register_parametrization(module, "weight", _PerChannelInt8())
            convs.append(module)
        quantize_output = isinstance(module, _ACTIVATIONS) or (
            isinstance(module, (nn.Conv2d, nn.BatchNorm2d))
            and not isinstance(after, (nn.BatchNorm2d, nn.ReLU, nn.ReLU6))
        )
        if quantize_output:
            observer = _ActivationQuant()
            observers.append(observer)
            handles.append(module.register_forward_hook(observer))
    return QuantSim(model, convs, observers, handles)


# ---------------------------------------------------------------------------------------------- loss


def self_distillation_loss(student: Dense, teacher: Dense, num_classes: int) -> dict[str, torch.Tensor]:
    """How far the quantized student is from its float self, weighted where the teacher sees objects.

    Objectness everywhere (soft targets), classes and boxes (L1 in grid cells) weighted by the teacher's
    confidence, normalised by the total confidence so that empty images do not dominate.
    """
    t_obj = teacher.obj.sigmoid()
    confidence = t_obj * class_probs(teacher, num_classes).amax(-1)
    norm = confidence.sum().clamp(min=1.0)
    rows = torch.arange(teacher.cls.shape[-1], device=teacher.cls.device)
    box = (F.l1_loss(student.boxes, teacher.boxes, reduction="none").sum(-1) / teacher.strides) * confidence
    out = {
        "obj": soft_kl(student.obj, t_obj).sum() / norm,
        "cls": distill_classes(student, teacher, rows) / norm,
        "box": box.sum() / norm,
    }
    out["total"] = sum(out.values())
    return out


# ---------------------------------------------------------------------------------------------- loop


def _normalize_gradients(params: list[nn.Parameter]) -> None:
    """Rescale each parameter's gradient to the parameter's norm (zero-norm tensors keep theirs)."""
    with torch.no_grad():
        for p in params:
            if p.grad is None:
                continue
            g_norm, p_norm = p.grad.norm(), p.norm()
            if g_norm > 0 and p_norm > 0:
                p.grad.mul_(p_norm / g_norm)


def _train_mode(model: nn.Module) -> None:
    """Training mode with every batch norm in eval mode: folded, their statistics must stay identity."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


@dataclass(frozen=True)
class QatResult:
    """The quantization-aware checkpoint and the float AP of its weights before and after."""

    checkpoint: Path
    source_metrics: dict
    metrics: dict
    wall_seconds: float


def quantization_aware_finetune(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    epochs: int = 3,
    lr: float = DEFAULT_LR,
    batch_size: int = 16,
    seed: int = 0,
    mirror: str | None = None,
    max_train_images: int | None = None,
    max_val_images: int | None = None,
    progress: bool = True,
) -> QatResult:
    """Fine-tune a checkpoint under simulated INT8 so that its exported INT8 files keep its accuracy.

    Args:
        checkpoint: A ``best.pt`` from ``edgesight train``.
        out_dir: Receives ``qat.pt`` (export it with ``edgesight export``) and ``qat_summary.json``.
        epochs: Passes over the training photos (one copy of each).
        lr: Relative change of each weight tensor per step (layer-wise normalised SGD, momentum 0.9,
            cosine decay after a short warm-up).
        batch_size: Images per step.
        seed: Seed of the shuffling and augmentation.
        mirror: Mirror root for the datasets.
        max_train_images: Use at most this many training photos (quick runs and tests).
        max_val_images: Validate on the first N validation images (quick runs and tests).
        progress: Show a progress bar.

    Returns:
        Where the checkpoint went and the float AP of the weights before and after, on the validation split.

    Raises:
        ConfigError: A non-positive epoch count, learning rate or batch size.
    """
    from tqdm import tqdm

    if epochs < 1 or lr <= 0 or batch_size < 1:
        raise ConfigError(
            f"epochs={epochs}, lr={lr}, batch_size={batch_size}", "use epochs >= 1, lr > 0 and batch_size >= 1"
        )
    start = time.perf_counter()
    seed_everything(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arch = str(read_checkpoint(Path(checkpoint))["arch"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # Data: the training photos (labels unused: the float model is the target) and the validation split.
    train_samples, val_samples = default_splits(mirror=mirror)
    train_samples = one_per_group(train_samples, seed)
    if max_train_images:
        train_samples = random.Random(seed).sample(train_samples, min(max_train_images, len(train_samples)))
    val_json = to_coco(val_samples[:max_val_images], out_dir / "val.json", TARGET_CLASSES)

    # Models: the float teacher as it is, the student folded and fake-quantized.
    teacher = load_checkpoint(Path(checkpoint)).to(device).eval().requires_grad_(False)
    student = copy.deepcopy(teacher).requires_grad_(True)
    source_metrics = validate(teacher, val_json)
    folded = fold_batchnorm(student)
    for m in student.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.requires_grad_(False)  # a trained scale would no longer be the folded one
    sim = prepare(student)
    log.info("QAT: %d batch norms folded, %d convs, %d activation tensors", folded, len(sim.convs),
             len(sim.observers))
    spec = student.spec
    width, height = spec.input.width, spec.input.height

    loader = DataLoader(DetectionDataset(train_samples, spec.input, augment=True), batch_size=batch_size,
                        shuffle=True, collate_fn=collate, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    params = [p for p in student.parameters() if p.requires_grad]
    # Layer-wise relative steps (LARS, You et al. 2017, arXiv:1708.03888): each tensor's gradient is
    # rescaled to the tensor's own norm, so ``lr`` is the relative change per step. Measured: the
    # stem's gradient, on 0-255 pixels, is 140x the next layer's and a global clip left only the stem
    # training; Adam's first steps move every weight by ~lr whatever its scale (2 steps at 2e-5 cost
    # 8 float AP points).
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    total = epochs * len(loader)
    warmup = max(1, total // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))

    # Ranges first, from a few batches of the float model, so that fake quantization starts sensible.
    _train_mode(student)
    with torch.no_grad():
        for i, (images, _, _) in enumerate(loader):
            if i >= OBSERVE_BATCHES:
                break
            student.logits(images.to(device))
    sim.freeze_ranges()
    history = [{"epoch": 0, **validate(student, val_json)}]
    log.info("simulated INT8 before QAT: AP %.4f", history[0]["map"] or 0.0)

    for epoch in range(1, epochs + 1):
        _train_mode(student)
        bar = tqdm(loader, desc=f"QAT epoch {epoch}/{epochs}", disable=not progress, dynamic_ncols=True)
        for images, _, _ in bar:
            images = images.to(device)
            with torch.no_grad():
                t_dense = read_dense(teacher.logits(images), spec.decode, width, height)
            s_dense = read_dense(student.logits(images), spec.decode, width, height)
            losses = self_distillation_loss(s_dense, t_dense, spec.decode.num_classes)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            _normalize_gradients(params)
            optimizer.step()
            scheduler.step()
            bar.set_postfix({k: f"{v.item():.4f}" for k, v in losses.items()})
        bar.close()
        history.append({"epoch": epoch, **validate(student, val_json)})
        log.info("simulated INT8 after epoch %d: AP %.4f", epoch, history[-1]["map"] or 0.0)

    # The checkpoint holds the float weights; fake quantization existed only for training.
    sim.remove()
    student.eval()
    metrics = validate(student, val_json)
    out = save_checkpoint(
        out_dir / "qat.pt", student, arch, epoch=epochs, metrics=json.dumps(metrics),
        qat=json.dumps({"source": str(checkpoint), "source_sha256": teacher.source_sha256, "epochs": epochs,
                        "lr": lr, "seed": seed}),
    )
    wall = time.perf_counter() - start
    summary = {"source": str(checkpoint), "source_metrics": source_metrics, "metrics": metrics, "epochs": epochs,
               "lr": lr, "batch_size": batch_size, "seed": seed, "simulated_int8": history, "wall_seconds": wall,
               "device": str(device)}
    (out_dir / "qat_summary.json").write_text(json.dumps(summary, indent=2))
    log.info("QAT done in %.1f min: float AP %.4f -> %.4f", wall / 60, source_metrics["map"] or 0.0,
             metrics["map"] or 0.0)
    return QatResult(out, source_metrics, metrics, wall)
