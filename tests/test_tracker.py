"""The tracker, zones and counting line on hand-made detection sequences whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from devices.daemon.config import ClassRule, LineConfig, TrackerConfig, ZoneConfig
from devices.daemon.tracker import Tracker, closeness, greedy_match, iou, iou_matrix
from devices.daemon.zones import Line
from devices.errors import ConfigError
from devices.types import Detections, Frame

LABELS = ("pedestrian", "stop_sign")
FPS = 10.0
IMAGE = np.zeros((480, 640, 3), np.uint8)
CLASSES = {"pedestrian": ClassRule(min_score=0.3, threshold=0.5), "stop_sign": ClassRule()}


def dets(*items: tuple[tuple[float, float, float, float], float, int]) -> Detections:
    """Detections from (box, score, class_id) tuples."""
    if not items:
        return Detections.empty()
    return Detections(
        np.array([i[0] for i in items], np.float32),
        np.array([i[1] for i in items], np.float32),
        np.array([i[2] for i in items], np.int64),
    )


def frame(index: int) -> Frame:
    return Frame(IMAGE, index, 1_700_000_000 + index / FPS, index / FPS)


def person(x: float, y: float = 200, w: float = 40, h: float = 100, score: float = 0.8):
    """A pedestrian whose bottom-centre is at (x + w/2, y + h)."""
    return ((x, y, x + w, y + h), score, 0)


def make_tracker(**kw) -> Tracker:
    zones = kw.pop("zones", ())
    line = kw.pop("line", None)
    classes = kw.pop("classes", CLASSES)
    return Tracker(TrackerConfig(**kw), classes, LABELS, zones, line)


def run(tracker: Tracker, sequence: list[Detections | None], start: int = 0):
    """Steps of the tracker over a sequence; returns (frame index, step) pairs."""
    return [(start + i, tracker.update(frame(start + i), d)) for i, d in enumerate(sequence)]


def observe(tracker: Tracker, sequence: list[Detections | None]) -> list[tuple[int, tuple[str, ...], list[str]]]:
    """Per frame and matched track: (frame index, its zones then, the line crossings of that frame).

    Takes the crossings as the event pipeline does (it reports and clears them).
    """
    seen = []
    for i, d in enumerate(sequence):
        for track in tracker.update(frame(i), d).matched:
            seen.append((i, track.zones, list(track.crossings)))
            track.crossings.clear()
    return seen


def when(steps, what: str) -> list[tuple[int, str]]:
    """(frame index, track uid) for every track in the steps' ``what`` list."""
    return [(i, t.uid) for i, step in steps for t in getattr(step, what)]


def test_iou_and_greedy_matching():
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    b = np.array([[20, 20, 30, 30], [5, 0, 15, 10], [100, 100, 110, 110]], np.float32)
    overlap = iou_matrix(a, b)
    assert overlap[0, 1] == pytest.approx(50 / 150) and overlap[1, 0] == pytest.approx(1.0) and overlap[:, 2].max() == 0
    assert sorted(greedy_match(overlap, 0.3)) == [(0, 1), (1, 0)]
    assert greedy_match(overlap, 0.5) == [(1, 0)]
    assert greedy_match([[0.5, 0.5], [0.5, 0.0]], 0.1) == [(0, 0)]  # ties: row-major order
    assert iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching is not overlapping


def test_closeness_by_centre_distance_and_similar_height():
    assert closeness((0, 0, 10, 20), (0, 0, 10, 20)) == 1.0
    assert closeness((0, 0, 10, 20), (0, 10, 10, 30)) == pytest.approx(0.5)  # centres 10 px apart, height 20
    assert closeness((0, 0, 10, 20), (0, 40, 10, 60)) == 0.0  # further apart than a height
    assert closeness((0, 0, 10, 20), (0, 0, 10, 50)) == 0.0  # heights differ by more than 2x


def test_one_walker_new_after_min_hits_end_after_max_missing():
    tracker = make_tracker(min_hits=3, max_missing=2.0)
    walk = [dets(person(100 + 5 * i)) for i in range(20)] + [dets()] * 30  # seen 0..19, then gone
    steps = run(tracker, walk)
    confirmed, ended, seen = when(steps, "confirmed"), when(steps, "ended"), when(steps, "seen")
    assert [i for i, _ in confirmed] == [2]  # the third detection
    assert [i for i, _ in seen] == list(range(3, 20))
    # Last seen at frame 19 (1.9 s); it ends 2.0 s later, on frame 39.
    assert [i for i, _ in ended] == [39]
    assert {uid for _, uid in confirmed + seen + ended} == {confirmed[0][1]}  # one stable id
    assert tracker.tracks() == []


