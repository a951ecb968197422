"""The stock COCO peers as two-class detectors, on real photos, with their files verified."""

from __future__ import annotations

import logging
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from devices.errors import ModelFileError
from tests.conftest import box_iou
from toolkit.evaluate.peers import (
    PEERS,
    SSD_MOBILENETV2_FPNLITE,
    YOLOX_NANO,
    Peer,
    PeerRecord,
    SsdMobileNetV2Peer,
    load_peers,
)

# A portrait street photo with one stop sign in its upper half: a box with x and y (or width and
# height) swapped would miss it.
STOP_PHOTO = "road824"
# A landscape val2017 photo of one person, off the image's diagonal for the same reason.
PERSON_PHOTO = "000000000785"


@pytest.fixture(scope="module")
def peers(mirror: Path) -> Iterator[dict[str, Peer]]:
    opened = load_peers(mirror / "weights" / "peers", threads=1, score_threshold=0.01)
    yield {p.name: p for p in opened}
    for p in opened:
        p.close()




def _stop_photo(mirror: Path) -> tuple[np.ndarray, np.ndarray]:
    root = mirror / "datasets" / "roadsign_kaggle_stop"
    xml = ET.parse(root / "annotations" / f"{STOP_PHOTO}.xml").getroot()
    (stop,) = [o for o in xml.iter("object") if o.findtext("name") == "stop"]
    box = np.array([float(stop.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")])
    return cv2.imread(str(root / "images" / f"{STOP_PHOTO}.png"), cv2.IMREAD_COLOR), box


def _person_photo(mirror: Path) -> tuple[np.ndarray, np.ndarray]:
    root = mirror / "datasets" / "coco128"
    img = cv2.imread(str(root / "images" / "val2017" / f"{PERSON_PHOTO}.jpg"), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    rows = [r.split() for r in (root / "labels" / "val2017" / f"{PERSON_PHOTO}.txt").read_text().splitlines()]
    # Largest person box, YOLO cx cy w h normalised -> xyxy pixels.
    _, cx, cy, bw, bh = max((list(map(float, r)) for r in rows if r[0] == "0"), key=lambda r: r[3] * r[4])
    return img, np.array([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])


@pytest.mark.parametrize("name", [r.name for r in PEERS])
def test_peer_best_stop_sign_matches_the_real_sign(peers: dict[str, Peer], mirror: Path, name: str) -> None:
    img, truth = _stop_photo(mirror)
    dets = peers[name](img)
    signs = dets.select(dets.class_ids == 1)
    assert len(signs), f"{name} found no stop sign"
    best = signs.boxes[np.argmax(signs.scores)]
    assert box_iou(best, truth)[0, 0] > 0.5, f"{name}: best stop sign {best} vs ground truth {truth}"


@pytest.mark.parametrize("name", [r.name for r in PEERS])
def test_peer_best_pedestrian_matches_the_real_person(peers: dict[str, Peer], mirror: Path, name: str) -> None:
    img, truth = _person_photo(mirror)
    dets = peers[name](img)
    people = dets.select(dets.class_ids == 0)
    assert len(people), f"{name} found no pedestrian"
    best = people.boxes[np.argmax(people.scores)]
    assert box_iou(best, truth)[0, 0] > 0.5, f"{name}: best pedestrian {best} vs ground truth {truth}"
    # Our two labels only, in original pixels, above the threshold asked for.
    assert set(dets.class_ids.tolist()) <= {0, 1}
    assert dets.boxes[:, [0, 2]].max() <= img.shape[1] and dets.boxes[:, [1, 3]].max() <= img.shape[0]
    assert dets.scores.min() >= 0.01


def test_load_peers_opens_every_peer_with_its_settings(peers: dict[str, Peer], mirror: Path) -> None:
    assert list(peers) == ["yolox-nano", "nanodet-m", "ssd-mobilenetv2-fpnlite"]
    for peer in peers.values():
        assert peer.labels == ("pedestrian", "stop_sign")
        assert peer.threads == 1 and peer.score_threshold == 0.01
        assert peer.path.is_file() and peer.path.is_relative_to(mirror)
        assert peer.sha256 == peer.record.file.sha256


@pytest.mark.parametrize("record", PEERS, ids=lambda r: r.name)
def test_recorded_hashes_are_those_in_source_txt(mirror: Path, record: PeerRecord) -> None:
    source = (mirror / "weights" / "peers" / record.folder / "SOURCE.txt").read_text()
    listed = {name: sha for sha, name in re.findall(r"^\s*([0-9a-f]{64})\s+(\S+)\s*$", source, re.M)}
    assert listed[record.filename] == record.file.sha256


def test_tampered_peer_file_is_refused(mirror: Path, tmp_path: Path) -> None:
    record = YOLOX_NANO
    (tmp_path / record.folder).mkdir()
    copy = tmp_path / record.folder / record.filename
    shutil.copyfile(mirror / record.file.mirror_path, copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=record.file.sha256):
        load_peers(tmp_path)


def test_unknown_folders_are_skipped_with_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "mystery-detector").mkdir()
    with caplog.at_level(logging.INFO, logger="toolkit.evaluate.peers"):
        assert load_peers(tmp_path) == []
    assert "mystery-detector" in caplog.text


def test_ssd_class_map_follows_its_label_file(mirror: Path) -> None:
    rows = (mirror / SSD_MOBILENETV2_FPNLITE.file.mirror_path).with_name("labels.txt").read_text().splitlines()
    assert {rows[i]: ours for i, ours in SsdMobileNetV2Peer.CLASS_MAP.items()} == {"person": 0, "stop sign": 1}


def test_yolox_peer_uses_the_model_records_file_and_preprocessing() -> None:
    from models.yolox import YOLOX_NANO_COCO

    assert YOLOX_NANO.file == YOLOX_NANO_COCO.file
    assert YOLOX_NANO.input == YOLOX_NANO_COCO.input
