"""Fine-tuning: COCO-pretrained detector -> pedestrian + stop-sign detector that pays off on photos it has not seen.

The recipe (each choice measured by leave-one-source-out validation, ``benchmarks/by_source.py``; the tables are
in docs/training.md):

- the two-class head starts from the COCO rows ``person`` and ``stop sign``, so the zero-shot model is the
  checkpoint to beat, and it is beaten only where every measured class on every deciding source holds
  (``toolkit.train.select``);
- validation keeps each source apart (``toolkit.evaluate.by_source``). With ``--data`` the user's own photos get
  their own validation split, and they alone decide best.pt; without, every bundled source and close-ups of its
  photos decide;
- the head trains (``train_layers``); a class-score row learns only where some photos label its class, so a class
  nobody labelled stays the pretrained model's bit for bit. The user's sets teach every class they label (people
  included); the bundled sets teach stop signs only;
- the frozen 80-class COCO model is the teacher: objectness, class scores, and the boxes of the classes a photo's
  labels do not teach are distilled toward it (``toolkit.train.loss``);
- the weights validated and kept are an exponential moving average of the trained ones (``distill.Ema``);
- the input size is chosen after training among a few candidates, on the same deciding photos;
- runs unchanged under ``torchrun`` (DistributedDataParallel, gloo on CPU, NCCL on CUDA).

About 540 lines: ``train()`` at the end reads as the named steps above it (load, plan, build, epochs, choose the
size, report), each a function of its own here; the loss, teacher, selection and recipe live beside it in
``toolkit/train/``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from models import create_model
from models.base import TARGET_CLASSES, at_input_size, model_spec
from models.checkpoint import read_checkpoint, save_checkpoint
from models.registry import model_entry
from toolkit.data.coco import to_coco
from toolkit.data.sample import Sample
from toolkit.data.sets import load_dataset, split
from toolkit.data.userdata import read_user_datasets
from toolkit.data.videos import VIDEOS, video_frames
from toolkit.evaluate.by_source import Matches, close_ups, compare, match, one_copy_each
from toolkit.evaluate.coco import EVAL_SCORE_THRESHOLD
from toolkit.evaluate.torch_detector import TorchDetector
from toolkit.train.config import TrainConfig, TrainResult
from toolkit.train.dataset import DetectionDataset, EpochPhotos, collate, one_per_group
from toolkit.train.distill import Ema, teacher_rows
from toolkit.train.loss import detection_loss, read_dense
from toolkit.train.select import Cells, SizeChoice, cells, choose_input_size, describe, improves_on, mean_ap

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class TrainData:
    """The photos of a run.

    Attributes:
        train: Training photos, the user's and the bundled ones.
        val: Validation photos, each with its source: validation keeps sources apart.
        user_sources: Sources that are the user's ``--data`` sets.
    """

    train: list[Sample]
    val: list[Sample]
    user_sources: tuple[str, ...] = ()

    def deciding(self, work_dir: Path) -> list[Sample]:
        """The validation photos that decide best.pt and the input size.

        The user's, when there are any: they are the camera the model is for. Otherwise every bundled source and
        close-ups of its photos: the camera is unknown, and the choice must lose neither on distant nor on near
        objects (a larger input held on the bundled photos and lost 5-7 stop-sign points on their close-ups).
        """
        own = [s for s in self.val if s.source in self.user_sources]
        return own or self.val + close_ups(self.val, work_dir)


def load_data(config: TrainConfig, mirror: str | None) -> TrainData:
    """The bundled sets split together by photo, and the user's sets split apart (their own validation photos)."""
    bundled = [s for name in config.datasets for s in load_dataset(name, mirror)]
    train, val = split(bundled)
    user_sources: tuple[str, ...] = ()
    if config.data:
        own = read_user_datasets(config.data)
        own_train, own_val = split(own)
        if not own_val:  # an export with a train part only: split it by photo after all
            own_train, own_val = split([replace(s, subset=None) for s in own])
        if not own_val and len({s.group for s in own}) > 1:  # so few photos that 20 % rounds to none: one photo
            last = own[-1].group
            own_train, own_val = [s for s in own if s.group != last], [s for s in own if s.group == last]
        user_sources = tuple(dict.fromkeys(s.source for s in own))
        train, val = own_train + train, own_val + val
        log.info("your photos: %d train / %d validation", len(own_train), len(own_val))
    for name in VIDEOS if config.video_frames else ():
        train = train + video_frames(name, config.video_frames, mirror)
    if config.max_train_images:
        train = random.Random(config.seed).sample(train, min(config.max_train_images, len(train)))
    # One copy of each validation photo: Roboflow's three augmented copies of one photo would count it thrice.
    val = one_copy_each(val)
    if config.max_val_images:
        val = val[: config.max_val_images]
    return TrainData(train, val, user_sources)


