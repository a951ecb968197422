"""Fine-tuning: COCO-pretrained detector -> pedestrian + stop-sign detector, without forgetting.

The recipe (each choice measured; see README "Training recipe"):

- the two-class head starts from the COCO rows ``person`` and ``stop sign``, so epoch 0 is the
  zero-shot model, and it is the checkpoint to beat: best.pt is only replaced by a better validation AP
  with no class below the zero-shot model, at the training size and at the pretrained size;
- the input is larger than the pretrained one (``imgsz``: 512 YOLOX-Nano, 416 FastestDet), which is
  what gains pedestrian AP (README "Input size"); YOLOX-Nano then trains only its stop-sign score rows
  (``label_rows_only``), so its pedestrian outputs stay the pretrained model's exactly;
- the frozen 80-class COCO model is the teacher: it pseudo-labels people in the photos whose datasets
  do not annotate people, and its outputs are distilled on every anchor (``toolkit.train.loss``);
- batch-norm statistics stay frozen (YOLOX-Nano's are folded into its convolutions, and batches of a
  few images on a CPU would give noisy statistics anyway);
- AdamW at a low learning rate with linear warm-up and cosine decay;
- runs unchanged under ``torchrun`` (DistributedDataParallel, gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from models import create_model
from models.base import TARGET_CLASSES, at_input_size
from models.checkpoint import read_checkpoint, save_checkpoint
from models.registry import model_entry
from toolkit.data.coco import to_coco
from toolkit.data.sets import default_splits
from toolkit.data.videos import VIDEOS, video_frames
from toolkit.evaluate.coco import EVAL_SCORE_THRESHOLD, evaluate
from toolkit.evaluate.torch_detector import TorchDetector
from toolkit.train.config import TrainConfig, TrainResult
from toolkit.train.dataset import DetectionDataset, collate, one_per_group
from toolkit.train.distill import pseudo_people, teacher_rows
from toolkit.train.loss import detection_loss, read_dense

log = logging.getLogger(__name__)


def _setup_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _freeze_norm(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


class _Logits(torch.nn.Module):
    """DistributedDataParallel hooks ``forward``; training needs the pre-activation ``logits``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.logits(x)