def test_ids_stay_with_their_objects():
    tracker = make_tracker(min_hits=2)
    # Two pedestrians walking towards each other on different rows, and a stop sign that never moves.
    frames = [dets(person(50 + 10 * i, y=100), person(500 - 10 * i, y=300), ((300, 20, 340, 60), 0.9, 1))
              for i in range(15)]
    steps = run(tracker, frames)
    views = tracker.tracks()
    assert len(views) == 3 and all(v.confirmed for v in views)
    by_label = {}
    for v in views:
        by_label.setdefault(v.label, []).append(v)
    assert len(by_label["pedestrian"]) == 2 and len(by_label["stop_sign"]) == 1
    left = min(by_label["pedestrian"], key=lambda v: v.box[1])  # the one on the upper row
    assert left.box[0] == pytest.approx(50 + 10 * 14)
    assert len(when(steps, "confirmed")) == 3  # each object became an object once


def test_fast_object_is_followed_by_its_velocity():
    # 40 px wide, moving 30 px per frame: consecutive boxes overlap with IoU 10/70 = 0.14, below the tracker's
    # 0.3. The second sighting is paired by distance (30 px < one box height); from then on the track's box,
    # moved by its velocity, lands on the next detection.
    tracker = make_tracker(min_hits=3, iou=0.3)
    steps = run(tracker, [dets(person(20 + 30 * i)) for i in range(15)])
    assert len(when(steps, "confirmed")) == 1
    assert len(tracker.tracks()) == 1


def test_min_score_threshold_and_min_area():
    classes = {"pedestrian": ClassRule(min_score=0.3, threshold=0.5, min_area=1000.0)}
    tracker = make_tracker(min_hits=3, classes=classes)
    # Below min_score: never a track.
    run(tracker, [dets(person(100, score=0.25))] * 5)
    assert tracker.tracks() == []
    # Below min_area (20 x 40 = 800 px): never a track.
    run(tracker, [dets(person(100, w=20, h=40))] * 5)
    assert tracker.tracks() == []
    # Scores 0.35 x3 then 0.9: min_hits is reached at the third frame, but the median (0.35) is below the
    # threshold until the sixth detection lifts it to (0.35 + 0.9) / 2 = 0.625.
    scores = [0.35, 0.35, 0.35, 0.9, 0.9, 0.9]
    steps = run(tracker, [dets(person(300 + 2 * i, score=s)) for i, s in enumerate(scores)], start=10)
    assert [i for i, _ in when(steps, "confirmed")] == [15]


def test_a_one_frame_false_positive_is_never_an_object():
    tracker = make_tracker(min_hits=3, max_missing=0.5)
    steps = run(tracker, [dets(person(100, score=0.95))] + [dets()] * 10)
    assert when(steps, "confirmed") == [] and when(steps, "ended") == []
    assert [i for i, _ in when(steps, "dropped")] == [5]  # tentative, dropped silently after max_missing
    assert tracker.tracks() == []


def test_skipped_frames_age_tracks_by_time_but_do_not_end_unlooked_objects():
    tracker = make_tracker(min_hits=3, max_missing=2.0)
    # Seen on frames 0..4, then the gate skips 10 s (the object stood still), then it is seen again.
    steps = run(tracker, [dets(person(100))] * 5 + [None] * 100 + [dets(person(101))] * 3)
    assert when(steps, "ended") == []
    assert len({uid for _, uid in when(steps, "confirmed") + when(steps, "seen")}) == 1

    # Seen on frames 0..4, the detector looks on frame 5 and misses it, then the gate skips: the track
    # ends by time (2.0 s after 0.4 s) on a skipped frame.
    tracker = make_tracker(min_hits=3, max_missing=2.0)
    steps = run(tracker, [dets(person(100))] * 5 + [dets()] + [None] * 40)
    assert [i for i, _ in when(steps, "ended")] == [24]


def test_finish_ends_open_objects_only():
    tracker = make_tracker(min_hits=3)
    run(tracker, [dets(person(100), person(400))] * 3 + [dets(person(100), person(400), person(250, y=0))])
    assert len(tracker.tracks()) == 3  # the third is still tentative
    ended = tracker.finish()
    assert len(ended) == 2 and all(t.confirmed for t in ended)
    assert tracker.tracks() == []


