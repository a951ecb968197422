"""From tracks to events: ``new``, ``update`` and ``end``, as versioned JSON, with a best snapshot each.

- ``new``: a track became an object (``min_hits`` detections, median score over its class threshold).
- ``update``: the object entered or left a zone, or crossed the counting line (these go out at once), or
  its score beat the score of its snapshot by ``events.snapshot_min_gain`` (a better snapshot; at most one
  such update per ``events.update_min_interval`` seconds per object).
- ``end``: the object has not been seen for ``tracker.max_missing`` seconds, or the run ended.

Every event of an object carries the same ``id`` (the track's uid: its first sighting time and a random
suffix, unique across restarts); the spool numbers all events with ``seq`` when it stores them. The schema
(``edgesight.event/1``) is documented in docs/events.md.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from devices.daemon.config import DaemonConfig
from devices.daemon.tracker import Track, Tracker, TrackView
from devices.types import Detections, Frame

log = logging.getLogger(__name__)

SCHEMA = "edgesight.event/1"
EventType = Literal["new", "update", "end"]


def iso_utc(unix: float) -> str:
    """ISO-8601 UTC with milliseconds, e.g. ``2026-11-27T08:15:02.125+00:00``."""
    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Event:
    """One event about one object. ``to_dict()`` is its JSON; the spool assigns ``seq``.

    Attributes:
        type: ``new``, ``update`` or ``end``.
        id: The object's track uid (the same in all its events).
        camera: The camera's name.
        label: Class name.
        score: Score of the last detection.
        top_score: Best score of the track so far.
        box: Last box seen, ``x1, y1, x2, y2`` pixels.
        box_norm: The box as fractions of the frame's width and height.
        frame_time: Capture time (unix seconds) of the frame that produced the event.
        frame_index: Index of that frame at the source.
        start_time: When the object was first detected (unix seconds).
        last_seen: When it was last detected (unix seconds).
        zones: Zones its bottom-centre is in.
        line_crossing: ``(line name, "in" | "out")`` for a crossing, else None.
        bundle_name: The bundle folder's name.
        bundle_sha256: The bundle model's sha256.
        snapshot: Path of the best snapshot JPEG, or None.
        seq: Global sequence number, assigned by the spool (None before).
    """

    type: EventType
    id: str
    camera: str
    label: str
    score: float
    top_score: float
    box: tuple[float, float, float, float]
    box_norm: tuple[float, float, float, float]
    frame_time: float
    frame_index: int
    start_time: float
    last_seen: float
    zones: tuple[str, ...]
    line_crossing: tuple[str, str] | None
    bundle_name: str
    bundle_sha256: str
    snapshot: str | None
    seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event's JSON object (schema ``edgesight.event/1``)."""
        return {
            "schema": SCHEMA,
            "id": self.id,
            "seq": self.seq,
            "type": self.type,
            "camera": self.camera,
            "label": self.label,
            "score": self.score,
            "top_score": self.top_score,
            "box": list(self.box),
            "box_norm": list(self.box_norm),
            "frame_time": iso_utc(self.frame_time),
            "frame_time_unix": round(self.frame_time, 3),
            "frame_index": self.frame_index,
            "start_time": iso_utc(self.start_time),
            "last_seen": iso_utc(self.last_seen),
            "zones": list(self.zones),
            "line_crossing": (
                {"line": self.line_crossing[0], "direction": self.line_crossing[1]} if self.line_crossing else None
            ),
            "bundle": {"name": self.bundle_name, "sha256": self.bundle_sha256},
            "snapshot": self.snapshot,
        }


class SnapshotStore:
    """Best-snapshot JPEGs in one folder, oldest deleted beyond ``max_mb``.

    A snapshot is written under a temporary name and renamed, so a reader never sees half a file; a better
    snapshot of the same object replaces the file (its path in earlier events then shows the better one).

    Args:
        folder: Where the JPEGs go (created).
        max_mb: Disk budget; files already there count against it.
        quality: JPEG quality.
    """

    def __init__(self, folder: Path, max_mb: float, quality: int) -> None:
        self.folder = Path(folder).resolve()  # once: events carry absolute paths, resolving each one cost 0.2 ms
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.quality = quality
        self.deleted = 0
        existing = sorted(self.folder.glob("*.jpg"), key=lambda p: p.stat().st_mtime)
        self._sizes: OrderedDict[Path, int] = OrderedDict((p, p.stat().st_size) for p in existing)
        self._total = sum(self._sizes.values())

    def write(self, name: str, image: np.ndarray) -> Path:
        """Write ``image`` as ``<name>.jpg`` and delete the oldest snapshots beyond the budget."""
        path = self.folder / f"{name}.jpg"
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise OSError(f"JPEG encoding failed for a {image.shape} image")
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data.tobytes())
        os.replace(tmp, path)
        self._total += data.size - self._sizes.pop(path, 0)
        self._sizes[path] = data.size
        while self._total > self.max_bytes and len(self._sizes) > 1:
            old, size = self._sizes.popitem(last=False)
            old.unlink(missing_ok=True)
            self._total -= size
            self.deleted += 1
        return path

    @property
    def total_bytes(self) -> int:
        return self._total


