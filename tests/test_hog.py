"""The HOG baseline on real COCO photos: it finds a standing person, large or smaller than its window."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from devices.errors import ConfigError
from models.base import TARGET_CLASSES
from tests.conftest import box_iou
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
    assert box_iou(det.boxes[:1], gt[0])[0, 0] > 0.5
    assert (det.boxes[:, [0, 2]] >= 0).all() and (det.boxes[:, [2]] <= img.shape[1]).all()
    assert (det.boxes[:, [1, 3]] >= 0).all() and (det.boxes[:, [3]] <= img.shape[0]).all()

    # Without the border the pyramid stops before his scale: that is what the border is for.
    plain = HogPeopleDetector(border=0.0)(img)
    assert len(plain) == 0 or box_iou(plain.boxes, gt[0]).max() < 0.3


@needs_shared
def test_a_person_smaller_than_the_window_is_enlarged_and_found() -> None:
    # The standing man of 000000009483, cropped with a margin and shrunk to 60 px high: smaller than the 64x128
    # window, so the image must be enlarged before the pyramid can see him (measured: score 0.999, IoU 0.90).
    img = cv2.imread(str(VAL / "images" / "val2017" / "000000009483.jpg"))
    x1, y1, x2, y2 = _gt_person("000000009483", img.shape[1], img.shape[0])[0]
    width, height = x2 - x1, y2 - y1
    left, right = int(max(0.0, x1 - 0.3 * width)), int(min(img.shape[1], x2 + 0.3 * width))
    top, bottom = int(max(0.0, y1 - 0.07 * height)), int(y2)
    crop = img[top:bottom, left:right]
    size = (round(60 * crop.shape[1] / crop.shape[0]), 60)
    small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    sx, sy = size[0] / crop.shape[1], size[1] / crop.shape[0]
    man = np.array([[(x1 - left) * sx, (y1 - top) * sy, (x2 - left) * sx, (y2 - top) * sy]], np.float32)
    det = HogPeopleDetector()(small)
    assert len(det) > 0 and box_iou(det.boxes[:1], man)[0, 0] > 0.5
    assert (det.boxes[:, [0, 2]] <= size[0]).all() and (det.boxes[:, [1, 3]] <= 60).all()  # the small image's px
    assert HogPeopleDetector.labels == TARGET_CLASSES  # the learned models' classes, in their order


def test_invalid_settings_name_the_value() -> None:
    with pytest.raises(ConfigError, match=r"got 1\.0"):
        HogPeopleDetector(scale=1.0)
    with pytest.raises(ConfigError, match=r"\(5, 8\)"):
        HogPeopleDetector(win_stride=(5, 8))
    with pytest.raises(ValueError, match="BGR uint8"):
        HogPeopleDetector()(np.zeros((200, 200), np.uint8))