def test_unknown_classes():
    with pytest.raises(ConfigError, match="none of the classes"):
        Tracker(TrackerConfig(), {"car": ClassRule()}, LABELS)
    # A class the model has but the config does not name is ignored.
    tracker = Tracker(TrackerConfig(min_hits=1), {"pedestrian": ClassRule()}, LABELS)
    run(tracker, [dets(((10, 10, 50, 50), 0.9, 1))] * 3)
    assert tracker.tracks() == []
    # Class ids outside the model's labels (a mismatched bundle) and NaN scores are ignored, not an error.
    run(tracker, [dets(((10, 10, 50, 50), 0.9, 7), ((60, 10, 90, 50), 0.9, -1), ((100, 10, 140, 50), np.nan, 0))] * 3)
    assert tracker.tracks() == []


# --- zones ------------------------------------------------------------------------------------------------


def test_zone_membership_by_bottom_centre_with_labels_and_normalised_points():
    zones = (
        # The left half of the frame, normalised.
        ZoneConfig(name="left", points=((0, 0), (0.5, 0), (0.5, 1), (0, 1)), normalized=True),
        # A band across the bottom in pixels, for stop signs only.
        ZoneConfig(name="kerb", points=((0, 400), (640, 400), (640, 480), (0, 480)), labels=("stop_sign",)),
    )
    tracker = make_tracker(min_hits=1, zones=zones)
    # A pedestrian whose head is in the left half but whose feet (bottom-centre x = 330, 380 px down) are not;
    # walking left its feet reach x = 320 (the border counts as inside) and go on. 'kerb' is for stop signs.
    seen = observe(tracker, [dets(person(310 - 10 * i, y=350)) for i in range(4)])
    assert [zones for _, zones, _ in seen] == [(), ("left",), ("left",), ("left",)]
    assert tracker.tracks()[0].zones == ("left",)
    # A stop sign standing in both.
    tracker = make_tracker(min_hits=1, zones=zones)
    seen = observe(tracker, [dets(((100, 380, 140, 420), 0.9, 1))])
    assert seen[0][1] == ("left", "kerb")


def test_zone_points_outside_the_frame_fraction_are_refused():
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        ZoneConfig(name="z", points=((0, 0), (1.5, 0), (1, 1)), normalized=True)


# --- the counting line --------------------------------------------------------------------------------------


def test_line_direction_names():
    line = Line.from_config(LineConfig(a=(0, 240), b=(640, 240)), (640, 480))
    assert line.crossing((100, 200), (100, 300)) == "in"  # downwards across a line drawn left to right
    assert line.crossing((100, 300), (100, 200)) == "out"
    assert line.crossing((100, 200), (100, 240)) is None  # touching is not crossing
    short = Line.from_config(LineConfig(a=(0, 240), b=(300, 240)), (640, 480))
    assert short.crossing((500, 200), (500, 300)) is None  # past the end of the segment


def crossings(tracker: Tracker, sequence: list[Detections | None]) -> list[tuple[int, str]]:
    return [(i, d) for i, _, found in observe(tracker, sequence) for d in found]


def test_line_crossings_both_ways_with_hysteresis():
    line = LineConfig(a=(0, 300), b=(640, 300), margin=0.01)  # 4.8 px at 480 rows
    tracker = make_tracker(min_hits=1, line=line)
    # Feet at y = 250, 270, ..., 350 (down across y = 300), then back up to 250.
    ys = [250, 270, 290, 310, 330, 350, 330, 310, 290, 270, 250]
    assert crossings(tracker, [dets(person(100, y=y - 100)) for y in ys]) == [(3, "in"), (8, "out")]


def test_standing_on_the_line_is_counted_once():
    line = LineConfig(a=(0, 300), b=(640, 300), margin=0.01)
    tracker = make_tracker(min_hits=1, line=line)
    # Walks onto the line and jitters +-3 px around it (inside the 4.8 px band), then walks on.
    ys = [280, 290, 297, 303, 298, 302, 297, 303, 310, 320]
    assert crossings(tracker, [dets(person(100, y=y - 100)) for y in ys]) == [(8, "in")]


def test_line_labels_filter():
    # The walk down across y = 300 that the tracker follows (20 px a frame): counted once without the filter...
    walk = [dets(person(100, y=y - 100)) for y in (250, 270, 290, 310, 330, 350)]
    tracker = make_tracker(min_hits=1, line=LineConfig(a=(0, 300), b=(640, 300)))
    assert crossings(tracker, walk) == [(3, "in")]
    # ...and not at all by a line that counts stop signs only.
    line = LineConfig(a=(0, 300), b=(640, 300), labels=("stop_sign",))
    tracker = make_tracker(min_hits=1, line=line)
    assert crossings(tracker, walk) == []


def test_line_with_equal_end_points_is_refused():
    with pytest.raises(ValueError, match="two different end points"):
        LineConfig(a=(1, 1), b=(1, 1))
