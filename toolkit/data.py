"""Data ingest: read YOLO, Pascal VOC and COCO annotations into one ``Sample`` record.

Every reader returns boxes as ``xyxy`` pixels of the image *as loaded* (after its EXIF orientation),
labels as indices into ``models.base.TARGET_CLASSES`` and a ``group`` naming the original photo, so that
augmented copies of one photo can be kept on one side of a split (``toolkit.datasets.split``).

Reading is cheap: image sizes come from the file header (PIL opens lazily), pixels are decoded only
by ``load_image`` when a sample is used. A truncated image body is therefore found when it is loaded,
not when the set is read.

Problems in the files raise ``DataError`` naming the file (and the line for text and XML files) and
the fix. Nothing is skipped silently: the only things dropped are boxes of unmapped classes, COCO crowd
regions, and boxes thinner than one pixel after clipping to the image, each with a log line.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from xml.parsers import expat

import numpy as np
from PIL import Image, UnidentifiedImageError

from devices.bundle import file_sha256
from devices.errors import ConfigError, DataError
from models.base import TARGET_CLASSES

log = logging.getLogger(__name__)

#: File name endings read as images (case-insensitive).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

#: How far (as a fraction of the image side) a box may reach past the border before it is an error.
#: Converters round normalised coordinates (coco128 reaches -5e-7 and 1.0000005); more than 1 % is a
#: wrong image size or a wrong box, not rounding.
BORDER_TOLERANCE = 0.01

#: Boxes thinner than this (pixels) after clipping to the image carry no object and are dropped.
MIN_BOX_SIDE = 1.0

#: The default class map: the names the three bundled sets (and most public sets) use.
#: Matching is by exact name: ``"Sign"`` is the Roboflow stop-sign set's class 1.
DEFAULT_CLASS_MAP: Mapping[str, str | None] = MappingProxyType(
    {
        "person": "pedestrian",
        "pedestrian": "pedestrian",
        "stop sign": "stop_sign",
        "stop_sign": "stop_sign",
        "Sign": "stop_sign",
        "stop": "stop_sign",
    }
)

# EXIF orientation -> the PIL transpose that shows the photo upright (EXIF 2.3, tag 0x0112).
_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

GroupFn = Callable[[Path], str]


# ------------------------------------------------------------------------------------------ records


@dataclass(frozen=True, eq=False)
class Sample:
    """One annotated image.

    Attributes:
        image_path: The image file.
        width: Width of the image as loaded (after EXIF orientation), pixels.
        height: Height of the image as loaded, pixels.
        boxes: float32 (N, 4) ``x1, y1, x2, y2`` pixels, inside the image.
        labels: int64 (N,) indices into ``TARGET_CLASSES``.
        source: Name of the dataset the sample comes from.
        group: Id of the original photo; augmented copies share it and stay on one side of a split.
        labels_people: Whether the set annotates people at all. False for stop-sign-only sets, whose
            unlabelled people must not be learnt as background (the trainer pseudo-labels them).
        subset: The upstream split this sample belongs to (``"train"`` or ``"val"``), or None when the
            set has no split of its own and ``split`` assigns it by group.
    """

    image_path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    source: str
    group: str
    labels_people: bool = True
    subset: Literal["train", "val"] | None = None

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        labels = np.asarray(self.labels, np.int64).reshape(-1)
        if boxes.shape[0] != labels.shape[0]:
            raise ValueError(f"{self.image_path}: {boxes.shape[0]} boxes but {labels.shape[0]} labels")
        # Frozen means frozen: a transform that edits a sample's boxes in place would corrupt the
        # dataset for every later epoch.
        boxes.flags.writeable = False
        labels.flags.writeable = False
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "image_path", Path(self.image_path))


@dataclass(frozen=True)
class ClassMap:
    """Which annotated class names become which target class; everything unmapped is dropped.

    Attributes:
        mapping: Annotated name (exact, case-sensitive) -> target class name, or None to drop it.
        targets: The target classes, in label order.
    """

    mapping: Mapping[str, str | None] = field(default_factory=lambda: DEFAULT_CLASS_MAP)
    targets: tuple[str, ...] = TARGET_CLASSES

    def __post_init__(self) -> None:
        for name, target in self.mapping.items():
            if target is not None and target not in self.targets:
                raise ConfigError(
                    f"class map sends '{name}' to '{target}', which is not a target class",
                    f"use one of {list(self.targets)}, or None to drop '{name}'",
                )
        object.__setattr__(self, "mapping", MappingProxyType(dict(self.mapping)))

    @classmethod
    def of(cls, value: ClassMap | Mapping[str, str | None] | None) -> ClassMap:
        """Accept a ClassMap, a plain dict, or None for the default map."""
        if value is None:
            return cls()
        if isinstance(value, ClassMap):
            return value
        return cls(mapping=value)

    def index(self, name: str) -> int | None:
        """Target label index for an annotated class name, or None when it is dropped."""
        target = self.mapping.get(name)
        return None if target is None else self.targets.index(target)


class _Dropped:
    """Tally of what a reader dropped, logged once per set instead of once per box."""

    def __init__(self) -> None:
        self.classes: Counter[str] = Counter()
        self.slivers = 0
        self.clipped = 0
        self.crowd = 0

    def log(self, source: str) -> None:
        if self.classes:
            log.info(
                "%s: dropped %d boxes of unmapped classes %s",
                source,
                sum(self.classes.values()),
                dict(self.classes.most_common()),
            )
        if self.clipped:
            log.info("%s: clipped %d boxes that reached just past the image border", source, self.clipped)
        if self.slivers:
            log.info("%s: dropped %d boxes thinner than %.0f px after clipping", source, self.slivers, MIN_BOX_SIDE)
        if self.crowd:
            log.info("%s: dropped %d COCO crowd regions (iscrowd=1)", source, self.crowd)


# ------------------------------------------------------------------------------------------- images


def _orientation(im: Image.Image, path: Path) -> int:
    """EXIF orientation read from the header only (1 = upright, or when there is none).

    Both the readers (for width/height) and ``load_image`` (for the pixels) use this one function,
    so a sample's size always matches the array ``load_image`` returns.
    """
    # PIL's PNG getexif() decodes the whole image when the eXIf chunk was not seen before the pixel
    # data; a header read must not decode, so a PNG only counts EXIF found in its header.
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        value = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception as exc:  # a broken EXIF block must not make a usable photo unusable
        log.warning("%s: unreadable EXIF block (%s); treating the image as upright", path, exc)
        return 1
    return value if value in _TRANSPOSE else 1


def _open_error(path: Path, exc: BaseException) -> DataError:
    return DataError(
        f"cannot read image {path}: {exc}",
        "the file is corrupt, truncated or not an image: re-export or re-download it, or delete it "
        "together with its annotation",
    )


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image as ``load_image`` returns it, from the file header only.

    Raises:
        DataError: The file is missing or not a readable image.
    """
    try:
        with Image.open(path) as im:
            width, height = im.size
            if _orientation(im, path) in (5, 6, 7, 8):  # these orientations turn the photo by 90°
                width, height = height, width
    except FileNotFoundError as exc:
        raise DataError(f"image not found: {path}", "check the images folder, or restore the file") from exc
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _open_error(path, exc) from exc
    return width, height