def _train_rows_only(model: torch.nn.Module, prefix: str, rows: list[int]) -> None:
    """Freeze everything but ``rows`` of the class-score layers under ``prefix`` (gradients masked)."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(prefix))
        if p.requires_grad:
            mask = torch.zeros_like(p)
            mask[rows] = 1.0
            p.register_hook(lambda grad, mask=mask: grad * mask)


def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def validate(model: torch.nn.Module, val_json: Path) -> dict:
    """AP of ``model`` on the validation split, through the same numpy post-processing as the device."""
    detector = TorchDetector(model, score_threshold=EVAL_SCORE_THRESHOLD)
    result = evaluate(detector, val_json, None, model.spec.labels)
    return result.to_dict()


def _score(metrics: dict) -> float:
    return float(metrics["map"] or 0.0)


def improves_on(metrics: dict, best: dict, zero_shot: dict, protect_classes: bool = True,
                native: dict | None = None) -> bool:
    """Whether an epoch replaces best.pt: a higher mean AP and, with ``protect_classes``, no class below
    its zero-shot AP (at the training size, and at the pretrained size when ``native`` gives it).

    The second rule is the "no forgetting" promise: a fine-tune that trades pedestrian AP for stop-sign
    AP is not kept, nor one that loses a class against the pretrained model run as published.
    """
    floor: dict[str, float] = {}
    for result in (zero_shot, native or {}):
        for c in result.get("classes", []):
            if c["ap"] is not None:
                floor[c["name"]] = max(floor.get(c["name"], 0.0), c["ap"])
    kept = all((c["ap"] or 0.0) >= floor.get(c["name"], 0.0) for c in metrics["classes"])
    return (kept or not protect_classes) and _score(metrics) > _score(best)


def train(config: TrainConfig, out_dir: Path, mirror: str | None = None, resume: Path | None = None,
          progress: bool = True) -> TrainResult | None:
    """Fine-tune ``config.model`` on the bundled datasets; returns the result on rank 0 (None elsewhere)."""
    from tqdm import tqdm

    start = time.perf_counter()
    rank, world, device = _setup_distributed()
    seed_everything(config.seed + rank)
    out_dir.mkdir(parents=True, exist_ok=True)

    # Data: deterministic grouped split of the three real sets.
    train_samples, val_samples = default_splits(mirror=mirror, data=config.data)
    if config.one_copy_per_photo:
        train_samples = one_per_group(train_samples, config.seed)
    for name in VIDEOS if config.video_frames else ():
        train_samples = train_samples + video_frames(name, config.video_frames, mirror)
    if config.max_train_images:
        train_samples = random.Random(config.seed).sample(train_samples, min(config.max_train_images,
                                                                             len(train_samples)))
    if config.max_val_images:
        val_samples = val_samples[: config.max_val_images]
    val_json = to_coco(val_samples, out_dir / "val.json", TARGET_CLASSES)

    # Models: the student starts as the zero-shot two-class model; the teacher is the frozen COCO one.
    model = create_model(config.model, num_classes=len(TARGET_CLASSES), pretrained=True, mirror=mirror).to(device)
    teacher = create_model(config.model, num_classes=80, pretrained=True, mirror=mirror).to(device).eval()
    teacher.requires_grad_(False)
    native_size = model.spec.input.width
    zero_shot_native = None
    if config.imgsz and config.imgsz != native_size:
        if rank == 0 and resume is None:
            zero_shot_native = validate(model, val_json)  # what a user gets from the published model
            log.info("zero-shot at %d: mean AP %.4f", native_size, _score(zero_shot_native))
        model.spec = at_input_size(model.spec, config.imgsz)
        teacher.spec = at_input_size(teacher.spec, config.imgsz)
    spec = model.spec
    with torch.no_grad():
        probe = torch.zeros(1, 3, spec.input.height, spec.input.width, device=device)
        class_rows = read_dense(model.logits(probe), spec.decode, spec.input.width, spec.input.height).cls.shape[-1]
    rows = teacher_rows(class_rows).to(device)
    # Classes the labels supervise; the others learn from the teacher alone (distillation).
    supervised = torch.tensor([TARGET_CLASSES.index(c) for c in config.label_classes], device=device)
    entry = model_entry(config.model)
    if config.freeze_backbone:
        for name, p in model.named_parameters():
            p.requires_grad_(not name.startswith(entry.backbone_prefix))
    if config.label_rows_only:
        _train_rows_only(model, entry.class_rows_prefix, supervised.tolist())

    dataset = DetectionDataset(train_samples, spec.input, augment=True)
    sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=config.seed) if world > 1 else None
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=config.workers, collate_fn=collate, drop_last=True,
                        generator=torch.Generator().manual_seed(config.seed))
    wrapped = _Logits(model)
    if world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(wrapped)
    params = [p for p in model.parameters() if p.requires_grad]
    weight_decay = 0.0 if config.label_rows_only else config.weight_decay
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=weight_decay)
    total_steps = config.epochs * len(loader)
    warmup = max(1, int(config.warmup_fraction * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup))

    # Resume or measure the zero-shot starting point (the model every epoch must beat).
    first_epoch, history = 1, []
    if resume is not None:
        state = read_checkpoint(resume)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        first_epoch, history = state["epoch"] + 1, json.loads(state["history"])
        zero_shot, zero_shot_native, best_metrics, best_epoch = (
            json.loads(state.get(k, "null")) for k in ("zero_shot", "zero_shot_native", "best_metrics", "best_epoch"))
        log.info("resumed from %s at epoch %d", resume, first_epoch)
    elif rank == 0:
        zero_shot = validate(model, val_json)
        best_metrics, best_epoch = zero_shot, 0
        save_checkpoint(out_dir / "best.pt", model, config.model, epoch=0, metrics=json.dumps(zero_shot),
                        data=json.dumps(config.data))
        log.info("zero-shot: mean AP %.4f", _score(zero_shot))
    else:
        zero_shot, best_metrics, best_epoch = {}, {}, 0

    stopped_early = False
    for epoch in range(first_epoch, config.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        wrapped.train()
        _freeze_norm(model)
        bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", disable=not progress or rank != 0,
                   dynamic_ncols=True)
        for images, targets, people in bar:
            images = images.to(device)
            with torch.no_grad():
                t_dense = read_dense(teacher.logits(images), teacher.spec.decode, spec.input.width, spec.input.height)
            pseudo = pseudo_people(t_dense, spec.decode.kind, config.pseudo_label_score)
            merged = []
            for (gb, gl), has_people, (pb, pl) in zip(targets, people, pseudo, strict=True):
                gb, gl = gb.to(device), gl.to(device)
                if not has_people:
                    gb, gl = torch.cat([gb, pb]), torch.cat([gl, pl])
                keep = torch.isin(gl, supervised)
                merged.append((gb[keep], gl[keep]))
            dense = read_dense(wrapped(images), spec.decode, spec.input.width, spec.input.height)
            losses = detection_loss(dense, merged, spec.decode.num_classes, t_dense, rows, config.distill_weight)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            scheduler.step()
            bar.set_postfix({k: f"{v.item():.3f}" for k, v in losses.items()})
            if config.max_minutes and time.perf_counter() - start > config.max_minutes * 60:
                stopped_early = True
                break
        bar.close()

        # Validate, keep the best, and always write last.pt for --resume.
        if rank == 0 and (epoch % config.val_every == 0 or epoch == config.epochs or stopped_early):
            metrics = validate(model, val_json)
            history.append({"epoch": epoch, **metrics})
            log.info("epoch %d: mean AP %.4f (best %.4f at epoch %d)", epoch, _score(metrics),
                     _score(best_metrics), best_epoch)
            if improves_on(metrics, best_metrics, zero_shot, config.protect_classes, zero_shot_native):
                best_metrics, best_epoch = metrics, epoch
                save_checkpoint(out_dir / "best.pt", model, config.model, epoch=epoch, metrics=json.dumps(metrics),
                                data=json.dumps(config.data))
        if rank == 0:
            save_checkpoint(out_dir / "last.pt", model, config.model, epoch=epoch,
                            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                            history=json.dumps(history), zero_shot=json.dumps(zero_shot),
                            zero_shot_native=json.dumps(zero_shot_native),
                            best_metrics=json.dumps(best_metrics), best_epoch=json.dumps(best_epoch),
                            config=config.model_dump_json())
        if stopped_early:
            log.warning("stopped after %.1f min (max_minutes=%s)", (time.perf_counter() - start) / 60,
                        config.max_minutes)
            break

    if dist.is_initialized():
        dist.barrier()
    if rank != 0:
        return None
    wall = time.perf_counter() - start
    summary = {"config": config.model_dump(), "zero_shot": zero_shot, "zero_shot_native": zero_shot_native,
               "native_size": native_size, "best_epoch": best_epoch,
               "best": best_metrics, "history": history, "wall_seconds": wall, "stopped_early": stopped_early,
               "world_size": world, "device": str(device)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return TrainResult(out_dir / "best.pt", best_epoch, best_metrics, zero_shot, zero_shot_native, wall,
                       stopped_early)
