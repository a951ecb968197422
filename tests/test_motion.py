"""The motion gate on real footage (people walking in vtest.avi) and on lighting changes made from it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from devices.daemon.config import MotionConfig
from devices.daemon.motion import MotionGate
from devices.types import Frame

FPS = 10.0


def read_frames(path: Path, count: int, start: int = 0) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    capture.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames = []
    while len(frames) < count:
        ok, image = capture.read()
        assert ok, f"{path} ended before frame {start + len(frames)}"
        frames.append(image)
    capture.release()
    return frames


@pytest.fixture(scope="module")
def vtest(mirror: Path) -> list[np.ndarray]:
    """The first 120 frames of vtest.avi (12 s of pedestrians crossing a square)."""
    return read_frames(mirror / "videos" / "vtest.avi", 120)


def frame(image: np.ndarray, index: int) -> Frame:
    """Frames timed by the video's clock (index / fps), as the benchmark does."""
    return Frame(image, index, 1_700_000_000 + index / FPS, index / FPS)


def run_gate(gate: MotionGate, images: list[np.ndarray], start: int = 0) -> list[bool]:
    return [gate.check(frame(image, start + i)) for i, image in enumerate(images)]


def test_walking_people_are_motion(vtest):
    gate = MotionGate(MotionConfig(max_idle=1000))
    decisions = run_gate(gate, vtest)
    # People walk through every frame of this clip: the gate must let (almost) every frame through.
    assert sum(decisions) >= 0.95 * len(decisions), gate.stats()
    assert gate.stats()["motion"] == sum(decisions)
    assert gate.state == "motion"


def test_still_scene_runs_only_every_max_idle(vtest):
    gate = MotionGate(MotionConfig(max_idle=5.0))
    decisions = run_gate(gate, [vtest[0]] * 101)  # 10 s of one still frame
    runs = [i / FPS for i, run in enumerate(decisions) if run]
    assert runs == [0.0, 5.0, 10.0]  # the first frame, then every max_idle seconds for still objects
    assert gate.state == "still"
    assert gate.stats()["idle_runs"] == 2 and gate.stats()["skipped"] == 98


def test_a_person_entering_a_still_scene_is_motion(vtest):
    gate = MotionGate(MotionConfig(max_idle=1000))
    still = vtest[0]
    assert run_gate(gate, [still] * 20) == [True] + [False] * 19
    # A pedestrian cut out of a later frame and pasted into the still scene, moving 6 px per frame.
    person = vtest[60][200:300, 300:340]
    entering = []
    for step in range(5):
        image = still.copy()
        image[300:400, 100 + 6 * step:140 + 6 * step] = person
        entering.append(image)
    assert all(run_gate(gate, entering, start=20))


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda im: cv2.add(im, np.full_like(im, 60)), id="brighter+60"),
        pytest.param(lambda im: cv2.subtract(im, np.full_like(im, 60)), id="darker-60"),
        pytest.param(lambda im: cv2.convertScaleAbs(im, alpha=1.5), id="gain-x1.5"),
        pytest.param(lambda im: cv2.convertScaleAbs(im, alpha=0.6, beta=20), id="exposure-x0.6+20"),
    ],
)
def test_lighting_jump_is_not_motion(vtest, change):
    gate = MotionGate(MotionConfig(max_idle=1000))
    still = vtest[0]
    run_gate(gate, [still] * 10)
    changed = change(still)
    assert gate.check(frame(changed, 10)) is False
    assert gate.state == "lighting"
    # The background restarts from the new lighting: the scene is still again, not moving.
    assert run_gate(gate, [changed] * 10, start=11) == [False] * 10
    assert gate.state == "still"
    assert gate.stats()["lighting"] == 1


def test_motion_is_still_seen_after_a_lighting_jump(vtest):
    gate = MotionGate(MotionConfig(max_idle=1000))
    run_gate(gate, vtest[:30])
    brighter = [cv2.add(im, np.full_like(im, 50)) for im in vtest[30:60]]
    decisions = run_gate(gate, brighter, start=30)
    assert decisions[0] is False and gate.stats()["lighting"] >= 1
    # The same people keep walking under the new lighting.
    assert sum(decisions[1:]) >= 0.9 * len(decisions[1:])


def test_off_runs_every_frame(vtest):
    gate = MotionGate(MotionConfig(enabled=False))
    assert all(run_gate(gate, [vtest[0]] * 10))
    assert gate.state == "off" and gate.stats()["runs"] == 10


def test_new_frame_size_restarts_the_background(vtest):
    gate = MotionGate(MotionConfig(max_idle=1000))
    run_gate(gate, [vtest[0]] * 5)
    smaller = cv2.resize(vtest[0], (384, 288))
    assert gate.check(frame(smaller, 5)) is True  # a camera that came back at another size: no comparison yet
    assert gate.check(frame(smaller, 6)) is False


def test_min_interval_spaces_detector_runs_while_people_walk(vtest):
    gate = MotionGate(MotionConfig(max_idle=1000, min_interval=0.25))
    decisions = run_gate(gate, vtest)
    runs = [i for i, run in enumerate(decisions) if run]
    assert runs == list(range(0, len(vtest), 3))  # 0.3 s apart at 10 fps: the first frame 0.25 s after the last
    assert gate.state == "motion"