def _to_rgb8(im: Image.Image, path: Path) -> np.ndarray:
    """Decoded PIL image -> RGB uint8 (H, W, 3)."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey: scale the full 0..65535 range (PIL's convert("L") clips at 255 instead, which
        # turns any real 16-bit photo white).
        wide = np.asarray(im).astype(np.int64).clip(0, 65535)
        grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "F":
        raise DataError(
            f"image {path} holds floating-point pixels, which have no standard 8-bit scale",
            "convert it to an 8-bit or 16-bit image",
        )
    # convert("RGB") drops alpha (RGBA, LA, PA) and expands grey and palette images; dropping alpha
    # is what cv2.imread(IMREAD_COLOR) does on the device, so training sees the pixels the camera
    # path would. In the bundled RGBA sets alpha < 255 covers under 0.4 % of pixels (a border).
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image as BGR uint8 (H, W, 3), upright per its EXIF orientation.

    Handles RGB, RGBA (alpha dropped), grey, palette and 16-bit images. Width and height equal
    ``image_size(path)`` and hence ``Sample.width``/``Sample.height``.

    Raises:
        DataError: The file is missing, corrupt, truncated or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            orientation = _orientation(im, path)
            im.load()
            upright = im.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else im
            rgb = _to_rgb8(upright, path)
    except FileNotFoundError as exc:
        raise DataError(f"image not found: {path}", "check the path, or restore the file") from exc
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _open_error(path, exc) from exc
    return np.ascontiguousarray(rgb[..., ::-1])


# --------------------------------------------------------------------------------------------- boxes


def _check_box(box: Sequence[float], width: int, height: int, where: str, dropped: _Dropped) -> list[float] | None:
    """Validate one xyxy pixel box; clip border rounding; None for a sliver left by clipping."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise DataError(f"{where}: box {box} has a non-finite coordinate", "fix or delete this box")
    if x2 <= x1 or y2 <= y1:
        raise DataError(
            f"{where}: box x1,y1,x2,y2 = {x1:g},{y1:g},{x2:g},{y2:g} has non-positive width or height",
            "fix or delete this box (a box needs x2 > x1 and y2 > y1)",
        )
    tol_x, tol_y = BORDER_TOLERANCE * width, BORDER_TOLERANCE * height
    if x1 < -tol_x or y1 < -tol_y or x2 > width + tol_x or y2 > height + tol_y:
        raise DataError(
            f"{where}: box x1,y1,x2,y2 = {x1:g},{y1:g},{x2:g},{y2:g} lies outside the {width}x{height} image",
            "check that the annotation belongs to this image and was made at this image size",
        )
    clipped = [min(max(x1, 0.0), width), min(max(y1, 0.0), height),
               min(max(x2, 0.0), width), min(max(y2, 0.0), height)]  # fmt: skip
    if clipped != [x1, y1, x2, y2]:
        dropped.clipped += 1
        log.debug("%s: clipped box %s to the image: %s", where, [x1, y1, x2, y2], clipped)
    if clipped[2] - clipped[0] < MIN_BOX_SIDE or clipped[3] - clipped[1] < MIN_BOX_SIDE:
        dropped.slivers += 1
        log.info("%s: dropped a box thinner than %.0f px after clipping: %s", where, MIN_BOX_SIDE, clipped)
        return None
    return clipped


