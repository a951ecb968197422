"""Fine-tuning on real photos: the loss goes down, both classes stay detectable, torchrun works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models import create_model
from models.registry import model_entry
from toolkit.data.images import load_image
from toolkit.data.sets import default_splits
from toolkit.evaluate.torch_detector import TorchDetector
from toolkit.train.dataset import DetectionDataset, collate, one_per_group
from toolkit.train.distill import teacher_rows
from toolkit.train.loop import _freeze_norm, improves_on, lr_factor
from toolkit.train.loss import detection_loss, read_dense


def _batch(samples, spec):
    data = DetectionDataset(samples, spec.input, augment=False)
    return collate([data[i] for i in range(len(data))])


def _loss(model, teacher, images, targets, rows) -> float:
    spec = model.spec
    with torch.no_grad():
        t = read_dense(teacher.logits(images), teacher.spec.decode, spec.input.width, spec.input.height)
        s = read_dense(model.logits(images), spec.decode, spec.input.width, spec.input.height)
        return float(detection_loss(s, targets, 2, t, rows)["total"])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["fastestdet", "yolox-nano"])
def test_short_finetune_lowers_loss_and_keeps_both_classes(mirror: Path, arch: str) -> None:
    torch.manual_seed(0)
    train, val = default_splits(mirror=str(mirror))
    people = [s for s in train if s.source == "coco128" and (s.labels == 0).sum() >= 2][:4]
    stops = [s for s in train if s.source != "coco128"][:4]
    model = create_model(arch, num_classes=2, pretrained=True, mirror=str(mirror))
    teacher = create_model(arch, num_classes=80, pretrained=True, mirror=str(mirror))
    images, targets, _ = _batch(people + stops, model.spec)
    rows = teacher_rows(read_dense(model.logits(images[:1]), model.spec.decode, model.spec.input.width,
                                    model.spec.input.height).cls.shape[-1])
    before = _loss(model, teacher, images, targets, rows)
    # The trainer's optimiser and warm-up: without warm-up Adam's first steps jolt every weight of a
    # converged model by the full learning rate.
    # ... and its frozen feature extractor.
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(model_entry(arch).backbone_prefix))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, 10, 5))
    model.train()
    _freeze_norm(model)
    for _ in range(10):
        s = read_dense(model.logits(images), model.spec.decode, model.spec.input.width, model.spec.input.height)
        t = read_dense(teacher.logits(images), teacher.spec.decode, model.spec.input.width, model.spec.input.height)
        loss = detection_loss(s, targets, 2, t, rows)["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    model.eval()
    after = _loss(model, teacher, images, targets, rows)
    assert after < before * 0.95, (before, after)
    # Both classes are still found on held-out real photos.
    detector = TorchDetector(model, score_threshold=0.3)
    for sample, cls in ((next(s for s in val if s.source == "coco128" and (s.labels == 0).any()), 0),
                        (next(s for s in val if s.source == "roadsign_kaggle_stop"), 1)):
        dets = detector(load_image(sample.image_path))
        assert (dets.class_ids == cls).any(), (sample.image_path, cls)


def test_one_copy_per_photo_keeps_every_group(mirror: Path) -> None:
    train, _ = default_splits(mirror=str(mirror))
    kept = one_per_group(train, seed=0)
    assert len({s.group for s in kept}) == len({s.group for s in train}) == len(kept)
    assert len(kept) < len(train)


def test_dataset_boxes_follow_the_letterbox(mirror: Path) -> None:
    train, _ = default_splits(mirror=str(mirror))
    sample = next(s for s in train if s.source == "roadsign_kaggle_stop")
    spec = create_model("yolox-nano", num_classes=2, pretrained=False).spec
    image, boxes, labels, _ = DetectionDataset([sample], spec.input, augment=False)[0]
    r = min(416 / sample.width, 416 / sample.height)
    np.testing.assert_allclose(boxes.numpy(), sample.boxes * r, rtol=1e-5)
    assert image.shape == (3, 416, 416) and labels.tolist() == sample.labels.tolist()


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(mirror: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
           "-m", "toolkit", "--mirror", str(mirror), "train", "--model", "fastestdet", "--out", str(out),
           "--epochs", "1", "--batch-size", "2", "--max-train-images", "8", "--max-val-images", "6"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["history"] and (out / "best.pt").is_file() and (out / "last.pt").is_file()


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(mirror: Path, tmp_path: Path) -> None:
    from toolkit.train import recipe, train

    fields = {"model": "fastestdet", "batch_size": 2, "max_train_images": 4, "max_val_images": 3}
    first = train(recipe(epochs=1, **fields), tmp_path, mirror=str(mirror), progress=False)
    assert first is not None and [h["epoch"] for h in json.loads((tmp_path / "summary.json").read_text())
                                  ["history"]] == [1]
    second = train(recipe(epochs=2, **fields), tmp_path, mirror=str(mirror), resume=tmp_path / "last.pt",
                   progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert second is not None and second.zero_shot["map"] == first.zero_shot["map"]


def _metrics(pedestrian: float, stop_sign: float) -> dict:
    return {"map": (pedestrian + stop_sign) / 2,
            "classes": [{"name": "pedestrian", "ap": pedestrian}, {"name": "stop_sign", "ap": stop_sign}]}


def test_best_checkpoint_never_trades_one_class_for_the_other() -> None:
    zero = _metrics(0.30, 0.70)
    # A higher mean bought with pedestrian AP is refused; so is an epoch that improves nothing.
    assert not improves_on(_metrics(0.29, 0.80), zero, zero)
    assert not improves_on(_metrics(0.30, 0.70), zero, zero)
    # Both classes at least as good as zero-shot and a higher mean than the best so far: kept.
    assert improves_on(_metrics(0.30, 0.72), zero, zero)
    assert not improves_on(_metrics(0.31, 0.71), _metrics(0.31, 0.73), zero)
    # Unless the user allows it (--allow-class-drop).
    assert improves_on(_metrics(0.29, 0.80), zero, zero, protect_classes=False)
    # Trained above the pretrained size, no class may fall below either zero-shot run: here the published
    # model at its own size is the better one on stop signs.
    native = _metrics(0.28, 0.75)
    assert not improves_on(_metrics(0.31, 0.74), zero, zero, native=native)
    assert improves_on(_metrics(0.31, 0.75), zero, zero, native=native)



def test_recipe_names_a_bad_setting_and_defaults_each_tier_to_its_size() -> None:
    from devices.errors import ConfigError
    from toolkit.train import recipe

    assert (recipe().imgsz, recipe(model="fastestdet").imgsz, recipe(imgsz=448).imgsz) == (512, 416, 448)
    with pytest.raises(ConfigError, match="imgsz: Input should be a multiple of 32"):
        recipe(imgsz=400)
    with pytest.raises(ConfigError, match="epochs"):
        recipe(epochs=0)


@pytest.mark.slow
def test_label_rows_only_changes_nothing_but_the_stop_sign_rows(mirror: Path, tmp_path: Path) -> None:
    from devices.errors import ConfigError
    from models.checkpoint import read_checkpoint
    from toolkit.train import recipe, train

    fields = {"epochs": 1, "batch_size": 2, "max_train_images": 4, "max_val_images": 2, "imgsz": 320}
    assert recipe(**fields).label_rows_only  # the YOLOX-Nano default
    train(recipe(**fields), tmp_path, mirror=str(mirror), progress=False)
    tuned = read_checkpoint(tmp_path / "last.pt")["state_dict"]
    pretrained = create_model("yolox-nano", num_classes=2, pretrained=True, mirror=str(mirror)).state_dict()
    changed = {k for k, v in pretrained.items() if not torch.equal(v, tuned[k])}
    assert changed and all(k.startswith("head.cls_preds.") for k in changed), changed
    for k in changed:  # row 0 (pedestrian) bit for bit, row 1 (stop sign) learned
        assert torch.equal(tuned[k][0], pretrained[k][0]) and not torch.equal(tuned[k][1], pretrained[k][1])
    with pytest.raises(ConfigError, match="share a softmax"):
        recipe(model="fastestdet", label_rows_only=True)
