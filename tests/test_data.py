"""Data ingest: the readers on the real bundled sets, malformed files, image decoding, COCO export."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from devices.errors import ConfigError, DataError
from models.base import COCO80, TARGET_CLASSES
from toolkit.data import (
    ClassMap,
    Sample,
    data_report,
    image_size,
    load_image,
    read_coco,
    read_voc,
    read_yolo,
    render_report,
    to_coco,
)

PED, STOP = TARGET_CLASSES.index("pedestrian"), TARGET_CLASSES.index("stop_sign")


# ------------------------------------------------------------------------------- helpers (fixtures)


def _jpg(path: Path, size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (90, 120, 150)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _yolo_set(tmp_path: Path, label_text: str, size: tuple[int, int] = (64, 48)) -> tuple[Path, Path]:
    images, labels = tmp_path / "images", tmp_path / "labels"
    _jpg(images / "a.jpg", size)
    labels.mkdir(parents=True, exist_ok=True)
    (labels / "a.txt").write_text(label_text)
    return images, labels


NAMES = ("person", "car", "stop sign")


def _voc_xml(filename: str, size: tuple[int, int], objects: list[tuple[str, tuple]]) -> str:
    objs = "".join(
        f"""
    <object>
        <name>{name}</name>
        <bndbox>
            <xmin>{b[0]}</xmin>
            <ymin>{b[1]}</ymin>
            <xmax>{b[2]}</xmax>
            <ymax>{b[3]}</ymax>
        </bndbox>
    </object>"""
        for name, b in objects
    )
    return f"""<annotation>
    <filename>{filename}</filename>
    <size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>{objs}