def _arrays(boxes: list[list[float]], labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def path_group(source: str, root: Path) -> GroupFn:
    """Photos identified by ``<source>/<path under root without suffix>`` (the readers' default)."""

    def group(path: Path) -> str:
        return f"{source}/{path.relative_to(root).with_suffix('').as_posix()}"

    return group


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DataError(f"{what} folder not found: {path}", "check the dataset root and its layout")


# ---------------------------------------------------------------------------------------------- YOLO


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
    label_path: Path, width: int, height: int, names: Sequence[str], cmap: ClassMap, dropped: _Dropped
) -> tuple[np.ndarray, np.ndarray]:
    boxes: list[list[float]] = []
    labels: list[int] = []
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
        checked = _check_box(box, width, height, where, dropped)
        target = cmap.index(names[cls])
        if target is None:
            dropped.classes[names[cls]] += 1
        elif checked is not None:
            boxes.append(checked)
            labels.append(target)
    return _arrays(boxes, labels)


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
    _require_dir(images_dir, "images")
    _require_dir(labels_dir, "labels")
    cmap = ClassMap.of(class_map)
    group_fn = group_fn or path_group(source, images_dir)

    # Pair images with label files by relative path without suffix.
    images: dict[Path, Path] = {}
    for path in sorted(p for p in images_dir.rglob("*") if _is_image(p)):
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
    dropped = _Dropped()
    samples = []
    negatives = 0
    for key, image_path in images.items():
        width, height = image_size(image_path)
        label_path = labels_dir / f"{key.as_posix()}.txt"  # not with_suffix: stems may hold dots
        if label_path.is_file():
            boxes, labels = _read_yolo_file(label_path, width, height, names, cmap, dropped)
        else:
            negatives += 1
            boxes, labels = _arrays([], [])
        samples.append(
            Sample(image_path, width, height, boxes, labels, source, group_fn(image_path), labels_people, subset)
        )
    dropped.log(source)
    log.info("%s: read %d images (%d without a label file) from %s", source, len(samples), negatives, images_dir)
    return samples


