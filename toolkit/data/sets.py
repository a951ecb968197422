"""The bundled real datasets, where they come from, and the train/validation split the trainer uses.

Each set is a frozen record: its upstream snapshot (GitHub repository, commit, folder), the path of
the same files under a local mirror (``EDGESIGHT_MIRROR``, ``../shared`` in development and CI), its
format, licence and how to read it. ``load_dataset`` reads from the mirror when one is set and
otherwise downloads the pinned snapshot into the cache; the readers are the same either way.

Measured facts about these sets that shape the records (checked on the mirrored files):

- coco128 ships label files for two train2017 images that are not in the set (000000000656,
  000000000659); they are skipped with a warning. Its train2017 and val2017 halves are kept as given.
- The Roboflow set's train part holds three augmented copies of each source photo, named
  ``<stem>_<ext>.rf.<hash>.jpg``. Roboflow assigns photos to train/valid before augmenting, and two
  valid names (``stop3_jpg``, ``55_jpg``) are different photos from the train ones of the same name,
  so a group id includes the part it came from.
- Five Roboflow train photos (``road356/633/635/674/83_png``) are the Kaggle road-sign photos of the
  same name (pixel correlation 0.8-1.0 against < 0.55 for other pairs), so both sets give them the
  same group id and a split cannot put one copy in train and another in validation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from devices.errors import ConfigError, DataError
from models.base import COCO80, TARGET_CLASSES
from models.hub import MIRROR_ENV, mirror_root
from toolkit.data.coco import read_coco
from toolkit.data.fetch import fetch_snapshot
from toolkit.data.sample import ROBOFLOW_NAME, Sample, samples_sha256
from toolkit.data.userdata import read_user_datasets
from toolkit.data.voc import read_voc
from toolkit.data.yolo import read_yolo

log = logging.getLogger(__name__)


_KAGGLE_ROAD = re.compile(r"^road\d+$")


def coco_group(path: Path) -> str:
    """COCO photos are identified by their image id (the file stem) across train and val."""
    return f"coco/{path.stem}"


def kaggle_road_group(path: Path) -> str:
    """The Kaggle road-sign photos are identified by their ``roadN`` name."""
    return f"kaggle-road-sign/{path.stem}"


def roboflow_group(path: Path) -> str:
    """Original photo of a Roboflow export file: ``<part>/<stem>.<ext>`` or a Kaggle road-sign id."""
    match = ROBOFLOW_NAME.match(path.name)
    if match is None:
        return f"roboflow_stop_signs/{path.parent.parent.name}/{path.stem}"
    stem, ext = match["stem"], match["ext"]
    if ext.lower() == "png" and _KAGGLE_ROAD.match(stem):
        return kaggle_road_group(Path(stem))
    # The part (train/valid) is in the id: Roboflow splits photos before augmenting them, and names
    # repeat across parts for different photos (see the module docstring).
    return f"roboflow_stop_signs/{path.parent.parent.name}/{stem}.{ext}"


@dataclass(frozen=True)
class Upstream:
    """A pinned GitHub snapshot.

    Attributes:
        repo: ``owner/name``.
        commit: Commit the files were mirrored from.
        subpath: Folder inside the repository that holds the set ("" for the root).
    """

    repo: str
    commit: str
    subpath: str

    @property
    def url(self) -> str:
        return f"https://codeload.github.com/{self.repo}/tar.gz/{self.commit}"


@dataclass(frozen=True)
class Part:
    """One folder of a set.

    Attributes:
        images: Images folder, relative to the set root.
        labels: YOLO labels folder, VOC annotations folder, or COCO json file, relative to the root.
        subset: The set's own split for this part (``train``/``val``), or None to split by group.
    """

    images: str
    labels: str
    subset: Literal["train", "val"] | None = None


@dataclass(frozen=True)
class DatasetRecord:
    """A real dataset: provenance, mirror location, licence and how to read it.

    Attributes:
        name: Registry key and ``Sample.source``.
        upstream: Pinned snapshot the files come from.
        mirror_path: Folder of the set relative to the mirror root.
        format: ``yolo``, ``voc`` or ``coco``.
        license: Licence of the annotations and images.
        parts: Folders to read.
        names: YOLO class names by id (empty for formats that name their classes).
        labels_people: Whether the set annotates people.
        group_fn: Image path -> original-photo id.
        orphan_labels: YOLO label files without an image: ``error`` or ``skip``.
        require_label: Keep only images with at least one box of this target class (None: keep all).
            The mirror holds the Kaggle road-sign photos that contain a stop sign; upstream has all 877.
        content_sha256: ``samples_sha256`` of the images the readers keep (their bytes, boxes and labels),
            measured on the mirrored files. Every load checks it, mirror or download: it pins the content
            whatever the archive or folder layout it came in.
        assets: Zip archives (release assets) extracted over the snapshot, for sets whose images are not
            in the git tree.
        note: Anything a user fetching the set must know.
    """

    name: str
    upstream: Upstream
    mirror_path: str
    format: Literal["yolo", "voc", "coco"]
    license: str
    parts: tuple[Part, ...]
    names: tuple[str, ...] = ()
    labels_people: bool = True
    group_fn: Callable[[Path], str] | None = None
    orphan_labels: Literal["error", "skip"] = "error"
    require_label: str | None = None
    content_sha256: str = ""
    assets: tuple[str, ...] = ()
    note: str = ""


DATASETS: dict[str, DatasetRecord] = {
    r.name: r
    for r in (
        DatasetRecord(
            name="coco128",
            upstream=Upstream("lightly-ai/coco128_yolo", "6d6f7a0", ""),
            mirror_path="datasets/coco128",
            format="yolo",
            license="CC-BY-4.0 (COCO annotations); images under their Flickr licences",
            parts=(
                Part("images/train2017", "labels/train2017", "train"),
                Part("images/val2017", "labels/val2017", "val"),
            ),
            names=COCO80,
            labels_people=True,
            group_fn=coco_group,
            orphan_labels="skip",
            content_sha256="8c24811470aaa51faaba473ea97c75f1e9cfa1247ee29b28ffce43119902bfee",
            assets=(
                "https://github.com/lightly-ai/coco128_yolo/releases/download/v0.0.2/images.zip",
                "https://github.com/lightly-ai/coco128_yolo/releases/download/v0.0.2/object_detection.zip",
            ),
            note="The images are release assets (v0.0.2 images.zip + object_detection.zip), not in the git "
            "tree; the COCO json of the train half is developer0hye/COCO128@47a3de3 "
            "annotations/instances_train2017.json.",
        ),
        DatasetRecord(
            name="roadsign_kaggle_stop",
            upstream=Upstream("MuratOzc/traffic-sign-recognition-using-deep-learning", "e680f0d", ""),
            mirror_path="datasets/roadsign_kaggle_stop",
            format="voc",
            license="CC0-1.0 (Kaggle 'Road Sign Detection', andrewmvd)",
            parts=(Part("images", "annotations"),),
            labels_people=False,
            group_fn=kaggle_road_group,
            require_label="stop_sign",
            content_sha256="543393696bda46bafda65f03f3a60e3378ee16940748ed961744311edc9a7fbe",
        ),
        DatasetRecord(
            name="roboflow_stop_signs",
            upstream=Upstream("Praveent-nd/praveen_detection_pole", "008b411", "Stop-Signs-11"),
            mirror_path="datasets/roboflow_stop_signs",
            format="yolo",
            license="CC-BY-4.0 (Roboflow Universe 'Stop Signs' v11)",
            parts=(Part("train/images", "train/labels"), Part("valid/images", "valid/labels", "val")),
            names=("Pole", "Sign"),  # data.yaml; poles are not a target class and are dropped
            labels_people=False,
            group_fn=roboflow_group,
            content_sha256="adc0a2093c1ca1e6f46e9089e2cb8622b955091f8b1c0785f2232ded44bc7234",
        ),
    )
}


def list_datasets() -> list[str]:
    """Names of the registered datasets."""
    return sorted(DATASETS)


def get_record(name: str) -> DatasetRecord:
    """The registry record of ``name``.

    Raises:
        ConfigError: Unknown name.
    """
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset '{name}'", f"use one of {list_datasets()}") from None


def dataset_root(name: str, mirror: str | os.PathLike | None = None) -> Path:
    """Folder holding the set: under the mirror if one is set, else the downloaded snapshot."""
    record = get_record(name)
    root = mirror_root(mirror)
    if root is None:
        return fetch_snapshot(record)
    path = root / record.mirror_path
    if not path.is_dir():
        raise DataError(
            f"dataset {name}: not in the mirror at {path}",
            f"point {MIRROR_ENV} (or --mirror) at the folder that holds {record.mirror_path}",
        )
    return path


def _read_part(record: DatasetRecord, root: Path, part: Part) -> list[Sample]:
    images, labels = root / part.images, root / part.labels
    common: dict[str, Any] = {
        "source": record.name,
        "labels_people": record.labels_people,
        "subset": part.subset,
        "group_fn": record.group_fn,
    }
    if record.format == "yolo":
        return read_yolo(images, labels, record.names, None, orphan_labels=record.orphan_labels, **common)
    if record.format == "voc":
        return read_voc(images, labels, None, **common)
    return read_coco(labels, images, None, **common)


def load_dataset(name: str, mirror: str | os.PathLike | None = None) -> list[Sample]:
    """Read a registered dataset, every part, from the mirror or the downloaded snapshot.

    Args:
        name: A key of ``DATASETS``.
        mirror: Mirror root; defaults to ``EDGESIGHT_MIRROR``, and downloads upstream when unset.

    Raises:
        ConfigError: Unknown name.
        DataError: Missing folders or any problem in the files.
    """
    record = get_record(name)
    root = dataset_root(name, mirror)
    samples = [s for part in record.parts for s in _read_part(record, root, part)]
    if record.require_label is not None:
        label = TARGET_CLASSES.index(record.require_label)
        kept = [s for s in samples if (s.labels == label).any()]
        log.info("%s: kept %d of %d images that contain a %s", name, len(kept), len(samples), record.require_label)
        samples = kept
    digest = samples_sha256(samples)
    if record.content_sha256 and digest != record.content_sha256:
        raise DataError(
            f"dataset {name} at {root} is not the pinned set: content sha256 {digest[:16]}..., expected "
            f"{record.content_sha256[:16]}... ({len(samples)} images read)",
            f"restore an unmodified copy of {record.mirror_path} (or delete {root} to download it again)",
        )
    return samples


def _unit(group: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) per (group, seed), independent of order and process."""
    digest = hashlib.sha256(f"{seed}\x00{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split(samples: Sequence[Sample], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Deterministic train/validation split by original photo.

    A sample with ``subset`` keeps its set's own split; the others go to validation when
    ``hash(seed, group)`` falls below ``val_fraction`` (so about that fraction of *photos*). A group
    never straddles the split: if any member is validation (own split first), all members are; a
    group pinned to train keeps its unsplit members in train.

    Returns:
        ``(train, val)``, each in input order.

    Raises:
        ConfigError: ``val_fraction`` is outside [0, 1).
    """
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction {val_fraction} is outside [0, 1)", "use for example 0.2")
    pinned_val = {s.group for s in samples if s.subset == "val"}
    pinned_train = {s.group for s in samples if s.subset == "train"} - pinned_val
    conflicts = {s.group for s in samples if s.subset == "train"} & pinned_val
    if conflicts:
        log.warning(
            "%d photos are in both an upstream train and val part; all their copies go to val: %s",
            len(conflicts),
            sorted(conflicts)[:5],
        )

    def is_val(s: Sample) -> bool:
        if s.group in pinned_val:
            return True
        if s.group in pinned_train:
            return False
        return _unit(s.group, seed) < val_fraction

    train = [s for s in samples if not is_val(s)]
    val = [s for s in samples if is_val(s)]
    return train, val


#: The sets the trainer uses by default.
DEFAULT_DATASETS: tuple[str, ...] = ("coco128", "roadsign_kaggle_stop", "roboflow_stop_signs")


def default_splits(
    mirror: str | os.PathLike | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    data: Sequence[str | os.PathLike] = (),
) -> tuple[list[Sample], list[Sample]]:
    """The trainer's data: the three bundled sets, split together by photo, plus the user's ``data`` sets.

    Splitting the bundled sets together is what keeps the Kaggle road-sign photos that Roboflow also
    ships on one side of the split. The user's sets (``edgesight train --data``, ``toolkit.data.userdata``) are
    split by photo the same way, keeping a split of their own where their export has one, so the
    validation AP covers their photos too.
    """
    samples = [s for name in DEFAULT_DATASETS for s in load_dataset(name, mirror)]
    train, val = split(samples, val_fraction, seed)
    log.info("default split: %d train / %d val images", len(train), len(val))
    if data:
        own_train, own_val = split(read_user_datasets(data), val_fraction, seed)
        log.info("--data: %d train / %d val images", len(own_train), len(own_val))
        # Theirs first: `--max-val-images` trials then validate on the user's photos.
        train, val = own_train + train, own_val + val
    return train, val


def evenly_spaced(items: Sequence[Any], n: int) -> list[Any]:
    """``n`` items spread over the whole sequence (the splits are ordered by source dataset)."""
    if n >= len(items):
        return list(items)
    if n < 1:
        raise ConfigError(f"val_limit={n} leaves no validation image", "pass a positive number, or none")
    return [items[(i * len(items)) // n] for i in range(n)]
