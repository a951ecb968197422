"""COCO-standard evaluation of any detector on a COCO json, with per-class AP and PR curves.

A detector, for evaluation, is any callable taking a BGR uint8 image and returning
``devices.types.Detections`` (boxes xyxy in original pixels, scores, class ids into its labels): the
PyTorch model, an ONNX/TFLite backend and the HOG baseline all fit.

AP integrates precision over the whole recall range, so it needs the low-confidence detections too:
run the detector with a score threshold of about ``EVAL_SCORE_THRESHOLD`` (0.01), not the deployment
threshold (0.25 or more), or the curve is cut short and AP comes out low. This module leaves the
threshold to the detector and only says so in the log when the lowest score it saw was high.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import re
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from devices.detector import Detector
from devices.errors import DataError, require
from toolkit.evaluate.results import ClassResult, EvalResult

log = logging.getLogger(__name__)

#: Score threshold to run a detector at for AP: the standard practice of COCO evaluations
#: (YOLOX and mmdetection evaluate at 0.001-0.01); higher thresholds truncate the PR curve.
EVAL_SCORE_THRESHOLD = 0.01

#: Names that mean the same class; names are compared lower-case with ``_``/``-`` read as spaces.
SYNONYMS: tuple[frozenset[str], ...] = (
    frozenset({"pedestrian", "person", "people", "persons", "pedestrians"}),
    frozenset({"stop sign", "stopsign"}),
)

# COCOeval's area range "all" and the largest maxDets (100) index its precision array.
_AREA_ALL = 0

_MAXDETS_100 = -1


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def _canonical(name: str) -> str:
    n = _norm(name)
    for group in SYNONYMS:
        if n in group:
            return min(group)
    return n


def match_categories(labels: Sequence[str], categories: Iterable[dict[str, Any]]) -> dict[int, dict]:
    """Map detector class indices to the annotation file's categories by name, with synonyms.

    Args:
        labels: The detector's class names, in class-id order.
        categories: The ``categories`` entries of a COCO json (``id``, ``name``).

    Returns:
        ``{class index: category}`` for every label that matches; labels without a match are absent.

    Raises:
        DataError: Two categories match one label, or no label matches any category.
    """
    categories = list(categories)
    matched: dict[int, dict] = {}
    for i, label in enumerate(labels):
        hits = [c for c in categories if _canonical(c["name"]) == _canonical(label)]
        if len(hits) > 1:
            raise DataError(
                f"detector label '{label}' matches several categories: {[(c['id'], c['name']) for c in hits]}",
                "merge those categories in the annotation file, or remove all but one",
            )
        if hits:
            matched[i] = hits[0]
    if not matched:
        raise DataError(
            f"no category of the annotation file ({[c['name'] for c in categories][:20]}) matches the "
            f"detector's labels {list(labels)}",
            "evaluate on a file whose categories are named like the labels (synonyms: "
            + "; ".join("/".join(sorted(g)) for g in SYNONYMS)
            + ")",
        )
    return matched


def _load_gt(coco_json: Path) -> Any:
    """Read the COCO json into a pycocotools COCO, filling fields COCOeval needs but files may omit."""
    require("pycocotools", "device", "COCO evaluation")
    from pycocotools.coco import COCO

    try:
        dataset = json.loads(Path(coco_json).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read COCO json {coco_json}: {exc}", "pass an existing COCO json") from exc
    for key in ("images", "annotations", "categories"):
        if key not in dataset:
            raise DataError(f"{coco_json} has no '{key}' list", "pass a COCO instances json")
    for ann in dataset["annotations"]:
        _check_gt_box(ann, coco_json)
        # Hand-made and converted files often omit these; COCOeval reads both for every box.
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    gt = COCO()
    gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _check_gt_box(ann: dict, coco_json: Path) -> None:
    """A ground-truth box must be four finite numbers with a positive width and height.

    pycocotools takes any box: one of negative width matches nothing and silently changes AP (a hand-edited
    pedestrian box turned AP 0.450 into 0.101), so it is refused here, as the training readers refuse it.
    """
    bbox = ann.get("bbox")
    where = f"{coco_json}: annotation id {ann.get('id')} (image_id {ann.get('image_id')})"
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        raise DataError(f"{where}: bbox {bbox!r} is not [x, y, width, height]", "fix or delete this annotation")
    if bbox[2] <= 0 or bbox[3] <= 0:
        raise DataError(
            f"{where}: bbox {bbox} has width {bbox[2]:g} and height {bbox[3]:g}; both must be positive",
            "fix or delete this annotation (a COCO bbox is [x, y, width, height] in pixels)",
        )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _image_path(info: dict, images_dir: Path | None, coco_json: Path) -> Path:
    name = Path(info["file_name"])
    if images_dir is not None:
        return Path(images_dir) / name
    return name if name.is_absolute() else Path(coco_json).parent / name


def load_image(path: Path, width: int | None = None, height: int | None = None) -> np.ndarray:
    """Read an image as BGR uint8 (H, W, 3), as the annotation file's width and height expect.

    ``cv2.imread``'s default (``IMREAD_COLOR``) converts gray and RGBA to BGR (alpha dropped) and
    applies the EXIF orientation, which is what a camera user sees. COCO's boxes, however, were drawn on
    the stored pixels: when the oriented image has width and height swapped against the file's record,
    the image is read again without the EXIF rotation so that boxes and pixels agree.

    Raises:
        DataError: The file is missing or undecodable, or its size differs from the record.
    """
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"cannot read image {path}", "check images_dir and the file_name in the json")
    if width is None or height is None or img.shape[:2] == (height, width):
        return img
    if img.shape[:2] == (width, height):
        log.warning("%s: EXIF orientation swaps its sides against the json; reading it unrotated", path)
        unrotated = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if unrotated is not None and unrotated.shape[:2] == (height, width):
            return unrotated
    raise DataError(
        f"image {path} is {img.shape[1]}x{img.shape[0]} but the json records {width}x{height}",
        "use the images the annotation file was made for, or fix its width/height",
    )


def _progress(img_ids: list[int]) -> Iterable[int]:
    """A progress bar over the images when tqdm is installed (the device install may not have it)."""
    try:
        from tqdm import tqdm
    except ImportError:
        log.info("evaluating %d images (install tqdm for a progress bar)", len(img_ids))
        return img_ids
    return tqdm(img_ids, desc="evaluate", unit="img")


def _run_detector(
    detector: Detector, gt: Any, images_dir: Path | None, coco_json: Path, matched: dict[int, dict], progress: bool
) -> tuple[list[dict], list[float], dict[int, int]]:
    """Run the detector on every image; return COCO results, per-image ms and detections per class."""
    results: list[dict] = []
    times_ms: list[float] = []
    counts = dict.fromkeys(matched, 0)
    img_ids = sorted(gt.getImgIds())
    iterator: Iterable[int] = img_ids
    if progress:
        iterator = _progress(img_ids)
    lowest = math.inf
    for img_id in iterator:
        info = gt.imgs[img_id]
        img = load_image(_image_path(info, images_dir, coco_json), info.get("width"), info.get("height"))
        start = time.perf_counter()
        det = detector(img)
        times_ms.append((time.perf_counter() - start) * 1000.0)
        for box, score, cls in zip(det.boxes, det.scores, det.class_ids, strict=True):
            if int(cls) not in matched:
                continue  # a class the annotation file does not have cannot be scored
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append(
                {
                    "image_id": img_id,
                    "category_id": matched[int(cls)]["id"],
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(float(score), 5),
                }
            )
            counts[int(cls)] += 1
            lowest = min(lowest, float(score))
    if results and lowest > 0.2:
        log.warning(
            "lowest detection score was %.2f: AP needs detections down to about %.2f "
            "(set the detector's score threshold to EVAL_SCORE_THRESHOLD)",
            lowest,
            EVAL_SCORE_THRESHOLD,
        )
    return results, times_ms, counts


def _cocoeval(gt: Any, results: list[dict], cat_ids: list[int]) -> Any | None:
    """Run COCOeval bbox on ``cat_ids`` quietly; None when there is no detection at all."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return None  # loadRes cannot take an empty list; no detection means AP 0 wherever GT exists
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(copy.deepcopy(results))  # loadRes adds fields to the dicts it is given
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted(gt.getImgIds())
        ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _ap_from_precision(precision: np.ndarray) -> float | None:
    """AP from a COCOeval precision slice (T, R); -1 marks 'no ground truth'."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else None


def _class_result(gt: Any, results: list[dict], index: int, label: str, cat: dict, n_det: int) -> ClassResult:
    ann_ids = gt.getAnnIds(catIds=[cat["id"]], iscrowd=False)
    anns = gt.loadAnns(ann_ids)
    num_gt = len(anns)
    num_images = len({a["image_id"] for a in anns})
    if num_gt == 0:
        ap = ap50 = None
    else:
        ev = _cocoeval(gt, [r for r in results if r["category_id"] == cat["id"]], [cat["id"]])
        if ev is None:
            ap = ap50 = 0.0
        else:
            precision = ev.eval["precision"][:, :, 0, _AREA_ALL, _MAXDETS_100]
            ap = _ap_from_precision(precision) or 0.0
            ap50 = _ap_from_precision(precision[:1]) or 0.0
    return ClassResult(label, int(cat["id"]), str(cat["name"]), ap, ap50, num_gt, num_images, n_det)


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def save_pr_curve(ev: Any | None, classes: Sequence[ClassResult], path: Path) -> Path:
    """Plot precision against recall at IoU 0.5 and averaged over IoU 0.5:0.95, one line per class.

    Args:
        ev: An accumulated COCOeval over the categories of ``classes`` (in that order), or None when
            there was no detection (every curve is then zero).
        classes: The evaluated classes; AP values go in the legend.
        path: PNG to write.
    """
    require("matplotlib", "train", "the PR-curve plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recall = np.linspace(0.0, 1.0, 101) if ev is None else np.asarray(ev.params.recThrs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, title, iou_rows, attr in (
        (axes[0], "IoU 0.50", slice(0, 1), "ap50"),
        (axes[1], "IoU 0.50:0.95 (mean)", slice(None), "ap"),
    ):
        for c in classes:
            ap = getattr(c, attr)
            if ap is None:
                continue  # no ground truth: no curve to draw
            if ev is None:
                prec = np.zeros_like(recall)
            else:
                # COCOeval sorts params.catIds, and its precision array follows that order.
                k = list(ev.params.catIds).index(c.category_id)
                p = ev.eval["precision"][iou_rows, :, k, _AREA_ALL, _MAXDETS_100]
                prec = np.where(p > -1, p, 0.0).mean(axis=0)
            ax.plot(recall, prec, label=f"{c.name} (AP {ap:.3f}, {c.num_gt} GT)")
        ax.set(title=title, xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def evaluate(
    detector: Detector,
    coco_json: Path,
    images_dir: Path | None,
    labels: Sequence[str],
    *,
    save_predictions: Path | None = None,
    pr_curve: Path | None = None,
    progress: bool = False,
) -> EvalResult:
    """Run ``detector`` on every image of a COCO json and score it with COCOeval (bbox).

    Args:
        detector: BGR uint8 image -> Detections; run it at a low score threshold (EVAL_SCORE_THRESHOLD).
        coco_json: COCO instances json (images, annotations, categories). Categories that match no
            detector label are ignored, so a full 80-class COCO file works.
        images_dir: Folder that ``file_name`` is relative to. When None, ``file_name`` may be absolute;
            a relative one is taken relative to the json's folder.
        labels: The detector's class names in class-id order, matched to categories by name with
            synonyms (pedestrian/person, stop_sign/"stop sign").
        save_predictions: Where to write the COCO results list (image_id, category_id of the
            annotation file, bbox xywh in original pixels, score).
        pr_curve: Where to write a PR-curve PNG.
        progress: Show a progress bar.

    Returns:
        Per-class AP@[.5:.95] and AP@0.5 (None for a category without ground truth), their means over
        classes with ground truth, and the detector's median time per image.

    Raises:
        DataError: Unreadable json or image, or no label matching any category.
    """
    start = time.perf_counter()
    gt = _load_gt(Path(coco_json))
    matched = match_categories(labels, gt.dataset["categories"])
    ignored = sorted({c["name"] for c in gt.dataset["categories"]} - {c["name"] for c in matched.values()})
    log.info(
        "evaluating %s on %d images of %s (%d categories ignored)",
        [labels[i] for i in matched],
        len(gt.imgs),
        coco_json,
        len(ignored),
    )

    # Detect, then score each class alone and all matched classes together.
    results, times_ms, counts = _run_detector(detector, gt, images_dir, Path(coco_json), matched, progress)
    if save_predictions is not None:
        Path(save_predictions).parent.mkdir(parents=True, exist_ok=True)
        Path(save_predictions).write_text(json.dumps(results))
    classes = tuple(_class_result(gt, results, i, labels[i], cat, counts[i]) for i, cat in matched.items())
    overall = _cocoeval(gt, results, [c.category_id for c in classes])
    stats = tuple(float(s) for s in overall.stats) if overall is not None else (0.0,) * 12
    if pr_curve is not None:
        save_pr_curve(overall, classes, Path(pr_curve))

    result = EvalResult(
        classes=classes,
        map=_mean(c.ap for c in classes),
        map50=_mean(c.ap50 for c in classes),
        num_images=len(times_ms),
        median_ms=statistics.median(times_ms) if times_ms else 0.0,
        total_s=time.perf_counter() - start,
        coco_stats=stats,
    )
    log.info(
        "AP@[.5:.95] %s, AP@0.5 %s over %d images (%s)",
        "n/a" if result.map is None else f"{result.map:.4f}",
        "n/a" if result.map50 is None else f"{result.map50:.4f}",
        result.num_images,
        ", ".join(f"{c.name} {'no GT' if c.ap is None else f'{c.ap:.3f}'}" for c in classes),
    )
    return result