# ----------------------------------------------------------------------------------------------- VOC


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
    xml_path: Path, images_dir: Path, cmap: ClassMap, dropped: _Dropped
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
    boxes: list[list[float]] = []
    labels: list[int] = []
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
        checked = _check_box(box, width, height, where, dropped)
        target = cmap.index(name)
        if target is None:
            dropped.classes[name] += 1
        elif checked is not None:
            boxes.append(checked)
            labels.append(target)
    return image_path, width, height, *_arrays(boxes, labels)


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
    _require_dir(images_dir, "images")
    _require_dir(ann_dir, "annotations")
    cmap = ClassMap.of(class_map)
    group_fn = group_fn or path_group(source, images_dir)
    xml_files = sorted(ann_dir.glob("*.xml"))
    if not xml_files:
        raise DataError(
            f"no .xml annotation files found in {ann_dir}", "check the dataset path; an empty set is never skipped"
        )
    dropped = _Dropped()
    samples = []
    for xml_path in xml_files:
        image_path, width, height, boxes, labels = _read_voc_file(xml_path, images_dir, cmap, dropped)
        samples.append(
            Sample(image_path, width, height, boxes, labels, source, group_fn(image_path), labels_people, subset)
        )
    dropped.log(source)
    log.info("%s: read %d images from %s", source, len(samples), ann_dir)
    return samples


