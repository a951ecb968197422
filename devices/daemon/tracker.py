"""IoU tracking across frames: which detection in this frame is which object of the last ones.

Per label, detections are matched greedily to live tracks by IoU (best pair first) against where each track
should be now (its last box moved by its recent velocity) or where it was last seen, whichever overlaps
more: at the 2-10 FPS of a Raspberry Pi a walking person moves a third of their width between frames.

Detections and tracks left over are then paired by distance: a detection of about the same height whose
centre is within one box height of where the track should be. That catches the second sighting of a fast
object (no velocity yet) and objects that moved further than their width between two frames.

A track becomes an *object* (the event ``new``) once the detector has matched it in ``min_hits`` frames and
the median of its scores reaches its class's ``threshold``, which removes one-frame false positives that
a single-frame ``min_score`` lets through (the rule Frigate users know). A track ends once it has not been
seen for ``max_missing`` seconds *and* the detector has looked at least once meanwhile: on frames the
motion gate skipped (detections None) time passes, but an object nobody looked for is not missing, so a
still object survives the gate's ``max_idle`` pauses.
"""

from __future__ import annotations

import logging
import math
import secrets
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from devices.daemon.config import ClassRule, LineConfig, TrackerConfig, ZoneConfig
from devices.daemon.zones import Line, Point, Zone, foot_point
from devices.errors import ConfigError
from devices.types import Detections, Frame

log = logging.getLogger(__name__)

# Scores kept per track for the median: enough to outvote a burst of bad frames, bounded for month-long tracks.
_SCORE_HISTORY = 30
# Weight of the newest velocity measurement; the rest is the previous estimate (smooths detector jitter).
_VELOCITY_BLEND = 0.5

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels, plain floats


@dataclass(frozen=True)
class TrackView:
    """A live track, for drawing and status.

    Attributes:
        id: The track's uid, the same as the ``id`` of its events.
        label: Class name.
        box: Last box seen, ``x1, y1, x2, y2`` pixels.
        score: Score of the last detection.
        confirmed: True once it is an object (its ``new`` event went out).
        zones: Zones its bottom-centre was in when last seen.
        missed: The detector looked since the track was last seen and did not find it (the box is where it was).
    """

    id: str
    label: str
    box: tuple[float, float, float, float]
    score: float
    confirmed: bool
    zones: tuple[str, ...]
    missed: bool = False


@dataclass(eq=False)
class Track:
    """One tracked object (internal, mutable; the tracker owns it).

    Times ``*_mono`` are ``Frame.clock`` (durations), ``*_time`` are ``Frame.time`` (for events).
    """

    uid: str
    label: str
    box: Box
    score: float
    first_time: float
    last_mono: float
    last_time: float
    last_index: int
    scores: deque[float] = field(default_factory=lambda: deque(maxlen=_SCORE_HISTORY))
    top_score: float = 0.0
    hits: int = 0
    confirmed: bool = False
    missed: bool = False  # the detector looked since the last hit and did not see it
    velocity: tuple[float, float] = (0.0, 0.0)  # box centre, px per second
    zones: tuple[str, ...] = ()
    crossings: list[str] = field(default_factory=list)  # line directions not yet reported
    line_anchor: Point | None = None  # last position clearly off the line

    def median_score(self) -> float:
        # statistics, not numpy: on 30 floats np.median takes 12 us, statistics.median 0.4 us (timeit)
        return float(statistics.median(self.scores)) if self.scores else 0.0

    def view(self) -> TrackView:
        x1, y1, x2, y2 = self.box
        box = (round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1))
        return TrackView(self.uid, self.label, box, round(self.score, 4), self.confirmed, self.zones, self.missed)


@dataclass(frozen=True)
class TrackerStep:
    """What one frame changed.

    Attributes:
        matched: Every track the detector matched on this frame (new and tentative ones too).
        confirmed: Tracks that became objects on this frame.
        seen: Objects (confirmed before this frame) that the detector matched on this frame.
        ended: Objects whose track ended on this frame.
        dropped: Tentative tracks that ended on this frame (never objects, so no event).
    """

    matched: list[Track]
    confirmed: list[Track]
    seen: list[Track]
    ended: list[Track]
    dropped: list[Track]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``x1, y1, x2, y2`` boxes.

    Plain floats, not numpy: the tracker compares a handful of boxes per frame, where numpy's cost per call
    was most of the time (vtest.avi, the event pipeline without snapshots: 0.12 -> 0.065 ms of CPU a frame).
    """
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    # Conditional expressions, not min/max: most pairs of a frame do not overlap, and this is the hot path.
    w = (ax2 if ax2 < bx2 else bx2) - (ax1 if ax1 > bx1 else bx1)
    if w <= 0:
        return 0.0
    h = (ay2 if ay2 < by2 else by2) - (ay1 if ay1 > by1 else by1)
    if h <= 0:
        return 0.0
    inter = w * h
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / (union if union > 1e-9 else 1e-9)


def iou_matrix(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), ``x1, y1, x2, y2``."""
    rows, cols = [[float(v) for v in x] for x in a], [[float(v) for v in y] for y in b]
    return np.array([[iou(x, y) for y in cols] for x in rows], np.float64).reshape(len(rows), len(cols))


