"""Choose the calibration images for INT8 quantization from the training samples.

Post-training quantization fixes every activation's range from the images it sees, so the set must
look like what the camera will see: both classes, and frames with neither. Selection is stratified by
class and deterministic (same samples and seed, same set, same hash), and it never invents data: no
random tensors, no built-in fallback images.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

import numpy as np

from devices.errors import CalibrationError

log = logging.getLogger(__name__)

#: Fewest calibration images accepted by default: a few dozen images give unstable activation ranges.
MIN_CALIBRATION_IMAGES = 100

#: Stratum of the images that contain no labelled object.
NEGATIVE = -1


class LabelledImage(Protocol):
    """What selection needs of a training sample (``toolkit.data.sample.Sample`` fits)."""

    @property
    def image_path(self) -> Path: ...

    @property
    def labels(self) -> np.ndarray: ...

    @property
    def source(self) -> str: ...


@dataclass(frozen=True)
class CalibrationSet:
    """The images a model was calibrated on.

    Attributes:
        paths: Image files, in the order a converter reads them.
        class_counts: Class index -> number of chosen images that contain that class.
        negatives: Number of chosen images with no labelled object.
        sources: Dataset name -> number of chosen images from it.
        sha256: Hash of the set: sha256 over the sorted sha256 digests of the files' contents, so it
            names the pixels used, whatever the paths or the order.
        seed: Seed the selection used.
    """

    paths: tuple[Path, ...]
    class_counts: Mapping[int, int]
    negatives: int
    sources: Mapping[str, int]
    sha256: str
    seed: int

    def __len__(self) -> int:
        return len(self.paths)


def select_calibration(
    samples: Iterable[LabelledImage],
    count: int = 300,
    seed: int = 0,
    min_count: int = MIN_CALIBRATION_IMAGES,
    allow_few: bool = False,
    balance: bool = False,
) -> CalibrationSet:
    """Draw a class-stratified calibration set from training samples.

    Each image is put in the stratum of its rarest class (so that photos of a rare class are not
    drowned by those of a common one), images without objects form their own stratum, and every stratum
    gets a share of ``count`` proportional to its size (or an equal share with ``balance``), at least one
    image each.

    Args:
        samples: Training samples (``image_path``, ``labels`` as class indices, ``source``). Never
            validation or test images: calibrating on them leaks the evaluation set.
        count: How many images to choose; all of them when there are fewer.
        seed: Seed of the draw within each stratum.
        min_count: Fewest images accepted; a few dozen images give unstable activation ranges.
        allow_few: Accept fewer than ``min_count`` images (tests, quick experiments), never none.
        balance: Give every class the same share instead of its share of the training images (negatives
            keep theirs). Helps when one class dominates the training set: see the export report.

    Returns:
        The chosen set with its per-class counts and content hash.

    Raises:
        CalibrationError: No samples, or fewer than ``min_count`` without ``allow_few``, or an image
            file that cannot be read.
    """
    unique = _unique(samples)
    if not unique:
        raise CalibrationError(
            "the calibration set is empty: no training samples were given",
            "pass the training samples of the model (toolkit.data.sets.default_splits()[0])",
        )
    if count < 1:
        raise CalibrationError(f"count={count} asks for no calibration images", f"use count >= {min_count}")
    target = min(count, len(unique))
    if target < min_count and not allow_few:
        raise CalibrationError(
            f"only {target} calibration images (count={count}, {len(unique)} training images available); "
            f"at least min_count={min_count} are needed for stable INT8 activation ranges",
            "add training images, or pass allow_few=True (tests and quick experiments only)",
        )

    # Stratify by rarest class, share out the count, draw deterministically within each stratum.
    strata = _strata(unique)
    quotas = _allocate({k: len(v) for k, v in strata.items()}, target, balance)
    rng = np.random.default_rng(seed)
    chosen: list[LabelledImage] = []
    for key in sorted(strata):
        members = sorted(strata[key], key=lambda s: str(s.image_path))
        picks = rng.permutation(len(members))[: quotas[key]]
        chosen.extend(members[i] for i in sorted(picks))
    chosen.sort(key=lambda s: str(s.image_path))

    paths = tuple(Path(s.image_path) for s in chosen)
    result = CalibrationSet(
        paths=paths,
        class_counts=MappingProxyType(_class_counts(chosen)),
        negatives=sum(1 for s in chosen if _classes(s).size == 0),
        sources=MappingProxyType(dict(sorted(Counter(s.source for s in chosen).items()))),
        sha256=set_sha256(paths),
        seed=seed,
    )
    log.info(
        "calibration set: %d images (classes %s, %d negatives, sources %s), sha256 %s",
        len(result),
        dict(result.class_counts),
        result.negatives,
        dict(result.sources),
        result.sha256[:12],
    )
    return result


def set_sha256(paths: Sequence[Path]) -> str:
    """sha256 over the sorted content digests of ``paths`` (order- and path-independent).

    Raises:
        CalibrationError: A file is missing or unreadable.
    """
    digests = sorted(_file_sha256(Path(p)) for p in paths)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise CalibrationError(
            f"calibration image {path} cannot be read: {exc}", "restore the file or drop it from the samples"
        ) from exc


def _classes(sample: LabelledImage) -> np.ndarray:
    return np.unique(np.asarray(sample.labels, np.int64).reshape(-1))


def _unique(samples: Iterable[LabelledImage]) -> list[LabelledImage]:
    # A sample listed twice must not count twice (and must not enter the set twice).
    seen: dict[str, LabelledImage] = {}
    for s in samples:
        seen.setdefault(str(Path(s.image_path)), s)
    return list(seen.values())


def _strata(samples: Sequence[LabelledImage]) -> dict[int, list[LabelledImage]]:
    images_per_class = _class_counts(samples)
    strata: dict[int, list[LabelledImage]] = {}
    for s in samples:
        classes = _classes(s)
        key = NEGATIVE if classes.size == 0 else min(classes.tolist(), key=lambda c: (images_per_class[c], c))
        strata.setdefault(key, []).append(s)
    return strata


def _allocate(sizes: Mapping[int, int], total: int, balance: bool) -> dict[int, int]:
    """Split ``total`` over the strata, no stratum beyond its size, at least one each where possible.

    Proportional: each stratum's share follows its size. Balanced: negatives keep their proportional
    share and the class strata split the rest equally, a small stratum giving all it has and its unused
    share going to the others (water-filling).
    """
    n = sum(sizes.values())
    weights = {k: float(sizes[k]) for k in sizes}
    if balance:
        classes = [k for k in sizes if k != NEGATIVE]
        for k in classes:
            weights[k] = (n - sizes.get(NEGATIVE, 0)) / len(classes)
    quota: dict[int, float] = {}
    remaining, active = float(total), set(sizes)
    while active:
        scale = remaining / sum(weights[k] for k in active)
        full = {k for k in active if weights[k] * scale >= sizes[k]}
        if not full:
            quota.update({k: weights[k] * scale for k in active})
            break
        for k in full:
            quota[k] = sizes[k]
            remaining -= sizes[k]
        active -= full
    counts = {k: int(q) for k, q in quota.items()}
    # Largest remainder first for what rounding down left over.
    for k in sorted(quota, key=lambda k: (-(quota[k] - int(quota[k])), k)):
        if sum(counts.values()) < total and counts[k] < sizes[k]:
            counts[k] += 1
    # A stratum rounded to nothing borrows one image from the largest, so every class is seen.
    for k in sorted(counts):
        donor = max(counts, key=lambda j: (counts[j], -j))
        if counts[k] == 0 and counts[donor] > 1:
            counts[k], counts[donor] = 1, counts[donor] - 1
    return counts


def _class_counts(samples: Iterable[LabelledImage]) -> dict[int, int]:
    return dict(sorted(Counter(c for s in samples for c in _classes(s).tolist()).items()))
