"""Fine-tuning: COCO-pretrained detector -> pedestrian + stop-sign detector, without forgetting.

The recipe (each choice measured; see README "Training recipe"):

- the two-class head starts from the COCO rows ``person`` and ``stop sign``, so epoch 0 is the
  zero-shot model, and it is the checkpoint to beat: best.pt is only replaced by a better validation AP
  with no class below the zero-shot model, at the training size and at the pretrained size;
- the input is larger than the pretrained one (``imgsz``: 512 YOLOX-Nano, 416 FastestDet), which is
  what gains pedestrian AP (README "Input size"); YOLOX-Nano then trains only its stop-sign score rows
  (``label_rows_only``), so its pedestrian outputs stay the pretrained model's exactly;
- the frozen 80-class COCO model is the teacher: it pseudo-labels people in the photos whose datasets
  do not annotate people, and its outputs are distilled on every anchor (toolkit/loss.py);
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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import tv_tensors
from torchvision.ops import nms
from torchvision.transforms import v2

from devices.errors import ConfigError
from devices.processing import place
from devices.types import InputSpec
from models import create_model
from models.base import COCO_ROWS, TARGET_CLASSES, at_input_size
from models.checkpoint import read_checkpoint, save_checkpoint
from toolkit.data import Sample, load_image, to_coco
from toolkit.datasets import default_splits
from toolkit.detector import TorchDetector
from toolkit.evaluate import EVAL_SCORE_THRESHOLD, evaluate
from toolkit.loss import class_probs, detection_loss, read_dense
from toolkit.videos import VIDEOS, video_frames

log = logging.getLogger(__name__)


#: Parameter-name prefix of each architecture's ImageNet/COCO feature extractor (frozen by default).
_BACKBONE_PREFIX = {"yolox-nano": "backbone.backbone.", "fastestdet": "backbone."}
#: Parameter-name prefix of the class-score layers, one row per output class, where each class has its own
#: sigmoid (``label_rows_only``). FastestDet's classes share one softmax, so no row there stands alone.
_CLASS_ROWS_PREFIX = {"yolox-nano": "head.cls_preds."}


class TrainConfig(BaseModel):
    """The fine-tuning recipe. Every field can be set from the CLI or a JSON/YAML file."""

    model_config = ConfigDict(extra="forbid")

    model: Literal["yolox-nano", "fastestdet"] = "yolox-nano"
    imgsz: int | None = Field(None, ge=32, multiple_of=32, description="Square input size, a multiple of 32 (None: the "
                              "pretrained size, 416 YOLOX-Nano / 352 FastestDet).")
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    distill_weight: float = Field(3.0, ge=0)
    pseudo_label_score: float = Field(0.5, gt=0, lt=1)
    # Pedestrians learn from the COCO teacher alone by default: 134 labelled COCO images cannot teach
    # people better than the 64k-image COCO model did, and training on them measurably lost AP.
    label_classes: tuple[Literal["pedestrian", "stop_sign"], ...] = ("stop_sign",)
    freeze_backbone: bool = True
    one_copy_per_photo: bool = True
    seed: int = 0
    workers: int = Field(0, ge=0)
    val_every: int = Field(1, ge=1)
    max_minutes: float | None = Field(15.0, gt=0)
    max_train_images: int | None = Field(None, ge=1)
    video_frames: int = Field(0, ge=0, description="Unlabelled frames per bundled video (teacher-labelled).")
    protect_classes: bool = Field(True, description="best.pt never has a class below its zero-shot AP.")
    max_val_images: int | None = Field(None, ge=1)
    data: tuple[str, ...] = Field(
        (),
        description="Your own annotated photos (COCO .json, YOLO or VOC folder; toolkit.userdata), trained and "
        "validated beside the bundled sets.",
    )
    label_rows_only: bool = Field(
        False,
        description="Train only the class-score rows of label_classes: every other output (boxes, objectness, "
        "the other classes) stays the pretrained model's exactly. No weight decay (it would shrink the frozen "
        "rows). YOLOX-Nano only.",
    )

    @field_validator("data", mode="before")
    @classmethod
    def _absolute(cls, paths: object) -> object:
        # Absolute, so that best.pt tells `edgesight export` where the photos are from any directory.
        if isinstance(paths, list | tuple):
            return tuple(str(Path(p).expanduser().resolve()) for p in paths)
        return paths

    @model_validator(mode="after")
    def _rows_stand_alone(self) -> TrainConfig:
        if self.label_rows_only and self.model not in _CLASS_ROWS_PREFIX:
            raise ValueError(f"label_rows_only needs one sigmoid per class; {self.model}'s classes share a softmax")
        return self


#: Per-architecture recipe defaults, measured (README "Training recipe"): FastestDet's softmax head forgets
#: pedestrians faster, so it trains slower, longer, under a strong pull toward the teacher (distillation 100,
#: of six 12-epoch variants the one whose pedestrian AP stayed highest; see the README sweep). Both train
#: above their pretrained size: small, distant people gain most (README "Input size"). At 512 every YOLOX-Nano
#: epoch that trained the whole head lost pedestrians, so only its stop-sign score rows learn.
RECIPES: dict[str, dict] = {
    "yolox-nano": {"imgsz": 512, "label_rows_only": True, "lr": 1e-3},
    "fastestdet": {"lr": 1e-4, "distill_weight": 100.0, "epochs": 10, "imgsz": 416},
}


def recipe(**fields: object) -> TrainConfig:
    """The default recipe of ``fields["model"]`` with ``fields`` on top (the user's settings win)."""
    model = fields.get("model", TrainConfig.model_fields["model"].default)
    try:
        return TrainConfig(**{**RECIPES.get(str(model), {}), **fields})
    except ValidationError as exc:
        problems = "; ".join(
            (f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "") + e["msg"] for e in exc.errors()
        )
        raise ConfigError(f"invalid training setting: {problems}", "fix that flag or --config field") from None


@dataclass(frozen=True)
class TrainResult:
    """What a run produced: the best checkpoint, its validation metrics, and how long it took."""

    best: Path
    best_epoch: int
    metrics: dict
    zero_shot: dict
    zero_shot_native: dict | None
    wall_seconds: float
    stopped_early: bool


# ---------------------------------------------------------------------------------------------- data


def _augmentations(spec: InputSpec) -> v2.Compose:
    # Scale jitter down to 0.5x teaches the small, distant people and signs of street photos; colour
    # jitter covers dusk and overcast light; horizontal flips are safe for both classes (a mirrored
    # STOP sign is still a red octagon, and the letters are a few pixels at these input sizes).
    return v2.Compose(
        [
            # Brightness/contrast/saturation only: hue shifts would turn STOP-sign red into other colours.
            v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.4),
            v2.RandomAffine(degrees=0.0, translate=(0.1, 0.1), scale=(0.5, 1.3), fill=spec.pad_value),
            v2.RandomHorizontalFlip(),
            v2.SanitizeBoundingBoxes(min_size=2.0),
        ]
    )


