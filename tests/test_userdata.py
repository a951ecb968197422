"""Your own photos (`train --data`): each layout read from real files, clear errors, and the trainer and the
export using them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from devices.errors import DataError
from models.base import TARGET_CLASSES
from toolkit.cli import cli
from toolkit.data.sets import default_splits, split
from toolkit.data.userdata import read_user_dataset

PED, STOP = TARGET_CLASSES.index("pedestrian"), TARGET_CLASSES.index("stop_sign")
ROADS = ("road160", "road167", "road185", "road196", "road229", "road256")


def _road_photos(mirror: Path, dest: Path) -> list[Path]:
    """Real Kaggle road-sign photos (each holds a stop sign) copied into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    src = mirror / "datasets/roadsign_kaggle_stop/images"
    photos = sorted(src.glob("*.png"))[: len(ROADS)]
    return [Path(shutil.copy(p, dest / p.name)) for p in photos]


def _yolo_set(mirror: Path, root: Path, names: str) -> Path:
    """A Roboflow-style export: data.yaml, train/ and valid/ with images and labels."""
    photos = _road_photos(mirror, root / "train/images")
    (root / "valid/images").mkdir(parents=True)
    shutil.move(photos[-1], root / "valid/images" / photos[-1].name)
    for part in ("train", "valid"):
        (root / part / "labels").mkdir(parents=True)
        for image in (root / part / "images").iterdir():
            # class 1 = the set's stop-sign class, class 0 = something we drop (poles), class 2 = a person
            lines = "1 0.5 0.5 0.2 0.2\n0 0.2 0.8 0.05 0.3\n2 0.8 0.6 0.1 0.4\n"
            (root / part / "labels" / f"{image.stem}.txt").write_text(lines)
    (root / "data.yaml").write_text(names)
    return root


def test_yolo_export_keeps_its_split_and_maps_classes_by_name(mirror: Path, tmp_path: Path) -> None:
    root = _yolo_set(mirror, tmp_path / "mine", "train: ../train/images\nnames: ['Pole', 'Sign', 'person']\n")
    samples = read_user_dataset(root)
    assert len(samples) == len(ROADS)
    assert sorted(s.subset for s in samples) == ["train"] * (len(ROADS) - 1) + ["val"]
    assert all(sorted(s.labels.tolist()) == [PED, STOP] for s in samples)  # pole dropped
    assert all(s.labels_people for s in samples) and {s.source for s in samples} == {"data:mine"}
    # The same folder with the names as a mapping, and without people: people are then not its labels.
    (root / "data.yaml").write_text("names:\n  0: pole\n  1: stop sign\n  2: tree\n")
    samples = read_user_dataset(root)
    assert all(s.labels.tolist() == [STOP] for s in samples) and not any(s.labels_people for s in samples)


def test_coco_json_finds_its_images_under_its_folder(mirror: Path, tmp_path: Path) -> None:
    photos = _road_photos(mirror, tmp_path / "set/images/train")
    coco = {
        "images": [{"id": i + 1, "file_name": f"train/{p.name}", "width": 0, "height": 0}
                   for i, p in enumerate(photos)],
        "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 13, "bbox": [10, 10, 50, 60], "area": 3000,
                         "iscrowd": 0} for i in range(len(photos))],
        "categories": [{"id": 1, "name": "person"}, {"id": 13, "name": "stop sign"}],
    }  # fmt: skip
    for i, p in enumerate(photos):
        with Image.open(p) as im:
            coco["images"][i]["width"], coco["images"][i]["height"] = im.size
    (tmp_path / "set/annotations.json").write_text(json.dumps(coco))
    samples = read_user_dataset(tmp_path / "set/annotations.json")
    assert [s.image_path for s in samples] == photos
    assert all(s.boxes.tolist() == [[10, 10, 60, 70]] and s.labels.tolist() == [STOP] for s in samples)


