"""Pascal VOC sets: one ``.xml`` per image, corners in pixels; errors name the XML line."""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from xml.parsers import expat

import numpy as np

from devices.errors import DataError
from toolkit.data.images import IMAGE_SUFFIXES, image_size
from toolkit.data.sample import (
    ClassMap,
    DropTally,
    GroupFn,
    ImageBoxes,
    Sample,
    path_group,
    require_dir,
)

log = logging.getLogger(__name__)


def _parse_xml(path: Path) -> tuple[ET.Element, dict[int, int]]:
    """Parse an XML file; return the root and a map id(element) -> line where it starts."""
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()
    lines: dict[int, int] = {}

    def start(tag: str, attrs: dict[str, str]) -> None:
        lines[id(builder.start(tag, attrs))] = parser.CurrentLineNumber

    parser.StartElementHandler = start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        with open(path, "rb") as fh:
            parser.ParseFile(fh)
    except expat.ExpatError as exc:
        raise DataError(
            f"{path}:{exc.lineno}: XML parse error: {expat.ErrorString(exc.code)} (column {exc.offset})",
            "fix the XML (a truncated or hand-edited file?), or re-export the annotation",
        ) from exc
    except OSError as exc:
        raise DataError(f"cannot read annotation file {path}: {exc}", "check the file's permissions") from exc
    return builder.close(), lines


def _voc_number(obj: ET.Element, tag: str, where: str) -> float:
    text = obj.findtext(tag)
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: <{tag}> is {text!r}, not a number", f"give <{tag}> a pixel coordinate") from exc


def _voc_image(root: ET.Element, xml_path: Path, images_dir: Path) -> Path:
    filename = (root.findtext("filename") or "").strip()
    if filename:
        path = images_dir / filename
        if path.is_file():
            return path
    else:
        # No <filename>: the image shares the annotation's stem.
        for suffix in IMAGE_SUFFIXES:
            for candidate in (images_dir / f"{xml_path.stem}{suffix}", images_dir / f"{xml_path.stem}{suffix.upper()}"):
                if candidate.is_file():
                    return candidate
    raise DataError(
        f"{xml_path}: its image {filename or xml_path.stem + '.*'} is missing from {images_dir}",
        "restore the image, fix <filename>, or delete the annotation file",
    )


def _read_voc_file(
    xml_path: Path, images_dir: Path, cmap: ClassMap, dropped: DropTally
) -> tuple[Path, int, int, np.ndarray, np.ndarray]:
    root, lines = _parse_xml(xml_path)
    image_path = _voc_image(root, xml_path, images_dir)
    width, height = image_size(image_path)
    size = root.find("size")
    if size is not None:
        declared = (int(float(size.findtext("width") or 0)), int(float(size.findtext("height") or 0)))
        # 0x0 is how some tools write "unknown"; anything else must match the pixels the boxes are on.
        if declared != (0, 0) and declared != (width, height):
            rotated = (
                " (the photo's EXIF orientation turns it; annotate the upright image)"
                if declared == (height, width)
                else ""
            )
            raise DataError(
                f"{xml_path}:{lines.get(id(size), 0)}: <size> says {declared[0]}x{declared[1]} but "
                f"{image_path.name} is {width}x{height}{rotated}",
                "annotate the image at its real size, or fix <size>",
            )
    kept = ImageBoxes(width, height, cmap, dropped)
    for obj in root.iter("object"):
        where = f"{xml_path}:{lines.get(id(obj), 0)}"
        name = (obj.findtext("name") or "").strip()
        bndbox = obj.find("bndbox")
        if not name or bndbox is None:
            raise DataError(f"{where}: <object> without <name> or <bndbox>", "complete or delete this object")
        box = [
            _voc_number(bndbox, tag, f"{xml_path}:{lines.get(id(bndbox), 0)}")
            for tag in ("xmin", "ymin", "xmax", "ymax")
        ]
        kept.add(box, name, where)
    return image_path, width, height, *kept.arrays()


def read_voc(
    images_dir: str | os.PathLike,
    ann_dir: str | os.PathLike,
    class_map: ClassMap | Mapping[str, str | None] | None = None,
    source: str = "voc",
    *,
    labels_people: bool = True,
    subset: Literal["train", "val"] | None = None,
    group_fn: GroupFn | None = None,
) -> list[Sample]:
    """Read a Pascal VOC set: one ``.xml`` per image in ``ann_dir``.

    The set is driven by the annotation files: an image without one is not read. Box corners are used
    as written (pixels); ``difficult`` objects are kept.

    Args:
        images_dir: Folder the ``<filename>`` entries refer to.
        ann_dir: Folder of ``.xml`` files.
        class_map: Annotated name -> target class; None for ``DEFAULT_CLASS_MAP``.
        source: Dataset name stored in each sample.
        labels_people: Whether this set annotates people at all.
        subset: Upstream split of this folder, or None.
        group_fn: Image path -> original-photo id; default ``<source>/<image stem>``.

    Raises:
        DataError: No annotation file, broken XML, a missing image, a size mismatch or a bad box.
    """
    images_dir, ann_dir = Path(images_dir), Path(ann_dir)
    require_dir(images_dir, "images")
    require_dir(ann_dir, "annotations")
    cmap = ClassMap.of(class_map)
    group_fn = group_fn or path_group(source, images_dir)
    xml_files = sorted(ann_dir.glob("*.xml"))
    if not xml_files:
        raise DataError(
            f"no .xml annotation files found in {ann_dir}", "check the dataset path; an empty set is never skipped"
        )
    dropped = DropTally()
    samples = []
    for xml_path in xml_files:
        image_path, width, height, boxes, labels = _read_voc_file(xml_path, images_dir, cmap, dropped)
        samples.append(
            Sample(image_path, width, height, boxes, labels, source, group_fn(image_path), labels_people, subset)
        )
    dropped.log(source)
    log.info("%s: read %d images from %s", source, len(samples), ann_dir)
    return samples