def labelled_classes(samples: Sequence[Sample]) -> dict[str, frozenset[str]]:
    """Per source, the classes its annotators labelled: those with at least one box in the source (people also
    need ``labels_people``), the rule ``toolkit.data.userdata`` applies to a user's set."""
    found: dict[str, set[str]] = {}
    for s in samples:
        classes = found.setdefault(s.source, set())
        for label in set(s.labels.tolist()):
            name = TARGET_CLASSES[label]
            if name != "pedestrian" or s.labels_people:
                classes.add(name)
    return {source: frozenset(classes) for source, classes in found.items()}


# ---------------------------------------------------------------------------------------------- what trains


@dataclass(frozen=True)
class Plan:
    """What a run trains, and from which labels.

    Attributes:
        supervised: Per source, the classes its labels teach (the teacher covers the rest).
        learnt: The classes some source teaches: the only class-score rows that train.
        trainable: Names of the parameters that train.
        layers: What trains (``train_layers``, with ``auto`` resolved).
    """

    supervised: dict[str, frozenset[str]]
    learnt: frozenset[str]
    trainable: tuple[str, ...]
    layers: str


def plan_training(config: TrainConfig, model: torch.nn.Module, data: TrainData) -> Plan:
    """Decide, per source, which classes its labels teach, and which parameters train (the others are frozen)."""
    labelled = labelled_classes(data.train + data.val)
    supervised = {
        source: classes if source in data.user_sources else classes & frozenset(config.label_classes)
        for source, classes in labelled.items()
    }
    learnt = frozenset().union(*supervised.values())
    entry = model_entry(config.model)
    layers = config.train_layers
    if layers == "auto":
        # Box and objectness layers serve every class. Trained from stop-sign labels alone they moved people:
        # -0.3 ± 0.2 pedestrian points on coco128 held out (docs/training.md), and no validation photo of the
        # run could see it. So they train only when every class has labels; otherwise only the labelled
        # classes' score rows do, and the other classes' outputs stay the pretrained model's.
        full = learnt >= set(TARGET_CLASSES) or entry.class_rows_prefix is None
        layers = "outputs" if full else "class_rows"
    prefixes = {"class_rows": (entry.class_rows_prefix or "-",), "head": (entry.head_prefix,),
                "outputs": entry.output_prefixes or (entry.head_prefix,)}.get(layers)
    trainable = []
    for name, p in model.named_parameters():
        # An empty prefix (not declared by the registry entry) means everything but the backbone.
        train = name.startswith(prefixes) if prefixes and all(prefixes) else not name.startswith(entry.backbone_prefix)
        p.requires_grad_(train)
        if train:
            trainable.append(name)
    if entry.class_rows_prefix is not None:
        # A class-score row learns only where some photos label its class: without labels it could only drift,
        # and so a class nobody labelled stays the pretrained model's bit for bit.
        rows = [TARGET_CLASSES.index(c) for c in sorted(learnt)]
        for name, p in model.named_parameters():
            if p.requires_grad and name.startswith(entry.class_rows_prefix):
                mask = torch.zeros_like(p)
                mask[rows] = 1.0
                p.register_hook(lambda grad, mask=mask: grad * mask)
    for source, classes in sorted(supervised.items()):
        log.info("%s: its labels teach %s; the teacher the rest", source, sorted(classes) or "nothing")
    log.info("training %s: %d tensors", layers, len(trainable))
    return Plan(supervised, learnt, tuple(trainable), layers)


# ---------------------------------------------------------------------------------------------- models


@dataclass
class Models:
    """The student (starts as the zero-shot two-class model), the frozen 80-class teacher, and the sizes."""

    student: torch.nn.Module
    teacher: torch.nn.Module
    native: int
    train_size: int


