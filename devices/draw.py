"""Draw detections on a frame: one colour per class, class name and score on a filled label.
The device's live view and annotated video draw with it as well as ``edgesight predict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    image_bgr: np.ndarray,
    detections: Detections,
    labels: Sequence[str],
    *,
    min_score: float = 0.3,
    texts: Sequence[str] | None = None,
) -> np.ndarray:
    """Return a copy of ``image_bgr`` with the detections at or above ``min_score`` drawn on it.

    Line width and text size scale with the image (about 0.3 % of its mean side), so the drawing reads
    the same on a 320 px thumbnail and a 4K frame. Higher scores are drawn last, on top, and their labels
    are placed first: a label that would cover an earlier one moves inside its box's top edge, or to its
    bottom edge (two people one behind the other have nearly the same box top).

    Args:
        image_bgr: BGR uint8 frame (H, W, 3).
        detections: Boxes in the frame's pixels.
        labels: Class names; a class id outside them is shown as ``class N``.
        min_score: Detections below this score are not drawn.
        texts: One label text per detection instead of ``"<class> <score>"`` (the live view adds track ids).
    """
    out = np.ascontiguousarray(image_bgr).copy()
    h, w = out.shape[:2]
    style = _Style.for_size(h, w)
    shown = [int(i) for i in np.argsort(-detections.scores, kind="stable") if detections.scores[i] >= min_score]

    # Place the labels, best score first, each clear of those already placed where the box allows it.
    placed: dict[int, tuple[str, tuple[int, int, int, int]]] = {}
    for i in shown:
        cls = int(detections.class_ids[i])
        name = labels[cls] if 0 <= cls < len(labels) else f"class {cls}"
        text = texts[i] if texts is not None else f"{name} {float(detections.scores[i]):.2f}"
        box = _clipped_box(detections.boxes[i], h, w)
        placed[i] = (text, _label_rect(text, box, style, h, w, [rect for _, rect in placed.values()]))

    # Draw lowest score first, so that the best detections end up on top.
    for i in reversed(shown):
        colour = class_colour(int(detections.class_ids[i]))
        x1, y1, x2, y2 = _clipped_box(detections.boxes[i], h, w)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, style.thickness, cv2.LINE_AA)
        text, (left, top, right, bottom) = placed[i]
        cv2.rectangle(out, (left, top), (right, bottom), colour, cv2.FILLED)
        cv2.putText(
            out,
            text,
            (left + style.pad, bottom - style.baseline - style.pad // 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            style.font_scale,
            _text_colour(colour),
            style.font_thickness,
            cv2.LINE_AA,
        )
    return out


@dataclass(frozen=True)
class _Style:
    """Line and text sizes for one frame size."""

    thickness: int
    font_scale: float
    font_thickness: int
    pad: int
    baseline: int

    @classmethod
    def for_size(cls, h: int, w: int) -> _Style:
        thickness = max(1, round((h + w) / 2 * 0.003))
        font_scale = max(0.35, thickness / 3)
        font_thickness = max(1, thickness - 1)
        _, baseline = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, font_scale, font_thickness)
        return cls(thickness, font_scale, font_thickness, max(2, thickness), baseline)


def _clipped_box(box: np.ndarray, h: int, w: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = np.rint(box).astype(int).tolist()
    x1, x2 = sorted((min(max(x1, 0), w - 1), min(max(x2, 0), w - 1)))
    y1, y2 = sorted((min(max(y1, 0), h - 1), min(max(y2, 0), h - 1)))
    return x1, y1, x2, y2


def _label_rect(
    text: str, box: tuple[int, int, int, int], style: _Style, h: int, w: int, taken: list[tuple[int, int, int, int]]
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a label for ``box``: above it, else inside its top, else at its bottom."""
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, style.font_scale, style.font_thickness)
    label_w, label_h = tw + 2 * style.pad, th + style.baseline + style.pad
    x1, y1, _, y2 = box
    left = min(x1, max(0, w - label_w))
    tops = [y1 - label_h, y1, y2 - label_h, y2]
    candidates = [(left, top, left + label_w, top + label_h) for top in tops if 0 <= top <= h - label_h]
    for rect in candidates:
        if not any(_overlap(rect, other) for other in taken):
            return rect
    return candidates[0] if candidates else (left, 0, left + label_w, label_h)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
