"""The dataset registry, loading from the mirror or a (faked) download, and the grouped split."""

from __future__ import annotations

import dataclasses
import io
import re
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from devices.errors import ConfigError, DataError
from models.base import COCO80, TARGET_CLASSES
from toolkit.data import Sample, fetch
from toolkit.data.sets import (
    DATASETS,
    default_splits,
    load_dataset,
    roboflow_group,
    split,
)

STOP = TARGET_CLASSES.index("stop_sign")


@pytest.fixture(scope="module")
def loaded(mirror: Path) -> dict[str, list[Sample]]:
    return {name: load_dataset(name, mirror) for name in DATASETS}


@pytest.fixture(scope="module")
def splits(mirror: Path) -> tuple[list[Sample], list[Sample]]:
    return default_splits(mirror)


# ------------------------------------------------------------------------------------------ registry


def test_registry_records_match_the_mirrored_files(mirror: Path) -> None:
    assert set(DATASETS) == {"coco128", "roadsign_kaggle_stop", "roboflow_stop_signs"}
    for record in DATASETS.values():
        root = mirror / record.mirror_path
        assert root.is_dir(), record.name
        assert re.fullmatch(r"[0-9a-f]{7,40}", record.upstream.commit)
        assert (
            record.upstream.url == f"https://codeload.github.com/{record.upstream.repo}/tar.gz/{record.upstream.commit}"
        )
        for part in record.parts:
            assert (root / part.images).is_dir() and (root / part.labels).exists()
    # YOLO class names as the sets' own yaml files give them.
    coco_yaml = (mirror / "datasets/coco128/config.yaml").read_text()
    assert tuple(re.findall(r"^\s+\d+: (.+)$", coco_yaml, re.M)) == DATASETS["coco128"].names == COCO80
    rf_yaml = (mirror / "datasets/roboflow_stop_signs/data.yaml").read_text()
    assert tuple(re.findall(r"^- (\w+)$", rf_yaml, re.M)) == DATASETS["roboflow_stop_signs"].names


def test_unknown_dataset_and_missing_mirror_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="coco128"):
        load_dataset("coco129", tmp_path)
    with pytest.raises(DataError, match="datasets/coco128"):
        load_dataset("coco128", tmp_path)


# ------------------------------------------------------------------------------------------- loading


def test_load_dataset_counts_match_the_files(mirror: Path, loaded: dict[str, list[Sample]]) -> None:
    per_set = {name: (len(s), sum(int((x.labels == STOP).sum()) for x in s)) for name, s in loaded.items()}
    rf = mirror / "datasets/roboflow_stop_signs"
    rf_signs = sum(ln.split()[0] == "1" for p in rf.glob("*/labels/*.txt") for ln in p.read_text().splitlines() if ln)
    voc_stops = sum(
        o.findtext("name") == "stop"
        for p in (mirror / "datasets/roadsign_kaggle_stop/annotations").glob("*.xml")
        for o in ET.parse(p).getroot().iter("object")
    )
    assert per_set == {
        "coco128": (256, 5),
        "roadsign_kaggle_stop": (91, voc_stops),
        "roboflow_stop_signs": (503, rf_signs),
    }
    assert sum(int((s.labels == 0).sum()) for s in loaded["coco128"]) == 604
    assert {s.labels_people for s in loaded["coco128"]} == {True}
    assert {s.labels_people for n in ("roadsign_kaggle_stop", "roboflow_stop_signs") for s in loaded[n]} == {False}
    # Augmented copies share one group: 492 train files come from 153 file stems.
    rf_train_groups = {s.group for s in loaded["roboflow_stop_signs"] if s.subset is None}
    assert len(rf_train_groups) == 153


def test_roboflow_groups_follow_the_source_photo() -> None:
    name = "stop3_jpg.rf.dffd8e82286125f94033a24497abe727.jpg"
    assert roboflow_group(Path("x/train/images") / name) == "roboflow_stop_signs/train/stop3.jpg"
    assert roboflow_group(Path("x/valid/images") / name) == "roboflow_stop_signs/valid/stop3.jpg"
    road = "road635_png.rf.a17c8248b186b397ddb25ae974acd22c.jpg"
    assert roboflow_group(Path("x/train/images") / road) == "kaggle-road-sign/road635"


# ------------------------------------------------------------------------------------------ splitting


def _fake(group: str, subset: str | None = None, source: str = "fake") -> Sample:
    return Sample(Path(f"/nowhere/{group}.jpg"), 10, 10, np.zeros((0, 4)), np.zeros(0), source, group, True, subset)