def closeness(a: Sequence[float], b: Sequence[float]) -> float:
    """1 - centre distance / box height of two boxes; 0 when the centres are further apart than the taller
    box's height or the heights differ by more than 2x."""
    height_a, height_b = max(a[3] - a[1], 1e-6), max(b[3] - b[1], 1e-6)
    if height_a > 2 * height_b or height_b > 2 * height_a:
        return 0.0
    distance = math.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2)
    return max(1 - distance / max(height_a, height_b), 0.0)


def greedy_match(score: Sequence[Sequence[float]], min_score: float) -> list[tuple[int, int]]:
    """Pairs (row, column) taken best score first (ties in row-major order), each row and column at most once,
    score >= ``min_score``."""
    candidates = [(v, r, c) for r, row in enumerate(score) for c, v in enumerate(row) if v >= min_score]
    candidates.sort(key=lambda k: -k[0])
    pairs: list[tuple[int, int]] = []
    used_rows: set[int] = set()
    used_cols: set[int] = set()
    for _, r, c in candidates:
        if r not in used_rows and c not in used_cols:
            pairs.append((r, c))
            used_rows.add(r)
            used_cols.add(c)
    return pairs


class Tracker:
    """Tracks objects of the configured classes, with zones and a counting line.

    Args:
        cfg: The ``tracker`` section.
        classes: Label -> rule; labels not listed are ignored.
        labels: The model's class names, in class-id order.
        zones: Zone polygons.
        line: The counting line, or None.

    Raises:
        ConfigError: No configured class is among the model's labels.
    """

    def __init__(
        self,
        cfg: TrackerConfig,
        classes: dict[str, ClassRule],
        labels: Sequence[str],
        zones: Sequence[ZoneConfig] = (),
        line: LineConfig | None = None,
    ) -> None:
        self.cfg = cfg
        self.labels = tuple(labels)
        self.rules = {label: classes[label] for label in self.labels if label in classes}
        if not self.rules:
            raise ConfigError(
                f"none of the classes {sorted(classes)} is a label of the model {list(self.labels)}",
                f"name the model's labels under 'classes:', e.g. {self.labels[0] if self.labels else 'pedestrian'}",
            )
        unknown = sorted(set(classes) - set(self.labels))
        if unknown:
            log.warning("classes %s are not labels of the model %s; they are never detected", unknown, self.labels)
        self._zone_cfgs = tuple(zones)
        self._line_cfg = line
        self._size: tuple[int, int] | None = None
        self.zones: tuple[Zone, ...] = ()
        self.line: Line | None = None
        self._tracks: list[Track] = []
        # Per class id of the model: the class's thresholds, +inf for untracked classes (never usable).
        self._min_score = np.array([self._rule_value(label, "min_score") for label in self.labels], np.float32)
        self._min_area = np.array([self._rule_value(label, "min_area") for label in self.labels], np.float32)

    def _rule_value(self, label: str, name: str) -> float:
        rule = self.rules.get(label)
        return float(getattr(rule, name)) if rule is not None else np.inf

    def update(self, frame: Frame, detections: Detections | None) -> TrackerStep:
        """Match this frame's detections (None: the detector did not run) and age the tracks."""
        self._set_frame_size(frame.image.shape[1], frame.image.shape[0])
        matched = self._associate(frame, detections) if detections is not None else []
        confirmed: list[Track] = []
        seen: list[Track] = []
        for track in matched:
            if track.confirmed:
                seen.append(track)
            elif self._becomes_object(track):
                track.confirmed = True
                confirmed.append(track)
        expired = self._expire(frame.clock)
        ended = [t for t in expired if t.confirmed]
        dropped = [t for t in expired if not t.confirmed]
        return TrackerStep(matched, confirmed, seen, ended, dropped)

    def finish(self) -> list[Track]:
        """End every track (end of the source, shutdown): the objects among them."""
        ended = [t for t in self._tracks if t.confirmed]
        self._tracks = []
        return ended

    def tracks(self) -> list[TrackView]:
        """Every live track, tentative ones too (``confirmed`` tells them apart)."""
        return [t.view() for t in self._tracks]

    def _set_frame_size(self, width: int, height: int) -> None:
        if self._size == (width, height):
            return
        # Zones may be normalised; they are placed in pixels once the frame size is known (and again if the
        # camera comes back at another size).
        self._size = (width, height)
        self.zones = tuple(Zone.from_config(z, self._size) for z in self._zone_cfgs)
        self.line = Line.from_config(self._line_cfg, self._size) if self._line_cfg else None
        self._line_margin = self._line_cfg.margin * height if self._line_cfg else 0.0

    def _usable(self, detections: Detections) -> dict[str, list[tuple[Box, float]]]:
        """Per tracked label, its detections above the class's ``min_score`` and ``min_area``: (box, score)."""
        boxes = np.asarray(detections.boxes, np.float32).reshape(-1, 4)
        class_ids = np.asarray(detections.class_ids, np.int64)
        known = (class_ids >= 0) & (class_ids < len(self.labels))
        ids = np.where(known, class_ids, 0)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        keep = np.flatnonzero(known & (detections.scores >= self._min_score[ids]) & (area >= self._min_area[ids]))
        usable: dict[str, list[tuple[Box, float]]] = {}
        kept = zip(ids[keep].tolist(), boxes[keep].tolist(), detections.scores[keep].tolist(), strict=True)
        for class_id, box, score in kept:
            usable.setdefault(self.labels[class_id], []).append((tuple(box), score))
        return usable

    def _associate(self, frame: Frame, detections: Detections) -> list[Track]:
        """Match detections to tracks per label; start tentative tracks for the rest. Returns matched tracks."""
        usable = self._usable(detections)
        matched: list[Track] = []
        for label in self.rules:
            dets = usable.get(label, [])
            tracks = [t for t in self._tracks if t.label == label]
            pairs = self._match(tracks, [box for box, _ in dets], frame.clock) if dets and tracks else []
            for ti, di in pairs:
                self._observe(tracks[ti], frame, *dets[di])
                matched.append(tracks[ti])
            matched_tracks = {ti for ti, _ in pairs}
            for ti, track in enumerate(tracks):
                if ti not in matched_tracks:
                    track.missed = True
            matched_dets = {di for _, di in pairs}
            for di, (box, score) in enumerate(dets):
                if di not in matched_dets:
                    track = Track(
                        uid=f"{frame.time:.6f}-{secrets.token_hex(3)}",
                        label=label,
                        box=box,
                        score=score,
                        first_time=frame.time,
                        last_mono=frame.clock,
                        last_time=frame.time,
                        last_index=frame.index,
                    )
                    self._tracks.append(track)
                    self._observe(track, frame, box, score)
                    matched.append(track)
        return matched

    def _match(self, tracks: list[Track], boxes: list[Box], mono: float) -> list[tuple[int, int]]:
        """(track, detection) pairs: by IoU first, then the leftovers by distance."""
        # Where each track should be now: its last box moved by its velocity.
        predicted = []
        for t in tracks:
            elapsed = mono - t.last_mono
            dx, dy = t.velocity[0] * elapsed, t.velocity[1] * elapsed
            predicted.append((t.box[0] + dx, t.box[1] + dy, t.box[2] + dx, t.box[3] + dy))
        overlap = [[max(iou(p, d), iou(t.box, d)) for d in boxes] for p, t in zip(predicted, tracks, strict=True)]
        pairs = greedy_match(overlap, self.cfg.iou)
        rows = [r for r in range(len(tracks)) if r not in {p[0] for p in pairs}]
        cols = [c for c in range(len(boxes)) if c not in {p[1] for p in pairs}]
        if rows and cols:
            near = [[closeness(predicted[r], boxes[c]) for c in cols] for r in rows]
            pairs += [(rows[r], cols[c]) for r, c in greedy_match(near, 1e-6)]
        return pairs

    def _observe(self, track: Track, frame: Frame, box: Box, score: float) -> None:
        """Record a detection of ``track`` on ``frame``: box, scores, velocity, zones and line crossings."""
        dt = frame.clock - track.last_mono
        if track.hits and dt > 0:
            last = track.box
            shift_x = (box[0] + box[2] - last[0] - last[2]) / 2 / dt
            shift_y = (box[1] + box[3] - last[1] - last[3]) / 2 / dt
            vx, vy = track.velocity
            track.velocity = (
                (1 - _VELOCITY_BLEND) * vx + _VELOCITY_BLEND * shift_x,
                (1 - _VELOCITY_BLEND) * vy + _VELOCITY_BLEND * shift_y,
            )
        track.box = box
        track.score = score
        track.scores.append(score)
        track.top_score = max(track.top_score, score)
        track.hits += 1
        track.missed = False
        track.last_mono, track.last_time, track.last_index = frame.clock, frame.time, frame.index
        foot = foot_point(box)
        if self.zones:
            track.zones = tuple(z.name for z in self.zones if z.contains(track.label, foot))
        if self.line is not None and self.line.counts(track.label):
            self._cross(track, foot, self.line)

    def _cross(self, track: Track, foot: Point, line: Line) -> None:
        """Count a crossing when the foot point is clearly on the other side of the line than before."""
        distance = line.side(foot) / float(np.linalg.norm(line.b - line.a))
        if abs(distance) <= self._line_margin:
            return  # on the line or within its hysteresis band: neither a crossing nor a new anchor
        if track.line_anchor is not None:
            direction = line.crossing(track.line_anchor, foot)
            if direction is not None:
                track.crossings.append(direction)
        track.line_anchor = foot

    def _becomes_object(self, track: Track) -> bool:
        rule = self.rules[track.label]
        return track.hits >= self.cfg.min_hits and track.median_score() >= rule.threshold

    def _expire(self, mono: float) -> list[Track]:
        """Remove and return the tracks unseen for ``max_missing`` seconds that the detector has missed since."""
        expired: list[Track] = []
        live: list[Track] = []
        for track in self._tracks:
            gone = track.missed and mono - track.last_mono >= self.cfg.max_missing
            (expired if gone else live).append(track)
        self._tracks = live
        return expired
