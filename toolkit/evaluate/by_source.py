"""AP per source and per class from one detection pass, and the noise of each figure.

A figure measured on a pool of photos from a few sources says little about photos from another source
(issue 15: an input size chosen on a pool dominated by small COCO people lost 7.9 stop-sign points on a
user's photos). So validation here keeps each source apart: the detector runs once over all photos, and
COCO's matching (pycocotools ``COCOeval.evaluate``) is kept per image, so that AP can be computed for any
subset of images, and for resamples of it.

The noise of a comparison is a paired bootstrap over a source's images (Efron & Tibshirani 1993): both
models' AP on the same resampled images, ``BOOTSTRAP_ROUNDS`` times; the spread of the difference is what a
gain or a loss on that many photos has to exceed to mean anything.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from devices.detector import Detector
from models.base import TARGET_CLASSES
from toolkit.data.coco import to_coco
from toolkit.data.sample import Sample
from toolkit.evaluate.coco import _load_gt, _run_detector, match_categories

log = logging.getLogger(__name__)

#: Resamples of a source's images for the noise of a difference; 200 put the standard deviation of a
#: standard deviation within about 5 %.
BOOTSTRAP_ROUNDS = 200

#: COCO's recall thresholds (101 points) and IoU thresholds (0.50:0.05:0.95).
_RECALL = np.linspace(0.0, 1.0, 101)


def one_copy_each(samples: Sequence[Sample]) -> list[Sample]:
    """One copy of each photo (Roboflow ships three augmented copies of each), the first by path, in the order
    given: a validation or held-out set where no photo counts three times."""
    first: dict[str, Sample] = {}
    for s in sorted(samples, key=lambda s: str(s.image_path)):
        first.setdefault(s.group, s)
    return [s for s in samples if first[s.group] is s]


@dataclass(frozen=True)
class ImageMatches:
    """COCO matching of one image for one class (what ``COCOeval.accumulate`` reads).

    Attributes:
        scores: (D,) detection scores, highest first.
        matched: (T, D) whether each detection matched a box at each IoU threshold.
        ignored: (T, D) detections matched to ignored boxes.
        num_gt: Boxes of the class in the image that count.
    """

    scores: np.ndarray
    matched: np.ndarray
    ignored: np.ndarray
    num_gt: int


_EMPTY = ImageMatches(np.zeros(0), np.zeros((10, 0), bool), np.zeros((10, 0), bool), 0)


def average_precision(images: Iterable[ImageMatches]) -> float | None:
    """COCO AP@[.5:.95] (area all, 100 detections) of a list of images (repeats allowed); None without boxes.

    The same computation as ``COCOeval.accumulate``: detections of all images sorted by score, precision
    made monotone, read at 101 recall points, averaged over the 10 IoU thresholds.
    """
    images = list(images)
    num_gt = sum(m.num_gt for m in images)
    if num_gt == 0:
        return None
    scores = np.concatenate([m.scores for m in images])
    if scores.size == 0:
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([m.matched for m in images], axis=1)[:, order]
    ignored = np.concatenate([m.ignored for m in images], axis=1)[:, order]
    tp = np.cumsum(matched & ~ignored, axis=1, dtype=float)
    fp = np.cumsum(~matched & ~ignored, axis=1, dtype=float)
    recall = tp / num_gt
    precision = tp / (tp + fp + np.spacing(1))
    # Precision envelope (monotone from the right), then read at each recall threshold.
    precision = np.flip(np.maximum.accumulate(np.flip(precision, 1), axis=1), 1)
    total = 0.0
    for t in range(recall.shape[0]):
        idx = np.searchsorted(recall[t], _RECALL, side="left")
        valid = idx < recall.shape[1]
        total += precision[t, idx[valid]].sum() / len(_RECALL)
    return float(total / recall.shape[0])


@dataclass(frozen=True)
class Matches:
    """One detector's matching on a set of photos: per class, per image.

    Attributes:
        sources: Source name of each image (index = image position in the set).
        per_class: Class name -> one ``ImageMatches`` per image.
        median_ms: The detector's median time per image.
    """

    sources: tuple[str, ...]
    per_class: Mapping[str, tuple[ImageMatches, ...]]
    median_ms: float

    def images_of(self, source: str | None) -> np.ndarray:
        """Indices of the images of ``source`` (every image when None)."""
        return np.array([i for i, s in enumerate(self.sources) if source is None or s == source], dtype=int)

    def ap(self, cls: str, images: np.ndarray) -> float | None:
        return average_precision(self.per_class[cls][i] for i in images)

    def num_gt(self, cls: str, images: np.ndarray) -> int:
        return sum(self.per_class[cls][i].num_gt for i in images)


def match(detector: Detector, samples: Sequence[Sample], work_dir: Path, labels: Sequence[str] = TARGET_CLASSES
          ) -> Matches:
    """Run ``detector`` once on every sample and keep COCO's per-image matching of each class.

    Args:
        detector: BGR image -> Detections, run at ``EVAL_SCORE_THRESHOLD``.
        samples: The photos, with their sources.
        work_dir: Where the COCO json of the set is written.
        labels: The detector's class names (matched to ``TARGET_CLASSES`` by name).
    """
    from pycocotools.cocoeval import COCOeval

    json_path = to_coco(samples, Path(work_dir) / "by_source.json", TARGET_CLASSES)
    gt = _load_gt(json_path)
    matched_cats = match_categories(labels, gt.dataset["categories"])
    results, times_ms, _ = _run_detector(detector, gt, None, json_path, matched_cats, False)
    image_ids = sorted(gt.getImgIds())  # to_coco: image id = position + 1
    per_class: dict[str, tuple[ImageMatches, ...]] = {}
    for cat in gt.dataset["categories"]:
        mine = [r for r in results if r["category_id"] == cat["id"]]
        if not mine:
            per_class[cat["name"]] = tuple(
                ImageMatches(np.zeros(0), np.zeros((10, 0), bool), np.zeros((10, 0), bool),
                             len(gt.getAnnIds(imgIds=[i], catIds=[cat["id"]])))
                for i in image_ids
            )
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(gt, gt.loadRes(copy.deepcopy(mine)), "bbox")
            ev.params.imgIds = image_ids
            ev.params.catIds = [cat["id"]]
            ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e10]], ["all"]
            ev.params.maxDets = [100]
            ev.evaluate()
        records = []
        for img, entry in zip(image_ids, ev.evalImgs, strict=True):
            if entry is None:
                records.append(_EMPTY)
                continue
            gt_ignore = np.asarray(entry["gtIgnore"], bool)
            records.append(ImageMatches(
                np.asarray(entry["dtScores"][:100], float),
                np.asarray(entry["dtMatches"][:, :100] > 0, bool),
                np.asarray(entry["dtIgnore"][:, :100], bool),
                int((~gt_ignore).sum()),
            ))
            del img
        per_class[cat["name"]] = tuple(records)
    return Matches(tuple(s.source for s in samples), per_class, float(np.median(times_ms)) if times_ms else 0.0)


@dataclass(frozen=True)
class Cell:
    """One model's AP on one source and class, against a reference model on the same photos.

    Attributes:
        ap: AP@[.5:.95], or None when the source has no box of the class.
        reference: The reference model's AP on the same photos.
        noise: Standard deviation of (ap - reference) over a paired bootstrap of the source's images.
        num_gt: Boxes of the class in the source.
        num_images: Photos of the source.
    """

    ap: float | None
    reference: float | None
    noise: float | None
    num_gt: int
    num_images: int

    @property
    def gain(self) -> float | None:
        return None if self.ap is None or self.reference is None else self.ap - self.reference


def compare(model: Matches, reference: Matches, source: str | None, cls: str, rounds: int = BOOTSTRAP_ROUNDS,
            seed: int = 0) -> Cell:
    """``model`` against ``reference`` on one source's photos and one class, with the bootstrap noise."""
    images = model.images_of(source)
    num_gt = model.num_gt(cls, images)
    if num_gt == 0:
        return Cell(None, None, None, 0, len(images))
    ap, ref = model.ap(cls, images), reference.ap(cls, images)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(rounds):
        pick = rng.choice(images, size=len(images), replace=True)
        a, b = model.ap(cls, pick), reference.ap(cls, pick)
        if a is not None and b is not None:
            diffs.append(a - b)
    noise = float(np.std(diffs)) if len(diffs) > 1 else None
    return Cell(ap, ref, noise, num_gt, len(images))