def test_split_is_deterministic_grouped_and_order_free() -> None:
    samples = [_fake(f"photo{i // 3}") for i in range(600)]  # 200 photos, 3 copies each
    train, val = split(samples, 0.2, seed=0)
    _, again_val = split(list(reversed(samples)), 0.2, seed=0)
    assert {s.image_path for s in val} == {s.image_path for s in again_val}
    assert not {s.group for s in train} & {s.group for s in val}
    assert 0.12 < len({s.group for s in val}) / 200 < 0.28
    other_val = {s.group for s in split(samples, 0.2, seed=1)[1]}
    assert other_val != {s.group for s in val}
    assert split(samples, 0.0)[1] == []
    with pytest.raises(ConfigError, match="val_fraction"):
        split(samples, 1.0)


def test_split_keeps_upstream_parts_and_pulls_copies_of_val_photos_out_of_train() -> None:
    samples = [_fake("a", "val"), _fake("a"), _fake("b", "train"), _fake("b"), _fake("c", "train"), _fake("c", "val")]
    for fraction in (0.0, 0.99):  # nothing / almost everything unpinned would go to val by hash
        train, val = split(samples, fraction, seed=0)
        assert [s.group for s in val] == ["a", "a", "c", "c"] and [s.group for s in train] == ["b", "b"]


def test_default_splits_counts_and_no_leak(mirror: Path, splits: tuple[list[Sample], list[Sample]]) -> None:
    train, val = splits
    assert not {s.group for s in train} & {s.group for s in val}
    by = Counter((s.source, s.image_path.parent.name, "val" if s in val else "train") for s in (*train, *val))
    # Upstream parts are kept as given.
    assert by[("coco128", "train2017", "train")] == by[("coco128", "val2017", "val")] == 128
    assert by[("coco128", "train2017", "val")] == by[("coco128", "val2017", "train")] == 0
    assert by[("roboflow_stop_signs", "images", "val")] >= 11
    assert all(s in val for s in (*train, *val) if "/valid/" in s.image_path.as_posix())
    # The Kaggle photos that Roboflow also ships land on one side with all their copies.
    road = [s for s in (*train, *val) if s.group == "kaggle-road-sign/road635"]
    assert len(road) == 4 and len({s in val for s in road}) == 1
    # Grouped split of the unpinned photos is about the requested fraction.
    unpinned = {s.group for s in (*train, *val) if s.subset is None}
    frac = len(unpinned & {s.group for s in val}) / len(unpinned)
    assert 0.12 < frac < 0.3
    assert [s.image_path for s in default_splits(mirror)[1]] == [s.image_path for s in val]  # deterministic


# ------------------------------------------------------------------------ download path (no network)


