"""COCO instances json: read into ``Sample`` records, and write samples back as one."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from devices.errors import ConfigError, DataError
from models.base import TARGET_CLASSES
from toolkit.data.images import image_size
from toolkit.data.sample import (
    ClassMap,
    DropTally,
    GroupFn,
    ImageBoxes,
    Sample,
    path_group,
)

log = logging.getLogger(__name__)


def _coco_tables(data: Any, json_path: Path) -> tuple[list[dict], list[dict], dict[int, str]]:
    if not isinstance(data, dict):
        raise DataError(f"{json_path}: top level is not a JSON object", "give a COCO instances json")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(
                f"{json_path}: no '{key}' list", "give a COCO instances json (images, annotations, categories)"
            )
    try:
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{json_path}: a category lacks 'id' or 'name' ({exc})", "fix the categories list") from exc
    return data["images"], data["annotations"], categories


def _coco_boxes(
    anns: list[dict],
    json_path: Path,
    image: dict,
    width: int,
    height: int,
    categories: dict[int, str],
    cmap: ClassMap,
    dropped: DropTally,
) -> tuple[np.ndarray, np.ndarray]:
    kept = ImageBoxes(width, height, cmap, dropped)
    for ann in anns:
        where = f"{json_path}: annotation id {ann.get('id')} (image {image['file_name']})"
        category = categories.get(ann.get("category_id"))  # type: ignore[arg-type]
        if category is None:
            raise DataError(
                f"{where}: category_id {ann.get('category_id')} is not in 'categories'",
                "add the category or fix the annotation's category_id",
            )
        if ann.get("iscrowd", 0):
            dropped.crowd += 1  # a crowd region is an ignore area for COCOeval, not one object to learn
            continue
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DataError(f"{where}: bbox {bbox!r} is not [x, y, width, height]", "fix the bbox")
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: bbox {bbox!r} has a non-number", "fix the bbox") from exc
        kept.add([x, y, x + w, y + h], category, where)
    return kept.arrays()


def read_coco(
    json_path: str | os.PathLike,
    images_dir: str | os.PathLike,
    class_map: ClassMap | Mapping[str, str | None] | None = None,
    source: str = "coco",
    *,
    labels_people: bool = True,
    subset: Literal["train", "val"] | None = None,
    group_fn: GroupFn | None = None,
) -> list[Sample]:
    """Read a COCO instances json whose ``file_name`` entries are relative to ``images_dir``.

    Crowd regions (``iscrowd: 1``) are dropped (logged): they mark a crowd to ignore, not a box to
    learn. Images without annotations are negatives.

    Args:
        json_path: The annotation file.
        images_dir: Folder ``file_name`` is relative to (an absolute ``file_name`` is used as is).
        class_map: Category name -> target class; None for ``DEFAULT_CLASS_MAP``.
        source: Dataset name stored in each sample.
        labels_people: Whether this set annotates people at all.
        subset: Upstream split of this file, or None.
        group_fn: Image path -> original-photo id; default ``<source>/<image path without suffix>``.

    Raises:
        DataError: Broken json, an image listed but missing, an unknown image or category id, a size
            mismatch, a bad box, or no image at all.
    """
    json_path, images_dir = Path(json_path), Path(images_dir)
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"annotation file not found: {json_path}", "check the path") from exc
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{json_path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})",
            "fix or re-export the json (a truncated download?)",
        ) from exc
    images, annotations, categories = _coco_tables(data, json_path)
    if not images:
        raise DataError(f"{json_path}: the 'images' list is empty", "check the file; an empty set is never skipped")
    cmap = ClassMap.of(class_map)
    group_fn = group_fn or path_group(source, images_dir)

    # Index annotations by image, refusing ids that point nowhere.
    image_ids = {img.get("id") for img in images}
    by_image: dict[Any, list[dict]] = {}
    for ann in annotations:
        if ann.get("image_id") not in image_ids:
            raise DataError(
                f"{json_path}: annotation id {ann.get('id')} refers to image_id "
                f"{ann.get('image_id')}, which is not in 'images'",
                "fix or delete that annotation",
            )
        by_image.setdefault(ann["image_id"], []).append(ann)

    dropped = DropTally()
    samples = []
    for image in sorted(images, key=lambda i: str(i.get("file_name"))):
        if "file_name" not in image:
            raise DataError(f"{json_path}: image id {image.get('id')} has no file_name", "add its file_name")
        image_path = images_dir / image["file_name"]
        if not image_path.is_file():
            raise DataError(
                f"{json_path}: image id {image.get('id')} lists {image['file_name']}, which is "
                f"missing from {images_dir}",
                "restore the image, or pass the right images_dir",
            )
        width, height = image_size(image_path)
        declared_width, declared_height = image.get("width"), image.get("height")
        if (declared_width is not None and declared_height is not None
                and (int(declared_width), int(declared_height)) != (width, height)):
            raise DataError(
                f"{json_path}: image {image['file_name']} is recorded as {declared_width}x{declared_height} "
                f"but is {width}x{height} as loaded (after EXIF orientation)",
                "use the images the json was made for, or fix its width/height",
            )
        boxes, labels = _coco_boxes(
            by_image.get(image["id"], []), json_path, image, width, height, categories, cmap, dropped
        )
        samples.append(
            Sample(image_path, width, height, boxes, labels, source, group_fn(image_path), labels_people, subset)
        )
    dropped.log(source)
    log.info("%s: read %d images from %s", source, len(samples), json_path)
    return samples


def to_coco(samples: Sequence[Sample], path: str | os.PathLike, class_names: Sequence[str] = TARGET_CLASSES) -> Path:
    """Write samples as a COCO instances json, so any split evaluates through pycocotools.

    Layout: image ``id`` is the sample's position + 1; ``file_name`` is the image's path relative to the
    json's folder (evaluation resolves a relative ``file_name`` against it, so the file reads the same from
    any working directory and names no absolute path); ``category_id`` is label + 1, named after
    ``class_names``; ``bbox`` is ``[x, y, w, h]`` pixels with ``area = w * h`` (no masks) and ``iscrowd = 0``.
    The file gets the permissions of any file the user writes (0644 under umask 022).

    Returns:
        The path written.

    Raises:
        ConfigError: A sample has a label outside ``class_names``.
    """
    path = Path(path)
    root = path.parent.resolve()
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, sample in enumerate(samples, start=1):
        images.append(
            {
                "id": image_id,
                "file_name": os.path.relpath(Path(sample.image_path).resolve(), root),
                "width": int(sample.width),
                "height": int(sample.height),
            }
        )
        for box, label in zip(sample.boxes.tolist(), sample.labels.tolist(), strict=True):
            if not 0 <= label < len(class_names):
                raise ConfigError(
                    f"{sample.image_path}: label {label} is outside the class names {list(class_names)}",
                    "pass the class names the samples were read with",
                )
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    data = {
        "info": {"description": "written by edgesight toolkit.data.to_coco"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "object"} for i, name in enumerate(class_names)],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: a reader never sees half a file. The temporary file is created 0600; the json is not
    # a secret, so it gets the mode the umask gives any new file.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as tmp:
        json.dump(data, tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp.name, 0o666 & ~umask)
    os.replace(tmp.name, path)
    return path
