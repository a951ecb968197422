"""YOLO-layout sets (Ultralytics, Roboflow): ``images/<rel>.<ext>`` with ``labels/<rel>.txt``."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from devices.errors import DataError
from toolkit.data.images import IMAGE_SUFFIXES, image_size, is_image
from toolkit.data.sample import (
    BORDER_TOLERANCE,
    ClassMap,
    DropTally,
    GroupFn,
    ImageBoxes,
    Sample,
    box_arrays,
    path_group,
    require_dir,
)

log = logging.getLogger(__name__)


def _parse_yolo_line(line: str, where: str, names: Sequence[str]) -> tuple[int, float, float, float, float]:
    """``class cx cy w h`` (normalised) -> values, or DataError naming the line."""
    fields = line.split()
    if len(fields) != 5:
        hint = " (this looks like a segmentation polygon)" if len(fields) > 5 and len(fields) % 2 else ""
        raise DataError(
            f"{where}: expected 5 fields 'class cx cy w h', found {len(fields)}{hint}: {line.strip()!r}",
            "write one box per line as 'class_id x_center y_center width height', normalised to 0..1",
        )
    try:
        cls_f, cx, cy, w, h = (float(v) for v in fields)
    except ValueError as exc:
        raise DataError(f"{where}: not a number in {line.strip()!r}", "fields must be numbers") from exc
    if not cls_f.is_integer() or not 0 <= cls_f < len(names):
        raise DataError(
            f"{where}: class id {fields[0]} is out of range for {len(names)} class names",
            f"class ids must be integers 0..{len(names) - 1}; check the names list (data.yaml) matches the labels",
        )
    for value in (cx, cy, w, h):
        if not -BORDER_TOLERANCE <= value <= 1 + BORDER_TOLERANCE:
            raise DataError(
                f"{where}: normalised coordinate {value:g} is outside [0, 1]: {line.strip()!r}",
                "YOLO labels are fractions of the image size; convert pixel coordinates by dividing by "
                "the image width and height",
            )
    return int(cls_f), cx, cy, w, h


def _read_yolo_file(
    label_path: Path, width: int, height: int, names: Sequence[str], cmap: ClassMap, dropped: DropTally
) -> tuple[np.ndarray, np.ndarray]:
    kept = ImageBoxes(width, height, cmap, dropped)
    try:
        text = label_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read label file {label_path}: {exc}", "re-export the labels as UTF-8 text") from exc
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{label_path}:{lineno}"
        cls, cx, cy, w, h = _parse_yolo_line(line, where, names)
        box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
        kept.add(box, names[cls], where)
    return kept.arrays()


def read_yolo(
    images_dir: str | os.PathLike,
    labels_dir: str | os.PathLike,
    names: Sequence[str],
    class_map: ClassMap | Mapping[str, str | None] | None = None,
    source: str = "yolo",
    *,
    labels_people: bool = True,
    subset: Literal["train", "val"] | None = None,
    group_fn: GroupFn | None = None,
    orphan_labels: Literal["error", "skip"] = "error",
) -> list[Sample]:
    """Read a YOLO-layout set: ``images_dir/<rel>.<ext>`` with ``labels_dir/<rel>.txt``.

    An image without a label file is a valid negative (no objects), as in the Ultralytics layout; an
    empty label file means the same. A label file without an image is an error unless
    ``orphan_labels="skip"`` (logged with the file names).

    Args:
        images_dir: Folder of images (searched recursively).
        labels_dir: Folder of ``.txt`` label files mirroring ``images_dir``.
        names: Class names by class id (``names`` in data.yaml).
        class_map: Annotated name -> target class; None for ``DEFAULT_CLASS_MAP``.
        source: Dataset name stored in each sample.
        labels_people: Whether this set annotates people at all.
        subset: Upstream split of this folder, or None.
        group_fn: Image path -> original-photo id; default ``<source>/<relative path without suffix>``.
        orphan_labels: What to do with label files that have no image.

    Raises:
        DataError: A folder is missing or empty, a line is malformed, a class id is out of range, a
            box lies outside its image, an image is unreadable, or a label file has no image.
    """
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    require_dir(images_dir, "images")
    require_dir(labels_dir, "labels")
    cmap = ClassMap.of(class_map)
    group_fn = group_fn or path_group(source, images_dir)

    # Pair images with label files by relative path without suffix.
    images: dict[Path, Path] = {}
    for path in sorted(p for p in images_dir.rglob("*") if is_image(p)):
        key = path.relative_to(images_dir).with_suffix("")
        if key in images:
            raise DataError(
                f"two images share the label name {key}.txt: {images[key].name} and {path.name}",
                "rename one of them; a YOLO label file belongs to exactly one image",
            )
        images[key] = path
    if not images:
        raise DataError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {images_dir}",
            "check the dataset path; an empty set is never skipped",
        )
    orphans = sorted(p for p in labels_dir.rglob("*.txt") if p.relative_to(labels_dir).with_suffix("") not in images)
    if orphans and orphan_labels == "error":
        raise DataError(
            f"{len(orphans)} label files have no image in {images_dir}, e.g. {orphans[0]}",
            "restore the images or delete the label files (read_yolo(..., orphan_labels='skip') skips them)",
        )
    if orphans:
        log.info("%s: skipped %d label files without an image: %s", source, len(orphans), [p.name for p in orphans])

    # Read sizes from headers and parse the label files.
    dropped = DropTally()
    samples = []
    negatives = 0
    for key, image_path in images.items():
        width, height = image_size(image_path)
        label_path = labels_dir / f"{key.as_posix()}.txt"  # not with_suffix: stems may hold dots
        if label_path.is_file():
            boxes, labels = _read_yolo_file(label_path, width, height, names, cmap, dropped)
        else:
            negatives += 1
            boxes, labels = box_arrays([], [])
        samples.append(
            Sample(image_path, width, height, boxes, labels, source, group_fn(image_path), labels_people, subset)
        )
    dropped.log(source)
    log.info("%s: read %d images (%d without a label file) from %s", source, len(samples), negatives, images_dir)
    return samples
