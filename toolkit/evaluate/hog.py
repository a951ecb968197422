"""The classical baseline: OpenCV's HOG + linear SVM people detector (Dalal & Triggs, CVPR 2005).

It finds pedestrians only (class 0); it never reports a stop sign. It is the floor every learned model
must beat, and it runs anywhere OpenCV does.

OpenCV 5 moved ``HOGDescriptor`` out of the main package into opencv_contrib: with OpenCV 5 this needs
``opencv-contrib-python-headless`` (a superset of ``opencv-python-headless``) instead of the plain
wheel; OpenCV 4.x has it in the main package.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from devices.errors import ConfigError, MissingDependencyError
from devices.processing import check_frame, nms
from devices.types import Detections

#: Same classes and order as the learned models (``models.base.TARGET_CLASSES``).
LABELS: tuple[str, ...] = ("pedestrian", "stop_sign")

PEDESTRIAN = 0

#: The detection window of the default people detector, (width, height) in pixels.
WINDOW = (64, 128)

# Dalal & Triggs' 64x128 training windows hold the person with a 16 px margin on every side;
# removing it turns a window into a box around the person, as COCO's boxes are drawn.
_MARGIN_X = 16 / 64

_MARGIN_Y = 16 / 128


def _hog_descriptor() -> Any:
    cls = getattr(cv2, "HOGDescriptor", None)
    if cls is None:
        raise MissingDependencyError(
            "opencv-contrib-python-headless",
            "train",
            f"the HOG baseline (cv2.HOGDescriptor, in opencv_contrib since OpenCV 5; installed: {cv2.__version__})",
        )
    hog = cls()
    hog.setSVMDetector(cls.getDefaultPeopleDetector())
    return hog


class HogPeopleDetector:
    """OpenCV's default HOG people detector as an evaluation detector (BGR image -> Detections).

    The score is ``sigmoid(2 * w)`` of the SVM margin ``w``: it is monotonic, so it only orders the
    detections, which is all AP needs; it is not a calibrated probability (0.5 is OpenCV's default
    hit threshold, margin 0).

    On COCO photos this detector is weak (coco128 val pedestrians: AP@[.5:.95] 0.013, AP@0.5 0.035,
    about 0.6-0.9 s per 640x480 image on one core): most COCO people are small, occluded or not
    upright, which the 2005 pedestrian model was not made for.

    Args:
        win_stride: Window step in pixels (a multiple of the 8 px block stride).
        padding: Border added around the image so windows can reach its edges.
        scale: Step between pyramid levels.
        border: Replicated border added on every side, as a fraction of the image height, before
            detection. OpenCV's pyramid stops when the image shrinks below the window, and the window
            holds the person with a 12.5 % margin above and below: without a border, a person taller
            than about 75 % of the frame (a pedestrian close to the camera) can never be found.
            On coco128 val (350 people) it raised AP@0.5 from 0.023 to 0.033.
        upscale_to: When the image's longer side is shorter than this, enlarge it to this length first,
            so that people shorter than the 128 px window can be found; 0 turns it off. Images smaller
            than the window are always enlarged to fit it. Off by default: on coco128 val 1280 gave
            AP@0.5 0.036 against 0.033 (one or two more hits among 350 people) at 3.3x the time.
        hit_threshold: Lowest SVM margin kept. Below 0 keeps the weak detections that AP's tail needs
            (-1.0 against -0.5: AP@0.5 0.035 against 0.033, recall@100 0.083 against 0.061).
        nms_iou: IoU above which a lower-scored box is suppressed.
        tighten: Remove the training windows' 16 px margin so boxes hug the person (AP@[.5:.95] 0.012
            against 0.003 untightened on coco128 val).
        max_detections: At most this many boxes per image, best first.
    """

    labels: tuple[str, ...] = LABELS

    def __init__(
        self,
        win_stride: tuple[int, int] = (8, 8),
        padding: tuple[int, int] = (8, 8),
        scale: float = 1.05,
        border: float = 0.2,
        upscale_to: int = 0,
        hit_threshold: float = -1.0,
        nms_iou: float = 0.45,
        tighten: bool = True,
        max_detections: int = 100,
    ) -> None:
        if scale <= 1.0:
            raise ConfigError(f"HOG scale must be above 1, got {scale}", "use 1.05 (finer) to 1.2 (faster)")
        if any(s <= 0 or s % 8 for s in win_stride):
            raise ConfigError(f"HOG win_stride must be multiples of 8, got {win_stride}", "use (8, 8)")
        if upscale_to < 0:
            raise ConfigError(f"upscale_to must be 0 (off) or a side length, got {upscale_to}", "use 0 or 1280")
        self.win_stride = tuple(win_stride)
        self.padding = tuple(padding)
        self.scale = scale
        if not 0.0 <= border <= 1.0:
            raise ConfigError(f"HOG border must be a fraction of the height in [0, 1], got {border}", "use 0.2")
        self.border = border
        self.upscale_to = upscale_to
        self.hit_threshold = hit_threshold
        self.nms_iou = nms_iou
        self.tighten = tighten
        self.max_detections = max_detections
        self._hog = _hog_descriptor()

    @property
    def runtime(self) -> str:
        return f"opencv {cv2.__version__}"

    def close(self) -> None:
        """Nothing to release (``devices.detector.Detector``)."""

    def _enlargement(self, width: int, height: int) -> float:
        """Factor the image is resized by before detection (1 = as is)."""
        factor = max(1.0, WINDOW[0] / width, WINDOW[1] / height)
        if self.upscale_to and max(width, height) < self.upscale_to:
            factor = max(factor, self.upscale_to / max(width, height))
        return factor

    def __call__(self, frame: np.ndarray) -> Detections:
        """Detect pedestrians in a BGR uint8 image; boxes are in its pixels, class id 0."""
        h, w = check_frame(frame).shape[:2]
        factor = self._enlargement(w, h)
        img = frame
        if factor > 1.0:
            img = cv2.resize(frame, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_LINEAR)
        # Replicated pixels have no gradient across the edge, so the border adds no false edges.
        pad = round(self.border * img.shape[0])
        if pad:
            img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE)

        # Raw windows, no OpenCV grouping: its groupRectangles drops the weights that rank detections.
        rects, weights = self._hog.detectMultiScale(
            img,
            hitThreshold=self.hit_threshold,
            winStride=self.win_stride,
            padding=self.padding,
            scale=self.scale,
            groupThreshold=0,
        )
        if len(rects) == 0:
            return Detections.empty()
        rects = np.asarray(rects, np.float32).reshape(-1, 4)
        margin = np.asarray(weights, np.float32).reshape(-1)
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], 1) - pad
        if self.tighten:
            dx, dy = rects[:, 2:3] * _MARGIN_X, rects[:, 3:4] * _MARGIN_Y
            boxes += np.concatenate([dx, dy, -dx, -dy], 1)
        boxes /= factor
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)

        scores = (1.0 / (1.0 + np.exp(-2.0 * margin))).astype(np.float32)
        keep = nms(boxes, scores, self.nms_iou)[: self.max_detections]
        return Detections(boxes[keep], scores[keep], np.full(len(keep), PEDESTRIAN, np.int64))
