"""Calibration: selection refuses unusable sets, is deterministic and stratified, and feeds converters the
inference preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration import calibration_report, select_calibration
from calibration.reader import iter_tensors, ort_calibration_reader
from calibration.select import set_sha256
from devices.errors import CalibrationError
from devices.processing import preprocess
from devices.types import InputSpec

YOLOX_INPUT = InputSpec(width=416, height=416)
FASTESTDET_INPUT = InputSpec(width=352, height=352, resize="stretch", scale=1 / 255)


@dataclass(frozen=True)
class Item:
    """The three fields selection reads, for sets built in a temporary folder."""

    image_path: Path
    labels: np.ndarray
    source: str = "tmp"


def make_items(folder: Path, n: int) -> list[Item]:
    """``n`` distinct small PNGs: every third has a pedestrian, every fifth a stop sign."""
    items = []
    for i in range(n):
        path = folder / f"img{i:03d}.png"
        cv2.imwrite(str(path), np.full((8, 8, 3), i, np.uint8))
        labels = [c for c, every in ((0, 3), (1, 5)) if i % every == 0]
        items.append(Item(path, np.asarray(labels, np.int64)))
    return items


@pytest.fixture(scope="module")
def train_samples(mirror: Path) -> list:
    """Real training-side samples: COCO128 train2017 (people, some stop signs) + Roboflow stop signs."""
    from toolkit.data.sets import load_dataset

    coco = [s for s in load_dataset("coco128", mirror) if s.subset == "train"]
    stops = [s for s in load_dataset("roboflow_stop_signs", mirror) if s.subset != "val"]
    return coco + stops


# --- refusals --------------------------------------------------------------------------------------------


def test_empty_set_is_refused_even_with_allow_few() -> None:
    with pytest.raises(CalibrationError, match="empty"):
        select_calibration([], allow_few=True)


def test_too_few_images_are_refused(tmp_path: Path) -> None:
    items = make_items(tmp_path, 30)
    with pytest.raises(CalibrationError) as info:
        select_calibration(items, count=300, min_count=100)
    assert "only 30" in str(info.value) and "min_count=100" in str(info.value)
    assert "allow_few" in info.value.fix


def test_count_below_min_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="count=20"):
        select_calibration(make_items(tmp_path, 150), count=20, min_count=100)


def test_allow_few_accepts_a_small_set(tmp_path: Path) -> None:
    chosen = select_calibration(make_items(tmp_path, 30), count=300, min_count=100, allow_few=True)
    assert len(chosen) == 30


def test_duplicates_do_not_count_twice(tmp_path: Path) -> None:
    items = make_items(tmp_path, 60)
    with pytest.raises(CalibrationError, match="only 60"):
        select_calibration(items + items, min_count=100)


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    items = make_items(tmp_path, 5)
    items[2].image_path.unlink()
    with pytest.raises(CalibrationError, match=r"img002\.png"):
        select_calibration(items, allow_few=True)


# --- determinism, stratification, hash ------------------------------------------------------------------


def test_same_seed_same_set_other_seed_other_set(train_samples: list) -> None:
    a = select_calibration(train_samples, count=60, seed=0, min_count=50)
    b = select_calibration(list(reversed(train_samples)), count=60, seed=0, min_count=50)
    c = select_calibration(train_samples, count=60, seed=1, min_count=50)
    assert a.paths == b.paths and a.sha256 == b.sha256  # input order does not matter
    assert a.paths != c.paths and a.sha256 != c.sha256


def test_stratified_by_class_with_negatives(train_samples: list) -> None:
    chosen = select_calibration(train_samples, count=60, min_count=50)
    picked = set(chosen.paths)
    # Pedestrians are the rarer class here, so the strata are: with a pedestrian, with only a stop
    # sign, with neither. Each is drawn in proportion to the training images, to rounding.
    strata = {
        "pedestrian": lambda s: 0 in s.labels,
        "stop_sign only": lambda s: 0 not in s.labels and 1 in s.labels,
        "negative": lambda s: s.labels.size == 0,
    }
    for name, member in strata.items():
        pool = [s for s in train_samples if member(s)]
        expected = 60 * len(pool) / len(train_samples)
        got = sum(s.image_path in picked for s in pool)
        assert abs(got - expected) < 1.5, f"{name}: {got} images, expected {expected:.1f}"
    assert chosen.negatives >= 1 and set(chosen.class_counts) == {0, 1}
    assert sum(chosen.sources.values()) == len(chosen) == 60


def test_balance_gives_the_rarer_class_an_equal_share(train_samples: list) -> None:
    proportional = select_calibration(train_samples, count=60, min_count=50)
    balanced = select_calibration(train_samples, count=60, min_count=50, balance=True)
    # Stop-sign photos dominate the training images; balancing lifts the share of pedestrians.
    assert proportional.class_counts[0] < proportional.class_counts[1]
    assert balanced.class_counts[0] > proportional.class_counts[0]
    assert abs(balanced.class_counts[0] - balanced.class_counts[1]) <= 0.25 * len(balanced)


def test_hash_names_the_pixels_not_the_paths(tmp_path: Path) -> None:
    items = make_items(tmp_path, 4)
    chosen = select_calibration(items, allow_few=True)
    assert chosen.sha256 == set_sha256(list(reversed(chosen.paths)))
    before = chosen.sha256
    cv2.imwrite(str(items[0].image_path), np.full((8, 8, 3), 200, np.uint8))
    assert set_sha256(chosen.paths) != before


def test_report_for_the_manifest(train_samples: list) -> None:
    import onnxruntime

    chosen = select_calibration(train_samples, count=60, min_count=50)
    report = calibration_report(chosen, "mse", "onnxruntime", ("pedestrian", "stop_sign"))
    assert report["count"] == 60 and report["sha256"] == chosen.sha256
    assert report["images_per_class"] == {"pedestrian": chosen.class_counts[0], "stop_sign": chosen.class_counts[1]}
    assert report["negatives"] == chosen.negatives and report["method"] == "mse"
    assert report["converter"] == "onnxruntime" and report["converter_version"] == onnxruntime.__version__


# --- reader -------------------------------------------------------------------------------------------------


def test_reader_tensors_are_what_the_device_feeds_the_model(mirror: Path) -> None:
    from toolkit.data.images import load_image

    # An RGBA PNG and a JPEG decoded by the training loader (Pillow), against what the device computes from the
    # same file read by OpenCV (BundleDetector.prepare): calibration must see the tensors the model will see.
    paths = [
        mirror / "datasets/roadsign_kaggle_stop/images/road160.png",
        mirror / "datasets/coco128/images/train2017/000000000009.jpg",
    ]
    items = [Item(p, np.zeros(0, np.int64)) for p in paths]
    chosen = select_calibration(items, allow_few=True)
    for spec in (YOLOX_INPUT, FASTESTDET_INPUT):
        tensors = list(iter_tensors(chosen, spec, load_image))
        assert len(tensors) == len(chosen)
        for path, tensor in zip(chosen.paths, tensors, strict=True):
            np.testing.assert_array_equal(tensor, preprocess(cv2.imread(str(path)), spec)[0])


def test_ort_reader_feeds_the_named_input_then_stops(mirror: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader

    items = [Item(mirror / "datasets/coco128/images/train2017/000000000009.jpg", np.zeros(0, np.int64))]
    reader = ort_calibration_reader(
        select_calibration(items, allow_few=True), YOLOX_INPUT, lambda p: cv2.imread(str(p)), input_name="images"
    )
    assert isinstance(reader, CalibrationDataReader) and len(reader) == 1
    first = reader.get_next()
    assert list(first) == ["images"] and first["images"].shape == (1, 3, 416, 416)
    assert reader.get_next() is None
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["images"], first["images"])
