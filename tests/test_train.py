"""Fine-tuning on real photos: the loss goes down, both classes stay detectable, torchrun works; the user's labels
teach what they label and nothing else; best.pt and the input size are chosen per source and class."""

from __future__ import annotations

import dataclasses
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
from toolkit.evaluate.by_source import ImageMatches, Matches, average_precision
from toolkit.evaluate.torch_detector import TorchDetector
from toolkit.train.dataset import DetectionDataset, collate, one_per_group
from toolkit.train.distill import teacher_rows
from toolkit.train.loop import _freeze_norm, lr_factor, missed_photos
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


def test_photos_with_a_labelled_object_the_zero_shot_model_misses_are_found(mirror: Path) -> None:
    train, _ = default_splits(mirror=str(mirror))
    photos = [s for s in train if s.source == "roadsign_kaggle_stop"][:3]
    model = create_model("yolox-nano", num_classes=2, pretrained=True, mirror=str(mirror))
    assert missed_photos(model, photos) == []  # the COCO model finds these stop signs
    # The same photo with a second "stop sign" labelled in a 16 px corner where there is none.
    corner = dataclasses.replace(photos[1], boxes=np.vstack([photos[1].boxes, [[0, 0, 16, 16]]]).astype(np.float32),
                                 labels=np.append(photos[1].labels, photos[1].labels[0]))
    assert missed_photos(model, [photos[0], corner, photos[2]]) == [1]


def test_teacher_box_term_holds_boxes_where_the_teacher_sees_a_target_object() -> None:
    spec = create_model("yolox-nano", num_classes=2, pretrained=False).spec
    torch.manual_seed(0)
    t_logits = torch.randn(1, 3549, 7)
    t_logits[0, :100, 4:] = 8.0  # the teacher is sure of a target object on the first 100 anchors only
    t_logits[0, 100:, 4] = -8.0
    teacher = read_dense(t_logits, spec.decode, 416, 416)
    logits = t_logits.clone()
    logits[..., :4] += 0.5  # every student box off the teacher's
    logits.requires_grad_(True)
    loss = detection_loss(read_dense(logits, spec.decode, 416, 416), [(torch.zeros(0, 4), torch.zeros(0).long())],
                          2, teacher, torch.arange(2), distill_weight=0.0, teacher_box_weight=1.0)
    loss["teacher_box"].backward()
    moved = logits.grad[0, :, :4].abs().sum(-1)
    assert moved[:100].min() > 100 * moved[100:].max()


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

    fields = {"model": "fastestdet", "imgsz": 352, "batch_size": 2, "max_train_images": 4, "max_val_images": 3}
    first = train(recipe(epochs=1, **fields), tmp_path, mirror=str(mirror), progress=False)
    assert first is not None and [h["epoch"] for h in first.summary["history"]] == [1]
    second = train(recipe(epochs=2, **fields), tmp_path, mirror=str(mirror), resume=tmp_path / "last.pt",
                   progress=False)
    assert second is not None and [h["epoch"] for h in second.summary["history"]] == [1, 2]
    assert second.summary["zero_shot"] == first.summary["zero_shot"]


def _image(k: int, boxes: int = 1) -> ImageMatches:
    """One photo whose single detection matches its box at the first ``k`` of the 10 IoU thresholds: AP k/10."""
    matched = np.zeros((10, 1), bool)
    matched[:k] = True
    return ImageMatches(np.array([0.9]), matched, np.zeros((10, 1), bool), boxes)


def _matches(pedestrian: int, stop_sign: int, ms: float = 10.0) -> Matches:
    """Two sources, one class measured on each (coco: pedestrian AP p/10; signs: stop-sign AP s/10)."""
    none = ImageMatches(np.zeros(0), np.zeros((10, 0), bool), np.zeros((10, 0), bool), 0)
    return Matches(("coco", "signs"), {"pedestrian": (_image(pedestrian, 12), none),
                                       "stop_sign": (none, _image(stop_sign, 12))}, ms)


