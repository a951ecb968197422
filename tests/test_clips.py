"""The composed stop-sign clip: real validation photos, a moving camera, the same file every time."""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest

from devices.errors import DataError
from devices.sidecar import read_about
from toolkit.data.clips import compose_stop_sign_clip, stop_sign_photos
from toolkit.data.sets import default_splits


def _frames(path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


@pytest.fixture(scope="module")
def validation(mirror):
    return default_splits(mirror=mirror)


def test_clip_is_composed_from_validation_photos_and_says_so(mirror, tmp_path, validation):
    train, _ = validation
    clip = compose_stop_sign_clip(tmp_path / "stop.mp4", mirror=mirror, photos=3, seconds=0.5, fps=10,
                                  size=(320, 240))
    frames = _frames(clip.video)
    assert len(frames) == clip.frames == 15
    assert frames[0].shape == (240, 320, 3)
    about = read_about(str(clip.video))
    assert about["composed"] is True and about["camera_moves"] is True and "not real video" in about["description"]
    # Both stop-sign sets, and not one photo the trainer learns from.
    assert {p["dataset"] for p in about["photos"]} == {"roadsign_kaggle_stop", "roboflow_stop_signs"}
    trained = {s.image_path.name for s in train}
    assert not {p["file"].rsplit("/", 1)[-1] for p in about["photos"]} & trained
    assert all(p["file"].startswith("datasets/") for p in about["photos"])


def test_the_camera_moves_within_a_photo_and_cuts_between_photos(mirror, tmp_path):
    clip = compose_stop_sign_clip(tmp_path / "stop.mp4", mirror=mirror, photos=2, seconds=2.0, fps=10,
                                  size=(320, 240))
    # Compared as 32x24 thumbnails, so that the difference measures where things are, not fine texture.
    thumbs = [cv2.resize(f, (32, 24), interpolation=cv2.INTER_AREA).astype(np.float32) for f in _frames(clip.video)]
    within = np.abs(thumbs[0] - thumbs[19]).mean()      # first and last frame of photo 1: the zoom
    step = np.abs(thumbs[9] - thumbs[10]).mean()        # one frame apart: a small move
    cut = np.abs(thumbs[19] - thumbs[20]).mean()        # photo 1 -> photo 2
    print(f"mean |difference| of thumbnails: within a photo {within:.1f}, one step {step:.1f}, cut {cut:.1f}")
    assert 0.5 < step < within / 2 and cut > 2 * step


def test_clip_is_deterministic(mirror, tmp_path):
    digests = []
    for name in ("a", "b"):
        clip = compose_stop_sign_clip(tmp_path / name / "stop.mp4", mirror=mirror, photos=2, seconds=0.4, fps=10,
                                      size=(320, 240))
        digests.append(hashlib.sha256(clip.video.read_bytes()).hexdigest())
        assert json.loads(clip.about.read_text())["frames"] == 8
    assert digests[0] == digests[1]


def test_asking_for_more_photos_than_exist_names_the_limit(validation):
    _, val = validation
    with pytest.raises(DataError, match="ask for at most"):
        stop_sign_photos(val, 10_000)
