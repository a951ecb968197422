"""The event pipeline: new/update/end timing, the JSON schema, zones, the line, snapshots on a budget."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from devices.daemon.config import DaemonConfig
from devices.daemon.events import SCHEMA, EventPipeline, SnapshotStore
from devices.types import Detections, Frame

LABELS = ("pedestrian", "stop_sign")
FPS = 10.0
T0 = 1_700_000_000.0
SHA = "ab" * 32
CONTRACT_FIELDS = {
    "schema", "id", "seq", "type", "camera", "label", "score", "top_score", "box", "box_norm", "frame_time",
    "frame_time_unix", "frame_index", "zones", "line_crossing", "bundle", "snapshot",
}


def make_config(tmp_path: Path, snapshots: bool = False, **sections) -> DaemonConfig:
    events = {"spool": str(tmp_path / "spool.sqlite"), "snapshots": str(tmp_path / "snaps") if snapshots else None}
    events.update(sections.pop("events", {}))
    return DaemonConfig(
        camera="gate", bundle=str(tmp_path / "bundle"), source={"uri": "vtest.avi"}, events=events, **sections
    )


def person(x: float, y: float = 200, score: float = 0.8, w: float = 40, h: float = 100) -> Detections:
    return Detections(np.array([[x, y, x + w, y + h]], np.float32), np.array([score], np.float32), np.array([0]))


def frame(index: int, image: np.ndarray | None = None) -> Frame:
    image = image if image is not None else np.zeros((480, 640, 3), np.uint8)
    return Frame(image, index, T0 + index / FPS, index / FPS)


def run(pipeline: EventPipeline, sequence, image: np.ndarray | None = None) -> list:
    events = []
    for i, d in enumerate(sequence):
        events += pipeline.update(frame(i, image), d)
    return events


def test_event_json_schema(tmp_path):
    pipeline = EventPipeline(make_config(tmp_path), LABELS, "yolox-nano-tflite-int8", SHA)
    events = run(pipeline, [person(100 + 5 * i) for i in range(5)] + [Detections.empty()] * 25)
    assert [e.type for e in events] == ["new", "end"]
    new, end = (e.to_dict() for e in events)
    assert CONTRACT_FIELDS <= set(new)
    assert new["schema"] == SCHEMA == "edgesight.event/1"
    assert new["id"] == end["id"] and new["seq"] is None  # seq comes from the spool
    assert new["camera"] == "gate" and new["label"] == "pedestrian"
    assert new["bundle"] == {"name": "yolox-nano-tflite-int8", "sha256": SHA}
    assert new["box"] == [110.0, 200.0, 150.0, 300.0]
    assert new["box_norm"] == pytest.approx([110 / 640, 200 / 480, 150 / 640, 300 / 480], abs=1e-4)
    assert new["frame_index"] == 2 and new["frame_time_unix"] == pytest.approx(T0 + 0.2)
    assert datetime.fromisoformat(new["frame_time"]).timestamp() == pytest.approx(T0 + 0.2, abs=1e-3)
    assert new["zones"] == [] and new["line_crossing"] is None and new["snapshot"] is None
    assert new["score"] == pytest.approx(0.8) and new["top_score"] == pytest.approx(0.8)
    # 'end' is stamped with the frame that ended it and reports the last sighting.
    assert end["frame_index"] == 24 and datetime.fromisoformat(end["last_seen"]).timestamp() == pytest.approx(T0 + 0.4)
    json.dumps(new)  # JSON-ready as is


def test_updates_are_rate_limited_and_carry_the_better_snapshot(tmp_path, mirror):
    image = cv2.imread(str(mirror / "datasets" / "coco128" / "images" / "val2017" / "000000000139.jpg"))
    cfg = make_config(tmp_path, snapshots=True, events={"update_min_interval": 1.0, "snapshot_min_gain": 0.05})
    pipeline = EventPipeline(cfg, LABELS, "b", SHA)
    # The score climbs from 0.50 to 0.95 over 4.5 s: every frame is a better snapshot than the last one written.
    sequence = [person(100 + i, score=0.5 + 0.01 * i) for i in range(46)] + [Detections.empty()] * 25
    original = image.copy()
    events = run(pipeline, sequence, image)
    assert np.array_equal(image, original)  # snapshots are drawn on a copy, never on the frame
    kinds = [e.type for e in events]
    assert kinds[0] == "new" and kinds[-1] == "end" and set(kinds[1:-1]) == {"update"}
    times = [e.frame_time for e in events if e.type != "end"]
    assert len(times) >= 4 and min(np.diff(times)) >= 1.0 - 1e-6  # at most one update per second
    assert [e.top_score for e in events[:-1]] == sorted(e.top_score for e in events[:-1])
    end = events[-1]
    assert end.top_score == pytest.approx(0.95, abs=1e-4)
    snapshot = Path(end.snapshot)
    assert snapshot.name == f"{end.id}.jpg" and snapshot.parent == (tmp_path / "snaps" / "gate").resolve()
    assert cv2.imread(str(snapshot)).shape == image.shape
    assert all(e.snapshot == end.snapshot for e in events)  # one file per object, replaced when better


def test_the_snapshot_shows_the_frame_of_the_best_score(tmp_path):
    pipeline = EventPipeline(make_config(tmp_path, snapshots=True), LABELS, "b", SHA)
    # Each frame its own grey level; the score peaks on frame 6 (grey 60) and the object ends after frame 9.
    scores = [0.6, 0.62, 0.7, 0.75, 0.8, 0.85, 0.95, 0.9, 0.8, 0.7]
    events = []
    for i in range(40):
        detections = person(100 + i, score=scores[i]) if i < len(scores) else Detections.empty()
        events += pipeline.update(frame(i, np.full((480, 640, 3), min(10 * i, 250), np.uint8)), detections)
    end = events[-1]
    assert end.type == "end" and end.top_score == pytest.approx(0.95)
    snapshot = cv2.imread(end.snapshot)
    assert abs(int(np.median(snapshot)) - 60) <= 2  # frame 6, kept when it scored best, not a later one


def test_zone_change_goes_out_at_once(tmp_path):
    zones = [{"name": "door", "points": [[0, 0], [200, 0], [200, 480], [0, 480]]}]
    cfg = make_config(tmp_path, zones=zones, events={"update_min_interval": 60})
    pipeline = EventPipeline(cfg, LABELS, "b", SHA)
    # Walks left 20 px per frame from x = 300: its feet (x + 20) reach the door zone (x <= 200) at frame 6.
    events = run(pipeline, [person(300 - 20 * i) for i in range(8)])
    assert [(e.type, e.frame_index, e.zones) for e in events] == [("new", 2, ()), ("update", 6, ("door",))]
    assert pipeline.tracks()[0].zones == ("door",)


def test_line_crossings_are_events_and_counts(tmp_path):
    line = {"name": "crosswalk", "a": [0, 0.5], "b": [1, 0.5], "normalized": True}
    pipeline = EventPipeline(make_config(tmp_path, line=line), LABELS, "b", SHA)
    # Feet across y = 240 on the way down at frame 1 (before 'new' at frame 2), back up across it at frame 6.
    ys = [220, 250, 280, 310, 280, 250, 220]
    events = run(pipeline, [person(100, y=y - 100) for y in ys])
    crossing = [(e.type, e.frame_index, e.line_crossing) for e in events]
    assert crossing == [
        ("new", 2, None),
        ("update", 2, ("crosswalk", "in")),  # the crossing of the tentative track, reported with 'new'
        ("update", 6, ("crosswalk", "out")),
    ]
    assert events[1].to_dict()["line_crossing"] == {"line": "crosswalk", "direction": "in"}
    assert pipeline.stats()["line"] == {"name": "crosswalk", "in": {"pedestrian": 1}, "out": {"pedestrian": 1}}


def test_stats_and_finish(tmp_path):
    pipeline = EventPipeline(make_config(tmp_path), LABELS, "b", SHA)
    two = Detections(
        np.array([[100, 100, 140, 200], [400, 100, 440, 200]], np.float32), np.array([0.9, 0.9], np.float32),
        np.array([0, 1]),
    )
    run(pipeline, [two] * 4)
    stats = pipeline.stats()
    assert stats["objects"] == {"pedestrian": 1, "stop_sign": 1} and stats["tracks"] == 2
    ends = pipeline.finish(T0 + 100)
    assert [e.type for e in ends] == ["end", "end"] and {e.frame_time for e in ends} == {T0 + 100}
    assert {e.frame_index for e in ends} == {3}
    stats = pipeline.stats()
    assert stats["objects"] == {"pedestrian": 0, "stop_sign": 0}
    assert stats["objects_total"] == {"pedestrian": 1, "stop_sign": 1}
    assert pipeline.finish(T0 + 101) == []


def test_skipped_frames_make_no_events(tmp_path):
    pipeline = EventPipeline(make_config(tmp_path), LABELS, "b", SHA)
    events = run(pipeline, [person(100)] * 3 + [None] * 200 + [person(101)] * 3)
    assert [e.type for e in events] == ["new"]  # still there: the detector never missed it


def test_snapshot_store_keeps_to_its_budget(tmp_path, mirror):
    image = cv2.imread(str(mirror / "datasets" / "coco128" / "images" / "val2017" / "000000000139.jpg"))
    store = SnapshotStore(tmp_path / "snaps", max_mb=0.2, quality=85)
    paths = [store.write(f"obj{i}", image) for i in range(12)]
    size = paths[0].stat().st_size if paths[0].exists() else paths[-1].stat().st_size
    on_disk = sorted(p.name for p in (tmp_path / "snaps").glob("*.jpg"))
    assert store.total_bytes == sum(p.stat().st_size for p in (tmp_path / "snaps").glob("*.jpg"))
    assert store.total_bytes <= 0.2 * 1024 * 1024
    kept = len(on_disk)
    assert kept == int(0.2 * 1024 * 1024 // size) and store.deleted == 12 - kept
    assert on_disk == sorted(f"obj{i}.jpg" for i in range(12 - kept, 12))  # the oldest went first
    assert not list((tmp_path / "snaps").glob("*.tmp"))
    # A new store on the same folder counts what is there.
    again = SnapshotStore(tmp_path / "snaps", max_mb=0.2, quality=85)
    assert again.total_bytes == store.total_bytes