# ---------------------------------------------------------------------------------------------- COCO


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
    dropped: _Dropped,
) -> tuple[np.ndarray, np.ndarray]:
    boxes: list[list[float]] = []
    labels: list[int] = []
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
        checked = _check_box([x, y, x + w, y + h], width, height, where, dropped)
        target = cmap.index(category)
        if target is None:
            dropped.classes[category] += 1
        elif checked is not None:
            boxes.append(checked)
            labels.append(target)
    return _arrays(boxes, labels)


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

    dropped = _Dropped()
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
        declared = (image.get("width"), image.get("height"))
        if None not in declared and tuple(int(v) for v in declared) != (width, height):
            raise DataError(
                f"{json_path}: image {image['file_name']} is recorded as {declared[0]}x{declared[1]} "
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


# ------------------------------------------------------------------------------------------- writing


def to_coco(samples: Sequence[Sample], path: str | os.PathLike, class_names: Sequence[str] = TARGET_CLASSES) -> Path:
    """Write samples as a COCO instances json, so any split evaluates through pycocotools.

    Layout: image ``id`` is the sample's position + 1; ``file_name`` is the image's absolute path
    (the json is a working file of one run, read from any directory; evaluation resolves an absolute
    ``file_name`` as is); ``category_id`` is label + 1, named after ``class_names``; ``bbox`` is
    ``[x, y, w, h]`` pixels with ``area = w * h`` (no masks) and ``iscrowd = 0``.

    Returns:
        The path written.

    Raises:
        ConfigError: A sample has a label outside ``class_names``.
    """
    path = Path(path)
    images, annotations = [], []
    for image_id, sample in enumerate(samples, start=1):
        images.append(
            {
                "id": image_id,
                "file_name": str(Path(sample.image_path).resolve()),
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
    # Write then rename: a reader never sees half a file.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as tmp:
        json.dump(data, tmp)
    os.replace(tmp.name, path)
    return path


# -------------------------------------------------------------------------------------------- report

#: Box-size bins by the square root of the box area, pixels of the image as loaded.
AREA_BINS: tuple[float, ...] = (0, 16, 32, 64, 128, 256, math.inf)


def _size_bin(side: float) -> str:
    for lo, hi in itertools.pairwise(AREA_BINS):
        if lo <= side < hi:
            return f"{lo:g}-{hi:g}" if math.isfinite(hi) else f">={lo:g}"
    return f">={AREA_BINS[-2]:g}"


def data_report(samples: Iterable[Sample], class_names: Sequence[str] = TARGET_CLASSES) -> dict:
    """Count images and boxes per class and per source, and box sizes.

    Returns:
        ``images``, ``boxes``, ``negatives`` (images without a box), ``per_class`` (name -> images,
        boxes), ``per_source`` (name -> images, boxes, groups, labels_people, boxes per class),
        ``coco_sizes`` (class -> small/medium/large by COCO's 32² and 96² px area thresholds) and
        ``size_bins`` (class -> count per sqrt-area bin of ``AREA_BINS``).
    """
    samples = list(samples)
    bins = [_size_bin(b) for b in AREA_BINS[:-1]]
    report: dict[str, Any] = {
        "images": len(samples),
        "boxes": 0,
        "negatives": 0,
        "per_class": {n: {"images": 0, "boxes": 0} for n in class_names},
        "per_source": {},
        "coco_sizes": {n: {"small": 0, "medium": 0, "large": 0} for n in class_names},
        "size_bins": {n: dict.fromkeys(bins, 0) for n in class_names},
    }
    groups: dict[str, set[str]] = {}
    for s in samples:
        src = report["per_source"].setdefault(
            s.source,
            {
                "images": 0,
                "boxes": 0,
                "groups": 0,
                "labels_people": s.labels_people,
                "per_class": dict.fromkeys(class_names, 0),
            },
        )
        src["images"] += 1
        src["boxes"] += len(s.labels)
        groups.setdefault(s.source, set()).add(s.group)
        report["boxes"] += len(s.labels)
        report["negatives"] += len(s.labels) == 0
        for label in set(s.labels.tolist()):
            report["per_class"][class_names[label]]["images"] += 1
        for box, label in zip(s.boxes, s.labels.tolist(), strict=True):
            name = class_names[label]
            area = float((box[2] - box[0]) * (box[3] - box[1]))
            report["per_class"][name]["boxes"] += 1
            src["per_class"][name] += 1
            size = "small" if area < 32**2 else "medium" if area < 96**2 else "large"
            report["coco_sizes"][name][size] += 1
            report["size_bins"][name][_size_bin(math.sqrt(area))] += 1
    for name, members in groups.items():
        report["per_source"][name]["groups"] = len(members)
    return report


def render_report(report: dict) -> str:
    """A plain-text rendering of ``data_report``'s result for the CLI."""
    classes = list(report["per_class"])
    lines = [f"{report['images']} images, {report['boxes']} boxes, {report['negatives']} images without a box", ""]
    lines.append(f"{'class':<14}{'images':>8}{'boxes':>8}")
    lines += [f"{n:<14}{c['images']:>8}{c['boxes']:>8}" for n, c in report["per_class"].items()]
    lines += [
        "",
        f"{'source':<24}{'images':>8}{'photos':>8}{'boxes':>8}"
        + "".join(f"{n:>12}" for n in classes)
        + "  people labelled",
    ]
    for name, s in report["per_source"].items():
        lines.append(
            f"{name:<24}{s['images']:>8}{s['groups']:>8}{s['boxes']:>8}"
            + "".join(f"{s['per_class'][n]:>12}" for n in classes)
            + f"  {'yes' if s['labels_people'] else 'no'}"
        )
    lines += ["", "box size (COCO area: small < 32², medium < 96², large)"]
    lines.append(f"{'class':<14}{'small':>8}{'medium':>8}{'large':>8}")
    lines += [f"{n:<14}{c['small']:>8}{c['medium']:>8}{c['large']:>8}" for n, c in report["coco_sizes"].items()]
    bins = list(next(iter(report["size_bins"].values()))) if report["size_bins"] else []
    lines += ["", "box side sqrt(area), pixels"]
    lines.append(f"{'class':<14}" + "".join(f"{b:>10}" for b in bins))
    lines += [f"{n:<14}" + "".join(f"{c[b]:>10}" for b in bins) for n, c in report["size_bins"].items()]
    return "\n".join(lines)


def samples_sha256(samples: Sequence[Sample]) -> str:
    """Hash of an evaluation set: each image's content hash with its boxes and labels, order-independent."""
    entries = sorted(
        f"{file_sha256(s.image_path)}:{np.round(s.boxes, 2).tolist()}:{s.labels.tolist()}" for s in samples
    )
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()
