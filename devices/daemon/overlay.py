"""What the live page, the demo window and the annotated MP4 show on a frame: tracks, zones, the counting line.

One drawing for all three, made with the project's box drawing (``devices.draw``), so that a box on the page
looks like the box ``edgesight predict`` draws on a photo.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from devices.daemon.config import LineConfig, ZoneConfig
from devices.daemon.tracker import TrackView
from devices.daemon.zones import Line, Zone
from devices.draw import draw_detections
from devices.types import Detections

_ZONE_COLOUR = (230, 200, 60)   # BGR; apart from the class colours of devices.draw
_LINE_COLOUR = (40, 220, 250)
_ZONE_ALPHA = 0.18


def short_id(track_id: str) -> str:
    """What the picture and the page call a track: 4 hex digits of its uid's random suffix (``<time>-<hex>``)."""
    return track_id.rsplit("-", 1)[-1][:4]


class Overlay:
    """Draws confirmed tracks (label, track id, score), zones and the counting line on frames of one camera.

    Args:
        labels: The bundle's class names, in class-id order (they pick each class's colour).
        zones: The configured zones.
        line: The configured counting line, if any.
    """

    def __init__(self, labels: Sequence[str], zones: Sequence[ZoneConfig] = (), line: LineConfig | None = None) -> None:
        self.labels = tuple(labels)
        self._zone_cfgs = tuple(zones)
        self._line_cfg = line
        self._size: tuple[int, int] | None = None
        self._zones: tuple[Zone, ...] = ()
        self._line: Line | None = None

    def draw(self, image: np.ndarray, tracks: Sequence[TrackView], boxes: bool = True) -> np.ndarray:
        """A copy of ``image`` (BGR) with the overlay; ``boxes=False`` returns the plain frame.

        Tentative tracks (not yet objects) are left out: the page's counts and events do not include them
        either. So are tracks the detector looked for and missed: the tracker keeps them for
        ``tracker.max_missing`` seconds in case they come back, but their box is where the object was, not
        where it is. Tracks on frames the motion gate kept from the detector are drawn (nothing moved).
        """
        if not boxes:
            return image.copy()
        self._fit(image.shape[1], image.shape[0])
        out = self._draw_regions(image)
        shown = [t for t in tracks if t.confirmed and not t.missed]
        if shown:
            detections = Detections(
                np.array([t.box for t in shown], np.float32).reshape(-1, 4),
                np.array([t.score for t in shown], np.float32),
                np.array([self._class_id(t.label) for t in shown], np.int64),
            )
            texts = [f"{t.label} #{short_id(t.id)} {t.score:.2f}" for t in shown]
            out = draw_detections(out, detections, self.labels, min_score=0.0, texts=texts)
        return out

    def _fit(self, width: int, height: int) -> None:
        # Normalized zones need the frame size; a camera may change resolution when it reconnects.
        if self._size == (width, height):
            return
        self._size = (width, height)
        self._zones = tuple(Zone.from_config(z, self._size) for z in self._zone_cfgs)
        self._line = Line.from_config(self._line_cfg, self._size) if self._line_cfg else None

    def _draw_regions(self, image: np.ndarray) -> np.ndarray:
        out = image.copy()
        if not self._zones and self._line is None:
            return out
        thickness = max(1, round(sum(image.shape[:2]) / 2 * 0.003))
        if self._zones:
            fill = out.copy()
            for zone in self._zones:
                cv2.fillPoly(fill, [np.rint(zone.polygon).astype(np.int32)], _ZONE_COLOUR)
            out = cv2.addWeighted(fill, _ZONE_ALPHA, out, 1 - _ZONE_ALPHA, 0)
            for zone in self._zones:
                polygon = np.rint(zone.polygon).astype(np.int32)
                cv2.polylines(out, [polygon], True, _ZONE_COLOUR, thickness, cv2.LINE_AA)
                _caption(out, zone.name, tuple(polygon.min(axis=0)), _ZONE_COLOUR, thickness)
        if self._line is not None:
            a, b = (tuple(int(v) for v in np.rint(p)) for p in (self._line.a, self._line.b))
            cv2.line(out, a, b, _LINE_COLOUR, thickness + 1, cv2.LINE_AA)
            # An arrow from the middle of the line towards its "in" side (the right of a->b, see zones.Line).
            mid = (np.asarray(a) + np.asarray(b)) / 2
            d = np.subtract(b, a).astype(np.float64)
            normal = np.array([-d[1], d[0]]) / max(np.hypot(*d), 1e-6)
            tip = mid + normal * 12 * thickness
            cv2.arrowedLine(out, tuple(int(v) for v in mid), tuple(int(v) for v in tip), _LINE_COLOUR, thickness,
                            cv2.LINE_AA, tipLength=0.35)
            _caption(out, f"{self._line.name} (in)", (int(tip[0]), int(tip[1])), _LINE_COLOUR, thickness)
        return out

    def _class_id(self, label: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            return len(self.labels)  # an unknown label gets the next colour, shown as "class N" by devices.draw


def _caption(image: np.ndarray, text: str, origin: tuple[int, int], colour: tuple[int, int, int],
             thickness: int) -> None:
    scale = max(0.4, thickness / 3)
    x, y = int(origin[0]), max(int(origin[1]) - 4, 12)
    cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, max(1, thickness - 1), cv2.LINE_AA)