</annotation>
"""


def _voc_set(tmp_path: Path, xml_text: str, image_size_: tuple[int, int] = (64, 48)) -> tuple[Path, Path]:
    images, ann = tmp_path / "images", tmp_path / "annotations"
    _jpg(images / "r1.jpg", image_size_)
    ann.mkdir(parents=True, exist_ok=True)
    (ann / "r1.xml").write_text(xml_text)
    return images, ann


# ---------------------------------------------------------------------------------- real files: YOLO


def _count_yolo(labels_dir: Path, images_dir: Path, class_ids: dict[str, str]) -> tuple[Counter, Counter]:
    """Independent count: boxes and images per class from the raw lines of label files with an image."""
    stems = {p.stem for p in images_dir.iterdir()}
    boxes, images = Counter(), Counter()
    for txt in labels_dir.glob("*.txt"):
        if txt.stem not in stems:
            continue
        ids = [line.split()[0] for line in txt.read_text().splitlines() if line.strip()]
        for raw, name in class_ids.items():
            boxes[name] += ids.count(raw)
            images[name] += raw in ids
    return boxes, images


@pytest.mark.parametrize("part", ["train2017", "val2017"])
def test_read_yolo_coco128_counts_match_the_label_files(mirror: Path, part: str) -> None:
    root = mirror / "datasets/coco128"
    images_dir, labels_dir = root / "images" / part, root / "labels" / part
    samples = read_yolo(images_dir, labels_dir, COCO80, None, "coco128", orphan_labels="skip")
    want_boxes, want_images = _count_yolo(labels_dir, images_dir, {"0": "pedestrian", "11": "stop_sign"})
    report = data_report(samples)
    assert len(samples) == len(list(images_dir.glob("*.jpg"))) == 128
    for name in TARGET_CLASSES:
        assert report["per_class"][name]["boxes"] == want_boxes[name]
        assert report["per_class"][name]["images"] == want_images[name]
    # The README's totals over both halves (611 person boxes) include the two label files without
    # an image; these are the counts of what can actually be trained on.
    assert want_boxes["pedestrian"] == {"train2017": 254, "val2017": 350}[part]
    for s in samples:
        assert (s.width, s.height) == Image.open(s.image_path).size
        assert s.boxes.dtype == np.float32 and s.labels.dtype == np.int64
        assert (s.boxes[:, :2] >= 0).all() and (s.boxes[:, 2] <= s.width).all() and (s.boxes[:, 3] <= s.height).all()


def test_read_yolo_refuses_coco128_train_labels_without_images_unless_told(mirror: Path) -> None:
    root = mirror / "datasets/coco128"
    with pytest.raises(DataError, match=re.escape("000000000656.txt")):
        read_yolo(root / "images/train2017", root / "labels/train2017", COCO80, None, "coco128")


def test_read_yolo_coco128_boxes_are_the_label_lines_in_pixels(mirror: Path) -> None:
    root = mirror / "datasets/coco128"
    samples = read_yolo(root / "images/val2017", root / "labels/val2017", COCO80, None, "coco128")
    s = next(s for s in samples if len(s.labels))
    lines = [
        [float(v) for v in ln.split()]
        for ln in (root / "labels/val2017" / f"{s.image_path.stem}.txt").read_text().splitlines()
        if ln.split()[0] in ("0", "11")
    ]
    want = np.array(
        [
            [(x - w / 2) * s.width, (y - h / 2) * s.height, (x + w / 2) * s.width, (y + h / 2) * s.height]
            for _, x, y, w, h in lines
        ]
    )
    np.testing.assert_allclose(s.boxes, np.clip(want, 0, [s.width, s.height, s.width, s.height]), atol=1e-3)
    assert s.labels.tolist() == [PED if c == 0 else STOP for c, *_ in lines]


def test_read_yolo_roboflow_keeps_signs_and_drops_poles(mirror: Path) -> None:
    root = mirror / "datasets/roboflow_stop_signs/train"
    samples = read_yolo(root / "images", root / "labels", ("Pole", "Sign"), None, "roboflow", labels_people=False)
    want_boxes, want_images = _count_yolo(root / "labels", root / "images", {"1": "stop_sign", "0": "pole"})
    assert len(samples) == 492
    assert sum(len(s.labels) for s in samples) == want_boxes["stop_sign"]
    assert sum(bool(len(s.labels)) for s in samples) == want_images["stop_sign"]
    assert all((s.labels == STOP).all() and not s.labels_people for s in samples)
    assert {(s.width, s.height) for s in samples} == {(832, 832)}


# ----------------------------------------------------------------------------------- real files: VOC


def test_read_voc_roadsign_counts_match_the_xml(mirror: Path) -> None:
    root = mirror / "datasets/roadsign_kaggle_stop"
    samples = read_voc(root / "images", root / "annotations", None, "roadsign", labels_people=False)
    want = Counter()
    sizes = {}
    for xml in (root / "annotations").glob("*.xml"):
        tree = ET.parse(xml).getroot()
        sizes[tree.findtext("filename")] = (int(tree.findtext("size/width")), int(tree.findtext("size/height")))
        want.update(o.findtext("name") for o in tree.iter("object"))
    assert len(samples) == len(sizes) == 91
    assert sum(len(s.labels) for s in samples) == want["stop"] == 91
    assert all((s.labels == STOP).all() for s in samples)  # traffic lights, crosswalks, speed limits dropped
    assert all(sizes[s.image_path.name] == (s.width, s.height) for s in samples)


def test_load_image_rgba_png_drops_alpha_like_cv2(mirror: Path) -> None:
    """The device reads frames with cv2; training must see the same pixels."""
    root = mirror / "datasets/roadsign_kaggle_stop/images"
    for path in sorted(root.glob("*.png"))[:3] + sorted((mirror / "datasets/coco128/images/val2017").glob("*.jpg"))[:3]:
        img = load_image(path)
        ref = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert img.dtype == np.uint8 and img.shape == ref.shape == (*image_size(path)[::-1], 3)
        assert np.abs(img.astype(int) - ref).mean() < 1.0


# ---------------------------------------------------------------------------------- real files: COCO


def test_read_coco_agrees_with_the_yolo_labels_of_the_same_images(mirror: Path) -> None:
    root = mirror / "datasets/coco128"
    json_path = root / "instances_train2017.json"
    samples = read_coco(json_path, root / "images/train2017", None, "coco128")
    raw = json.loads(json_path.read_text())
    cats = {c["id"]: c["name"] for c in raw["categories"]}
    want = Counter(cats[a["category_id"]] for a in raw["annotations"] if not a["iscrowd"])
    assert len(samples) == len(raw["images"]) == 128
    assert sum((s.labels == PED).sum() for s in samples) == want["person"]
    assert sum((s.labels == STOP).sum() for s in samples) == want["stop sign"]

    # The same photos read from the YOLO txt give the same boxes (txt rounding: < 1 px).
    yolo = {
        s.image_path.name: s
        for s in read_yolo(
            root / "images/train2017", root / "labels/train2017", COCO80, None, "coco128", orphan_labels="skip"
        )
    }
    for s in samples:
        other = yolo[s.image_path.name]
        assert s.group == other.group  # the same photo whichever file describes it
        a = s.boxes[np.lexsort(s.boxes.T[::-1])]
        b = other.boxes[np.lexsort(other.boxes.T[::-1])]
        assert a.shape == b.shape, s.image_path.name
        np.testing.assert_allclose(a, b, atol=1.0)


# ------------------------------------------------------------------------------- malformed: YOLO txt


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2\n", 2, "expected 5 fields"),
        ("0 0.5 0.5 0.2 0.2 0.3 0.3\n", 1, "segmentation"),
        ("\n0 0.5 half 0.2 0.2\n", 2, "not a number"),
        ("3 0.5 0.5 0.2 0.2\n", 1, "class id 3 is out of range"),
        ("1.5 0.5 0.5 0.2 0.2\n", 1, "out of range"),
        ("0 0.5 0.5 0.2 0.2\n0 1.3 0.5 0.2 0.2\n", 2, "outside [0, 1]"),
        ("0 0.5 0.5 0 0.2\n", 1, "non-positive"),
        ("0 0.95 0.5 0.4 0.2\n", 1, "outside the 64x48 image"),
    ],
)
def test_read_yolo_bad_lines_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    images, labels = _yolo_set(tmp_path, text)
    with pytest.raises(DataError) as exc:
        read_yolo(images, labels, NAMES, None, "fixture")
    assert f"{labels / 'a.txt'}:{line}:" in str(exc.value)
    assert message in str(exc.value)
    assert "fix:" in str(exc.value)


def test_read_yolo_clips_border_rounding_and_drops_slivers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Box 1 reaches 0.5 % past the right edge (converter rounding): clipped and kept.
    # Box 2 covers the last half pixel and 0.5 px beyond: a sliver after clipping, dropped.
    images, labels = _yolo_set(tmp_path, "0 0.9025 0.5 0.2 0.5\n2 1.0 0.5 0.01 0.5\n", size=(100, 50))
    with caplog.at_level(logging.INFO, logger="toolkit.data"):
        (s,) = read_yolo(images, labels, NAMES, None, "fixture")
    np.testing.assert_allclose(s.boxes, [[80.25, 12.5, 100.0, 37.5]], atol=1e-4)
    assert s.labels.tolist() == [PED]
    assert "a.txt:2" in caplog.text and "thinner than" in caplog.text


def test_read_yolo_image_without_labels_is_a_negative(tmp_path: Path) -> None:
    images, labels = _yolo_set(tmp_path, "0 0.5 0.5 0.2 0.2\n")
    _jpg(images / "empty_scene.jpg")
    samples = {s.image_path.name: s for s in read_yolo(images, labels, NAMES, None, "fixture")}
    assert len(samples["empty_scene.jpg"].labels) == 0 and samples["empty_scene.jpg"].boxes.shape == (0, 4)
    assert len(samples["a.jpg"].labels) == 1


def test_read_yolo_label_without_image_is_an_error(tmp_path: Path) -> None:
    images, labels = _yolo_set(tmp_path, "0 0.5 0.5 0.2 0.2\n")
    (labels / "lost.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=re.escape("lost.txt")):
        read_yolo(images, labels, NAMES, None, "fixture")
    assert len(read_yolo(images, labels, NAMES, None, "fixture", orphan_labels="skip")) == 1


def test_read_yolo_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(DataError, match="no images") as exc:
        read_yolo(tmp_path / "images", tmp_path / "labels", NAMES, None, "fixture")
    assert str(tmp_path / "images") in str(exc.value)
    with pytest.raises(DataError, match="not found"):
        read_yolo(tmp_path / "nope", tmp_path / "labels", NAMES, None, "fixture")


def test_corrupt_image_bytes_name_the_file(tmp_path: Path) -> None:
    images, labels = _yolo_set(tmp_path, "0 0.5 0.5 0.2 0.2\n")
    (images / "broken.jpg").write_bytes(b"this is not a jpeg at all")
    with pytest.raises(DataError, match=re.escape("broken.jpg")) as exc:
        read_yolo(images, labels, NAMES, None, "fixture")
    assert "corrupt" in str(exc.value)

    # A truncated body passes the cheap header read and fails when decoded.
    full = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8)).save(full, "JPEG")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    assert image_size(truncated) == (200, 200)
    with pytest.raises(DataError, match=re.escape("cut.jpg")):
        load_image(truncated)
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "missing.jpg")


def test_class_map_is_configurable_and_validated(tmp_path: Path) -> None:
    images, labels = _yolo_set(tmp_path, "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.2 0.2\n2 0.7 0.7 0.2 0.2\n")
    (s,) = read_yolo(images, labels, NAMES, None, "fixture")
    assert s.labels.tolist() == [PED, STOP]  # "car" is unmapped and dropped
    (s,) = read_yolo(images, labels, NAMES, {"car": "pedestrian", "person": None}, "fixture")
    assert s.labels.tolist() == [PED]
    np.testing.assert_allclose(s.boxes[0], [12.8, 9.6, 25.6, 19.2], atol=1e-4)
    with pytest.raises(ConfigError, match="'bicycle'"):
        ClassMap({"car": "bicycle"})
    assert ClassMap().index("Sign") == STOP and ClassMap().index("sign") is None


# -------------------------------------------------------------------------------- malformed: VOC xml


def test_read_voc_reads_a_valid_file(tmp_path: Path) -> None:
    images, ann = _voc_set(tmp_path, _voc_xml("r1.jpg", (64, 48), [("stop", (10, 5, 30, 25)), ("tree", (1, 1, 5, 5))]))
    (s,) = read_voc(images, ann, None, "fixture")
    assert s.labels.tolist() == [STOP] and s.boxes.tolist() == [[10, 5, 30, 25]]
    assert s.group == "fixture/r1"


def test_read_voc_broken_xml_names_file_and_line(tmp_path: Path) -> None:
    text = _voc_xml("r1.jpg", (64, 48), [("stop", (10, 5, 30, 25))]).replace("</ymax>", "</ymaxx>")
    images, ann = _voc_set(tmp_path, text)
    with pytest.raises(DataError, match="XML parse error") as exc:
        read_voc(images, ann, None, "fixture")
    bad_line = next(i for i, ln in enumerate(text.splitlines(), 1) if "</ymaxx>" in ln)
    assert f"{ann / 'r1.xml'}:{bad_line}:" in str(exc.value)


def test_read_voc_bad_boxes_name_file_and_line(tmp_path: Path) -> None:
    text = _voc_xml("r1.jpg", (64, 48), [("stop", (10, 5, 30, 25)), ("stop", (40, 5, 90, 25))])
    images, ann = _voc_set(tmp_path, text)
    with pytest.raises(DataError, match="outside the 64x48 image") as exc:
        read_voc(images, ann, None, "fixture")
    second_object = [i for i, ln in enumerate(text.splitlines(), 1) if "<object>" in ln][1]
    assert f"r1.xml:{second_object}:" in str(exc.value)

    (ann / "r1.xml").write_text(_voc_xml("r1.jpg", (64, 48), [("stop", ("ten", 5, 30, 25))]))
    with pytest.raises(DataError, match="not a number"):
        read_voc(images, ann, None, "fixture")


def test_read_voc_missing_image_size_mismatch_and_empty_dir(tmp_path: Path) -> None:
    images, ann = _voc_set(tmp_path, _voc_xml("gone.jpg", (64, 48), [("stop", (10, 5, 30, 25))]))
    with pytest.raises(DataError, match=re.escape("gone.jpg")) as exc:
        read_voc(images, ann, None, "fixture")
    assert "r1.xml" in str(exc.value)
    (ann / "r1.xml").write_text(_voc_xml("r1.jpg", (48, 64), [("stop", (10, 5, 30, 25))]))
    with pytest.raises(DataError, match="<size> says 48x64"):
        read_voc(images, ann, None, "fixture")
    (ann / "r1.xml").unlink()
    with pytest.raises(DataError, match=r"no \.xml annotation files"):
        read_voc(images, ann, None, "fixture")


# ------------------------------------------------------------------------------- malformed: COCO json


def _coco_json(tmp_path: Path, **overrides: object) -> Path:
    _jpg(tmp_path / "imgs/p1.jpg", (64, 48))
    data = {
        "images": [{"id": 7, "file_name": "p1.jpg", "width": 64, "height": 48}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 5, 20, 20], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 60, 40], "iscrowd": 1},
            {"id": 3, "image_id": 7, "category_id": 13, "bbox": [30, 10, 10, 10]},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 13, "name": "stop sign"}],
    }
    data.update(overrides)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def test_read_coco_reads_boxes_and_drops_crowds(tmp_path: Path) -> None:
    (s,) = read_coco(_coco_json(tmp_path), tmp_path / "imgs", None, "fixture")
    assert s.labels.tolist() == [PED, STOP]
    assert s.boxes.tolist() == [[10, 5, 30, 25], [30, 10, 40, 20]]


def test_read_coco_errors_name_the_file(tmp_path: Path) -> None:
    path = _coco_json(tmp_path, images=[{"id": 7, "file_name": "missing.jpg", "width": 64, "height": 48}])
    with pytest.raises(DataError, match=re.escape("missing.jpg")) as exc:
        read_coco(path, tmp_path / "imgs", None, "fixture")
    assert "ann.json" in str(exc.value)

    path = _coco_json(tmp_path, categories=[{"id": 1, "name": "person"}])
    with pytest.raises(DataError, match="category_id 13"):
        read_coco(path, tmp_path / "imgs", None, "fixture")

    path = _coco_json(tmp_path, images=[])
    with pytest.raises(DataError, match="empty"):
        read_coco(path, tmp_path / "imgs", None, "fixture")

    path.write_text('{"images": [\n  {"id": 1,\n  oops}\n]}')
    with pytest.raises(DataError, match=r"ann\.json:3: invalid JSON"):
        read_coco(path, tmp_path / "imgs", None, "fixture")


@pytest.mark.parametrize("bbox", [[10, 5, -20, 20], [10, 5, 20, 0]])
def test_read_coco_refuses_a_box_without_width_or_height_naming_the_annotation(tmp_path: Path, bbox) -> None:
    anns = [{"id": 41, "image_id": 7, "category_id": 1, "bbox": bbox, "iscrowd": 0}]
    with pytest.raises(DataError, match=r"ann\.json: annotation id 41 \(image p1\.jpg\): box .* non-positive"):
        read_coco(_coco_json(tmp_path, annotations=anns), tmp_path / "imgs", None, "fixture")


@pytest.mark.parametrize("box", [(30, 5, 10, 25), (10, 25, 30, 25)])
def test_read_voc_refuses_a_box_without_width_or_height_naming_the_object(tmp_path: Path, box) -> None:
    text = _voc_xml("r1.jpg", (64, 48), [("stop", (10, 5, 30, 25)), ("stop", box)])
    images, ann = _voc_set(tmp_path, text)
    second_object = [i for i, ln in enumerate(text.splitlines(), 1) if "<object>" in ln][1]
    with pytest.raises(DataError, match=rf"r1\.xml:{second_object}: box .* non-positive width or height"):
        read_voc(images, ann, None, "fixture")


# ---------------------------------------------------------------------------------- image decoding


def test_load_image_rgba_grey_palette_and_16_bit(tmp_path: Path) -> None:
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10  # red under an almost transparent alpha
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    img = load_image(tmp_path / "rgba.png")
    assert img.shape == (6, 8, 3) and img[0, 0].tolist() == [0, 0, 200]  # alpha dropped, BGR order

    Image.fromarray(np.full((6, 8), 77, np.uint8), "L").save(tmp_path / "grey.png")
    assert load_image(tmp_path / "grey.png")[0, 0].tolist() == [77, 77, 77]

    pal = Image.new("P", (8, 6))
    pal.putpalette([10, 20, 30] + [0] * 765)
    pal.save(tmp_path / "pal.png")
    assert load_image(tmp_path / "pal.png")[0, 0].tolist() == [30, 20, 10]

    wide = np.array([[0, 32896, 65535]], np.uint16)
    Image.fromarray(wide).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    img = load_image(tmp_path / "deep.png")
    assert img.shape == (1, 3, 3) and img[0, :, 0].tolist() == [0, 128, 255]  # scaled, not clipped


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_exif_rotation_size_and_pixels_agree(tmp_path: Path, fmt: str) -> None:
    # Stored 40 wide x 20 high with a red left half; orientation 6 = show it turned 90° clockwise.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "images" / f"rot.{fmt}"
    path.parent.mkdir()
    Image.fromarray(stored).save(path, exif=exif.tobytes())
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels/rot.txt").write_text("0 0.5 0.25 0.5 0.5\n")  # top half of the upright photo

    (s,) = read_yolo(tmp_path / "images", tmp_path / "labels", NAMES, None, "fixture")
    img = load_image(path)
    assert (s.width, s.height) == (20, 40) == (img.shape[1], img.shape[0])
    assert img.shape == cv2.imread(str(path)).shape  # the device's decoder turns it the same way
    np.testing.assert_allclose(s.boxes, [[5, 0, 15, 20]])
    assert img[5, 10, 2] > 200 and img[35, 10, 2] < 50  # the red half is now on top


# ----------------------------------------------------------------------------------- writing, report


def _samples(tmp_path: Path) -> list[Sample]:
    a, b = _jpg(tmp_path / "a.jpg", (100, 80)), _jpg(tmp_path / "b.jpg", (100, 80))
    return [
        Sample(a, 100, 80, np.array([[0, 0, 10, 10], [10, 10, 60, 70]]), np.array([PED, STOP]), "s1", "s1/a"),
        Sample(b, 100, 80, np.zeros((0, 4)), np.zeros(0), "s2", "s2/b", labels_people=False),
    ]


def test_to_coco_round_trips_through_pycocotools(tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    samples = _samples(tmp_path)
    path = to_coco(samples, tmp_path / "out/gt.json")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
    assert [c["name"] for c in gt.loadCats(gt.getCatIds())] == list(TARGET_CLASSES)
    # Relative to the json's folder, which evaluation resolves it against; readable as any file the user writes.
    assert not Path(gt.imgs[1]["file_name"]).is_absolute()
    assert (path.parent / gt.imgs[1]["file_name"]).resolve() == samples[0].image_path.resolve()
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    ann = gt.loadAnns(gt.getAnnIds(imgIds=[1], catIds=[STOP + 1]))[0]
    assert ann["bbox"] == [10, 10, 50, 60] and ann["area"] == 3000 and ann["iscrowd"] == 0

    # The ground truth scored as detections is a perfect result.
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt.dataset["annotations"]
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[1] == pytest.approx(1.0)  # AP@0.5


def test_data_report_counts(tmp_path: Path) -> None:
    report = data_report(_samples(tmp_path))
    assert report["images"] == 2 and report["boxes"] == 2 and report["negatives"] == 1
    assert report["per_class"]["stop_sign"] == {"images": 1, "boxes": 1}
    assert report["per_source"]["s2"]["labels_people"] is False
    assert report["coco_sizes"]["pedestrian"] == {"small": 1, "medium": 0, "large": 0}
    assert report["coco_sizes"]["stop_sign"] == {"small": 0, "medium": 1, "large": 0}  # 50x60 px
    assert report["size_bins"]["pedestrian"]["0-16"] == 1 and report["size_bins"]["stop_sign"]["32-64"] == 1
    text = render_report(report)
    assert "2 images, 2 boxes" in text and "s2" in text


def test_sample_is_frozen(tmp_path: Path) -> None:
    s = _samples(tmp_path)[0]
    with pytest.raises(ValueError):
        s.boxes[0, 0] = 5
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        Sample(s.image_path, 1, 1, s.boxes, s.labels[:1], "x", "x")