class DetectionDataset(Dataset):
    """Samples placed into the model input exactly as at inference, then augmented.

    Returns (image float tensor in the model's input contract, boxes (G, 4) input px, labels (G,),
    whether the source annotates people).
    """

    def __init__(self, samples: list[Sample], spec: InputSpec, augment: bool) -> None:
        self.samples = samples
        self.spec = spec
        self.augment = _augmentations(spec) if augment else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        sample = self.samples[i]
        placed, pl = place(load_image(sample.image_path), self.spec)
        boxes = sample.boxes * np.array([pl.scale_x, pl.scale_y, pl.scale_x, pl.scale_y], np.float32)
        boxes = boxes + np.array([pl.pad_x, pl.pad_y, pl.pad_x, pl.pad_y], np.float32)
        image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(placed[:, :, ::-1])).permute(2, 0, 1))
        data = {
            "image": image,
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(boxes), format="XYXY", canvas_size=tuple(placed.shape[:2])
            ),
            "labels": torch.tensor(sample.labels, dtype=torch.long),
        }
        if self.augment is not None:
            data = self.augment(data)
        rgb = data["image"].float()
        x = rgb if self.spec.channel_order == "RGB" else rgb.flip(0)
        x = x * self.spec.scale
        mean = torch.tensor(self.spec.mean).view(3, 1, 1)
        std = torch.tensor(self.spec.std).view(3, 1, 1)
        x = (x - mean) / std
        return x, data["boxes"].as_subclass(torch.Tensor).float(), data["labels"].long(), sample.labels_people


def collate(batch: list) -> tuple[torch.Tensor, list, torch.Tensor]:
    images = torch.stack([b[0] for b in batch])
    targets = [(b[1], b[2]) for b in batch]
    people = torch.tensor([b[3] for b in batch])
    return images, targets, people


def one_per_group(samples: list[Sample], seed: int) -> list[Sample]:
    """Keep one copy of each photo: Roboflow's set is three augmented copies of each; our own
    augmentation replaces them, and an epoch costs a third of the time."""
    rng = random.Random(seed)
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.group, []).append(s)
    return [rng.choice(members) for members in groups.values()]


# ---------------------------------------------------------------------------------------------- teacher


def _teacher_rows(student_rows: int) -> torch.Tensor:
    """Teacher (COCO-80) class rows in the student's row order (targets first, then kept 'other' rows)."""
    first = [COCO_ROWS[name] for name in TARGET_CLASSES]
    others = [r for r in range(80) if r not in first]
    return torch.tensor((first + others)[:student_rows])


@torch.no_grad()
def _pseudo_people(teacher_dense, decode_kind: str, score: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Confident teacher detections of people, per image: labels for photos whose set skips people."""
    probs = class_probs(teacher_dense, 80)[..., COCO_ROWS["pedestrian"]]
    obj = teacher_dense.obj.sigmoid()
    # Same score rule as devices.processing decodes for this architecture.
    conf = obj**0.6 * probs**0.4 if decode_kind == "fastestdet" else obj * probs
    out = []
    for boxes, c in zip(teacher_dense.boxes, conf, strict=True):
        keep = c >= score
        b, s = boxes[keep], c[keep]
        k = nms(b, s, 0.45)
        out.append((b[k], torch.zeros(len(k), dtype=torch.long, device=b.device)))
    return out


# ---------------------------------------------------------------------------------------------- loop


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
    rows = _teacher_rows(class_rows).to(device)
    # Classes the labels supervise; the others learn from the teacher alone (distillation).
    supervised = torch.tensor([TARGET_CLASSES.index(c) for c in config.label_classes], device=device)
    if config.freeze_backbone:
        for name, p in model.named_parameters():
            p.requires_grad_(not name.startswith(_BACKBONE_PREFIX[config.model]))
    if config.label_rows_only:
        _train_rows_only(model, _CLASS_ROWS_PREFIX[config.model], supervised.tolist())

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
            pseudo = _pseudo_people(t_dense, spec.decode.kind, config.pseudo_label_score)
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
