"""The one record every reader returns (``Sample``), the class map, and the box rules all readers share.

Every reader returns boxes as ``xyxy`` pixels of the image *as loaded* (after its EXIF orientation),
labels as indices into ``models.base.TARGET_CLASSES`` and a ``group`` naming the original photo, so that
augmented copies of one photo can be kept on one side of a split (``toolkit.data.sets.split``).

Problems in the files raise ``DataError`` naming the file (and the line for text and XML files) and
the fix. Nothing is skipped silently: the only things dropped are boxes of unmapped classes, COCO crowd
regions, and boxes thinner than one pixel after clipping to the image, each with a log line.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import numpy as np

from devices.bundle import file_sha256
from devices.errors import ConfigError, DataError
from models.base import TARGET_CLASSES

log = logging.getLogger(__name__)

#: How far (as a fraction of the image side) a box may reach past the border before it is an error.
#: Converters round normalised coordinates (coco128 reaches -5e-7 and 1.0000005); more than 1 % is a
#: wrong image size or a wrong box, not rounding.
BORDER_TOLERANCE = 0.01

#: Boxes thinner than this (pixels) after clipping to the image carry no object and are dropped.
MIN_BOX_SIDE = 1.0

#: A file of a Roboflow export: ``<stem>_<ext>.rf.<32 hex>.<ext>``, one of the augmented copies of the photo
#: ``<stem>.<ext>``.
ROBOFLOW_NAME = re.compile(r"^(?P<stem>.+)_(?P<ext>[A-Za-z0-9]+)\.rf\.[0-9a-f]{32}\.[A-Za-z0-9]+$")

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

GroupFn = Callable[[Path], str]


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


class DropTally:
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


def check_box(box: Sequence[float], width: int, height: int, where: str, dropped: DropTally) -> list[float] | None:
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


def box_arrays(boxes: list[list[float]], labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


class ImageBoxes:
    """The boxes of one image as a reader collects them, the same way in every format.

    ``add`` checks a box (``check_box``: refused with the file and line or annotation id, clipped, or dropped
    as a sliver) whatever its class, then keeps it under its target class, or counts its class as dropped.
    """

    def __init__(self, width: int, height: int, cmap: ClassMap, dropped: DropTally) -> None:
        self.width, self.height, self.cmap, self.dropped = width, height, cmap, dropped
        self.boxes: list[list[float]] = []
        self.labels: list[int] = []

    def add(self, box: Sequence[float], name: str, where: str) -> None:
        checked = check_box(box, self.width, self.height, where, self.dropped)
        target = self.cmap.index(name)
        if target is None:
            self.dropped.classes[name] += 1
        elif checked is not None:
            self.boxes.append(checked)
            self.labels.append(target)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(boxes float32 (N, 4), labels int64 (N,)) of the boxes kept."""
        return box_arrays(self.boxes, self.labels)


def photo_name(path: Path) -> str:
    """The photo a file was made from: ``<stem>.<ext>`` for a Roboflow export's copy, else the file's stem."""
    match = ROBOFLOW_NAME.match(path.name)
    return path.stem if match is None else f"{match['stem']}.{match['ext']}"


def path_group(source: str, root: Path) -> GroupFn:
    """Photos identified by ``<source>/<folder under root>/<photo name>`` (the readers' default for your photos).

    The augmented copies of one photo in a Roboflow export share its id, so that a split never puts one copy in
    your training photos and another in your validation photos. The path is normalised (not resolved: a
    symlinked set keeps its ids); an image outside ``root`` (a COCO json naming its images by ``../`` or an
    absolute path) is identified by its folder's name and its photo name, so that the id, and with it your
    split, stays the same wherever the json or the set lies.
    """
    base = Path(os.path.normpath(os.path.abspath(root)))

    def group(path: Path) -> str:
        full = Path(os.path.normpath(os.path.abspath(path)))
        folders = full.parent.relative_to(base).parts if full.is_relative_to(base) else (full.parent.name,)
        return "/".join((source, *folders, photo_name(full)))

    return group


def require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DataError(f"{what} folder not found: {path}", "check the dataset root and its layout")


def samples_sha256(samples: Sequence[Sample]) -> str:
    """Hash of an evaluation set: each image's content hash with its boxes and labels, order-independent."""
    entries = sorted(
        f"{file_sha256(s.image_path)}:{np.round(s.boxes, 2).tolist()}:{s.labels.tolist()}" for s in samples
    )
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()