def _tar_gz(files: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return buf.getvalue()


def _jpeg_bytes(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, payloads: dict[str, bytes]) -> list[str]:
    """No mirror, the cache in ``tmp_path``, and the network replaced by ``payloads`` (URL -> bytes)."""
    urls: list[str] = []

    def fake_urlopen(url: str, timeout: float) -> io.BytesIO:
        urls.append(url)
        return io.BytesIO(payloads[url])

    monkeypatch.delenv("EDGESIGHT_MIRROR", raising=False)
    monkeypatch.setenv("EDGESIGHT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fetch.urllib.request, "urlopen", fake_urlopen)
    return urls


def _unpinned(monkeypatch: pytest.MonkeyPatch, name: str, **changes: object) -> None:
    """Replace a record's content digest (the fakes are not the real set) and any other field."""
    changes.setdefault("content_sha256", "")
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(DATASETS[name], **changes))


def test_load_dataset_without_mirror_extracts_the_pinned_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The download path with the network replaced by a local tarball shaped like codeload's."""
    record = DATASETS["roboflow_stop_signs"]
    top = f"praveen_detection_pole-{record.upstream.commit}/Stop-Signs-11"
    img = "stop1_jpg.rf.0123456789abcdef0123456789abcdef.jpg"
    files = {
        f"{top}/train/images/{img}": _jpeg_bytes((832, 832)),
        f"{top}/train/labels/{img[:-4]}.txt": b"1 0.5 0.5 0.25 0.25\n0 0.5 0.9 0.05 0.2\n",
        f"{top}/valid/images/v_jpg.rf.fedcba9876543210fedcba9876543210.jpg": _jpeg_bytes((832, 832)),
        f"{top}/valid/labels/v_jpg.rf.fedcba9876543210fedcba9876543210.txt": b"",
        f"praveen_detection_pole-{record.upstream.commit}/README.md": b"outside the subpath",
        f"{top}/../../escape.txt": b"must not be written",
    }
    link = tarfile.TarInfo(f"{top}/train/images/link.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    urls = _offline(monkeypatch, tmp_path, {record.upstream.url: _tar_gz(files, [link])})

    # The pinned digest is the real set's: this two-photo stand-in is refused, naming the set and the fix.
    with pytest.raises(DataError, match=r"roboflow_stop_signs .* is not the pinned set.*\n.*download it again"):
        load_dataset("roboflow_stop_signs")

    _unpinned(monkeypatch, "roboflow_stop_signs")
    samples = load_dataset("roboflow_stop_signs")
    assert urls == [record.upstream.url]  # extracted once, cached since
    assert len(samples) == 2
    assert samples[0].boxes.tolist() == [[312.0, 312.0, 520.0, 520.0]] and samples[0].labels.tolist() == [STOP]
    root = tmp_path / "cache/datasets/roboflow_stop_signs" / record.upstream.commit
    written = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert "README.md" not in written and not any("escape" in p or "link" in p for p in written)
    assert not (tmp_path / "cache/escape.txt").exists()
    load_dataset("roboflow_stop_signs")  # cached: no second download
    assert len(urls) == 1


def _zip(files: dict[str, bytes], links: dict[str, str] = {}) -> bytes:  # noqa: B006 (read only)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for name, target in links.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return buf.getvalue()


def test_release_assets_are_extracted_and_put_where_the_record_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """coco128's images are release zips, not in its git tree; the labels come wrapped in another folder."""
    record = DATASETS["coco128"]
    releases = "https://github.com/lightly-ai/coco128_yolo/releases/"
    assert record.assets and all(u.startswith(releases) for u in record.assets)
    images_url, labels_url = "https://example.test/images.zip", "https://example.test/object_detection.zip"
    _unpinned(monkeypatch, "coco128", assets=(images_url, labels_url))
    top = f"coco128_yolo-{record.upstream.commit}"
    payloads = {
        record.upstream.url: _tar_gz({f"{top}/README.md": b"# coco128"}),
        images_url: _zip(
            {"images/train2017/000000000001.jpg": _jpeg_bytes((64, 48)),
             "images/val2017/000000000002.jpg": _jpeg_bytes((64, 48)),
             "../zip-escape.txt": b"must not be written"},
            links={"images/train2017/000000000003.jpg": "/etc/passwd"},
        ),
        labels_url: _zip({"object_detection/labels/train2017/000000000001.txt": b"0 0.5 0.5 0.5 0.5\n",
                          "object_detection/labels/val2017/000000000002.txt": b"11 0.5 0.5 0.25 0.25\n",
                          "object_detection/config.yaml": b"path: ."}),
    }
    urls = _offline(monkeypatch, tmp_path, payloads)
    samples = load_dataset("coco128")
    assert urls == [record.upstream.url, images_url, labels_url]
    assert sorted((s.subset, s.labels.tolist()) for s in samples) == [("train", [0]), ("val", [STOP])]
    root = tmp_path / "cache/datasets/coco128" / record.upstream.commit
    assert (root / "labels/train2017/000000000001.txt").is_file()
    assert not (root / "images/train2017/000000000003.jpg").exists()
    assert not list(tmp_path.rglob("zip-escape.txt"))


def test_archives_without_a_folder_the_record_reads_are_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = DATASETS["coco128"]
    images_url = "https://example.test/images.zip"
    _unpinned(monkeypatch, "coco128", assets=(images_url,))
    _offline(monkeypatch, tmp_path, {
        record.upstream.url: _tar_gz({f"coco128_yolo-{record.upstream.commit}/README.md": b"# coco128"}),
        images_url: _zip({"images/train2017/000000000001.jpg": _jpeg_bytes((64, 48))}),
    })  # fmt: skip
    with pytest.raises(DataError, match=r"0 folders ending in 'labels/train2017'.*\n.*--mirror"):
        load_dataset("coco128")
    assert not (tmp_path / "cache/datasets/coco128" / record.upstream.commit / ".complete").exists()


def test_a_changed_photo_in_the_mirror_is_refused(mirror: Path, tmp_path: Path) -> None:
    """Every load checks the content digest: one edited image in a mirrored set names the set."""
    src = mirror / DATASETS["roadsign_kaggle_stop"].mirror_path
    dst = tmp_path / DATASETS["roadsign_kaggle_stop"].mirror_path
    for path in src.rglob("*"):
        if path.is_file():
            (dst / path.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / path.relative_to(src)).symlink_to(path)
    assert len(load_dataset("roadsign_kaggle_stop", tmp_path)) == 91  # links to the real files: the pinned set
    photo = dst / "images/road302.png"
    photo.unlink()
    image = np.asarray(Image.open(src / "images/road302.png")).copy()
    image[0, 0] ^= 1  # one pixel, one bit
    Image.fromarray(image).save(photo)
    with pytest.raises(DataError, match=r"dataset roadsign_kaggle_stop at .* is not the pinned set"):
        load_dataset("roadsign_kaggle_stop", tmp_path)