def test_average_precision_is_cocoeval_on_any_subset() -> None:
    assert average_precision([_image(7, 1)]) == pytest.approx(0.7)
    assert average_precision([_image(7, 1), _image(7, 1)]) == pytest.approx(0.7)  # a repeat changes nothing here
    # One of two boxes found: precision 1 up to recall 0.5, i.e. at 51 of the 101 recall points.
    assert average_precision([_image(10, 2)]) == pytest.approx(51 / 101)
    assert average_precision([ImageMatches(np.zeros(0), np.zeros((10, 0), bool), np.zeros((10, 0), bool), 0)]) is None


def test_size_choice_keeps_the_size_that_holds_every_source_and_class() -> None:
    from toolkit.train.select import choose_input_size

    candidates = {
        ("zero-shot", 416): _matches(5, 8),
        ("zero-shot", 512): _matches(7, 7, ms=15),  # best on average (0.70), loses the signs: refused
        ("fine-tuned", 416): _matches(5, 9),  # never worse, mean 0.70: the answer
        ("fine-tuned", 512): _matches(8, 7, ms=15),  # best mean (0.75), loses the signs: refused
    }
    choice = choose_input_size(candidates, native=416)
    assert (choice.weights, choice.size) == ("fine-tuned", 416)
    assert choice.table["fine-tuned@512"]["holds"] is False and choice.table["zero-shot@512"]["median_ms"] == 15
    # When nothing holds, the zero-shot model at its pretrained size stays.
    del candidates[("fine-tuned", 416)]
    assert (choose_input_size(candidates, 416).weights, choose_input_size(candidates, 416).size) == ("zero-shot", 416)
    # A cell with fewer than MIN_BOXES boxes decides nothing, unless it is the user's (3 signs here).
    def two(pedestrian: int, stop_sign: int) -> Matches:
        return Matches(("coco", "signs"), {"pedestrian": (_image(pedestrian, 12), _image(1, 0)),
                                           "stop_sign": (_image(1, 0), _image(stop_sign, 3))}, 10.0)

    few = {("zero-shot", 416): two(5, 8), ("fine-tuned", 416): two(6, 2)}
    assert choose_input_size(few, 416).weights == "fine-tuned"
    assert choose_input_size(few, 416, user_sources=("signs",)).weights == "zero-shot"


def test_a_larger_size_is_kept_only_when_it_gains_beyond_the_noise() -> None:
    from toolkit.train.select import choose_input_size

    def photos(aps: list[int], ms: float) -> Matches:
        """Your photos of one source, one sign each, AP k/10 per photo."""
        return Matches(("yours",) * len(aps), {"stop_sign": tuple(_image(k) for k in aps),
                                               "pedestrian": tuple(_image(0, 0) for _ in aps)}, ms)

    base = [5, 6, 7, 8, 9, 5, 6, 7, 8, 9]
    slightly = [7, 6, 7, 8, 9, 4, 6, 7, 8, 9]  # +0.01 on average, one photo better, one worse: within the noise
    clearly = [8, 9, 9, 10, 10, 8, 9, 9, 10, 10]  # +0.24, every photo better
    zero = ("zero-shot", 416)
    choice = choose_input_size({zero: photos(base, 10), ("zero-shot", 512): photos(slightly, 15)}, 416,
                               user_sources=("yours",))
    assert (choice.weights, choice.size) == ("zero-shot", 416)
    assert "512 (zero-shot) was not kept" in choice.note and "1.50x the time" in choice.note
    choice = choose_input_size({zero: photos(base, 10), ("zero-shot", 512): photos(clearly, 15)}, 416,
                               user_sources=("yours",))
    assert (choice.size, choice.note) == (512, "")


def test_best_checkpoint_never_trades_one_source_or_class_for_another() -> None:
    from toolkit.train.select import improves_on

    zero = {"coco": {"pedestrian": 0.30}, "signs": {"stop_sign": 0.70}}
    assert not improves_on({"coco": {"pedestrian": 0.29}, "signs": {"stop_sign": 0.80}}, zero, zero)
    assert not improves_on(zero, zero, zero)
    assert improves_on({"coco": {"pedestrian": 0.30}, "signs": {"stop_sign": 0.72}}, zero, zero)
    assert improves_on({"coco": {"pedestrian": 0.29}, "signs": {"stop_sign": 0.80}}, zero, zero,
                       protect_classes=False)


