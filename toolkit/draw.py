"""Draw detections on a frame: one colour per class, class name and score on a filled label."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from devices.types import Detections

# Distinct, saturated BGR colours; class i gets _PALETTE[i % len]. Pedestrian (0) green, stop sign (1) red.
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (56, 200, 56),
    (40, 40, 230),
    (230, 140, 30),
    (20, 200, 230),
    (200, 60, 200),
    (200, 200, 40),
    (100, 100, 255),
    (40, 120, 160),
)


def class_colour(class_id: int) -> tuple[int, int, int]:
    """The BGR colour of a class."""
    return _PALETTE[int(class_id) % len(_PALETTE)]


def _text_colour(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    # Rec. 601 luma of the BGR background decides black or white text, whichever contrasts more.
    b, g, r = bg
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def draw_detections(
    image_bgr: np.ndarray, detections: Detections, labels: Sequence[str], *, min_score: float = 0.3
) -> np.ndarray:
    """Return a copy of ``image_bgr`` with the detections at or above ``min_score`` drawn on it.

    Line width and text size scale with the image (about 0.3 % of its mean side), so the drawing reads
    the same on a 320 px thumbnail and a 4K frame. Higher scores are drawn last, on top.

    Args:
        image_bgr: BGR uint8 frame (H, W, 3).
        detections: Boxes in the frame's pixels.
        labels: Class names; a class id outside them is shown as ``class N``.
        min_score: Detections below this score are not drawn.
    """
    out = np.ascontiguousarray(image_bgr).copy()
    h, w = out.shape[:2]
    thickness = max(1, round((h + w) / 2 * 0.003))
    font_scale = max(0.35, thickness / 3)
    font_thickness = max(1, thickness - 1)
    order = np.argsort(detections.scores, kind="stable")
    for i in order:
        score = float(detections.scores[i])
        if score < min_score:
            continue
        cls = int(detections.class_ids[i])
        colour = class_colour(cls)
        x1, y1, x2, y2 = np.rint(detections.boxes[i]).astype(int).tolist()
        x1, x2 = sorted((min(max(x1, 0), w - 1), min(max(x2, 0), w - 1)))
        y1, y2 = sorted((min(max(y1, 0), h - 1), min(max(y2, 0), h - 1)))
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)

        name = labels[cls] if 0 <= cls < len(labels) else f"class {cls}"
        text = f"{name} {score:.2f}"
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, font_thickness)
        pad = max(2, thickness)
        box_h = th + baseline + pad
        # The label sits above the box, or inside its top edge when the box touches the image top.
        top = y1 - box_h if y1 - box_h >= 0 else y1
        left = min(x1, max(0, w - tw - 2 * pad))
        cv2.rectangle(out, (left, top), (left + tw + 2 * pad, top + box_h), colour, cv2.FILLED)
        cv2.putText(
            out,
            text,
            (left + pad, top + th + pad // 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            _text_colour(colour),
            font_thickness,
            cv2.LINE_AA,
        )
    return out