def build_models(config: TrainConfig, mirror: str | None, device: torch.device) -> Models:
    """Student and teacher at the training size: the pretrained size, unless ``--imgsz`` fixes another."""
    student = create_model(config.model, num_classes=len(TARGET_CLASSES), pretrained=True, mirror=mirror).to(device)
    teacher = create_model(config.model, num_classes=80, pretrained=True, mirror=mirror).to(device).eval()
    teacher.requires_grad_(False)
    native = student.spec.input.width
    size = config.imgsz or native
    student.spec = at_input_size(student.spec, size)
    teacher.spec = at_input_size(teacher.spec, size)
    return Models(student, teacher, native, size)


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
        # torch's stubs type an undeclared Module attribute as Tensor | Module; every models/ network has logits.
        return self.model.logits(x)  # type: ignore[operator]


def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------- the loop


@dataclass
class Loop:
    """Everything the epochs need: the photos in batches, the optimiser and its schedule, the averaged weights."""

    loader: DataLoader
    sampler: EpochPhotos | DistributedSampler
    student: torch.nn.Module
    wrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: Ema | None
    epochs: int
    val_epochs: frozenset[int]
    supervised_rows: list[torch.Tensor]  # per source index: the class ids its labels teach
    teacher_rows: torch.Tensor
    user_photos: int

    @property
    def kept(self) -> torch.nn.Module:
        """The weights validated and saved: the moving average when there is one."""
        return self.ema.model if self.ema is not None else self.student