def test_your_split_keeps_copies_of_a_photo_together_wherever_the_json_lies(mirror: Path, tmp_path: Path) -> None:
    """Roboflow's augmented copies of one photo get one id, and a json that names its images by ``../`` gives
    the same ids (so the same split of your photos) from any folder."""
    photos = _road_photos(mirror, tmp_path / "export/train")
    copies = [Path(shutil.copy(photos[0], photos[0].parent / f"{photos[0].stem}_png.rf.{c * 32}.jpg"))
              for c in "ab"]  # fmt: skip
    photos[0].unlink()  # an export holds the copies only
    images = photos[1:] + copies

    def write_json(folder: Path) -> Path:
        folder.mkdir(parents=True)
        coco = {"images": [], "annotations": [], "categories": [{"id": 13, "name": "stop sign"}]}
        for i, p in enumerate(images, 1):
            with Image.open(p) as im:
                width, height = im.size
            name = Path(os.path.relpath(p, folder)).as_posix()
            coco["images"].append({"id": i, "file_name": name, "width": width, "height": height})
            coco["annotations"].append({"id": i, "image_id": i, "category_id": 13, "bbox": [10, 10, 50, 60],
                                        "area": 3000, "iscrowd": 0})  # fmt: skip
        path = folder / "mine.json"
        path.write_text(json.dumps(coco))
        return path

    near, far = write_json(tmp_path / "a"), write_json(tmp_path / "b/c/d")
    samples = read_user_dataset(near)
    groups = [s.group for s in samples]
    assert "../" in json.loads(far.read_text())["images"][0]["file_name"]
    assert groups == [s.group for s in read_user_dataset(far)]
    assert len(set(groups)) == len(photos)  # the two copies share the photo's id
    assert {s.group for s in samples if ".rf." in s.image_path.name} == {f"data:mine/train/{photos[0].stem}.png"}
    train, val = split(samples, val_fraction=0.5)
    assert {s.group for s in train}.isdisjoint(s.group for s in val)


def test_voc_folder(mirror: Path, tmp_path: Path) -> None:
    root = tmp_path / "voc"
    photos = _road_photos(mirror, root / "JPEGImages")
    (root / "Annotations").mkdir()
    for p in photos:
        shutil.copy(mirror / "datasets/roadsign_kaggle_stop/annotations" / f"{p.stem}.xml", root / "Annotations")
    samples = read_user_dataset(root)
    assert len(samples) == len(photos) and all((s.labels == STOP).any() for s in samples)
    assert {s.source for s in samples} == {"data:voc"} and not any(s.labels_people for s in samples)


def test_a_path_of_no_known_layout_is_a_clear_error(mirror: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        read_user_dataset(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"must be a COCO instances \.json"):
        read_user_dataset(tmp_path / "notes.txt")
    _road_photos(mirror, tmp_path / "photos")
    with pytest.raises(DataError, match=r"neither a YOLO set .* nor a VOC set.*\n.*COCO json, YOLO"):
        read_user_dataset(tmp_path / "photos")
    root = _yolo_set(mirror, tmp_path / "bad-names", "names: 3\n")
    with pytest.raises(DataError, match="'names' must list the class names"):
        read_user_dataset(root)
    # A label line that is wrong still names its file and line (the readers' check).
    root = _yolo_set(mirror, tmp_path / "bad-line", "names: [a, Sign, person]\n")
    next((root / "train/labels").iterdir()).write_text("1 0.5 0.5 0.2\n")
    with pytest.raises(DataError, match=r"labels/road\d+\.txt:1: expected 5 fields"):
        read_user_dataset(root)


def test_data_report_and_splits_include_the_users_photos(mirror: Path, tmp_path: Path) -> None:
    root = _yolo_set(mirror, tmp_path / "mine", "names: ['Pole', 'Sign', 'person']\n")
    train, val = default_splits(mirror, data=[root])
    mine_train = [s for s in train if s.source == "data:mine"]
    mine_val = [s for s in val if s.source == "data:mine"]
    assert len(mine_train) == len(ROADS) - 1 and len(mine_val) == 1 and val[0].source == "data:mine"
    run = CliRunner().invoke(cli, ["--mirror", str(mirror), "data", "--data", str(root)])
    assert run.exit_code == 0, run.output
    assert "data:mine" in run.output


@pytest.mark.slow
def test_train_and_export_use_the_users_photos(mirror: Path, tmp_path: Path) -> None:
    from toolkit.export.pipeline import _run_context
    from toolkit.train import recipe, train

    root = _yolo_set(mirror, tmp_path / "mine", "names: ['Pole', 'Sign', 'person']\n")
    config = recipe(model="fastestdet", imgsz=352, epochs=1, batch_size=2, max_train_images=4, max_val_images=3,
                    data=[str(root)])  # fmt: skip
    result = train(config, tmp_path / "run", mirror=str(mirror), progress=False)
    assert result is not None
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["config"]["data"] == [str(root.resolve())]
    assert list(summary["your_photos"]) == ["data:mine"]  # validated apart, and deciding best.pt
    # The export reads the same photos back from best.pt: calibration and the gate see what training saw.
    with _run_context(result.best, tmp_path / "bundles", str(mirror), val_limit=3) as run:
        assert any(s.source == "data:mine" for s in run.train)
        assert str(root.resolve()) in run.val_description
