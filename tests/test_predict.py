"""``edgesight predict``: annotated copies of photos; an unreadable one is reported, the rest still written."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
from click.testing import CliRunner

from devices.errors import DataError
from toolkit.cli import cli

PHOTOS = ("datasets/coco128/images/val2017/000000000139.jpg", "datasets/coco128/images/val2017/000000000785.jpg")


def test_a_folder_with_unreadable_images_is_annotated_and_the_bad_ones_listed(mirror: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in PHOTOS:
        shutil.copy(mirror / photo, folder)
    (folder / "0-truncated.jpg").write_bytes((mirror / PHOTOS[0]).read_bytes()[:200])  # sorted first
    (folder / "empty.png").write_bytes(b"")
    run = CliRunner().invoke(cli, ["predict", "hog", str(folder), "--out", str(tmp_path / "out")])
    # Both good photos were written after the first unreadable one...
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(Path(p).name for p in PHOTOS)
    assert all(cv2.imread(str(tmp_path / "out" / name)) is not None for name in written)
    assert run.output.count(" detections") == 2
    # ...and the command fails at the end, naming every file it skipped.
    assert isinstance(run.exception, DataError)
    message = str(run.exception)
    assert "2 image(s) could not be read" in message
    assert str(folder / "0-truncated.jpg") in message and str(folder / "empty.png") in message