@dataclass(eq=False)
class _Reported:
    """What the pipeline last told the world about one object, and its pending best frame."""

    zones: tuple[str, ...]
    last_event: float  # Frame.clock of its last event
    snapshot_score: float = -1.0
    snapshot: str | None = None
    best_score: float = -1.0
    best_image: np.ndarray | None = None
    best_box: tuple[float, float, float, float] | None = None


class EventPipeline:
    """Tracker, zones, line and snapshots: frames and detections in, events out.

    Example:
        >>> pipeline = EventPipeline(cfg, detector.labels, bundle_name, bundle_sha256)
        >>> events = pipeline.update(frame, detector(frame.image) if gate.check(frame) else None)
        >>> publisher.submit(events)

    Args:
        cfg: The daemon config (``camera``, ``classes``, ``tracker``, ``zones``, ``line``, ``events``).
        labels: The model's class names, in class-id order.
        bundle_name: The bundle's name, in every event.
        bundle_sha256: The bundle model's sha256, in every event.
    """

    def __init__(self, cfg: DaemonConfig, labels: Sequence[str], bundle_name: str, bundle_sha256: str) -> None:
        self.cfg = cfg
        self.camera = cfg.camera
        self.bundle_name = bundle_name
        self.bundle_sha256 = bundle_sha256
        self.tracker = Tracker(cfg.tracker, cfg.classes, labels, cfg.zones, cfg.line)
        folder = cfg.events.snapshots
        self.snapshots = (
            SnapshotStore(folder / cfg.camera, cfg.events.snapshots_max_mb, cfg.events.snapshot_quality)
            if folder is not None
            else None
        )
        self._reported: dict[str, _Reported] = {}
        self._objects: Counter[str] = Counter()
        self._total: Counter[str] = Counter()
        self._line: dict[str, Counter[str]] = {"in": Counter(), "out": Counter()}
        self._size = (1, 1)
        self._last_frame: Frame | None = None
        # update/finish run on the loop's events thread; tracks/stats are also read by the HTTP server's.
        self._lock = threading.Lock()

    def update(self, frame: Frame, detections: Detections | None) -> list[Event]:
        """Track one frame; ``detections`` None means the detector did not run on it (motion gate).

        Returns:
            The events of this frame, in order: ``new`` (each followed by its line crossings), ``update``,
            ``end``.
        """
        with self._lock:
            return self._update(frame, detections)

    def _update(self, frame: Frame, detections: Detections | None) -> list[Event]:
        self._size = (frame.image.shape[1], frame.image.shape[0])
        self._last_frame = frame
        step = self.tracker.update(frame, detections)
        self._keep_best_frames(step.matched, frame)
        for track in step.dropped:
            self._reported.pop(track.uid, None)
        events: list[Event] = []
        for track in step.confirmed:
            events += self._on_new(track, frame)
        for track in step.seen:
            events += self._on_seen(track, frame)
        for track in step.ended:
            events.append(self._on_end(track, frame.time, frame.index))
        return events

    def finish(self, frame_time: float) -> list[Event]:
        """``end`` for every open object (end of the source, shutdown), stamped ``frame_time`` (unix seconds)."""
        with self._lock:
            index = self._last_frame.index if self._last_frame is not None else -1
            return [self._on_end(track, frame_time, index) for track in self.tracker.finish()]

    def tracks(self) -> list[TrackView]:
        """Live tracks (tentative ones too), for drawing."""
        with self._lock:
            return self.tracker.tracks()

    def stats(self) -> dict[str, Any]:
        """Objects now and since start per label, and line crossings per direction and label."""
        line = self.cfg.line
        with self._lock:
            return {
                "objects": dict(self._objects),
                "objects_total": dict(self._total),
                "tracks": len(self.tracker.tracks()),
                "line": {"name": line.name, **{d: dict(c) for d, c in self._line.items()}} if line else None,
                "snapshots_bytes": self.snapshots.total_bytes if self.snapshots else 0,
                "snapshots_deleted": self.snapshots.deleted if self.snapshots else 0,
            }

    # --- transitions -------------------------------------------------------------------------------------

    def _on_new(self, track: Track, frame: Frame) -> list[Event]:
        self._objects[track.label] += 1
        self._total[track.label] += 1
        reported = self._reported.setdefault(track.uid, _Reported(zones=(), last_event=frame.clock))
        reported.zones, reported.last_event = track.zones, frame.clock
        self._write_snapshot(track, reported)
        events = [self._event("new", track, frame.time, frame.index)]
        return events + self._crossings(track, frame)

    def _on_seen(self, track: Track, frame: Frame) -> list[Event]:
        reported = self._reported[track.uid]
        events = self._crossings(track, frame)
        if track.zones != reported.zones:
            reported.zones = track.zones
            events.append(self._event("update", track, frame.time, frame.index))
        elif (
            reported.best_score >= reported.snapshot_score + self.cfg.events.snapshot_min_gain
            and frame.clock - reported.last_event >= self.cfg.events.update_min_interval
        ):
            self._write_snapshot(track, reported)
            events.append(self._event("update", track, frame.time, frame.index))
        if events:
            reported.last_event = frame.clock
        return events

    def _on_end(self, track: Track, frame_time: float, frame_index: int) -> Event:
        reported = self._reported.pop(track.uid)
        self._objects[track.label] -= 1
        if reported.best_score > reported.snapshot_score:
            self._write_snapshot(track, reported)
        return self._event("end", track, frame_time, frame_index, snapshot=reported.snapshot)

    def _crossings(self, track: Track, frame: Frame) -> list[Event]:
        """One ``update`` per line crossing not yet reported (crossings of a tentative track wait for ``new``)."""
        events = []
        for direction in track.crossings:
            self._line[direction][track.label] += 1
            events.append(self._event("update", track, frame.time, frame.index, crossing=direction))
        track.crossings.clear()
        return events

    # --- snapshots ---------------------------------------------------------------------------------------

    def _keep_best_frames(self, matched: list[Track], frame: Frame) -> None:
        """Keep the frame for every matched track whose score beat its best so far (written at its next event).

        Tentative tracks keep theirs too, so that ``new`` shows the best of the object's first detections. The
        frame is kept, not copied: nothing in the daemon draws on a frame it did not copy (sources hand out a new
        array per frame), and copying every better frame cost more CPU than the tracker (454 copies of a
        768x576 frame for 795 frames of vtest.avi); the copy is made when the snapshot is written.
        """
        if self.snapshots is None:
            return
        for track in matched:
            reported = self._reported.setdefault(track.uid, _Reported(zones=(), last_event=frame.clock))
            if track.score > reported.best_score:
                reported.best_score = track.score
                reported.best_image = frame.image
                reported.best_box = track.box

    def _write_snapshot(self, track: Track, reported: _Reported) -> None:
        best_image, best_box = reported.best_image, reported.best_box  # kept together by _keep_best_frames
        if self.snapshots is None or best_image is None or best_box is None:
            return
        image = best_image.copy()
        x1, y1, x2, y2 = (round(float(v)) for v in best_box)
        cv2.rectangle(image, (x1, y1), (x2, y2), (0, 255, 0), 2)
        cv2.putText(image, f"{track.label} {reported.best_score:.2f}", (x1, max(12, y1 - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1, cv2.LINE_AA)
        try:
            path = self.snapshots.write(f"{track.uid}", image)
        except OSError as exc:
            log.warning("snapshot of %s not written (%s); the event goes out without one", track.uid, exc)
            return
        reported.snapshot = str(path)
        reported.snapshot_score = reported.best_score
        reported.best_image = None

    # --- the record --------------------------------------------------------------------------------------

    def _event(
        self,
        kind: EventType,
        track: Track,
        frame_time: float,
        frame_index: int,
        crossing: str | None = None,
        snapshot: str | None = None,
    ) -> Event:
        width, height = self._size
        x1, y1, x2, y2 = (round(float(v), 1) for v in track.box)
        norm = (x1 / width, y1 / height, x2 / width, y2 / height)
        nx1, ny1, nx2, ny2 = (round(min(max(v, 0.0), 1.0), 4) for v in norm)
        reported = self._reported.get(track.uid)
        return Event(
            type=kind,
            id=track.uid,
            camera=self.camera,
            label=track.label,
            score=round(track.score, 4),
            top_score=round(track.top_score, 4),
            box=(x1, y1, x2, y2),
            box_norm=(nx1, ny1, nx2, ny2),
            frame_time=frame_time,
            frame_index=frame_index,
            start_time=track.first_time,
            last_seen=track.last_time,
            zones=track.zones,
            line_crossing=(self.cfg.line.name, crossing) if crossing and self.cfg.line else None,
            bundle_name=self.bundle_name,
            bundle_sha256=self.bundle_sha256,
            snapshot=snapshot if snapshot is not None else (reported.snapshot if reported else None),
        )