#: How much of a close-up's longer side its object fills (``close_ups``).
CLOSE_UP_FILL = 0.7


def close_ups(samples: Sequence[Sample], work_dir: Path, fill: float = CLOSE_UP_FILL) -> list[Sample]:
    """Each photo cropped around its largest object so that the object fills ``fill`` of the crop's longer side:
    the view of a camera at a crossing, where a sign or a person fills the frame.

    None of the bundled sources looks like that, and it is where a larger input loses: at 512 the zero-shot
    YOLOX-Nano lost 4.7 and 7.4 stop-sign points on close-ups of the Kaggle and Roboflow photos against 416,
    while it held on the photos themselves (docs/training.md). A box cut to less than half its width or height
    by the crop is dropped. The crops are written as PNG files under ``work_dir``; their source is
    ``<source> close-ups``.
    """
    import cv2

    from toolkit.data.images import load_image

    out_dir = Path(work_dir) / "close-ups"
    out_dir.mkdir(parents=True, exist_ok=True)
    crops = []
    for i, s in enumerate(samples):
        if not len(s.boxes):
            continue
        sides = s.boxes[:, 2:] - s.boxes[:, :2]
        x1, y1, x2, y2 = s.boxes[int(sides.prod(1).argmax())]
        half = max(x2 - x1, y2 - y1) / fill / 2
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        left, top = int(max(0, cx - half)), int(max(0, cy - half))
        right, bottom = int(min(s.width, cx + half)), int(min(s.height, cy + half))
        boxes = s.boxes - np.array([left, top, left, top], np.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, right - left)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, bottom - top)
        keep = ((boxes[:, 2:] - boxes[:, :2]) >= 0.5 * sides).all(1)
        path = out_dir / f"{i:05d}.png"
        cv2.imwrite(str(path), load_image(s.image_path)[top:bottom, left:right])
        crops.append(Sample(path, right - left, bottom - top, boxes[keep], s.labels[keep], f"{s.source} close-ups",
                            f"{s.group} close-up", s.labels_people))
    return crops
