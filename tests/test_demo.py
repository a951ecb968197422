"""``edgesight demo``: the overlay it draws, the bundle it picks, and a recorded run from the device install."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from devices.daemon.config import LineConfig, ZoneConfig
from devices.daemon.demo import find_bundle
from devices.daemon.overlay import Overlay
from devices.daemon.tracker import TrackView
from devices.draw import class_colour
from devices.errors import ConfigError

LABELS = ("pedestrian", "stop_sign")


def _track(uid: str, box, confirmed: bool = True, missed: bool = False) -> TrackView:
    return TrackView(uid, "pedestrian", tuple(float(v) for v in box), 0.87, confirmed, (), missed)


def _colour_pixels(image: np.ndarray, bgr, region=None) -> int:
    part = image if region is None else image[region]
    return int(np.all(np.abs(part.astype(np.int16) - bgr) <= 10, axis=2).sum())


def test_overlay_draws_confirmed_tracks_zones_and_the_line():
    frame = np.full((240, 320, 3), 90, np.uint8)
    zone = ZoneConfig(name="door", points=((0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (0.0, 1.0)), normalized=True)
    line = LineConfig(name="path", a=(160, 0), b=(160, 240))
    overlay = Overlay(LABELS, [zone], line)
    drawn = overlay.draw(frame, [_track("1.0-abcdef", (200, 40, 260, 200)),
                                 _track("1.0-123456", (20, 20, 60, 60), confirmed=False),
                                 _track("1.0-654321", (80, 20, 120, 60), missed=True)])
    assert _colour_pixels(drawn, class_colour(0), np.s_[40:201, 195:265]) > 100   # the confirmed track's box
    assert _colour_pixels(drawn, class_colour(0), np.s_[0:70, 0:130]) == 0          # not tentative or missed ones
    assert (drawn[130:240, 0:160] != frame[130:240, 0:160]).any()                    # the zone is tinted
    assert (drawn[0:240, 158:163] != 90).all(axis=2).mean() > 0.5                     # the line
    assert (drawn[210:240, 200:320] == 90).all()                                       # elsewhere untouched
    assert np.array_equal(overlay.draw(frame, [_track("1.0-abcdef", (200, 40, 260, 200))], boxes=False), frame)


def test_overlay_follows_the_frame_size():
    zone = ZoneConfig(name="all", points=((0.0, 0.0), (1.0, 0.0), (1.0, 1.0)), normalized=True)
    overlay = Overlay(LABELS, [zone])
    small = overlay.draw(np.zeros((100, 100, 3), np.uint8), [])
    large = overlay.draw(np.zeros((400, 600, 3), np.uint8), [])
    assert small[10, 90].any() and large[40, 540].any()   # upper-right triangle in both sizes
    assert not small[90, 10].any() and not large[360, 60].any()


def test_find_bundle_picks_the_highest_recorded_ap(test_bundles, tmp_path):
    for name in ("yolox-nano-tflite-int8", "yolox-nano-onnx-fp32"):
        shutil.copytree(test_bundles / name, tmp_path / name)
    aps = {p.name: json.loads((p / "manifest.json").read_text())["accuracy"]["map"] for p in tmp_path.iterdir()}
    assert find_bundle([tmp_path]).name == max(aps, key=aps.get)


def test_find_bundle_without_any_says_how_to_make_one(tmp_path):
    with pytest.raises(ConfigError, match="--bundle") as info:
        find_bundle([tmp_path])
    assert "make demo" in info.value.fix


def test_recorded_run_leaves_video_events_metrics_and_summary(device_bin, test_bundles, clip, tmp_path):
    bundle = test_bundles / "yolox-nano-tflite-int8"
    out = tmp_path / "run"
    result = subprocess.run(
        [str(device_bin / "edgesight"), "demo", "--bundle", str(bundle), "--source", str(clip), "--record", str(out),
         "--http", "127.0.0.1:0", "--no-browser"], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"recorded: {out}/SUMMARY.md" in result.stdout

    # Every frame of the file went through the daemon and into the annotated video, at the file's rate.
    video = cv2.VideoCapture(str(out / "annotated.mp4"))
    frames, fps = int(video.get(cv2.CAP_PROP_FRAME_COUNT)), video.get(cv2.CAP_PROP_FPS)
    video.release()
    assert frames == 60 and fps == pytest.approx(10.0)

    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert events and all(e["schema"] == "edgesight.event/1" for e in events)
    assert {e["type"] for e in events} >= {"new", "end"}
    assert "edgesight_frames_processed" in (out / "metrics.prom").read_text()
    status = json.loads((out / "status.json").read_text())
    assert status["loop"]["processed"] == 60

    summary = (out / "SUMMARY.md").read_text()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert f"mean {manifest['accuracy']['map']:.3f}" in summary
    new_pedestrians = sum(1 for e in events if e["label"] == "pedestrian" and e["type"] == "new")
    assert f"| pedestrian | {new_pedestrians} |" in summary
    assert "FPS" in summary and "cores" in summary  # the host CPU, devices.host.machine()


def test_composed_clip_is_labelled_and_its_stop_signs_found(device_bin, test_bundles, mirror, tmp_path):
    from toolkit.data.clips import compose_stop_sign_clip

    clip = compose_stop_sign_clip(tmp_path / "stop.mp4", mirror=mirror, photos=4, seconds=2.0, fps=10)
    out = tmp_path / "run"
    result = subprocess.run(
        [str(device_bin / "edgesight"), "demo", "--bundle", str(test_bundles / "yolox-nano-tflite-int8"),
         "--source", str(clip.video), "--record", str(out), "--http", "127.0.0.1:0", "--no-browser"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = (out / "SUMMARY.md").read_text()
    assert "Composed clip, not real video" in summary
    # The camera moves, so the motion gate is off and the detector sees every frame.
    assert "| 80 | 80 | 0 |" in summary
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    # The model finds the signs (a track may continue across a cut to the next photo when the boxes overlap).
    assert sum(e["label"] == "stop_sign" and e["type"] == "new" for e in events) >= 2
    assert sum(e["label"] == "stop_sign" for e in events) > len(events) / 2


def test_demo_imports_no_torch(test_bundles, clip, tmp_path):
    # The workstation venv has torch, so an import would succeed silently: check sys.modules after a whole
    # recorded `edgesight demo` run there (the device venv, without torch, runs the other demo tests).
    code = ("import sys\nfrom toolkit.cli import main\nsys.argv = ['edgesight', 'demo', '--bundle', sys.argv[1], "
            "'--source', sys.argv[2], '--record', 'run', '--http', '127.0.0.1:0', '--no-browser']\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    rc = exc.code\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'PIL'))\n"
            "print('EXIT', rc, 'HEAVY', heavy)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", code, str(test_bundles / "yolox-nano-tflite-int8"), str(clip)],
                            capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert "EXIT 0 HEAVY []" in result.stdout, (result.stdout, result.stderr[-3000:])
