"""Zones and the counting line, in pixels of the frame.

An object's position is the bottom-centre of its box: where a pedestrian stands (or a car touches the road),
which stays put when the box grows or shrinks with the object's pose, unlike the box centre.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from devices.daemon.config import LineConfig, ZoneConfig

Point = tuple[float, float]


def foot_point(box: Sequence[float]) -> Point:
    """The bottom-centre of an ``x1, y1, x2, y2`` box."""
    return (float(box[0] + box[2]) / 2, float(box[3]))


def _to_pixels(points: Sequence[Sequence[float]], normalized: bool, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    scale = np.array([width, height], np.float32) if normalized else np.ones(2, np.float32)
    return np.asarray(points, np.float32).reshape(-1, 2) * scale


@dataclass(frozen=True)
class Zone:
    """A polygon in pixels; ``labels`` empty means every label counts."""

    name: str
    polygon: np.ndarray
    labels: frozenset[str]

    @classmethod
    def from_config(cls, cfg: ZoneConfig, size: tuple[int, int]) -> Zone:
        """The zone for a frame of ``size`` = (width, height)."""
        return cls(cfg.name, _to_pixels(cfg.points, cfg.normalized, size), frozenset(cfg.labels))

    def contains(self, label: str, point: Point) -> bool:
        """Whether an object of ``label`` standing at ``point`` is in the zone (the border counts as inside)."""
        if self.labels and label not in self.labels:
            return False
        return cv2.pointPolygonTest(self.polygon, point, False) >= 0


@dataclass(frozen=True)
class Line:
    """A counting segment from ``a`` to ``b`` in pixels.

    Direction ``in`` is a crossing from the left of the segment to its right, as seen walking from ``a`` to
    ``b`` on the image (y grows downwards): for a line drawn left to right across the picture, ``in`` is a
    crossing downwards (usually towards the camera). Swap ``a`` and ``b`` to swap the names.
    """

    name: str
    a: np.ndarray
    b: np.ndarray
    labels: frozenset[str]

    @classmethod
    def from_config(cls, cfg: LineConfig, size: tuple[int, int]) -> Line:
        """The line for a frame of ``size`` = (width, height)."""
        a, b = _to_pixels((cfg.a, cfg.b), cfg.normalized, size)
        return cls(cfg.name, a, b, frozenset(cfg.labels))

    def counts(self, label: str) -> bool:
        """Whether crossings of ``label`` are counted."""
        return not self.labels or label in self.labels

    def side(self, point: Point) -> float:
        """Negative on the left of a->b (as defined above), positive on the right, 0 on the line."""
        d = self.b - self.a
        return float(d[0] * (point[1] - self.a[1]) - d[1] * (point[0] - self.a[0]))

    def crossing(self, start: Point, end: Point) -> str | None:
        """``in`` or ``out`` when the path from ``start`` to ``end`` crosses the segment, else None.

        Touching the line is not crossing it: the path must go from one strict side to the other, and cross
        between the end points of the segment.
        """
        before, after = self.side(start), self.side(end)
        if before == 0 or after == 0 or (before > 0) == (after > 0):
            return None
        # The path's end points are on opposite sides of the infinite line; it crosses the segment when the
        # segment's end points are on opposite sides of the path (or one lies on it).
        path = np.subtract(end, start)
        a_side = path[0] * (self.a[1] - start[1]) - path[1] * (self.a[0] - start[0])
        b_side = path[0] * (self.b[1] - start[1]) - path[1] * (self.b[0] - start[0])
        if a_side * b_side > 0:
            return None
        return "in" if before < 0 < after else "out"
