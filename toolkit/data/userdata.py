"""Your own annotated photos, added to training with ``edgesight train --data PATH``.

``PATH`` is read by its layout, in one of the three formats the readers know:

- a COCO instances ``.json`` file; its ``file_name`` entries are relative to the json's folder or to a folder
  under it (``images/train2017/``, found by the first image), or absolute;
- a YOLO folder (Ultralytics or Roboflow export): a ``data.yaml`` (or one other YAML file) with the class
  ``names``, and every ``images/`` folder beside a ``labels/`` folder under it (``train/images`` +
  ``train/labels``, ``images/train2017`` + ``labels/train2017``, ...). Folders named ``valid``/``val`` keep
  the export's own validation split, ``train`` its training split;
- a Pascal VOC folder: ``.xml`` files in ``Annotations/``, ``annotations/`` or the folder itself, images in
  ``JPEGImages/``, ``images/`` or the folder itself.

Classes are matched by name (``person`` -> pedestrian, ``stop sign``/``Sign``/``stop`` -> stop_sign);
everything else is dropped. A set without a single pedestrian box is taken not to annotate people, so the
people in its photos are pseudo-labelled by the teacher instead of being learnt as background.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

from devices.errors import DataError
from models.base import TARGET_CLASSES
from toolkit.data.coco import read_coco
from toolkit.data.sample import Sample, path_group
from toolkit.data.voc import read_voc
from toolkit.data.yolo import read_yolo

log = logging.getLogger(__name__)

_VOC_ANNOTATIONS = ("Annotations", "annotations")

_VOC_IMAGES = ("JPEGImages", "images")

_SUBSETS: dict[str, Literal["train", "val"]] = {"train": "train", "valid": "val", "val": "val"}


def read_user_dataset(path: str | os.PathLike) -> list[Sample]:
    """Read the annotated photos at ``path`` (COCO json, YOLO folder or VOC folder; see the module doc).

    Raises:
        DataError: The path is missing, its layout is none of the three, or the files are malformed (the
            readers name the file and the line).
    """
    path = Path(path).expanduser().resolve()  # so that "--data ." is named after its folder
    if not path.exists():
        raise DataError(f"--data {path}: no such file or folder", "pass a COCO .json file, a YOLO or a VOC folder")
    source = f"data:{path.stem if path.is_file() else path.name}"
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise DataError(
                f"--data {path}: a file must be a COCO instances .json",
                "pass the .json itself, or the folder of a YOLO (data.yaml) or VOC (.xml) set",
            )
        samples = read_coco(path, _coco_images_dir(path), source=source)
    elif (yaml_path := _yolo_yaml(path)) is not None:
        samples = _read_yolo_tree(path, yaml_path, source)
    elif any(_voc_annotations(path).glob("*.xml")):
        samples = _read_voc_folder(path, source)
    else:
        raise DataError(
            f"--data {path}: neither a YOLO set (no data.yaml with names) nor a VOC set (no .xml annotations)",
            "export the set from your labelling tool as COCO json, YOLO (with data.yaml) or Pascal VOC",
        )
    people = TARGET_CLASSES.index("pedestrian")
    if not any((s.labels == people).any() for s in samples):
        samples = [replace(s, labels_people=False) for s in samples]
        log.info("%s: no pedestrian boxes, so its people are pseudo-labelled by the teacher", source)
    log.info("%s: %d images, %d boxes", source, len(samples), sum(len(s.labels) for s in samples))
    return samples


def read_user_datasets(paths: Sequence[str | os.PathLike]) -> list[Sample]:
    """Every ``--data`` set, in the order given."""
    return [s for p in paths for s in read_user_dataset(p)]


def _coco_images_dir(json_path: Path) -> Path:
    """The folder the json's ``file_name`` entries are relative to: its own, or the one under it holding them."""
    try:
        images = json.loads(json_path.read_text()).get("images") or []
    except (OSError, ValueError, AttributeError):
        return json_path.parent  # read_coco reports what is wrong with the file
    first = str(images[0].get("file_name", "")) if images and isinstance(images[0], dict) else ""
    if not first or Path(first).is_absolute() or (json_path.parent / first).is_file():
        return json_path.parent
    found = next((p for p in json_path.parent.rglob(Path(first).name) if p.as_posix().endswith("/" + first)), None)
    return found.parents[len(Path(first).parts) - 1] if found else json_path.parent


def _yolo_names(yaml_path: Path) -> tuple[str, ...]:
    import yaml

    try:
        names = (yaml.safe_load(yaml_path.read_text()) or {}).get("names")
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"cannot read {yaml_path}: {exc}", "fix the YAML syntax") from exc
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            ids = []
        if ids == list(range(len(names))):
            return tuple(str(names[i] if i in names else names[str(i)]) for i in ids)
    elif isinstance(names, list) and names:
        return tuple(str(n) for n in names)
    raise DataError(
        f"{yaml_path}: 'names' must list the class names by id (a list, or a mapping 0: name, 1: name, ...)",
        "add the names your label files' class ids refer to",
    )


def _yolo_yaml(root: Path) -> Path | None:
    """``data.yaml``, or else the one YAML file at the top of ``root`` that has ``names:`` (``config.yaml``...)."""
    if (root / "data.yaml").is_file():
        return root / "data.yaml"
    found = [p for p in sorted(root.glob("*.y*ml")) if re.search(r"^names\s*:", p.read_text(errors="replace"), re.M)]
    return found[0] if len(found) == 1 else None


def _read_yolo_tree(root: Path, yaml_path: Path, source: str) -> list[Sample]:
    names = _yolo_names(yaml_path)
    pairs = sorted(p for p in root.rglob("images") if p.is_dir() and (p.parent / "labels").is_dir())
    if not pairs:
        raise DataError(
            f"{root}: data.yaml but no images/ folder beside a labels/ folder",
            "keep the export's layout: train/images with train/labels (and valid/...)",
        )
    samples: list[Sample] = []
    for images in pairs:
        subset = _SUBSETS.get(images.parent.name.lower()) if images.parent != root else None
        samples += read_yolo(images, images.parent / "labels", names, source=source, subset=subset,
                             group_fn=path_group(source, root))  # fmt: skip
    return samples


def _voc_annotations(root: Path) -> Path:
    return next((root / d for d in _VOC_ANNOTATIONS if (root / d).is_dir()), root)


def _read_voc_folder(root: Path, source: str) -> list[Sample]:
    images = next((root / d for d in _VOC_IMAGES if (root / d).is_dir()), root)
    return read_voc(images, _voc_annotations(root), source=source, group_fn=path_group(source, root))