def test_summary_warns_plainly_when_your_photos_gained_nothing() -> None:
    from toolkit.train.report import summary_text

    row = {"ap": 0.70, "zero_shot": 0.72, "gain": -0.02, "noise": 0.01, "boxes": 12, "photos": 9}
    summary = {"input_size": {"size": 416, "weights": "fine-tuned", "native": 416, "candidates": {
        "zero-shot@416": {"mean_ap": 0.72, "median_ms": 20.0, "holds": True},
        "fine-tuned@416": {"mean_ap": 0.70, "median_ms": 20.0, "holds": True}}},
        "your_photos": {"data:mine": {"stop_sign": row}}, "bundled": {}}
    text = summary_text(summary)
    assert "WARNING: no gain on your photos for stop_sign (-0.020 AP)" in text
    assert "WARNING" not in summary_text({**summary, "your_photos": {"data:mine": {"stop_sign": {
        **row, "ap": 0.80, "gain": 0.08}}}})


def test_recipe_names_a_bad_setting_and_chooses_the_size_after_training() -> None:
    from devices.errors import ConfigError
    from toolkit.train import recipe

    assert recipe().imgsz is None and 416 in recipe().sizes and 352 in recipe(model="fastestdet").sizes
    assert recipe(imgsz=448).sizes == (448,)
    with pytest.raises(ConfigError, match="imgsz: Input should be a multiple of 32"):
        recipe(imgsz=400)
    with pytest.raises(ConfigError, match="epochs"):
        recipe(epochs=0)
    with pytest.raises(ConfigError, match="share a softmax"):
        recipe(model="fastestdet", train_layers="class_rows")


def test_your_photos_get_the_recipe_measured_on_your_photos_and_your_settings_still_win(tmp_path: Path) -> None:
    from toolkit.train import recipe

    mine = [str(tmp_path / "mine.json")]
    plain, yours = recipe(), recipe(data=mine)
    assert (plain.train_layers, plain.min_steps, plain.teacher_box_weight) == ("auto", 120, 0.0)
    assert (yours.train_layers, yours.min_steps, yours.distill_weight, yours.teacher_box_weight) == (
        "head", 360, 1.0, 1.0)
    assert recipe(data=mine, train_layers="outputs", min_steps=50).model_dump().items() >= {
        "train_layers": "outputs", "min_steps": 50, "teacher_box_weight": 1.0}.items()
    fast, fast_yours = recipe(model="fastestdet"), recipe(model="fastestdet", data=mine)
    assert (fast.train_layers, fast.min_steps, fast.hard_repeat) == ("auto", 120, 1)
    assert (fast_yours.train_layers, fast_yours.min_steps, fast_yours.hard_repeat) == ("head", 360, 4)
    assert (fast_yours.distill_weight, fast_yours.lr) == (100.0, 1e-4)  # its own recipe under the one for your photos
    assert (plain.hard_repeat, yours.hard_repeat) == (1, 4)


def _user_set(samples: list, path: Path) -> Path:
    from toolkit.data.coco import to_coco

    return to_coco(samples, path)


@pytest.mark.slow
def test_your_people_labels_train_the_pedestrian_outputs_and_nothing_else_does(mirror: Path, tmp_path: Path) -> None:
    from models.checkpoint import read_checkpoint
    from toolkit.data.sets import load_dataset
    from toolkit.train import recipe, train

    people = [s for s in load_dataset("coco128", str(mirror)) if (s.labels == 0).sum() >= 2][:6]
    signs = load_dataset("roadsign_kaggle_stop", str(mirror))[:6]
    pretrained = create_model("yolox-nano", num_classes=2, pretrained=True, mirror=str(mirror)).state_dict()
    moved = {}
    for name, photos in (("people", people), ("signs", signs)):
        config = recipe(data=[str(_user_set(photos, tmp_path / f"{name}.json"))], datasets=("roadsign_kaggle_stop",),
                        imgsz=320, epochs=1, batch_size=4, max_val_images=4, ema_decay=None)
        result = train(config, tmp_path / name, mirror=str(mirror), progress=False)
        assert result is not None
        tuned = read_checkpoint(tmp_path / name / "last.pt")["state_dict"]
        rows = [k for k in pretrained if k.startswith("head.cls_preds.") and k.endswith("weight")]
        moved[name] = [not torch.equal(tuned[k][0], pretrained[k][0]) for k in rows]
        assert all(not torch.equal(tuned[k][1], pretrained[k][1]) for k in rows)  # stop signs learn in both
        # These six people photos hold no stop sign, so they teach people only; the signs teach signs only.
        assert result.summary["supervised"][f"data:{name}"] == (["pedestrian"] if name == "people" else ["stop_sign"])
    assert all(moved["people"]) and not any(moved["signs"])


