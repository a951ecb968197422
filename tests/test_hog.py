"""The HOG baseline on real COCO photos: it finds a large standing person and never a stop sign."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from devices.errors import ConfigError
from toolkit.evaluate.hog import HogPeopleDetector

MIRROR = os.environ.get("EDGESIGHT_MIRROR")
needs_shared = pytest.mark.skipif(not MIRROR, reason="EDGESIGHT_MIRROR is unset: no coco128 images to run HOG on")
VAL = Path(MIRROR or ".") / "datasets" / "coco128"


def _gt_person(stem: str, width: int, height: int) -> np.ndarray:
    """The YOLO-format person boxes (class 0) of a coco128 val image, as xyxy pixels."""
    rows = [line.split() for line in (VAL / "labels" / "val2017" / f"{stem}.txt").read_text().splitlines()]
    out = []
    for c, cx, cy, w, h in rows:
        if int(c) == 0:
            cx, cy, w, h = float(cx) * width, float(cy) * height, float(w) * width, float(h) * height
            out.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return np.asarray(out, np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` against one box ``b``."""
    x1, y1 = np.maximum(a[:, 0], b[0]), np.maximum(a[:, 1], b[1])
    x2, y2 = np.minimum(a[:, 2], b[2]), np.minimum(a[:, 3], b[3])
    inter = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    area = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    return inter / (area + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@needs_shared
def test_finds_a_large_standing_person() -> None:
    # 000000009483: one man standing, 87 % of the frame's height (his head near the top edge).
    img = cv2.imread(str(VAL / "images" / "val2017" / "000000009483.jpg"))
    gt = _gt_person("000000009483", img.shape[1], img.shape[0])
    assert len(gt) == 1
    det = HogPeopleDetector()(img)
    assert len(det) > 0 and (det.class_ids == 0).all()
    assert det.scores.min() > 0 and det.scores.max() < 1
    # The best-scored box is the man (measured IoU 0.88).
    assert _iou(det.boxes[:1], gt[0])[0] > 0.5
    assert (det.boxes[:, [0, 2]] >= 0).all() and (det.boxes[:, [2]] <= img.shape[1]).all()
    assert (det.boxes[:, [1, 3]] >= 0).all() and (det.boxes[:, [3]] <= img.shape[0]).all()

    # Without the border the pyramid stops before his scale: that is what the border is for.
    plain = HogPeopleDetector(border=0.0)(img)
    assert len(plain) == 0 or _iou(plain.boxes, gt[0]).max() < 0.3


@needs_shared
def test_never_reports_a_stop_sign() -> None:
    # 000000000724: a stop sign filling much of the frame.
    img = cv2.imread(str(VAL / "images" / "val2017" / "000000000724.jpg"))
    det = HogPeopleDetector()(img)
    assert (det.class_ids == 0).all()
    assert HogPeopleDetector.labels == ("pedestrian", "stop_sign")


def test_image_smaller_than_the_window_is_enlarged_not_refused() -> None:
    img = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    det = HogPeopleDetector()(img)
    assert (det.boxes[:, [0, 2]] <= 30).all() and (det.boxes[:, [1, 3]] <= 40).all()


def test_invalid_settings_name_the_value() -> None:
    with pytest.raises(ConfigError, match=r"got 1\.0"):
        HogPeopleDetector(scale=1.0)
    with pytest.raises(ConfigError, match=r"\(5, 8\)"):
        HogPeopleDetector(win_stride=(5, 8))
    with pytest.raises(ValueError, match="BGR uint8"):
        HogPeopleDetector()(np.zeros((200, 200), np.uint8))