def build_loop(config: TrainConfig, models: Models, plan: Plan, data: TrainData, world: int, rank: int,
               device: torch.device) -> Loop:
    """Batches (the user's photos and as many bundled ones per epoch), AdamW with warm-up and cosine decay, EMA."""
    spec = model_spec(models.student)
    sources = sorted({s.source for s in data.train + data.val})
    photos = one_per_group(data.train, config.seed) if config.one_copy_per_photo else list(data.train)
    dataset = DetectionDataset(photos, spec.input, augment=True, sources=sources)
    if world > 1:
        sampler: EpochPhotos | DistributedSampler = DistributedSampler(dataset, world, rank, shuffle=True,
                                                                        seed=config.seed)
    else:
        user = [i for i, s in enumerate(photos) if s.source in data.user_sources]
        bundled = [i for i in range(len(photos)) if i not in set(user)]
        if config.hard_repeat > 1 and user:
            hard = missed_photos(models.student, [photos[i] for i in user])
            log.info("%d of your %d training photos have an object the zero-shot model misses: drawn %dx an epoch",
                     len(hard), len(user), config.hard_repeat)
            user += [user[k] for k in hard] * (config.hard_repeat - 1)
        sampler = EpochPhotos(user, bundled, config.user_share, config.seed)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
                        collate_fn=collate, drop_last=len(sampler) > config.batch_size,
                        generator=torch.Generator().manual_seed(config.seed))
    steps = max(1, len(loader))
    epochs = config.epochs or max(1, math.ceil(config.min_steps / steps))
    val_epochs = frozenset({epochs} | {max(1, round(epochs * k / config.validations))
                                       for k in range(1, config.validations)})
    wrapped: torch.nn.Module = _Logits(models.student)
    if world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(wrapped)
    params = [p for p in models.student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total = epochs * steps
    warmup = max(1, int(config.warmup_fraction * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))
    ema = Ema(models.student, config.ema_decay, plan.trainable) if config.ema_decay else None
    with torch.no_grad():
        probe = torch.zeros(1, 3, spec.input.height, spec.input.width, device=device)
        logits = models.student.logits(probe)  # type: ignore[operator]  # torch's stubs, as in _Logits.forward
        rows = read_dense(logits, spec.decode, spec.input.width, spec.input.height).cls.shape[-1]
    supervised_rows = [torch.tensor([TARGET_CLASSES.index(c) for c in sorted(plan.supervised.get(s, ()))],
                                    dtype=torch.long, device=device) for s in sources]
    user_photos = sum(s.source in data.user_sources for s in photos)
    log.info("%d epochs of %d steps (%d photos each, %d of them yours), validating after epochs %s",
             epochs, steps, len(sampler), min(user_photos, len(sampler)), sorted(val_epochs))
    return Loop(loader, sampler, models.student, wrapped, optimizer, scheduler, ema, epochs, val_epochs,
                supervised_rows, teacher_rows(rows).to(device), user_photos)


def _targets(targets: list, sources: torch.Tensor, supervised_rows: list[torch.Tensor], device: torch.device
             ) -> tuple[list, torch.Tensor]:
    """Per photo, the boxes of the classes its source's labels teach, and (B, C) the classes they do not."""
    kept, unlabelled = [], torch.ones(len(targets), len(TARGET_CLASSES), dtype=torch.bool, device=device)
    for i, ((boxes, labels), source) in enumerate(zip(targets, sources.tolist(), strict=True)):
        boxes, labels = boxes.to(device), labels.to(device)
        taught = supervised_rows[source] if source >= 0 else labels.new_zeros(0)
        keep = torch.isin(labels, taught)
        kept.append((boxes[keep], labels[keep]))
        unlabelled[i, taught] = False
    return kept, unlabelled


def train_epoch(config: TrainConfig, models: Models, loop: Loop, device: torch.device, deadline: float | None,
                desc: str, progress: bool) -> bool:
    """One pass over the epoch's photos; returns whether ``deadline`` stopped it."""
    from tqdm import tqdm

    spec, teacher_spec = model_spec(models.student), model_spec(models.teacher)
    loop.wrapped.train()
    _freeze_norm(models.student)
    params = [p for p in models.student.parameters() if p.requires_grad]
    bar = tqdm(loop.loader, desc=desc, disable=not progress, dynamic_ncols=True)
    for images, targets, sources in bar:
        images = images.to(device)
        with torch.no_grad():
            teacher_logits = models.teacher.logits(images)  # type: ignore[operator]  # as in _Logits.forward
            taught = read_dense(teacher_logits, teacher_spec.decode, spec.input.width, spec.input.height)
        dense = read_dense(loop.wrapped(images), spec.decode, spec.input.width, spec.input.height)
        kept, unlabelled = _targets(targets, sources, loop.supervised_rows, device)
        losses = detection_loss(dense, kept, spec.decode.num_classes, taught, loop.teacher_rows,
                                config.distill_weight, config.box_distill_weight, unlabelled,
                                config.teacher_box_weight)
        loop.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        loop.optimizer.step()
        loop.scheduler.step()
        if loop.ema is not None:
            loop.ema.update()
        bar.set_postfix({k: f"{v.item():.3f}" for k, v in losses.items()})
        if deadline is not None and time.perf_counter() > deadline:
            bar.close()
            return True
    bar.close()
    return False


# ---------------------------------------------------------------------------------------------- validation


def validate(model: torch.nn.Module, samples: Sequence[Sample], work_dir: Path, size: int | None = None) -> Matches:
    """The model's COCO matching on ``samples`` (per source and class), through the device's post-processing, at
    ``size`` (default: the model's own input size)."""
    spec = model_spec(model)
    if size is not None and size != spec.input.width:
        model = copy.copy(model)  # shares the weights; only the spec differs
        spec = at_input_size(spec, size)
        # torch's stubs type Module.__setattr__'s value as Tensor | Module; any value is set as a plain attribute.
        model.spec = spec  # type: ignore[assignment]
    return match(TorchDetector(model, score_threshold=EVAL_SCORE_THRESHOLD), samples, work_dir, spec.labels)


def missed_photos(model: torch.nn.Module, samples: Sequence[Sample], score: float = 0.3) -> list[int]:
    """Positions of the photos with a labelled object that ``model`` does not find (IoU 0.5, ``score``)."""
    with tempfile.TemporaryDirectory(prefix="edgesight-hard-") as tmp:
        matches = validate(model, samples, Path(tmp))
    missed = set()
    for per_image in matches.per_class.values():
        for i, m in enumerate(per_image):
            found = int((m.matched[0] & ~m.ignored[0] & (m.scores >= score)).sum())
            if found < m.num_gt:
                missed.add(i)
    return sorted(missed)


@dataclass
class Progress:
    """The run's state between epochs: what last.pt holds for ``--resume``."""

    first_epoch: int
    zero_shot: Cells
    best: Cells
    best_epoch: int
    best_state: dict
    history: list


def start_or_resume(models: Models, loop: Loop, deciding: list[Sample], data: TrainData, out_dir: Path,
                    resume: Path | None, rank: int) -> Progress:
    """The zero-shot model on the deciding photos (the checkpoint every epoch must beat), or the resumed state."""
    if resume is not None:
        state = read_checkpoint(resume)
        models.student.load_state_dict(state["state_dict"])
        loop.kept.load_state_dict(state["kept_state_dict"])
        loop.optimizer.load_state_dict(state["optimizer"])
        loop.scheduler.load_state_dict(state["scheduler"])
        if loop.ema is not None:
            loop.ema.steps = int(state["ema_steps"])
        log.info("resumed from %s after epoch %d", resume, state["epoch"])
        return Progress(state["epoch"] + 1, json.loads(state["zero_shot"]), json.loads(state["best_metrics"]),
                        json.loads(state["best_epoch"]), dict(state["best_state_dict"]), json.loads(state["history"]))
    zero_shot = cells(validate(models.student, deciding, out_dir), data.user_sources) if rank == 0 else {}
    log.info("zero-shot at %d: %s", models.train_size, describe(zero_shot))
    state = {k: v.detach().clone() for k, v in loop.kept.state_dict().items()}
    return Progress(1, zero_shot, zero_shot, 0, state, [])


def validate_epoch(config: TrainConfig, loop: Loop, progress: Progress, epoch: int, deciding: list[Sample],
                   data: TrainData, out_dir: Path) -> None:
    """Validate the kept weights on the deciding photos; they become best if they hold every cell and gain."""
    metrics = cells(validate(loop.kept, deciding, out_dir), data.user_sources)
    progress.history.append({"epoch": epoch, "cells": metrics, "mean_ap": mean_ap(metrics)})
    log.info("epoch %d: %s (best mean %.4f at epoch %d)", epoch, describe(metrics), mean_ap(progress.best),
             progress.best_epoch)
    if improves_on(metrics, progress.best, progress.zero_shot, config.protect_classes):
        progress.best, progress.best_epoch = metrics, epoch
        progress.best_state = {k: v.detach().clone() for k, v in loop.kept.state_dict().items()}


def save_last(config: TrainConfig, models: Models, loop: Loop, progress: Progress, epoch: int, out_dir: Path) -> None:
    save_checkpoint(out_dir / "last.pt", models.student, config.model, epoch=epoch,
                    optimizer=loop.optimizer.state_dict(), scheduler=loop.scheduler.state_dict(),
                    kept_state_dict=loop.kept.state_dict(), best_state_dict=progress.best_state,
                    ema_steps=loop.ema.steps if loop.ema is not None else 0, history=json.dumps(progress.history),
                    zero_shot=json.dumps(progress.zero_shot), best_metrics=json.dumps(progress.best),
                    best_epoch=json.dumps(progress.best_epoch), config=config.model_dump_json())


# ---------------------------------------------------------------------------------------------- input size


def choose_size(config: TrainConfig, models: Models, loop: Loop, progress: Progress, deciding: list[Sample],
                data: TrainData, mirror: str | None, out_dir: Path) -> tuple[SizeChoice, torch.nn.Module,
                                                                             torch.nn.Module]:
    """The zero-shot and the best weights at each candidate size on the deciding photos; returns the choice, the
    model best.pt holds (at the chosen size) and the zero-shot model at its pretrained size."""
    best = copy.deepcopy(loop.kept)
    best.load_state_dict(progress.best_state)
    zero = create_model(config.model, num_classes=len(TARGET_CLASSES), pretrained=True, mirror=mirror)
    sizes = sorted({*config.sizes, models.native})
    measured = {}
    for size in sizes:
        measured[("zero-shot", size)] = validate(zero, deciding, out_dir, size)
        if progress.best_epoch > 0:
            measured[("fine-tuned", size)] = validate(best, deciding, out_dir, size)
    choice = choose_input_size(measured, models.native, data.user_sources, fixed=config.imgsz)
    final = copy.deepcopy(best if choice.weights == "fine-tuned" else zero)
    final.spec = at_input_size(model_spec(final), choice.size)
    log.info("input size %d (%s weights)%s", choice.size, choice.weights, f"; {choice.note}" if choice.note else "")
    return choice, final, zero


def gains(final: torch.nn.Module, zero: torch.nn.Module, data: TrainData, out_dir: Path) -> dict:
    """best.pt against the zero-shot model at its pretrained size on every validation photo, per source and class,
    with the bootstrap noise of each gain."""
    final_m, zero_m = validate(final, data.val, out_dir), validate(zero, data.val, out_dir)
    rows: dict = {}
    for source in sorted(set(final_m.sources)):
        for cls in TARGET_CLASSES:
            cell = compare(final_m, zero_m, source, cls)
            if cell.ap is not None:
                rows.setdefault(source, {})[cls] = {"ap": cell.ap, "zero_shot": cell.reference, "gain": cell.gain,
                                                    "noise": cell.noise, "boxes": cell.num_gt,
                                                    "photos": cell.num_images}
    return rows


# ---------------------------------------------------------------------------------------------- the run


def train(config: TrainConfig, out_dir: Path, mirror: str | None = None, resume: Path | None = None,
          progress: bool = True, data: TrainData | None = None) -> TrainResult | None:
    """Fine-tune ``config.model``; returns the result on rank 0 (None elsewhere).

    Args:
        config: The recipe.
        out_dir: Run folder: best.pt, last.pt, summary.json.
        mirror: Mirror root of the bundled sets and the weights.
        resume: A last.pt to continue from.
        progress: Show a progress bar.
        data: The photos, instead of ``load_data(config)`` (the leave-one-source-out benchmark passes its own).
    """
    start = time.perf_counter()
    rank, world, device = _setup_distributed()
    seed_everything(config.seed + rank)
    out_dir.mkdir(parents=True, exist_ok=True)

    data = data or load_data(config, mirror)
    if rank == 0:  # the validation photos as a COCO json, for `edgesight eval` (make demo)
        to_coco(data.val, out_dir / "val.json", TARGET_CLASSES)
    models = build_models(config, mirror, device)
    plan = plan_training(config, models.student, data)
    loop = build_loop(config, models, plan, data, world, rank, device)
    deciding = data.deciding(out_dir)
    state = start_or_resume(models, loop, deciding, data, out_dir, resume, rank)

    deadline = start + config.max_minutes * 60 if config.max_minutes else None
    stopped = False
    for epoch in range(state.first_epoch, loop.epochs + 1):
        if isinstance(loop.sampler, DistributedSampler):
            loop.sampler.set_epoch(epoch)
        stopped = train_epoch(config, models, loop, device, deadline, f"epoch {epoch}/{loop.epochs}",
                              progress and rank == 0)
        if rank == 0 and (epoch in loop.val_epochs or stopped):
            validate_epoch(config, loop, state, epoch, deciding, data, out_dir)
        if rank == 0:
            save_last(config, models, loop, state, epoch, out_dir)
        if stopped:
            log.warning("stopped after %.1f min (max_minutes=%s)", (time.perf_counter() - start) / 60,
                        config.max_minutes)
            break
    if dist.is_initialized():
        dist.barrier()
    if rank != 0:
        return None

    choice, final, zero = choose_size(config, models, loop, state, deciding, data, mirror, out_dir)
    per_source = gains(final, zero, data, out_dir)
    best_epoch = state.best_epoch if choice.weights == "fine-tuned" else 0
    summary: dict[str, Any] = {
        "config": config.model_dump(), "native_size": models.native, "input_size": choice.to_dict(),
        "best_epoch": best_epoch, "zero_shot": state.zero_shot,
        "your_photos": {s: r for s, r in per_source.items() if s in data.user_sources},
        "bundled": {s: r for s, r in per_source.items() if s not in data.user_sources},
        "supervised": {s: sorted(c) for s, c in plan.supervised.items()}, "train_layers": plan.layers,
        "trainable": list(plan.trainable),
        "epochs": loop.epochs, "history": state.history, "wall_seconds": time.perf_counter() - start,
        "stopped_early": stopped, "world_size": world, "device": str(device),
    }
    save_checkpoint(out_dir / "best.pt", final, config.model, epoch=best_epoch, data=json.dumps(config.data),
                    metrics=json.dumps(summary["your_photos"] or summary["bundled"]),
                    training=json.dumps({k: summary[k] for k in ("input_size", "best_epoch", "your_photos",
                                                                  "bundled", "supervised")}))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return TrainResult(out_dir / "best.pt", best_epoch, choice, summary, summary["wall_seconds"], stopped)