@pytest.mark.slow
def test_by_source_table_runs_on_a_tiny_subset(mirror: Path, tmp_path: Path) -> None:
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"imgsz": 320, "epochs": 1, "batch_size": 2, "max_val_images": 4}))
    cmd = [sys.executable, "benchmarks/by_source.py", "--mirror", str(mirror), "--sources", "roadsign_kaggle_stop",
           "--max-images", "4", "--min-boxes", "1", "--config", str(config), "--out", str(tmp_path / "table")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1],
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "table/by_source.md").read_text()
    assert "| roadsign_kaggle_stop | stop_sign | 4 / 4 | 320 (chosen) |" in table
    assert "| roadsign_kaggle_stop close-ups | stop_sign |" in table
    assert "| roadsign_kaggle_stop | pedestrian | 0 / 4 | - | not measurable (< 1 boxes)" in table
    rows = json.loads((tmp_path / "table/by_source.json").read_text())["results"]
    assert rows and all(r["fine_tuned"] is not None for r in rows)


def test_bundle_report_says_which_model_to_deploy_and_why() -> None:
    from types import SimpleNamespace

    from toolkit.export.report import _report_training

    row = {"ap": 0.80, "zero_shot": 0.76, "gain": 0.04, "noise": 0.01, "boxes": 40, "photos": 30}
    candidates = {"zero-shot@416": {"mean_ap": 0.76, "median_ms": 20.0, "holds": True},
                  "fine-tuned@416": {"mean_ap": 0.80, "median_ms": 20.0, "holds": True},
                  "fine-tuned@512": {"mean_ap": 0.70, "median_ms": 30.0, "holds": False}}
    training = {"input_size": {"size": 416, "weights": "fine-tuned", "native": 416, "candidates": candidates},
                "your_photos": {"data:mine": {"stop_sign": row}}, "bundled": {}}
    text = "\n".join(_report_training(SimpleNamespace(training=training)))
    assert "chose **416x416** with the fine-tuned weights" in text
    assert "| fine-tuned@512 | 0.700 | 30.0 | 1.50x | no |" in text
    assert "Deploy this bundle: it gains stop_sign +0.040" in text
    within = {**training, "your_photos": {"data:mine": {"stop_sign": {**row, "gain": 0.005}}}}
    assert "The stock model is as good" in "\n".join(_report_training(SimpleNamespace(training=within)))
    stock = {**training, "input_size": {**training["input_size"], "weights": "zero-shot"}}
    assert "is the stock COCO model" in "\n".join(_report_training(SimpleNamespace(training=stock)))
    assert _report_training(SimpleNamespace(training=None)) == []


def test_user_domain_grey_camera_copies_keep_each_photo_its_boxes_and_group(mirror: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        from user_domain import grey_copies
    finally:
        sys.path.pop(0)
    from toolkit.data.sample import photo_name
    from toolkit.data.sets import load_dataset

    photos = load_dataset("roboflow_stop_signs", str(mirror))[:3]
    copies = grey_copies(photos, tmp_path / "grey")
    for photo, copy in zip(photos, copies, strict=True):
        assert copy.image_path.suffix == ".png" and copy.image_path.is_relative_to(tmp_path / "grey")
        assert (copy.group, copy.width, copy.height) == (photo.group, photo.width, photo.height)
        assert np.array_equal(copy.boxes, photo.boxes) and np.array_equal(copy.labels, photo.labels)
        assert photo_name(copy.image_path) == photo_name(photo.image_path)  # Roboflow's copies still one photo
        image = load_image(copy.image_path)
        assert image.shape == (photo.height, photo.width, 3)
        assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
        assert not (load_image(photo.image_path)[..., 0] == load_image(photo.image_path)[..., 2]).all()
