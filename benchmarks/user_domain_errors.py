"""Where a model loses AP on the unseen half of a user-domain experiment, and how much each kind of error costs.

The halves are ``benchmarks/user_domain.py``'s. For one class, on the unseen half (or the user's, ``--half yours``):
COCO AP@[.5:.95], AP at each IoU threshold (pycocotools' precision array), recall at IoU 0.5, the labelled boxes no
detection finds at IoU 0.5 (misses), the unmatched detections by score (false positives), the IoU of the matched
boxes, and the AP an oracle would reach by removing one kind of error: boxes moved onto the labels, every false
positive dropped, every miss found, or every box error shrunk by 15 % (what a 3-point gain asks of localisation
alone). Last, whether the boxes have a style to learn: the mean error of each side (as a fraction of the labelled
box) measured on the user's half, removed from the unseen half's boxes.

    python benchmarks/user_domain_errors.py --mirror ../shared --source roboflow_stop_signs roadsign_kaggle_stop
    python benchmarks/user_domain_errors.py --mirror ../shared --source roboflow_stop_signs --checkpoint run/best.pt
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from devices.daemon.tracker import iou_matrix

#: Matched at IoU 0.5 by score, greedily (COCO's rule at its first threshold).
MATCH_IOU = 0.5


@dataclass(frozen=True)
class Photo:
    """One photo's labelled boxes and detections of the class (xyxy px), scores highest first."""

    gt: np.ndarray
    det: np.ndarray
    scores: np.ndarray


def greedy_match(p: Photo) -> tuple[list[tuple[int, int, float]], list[int], list[int]]:
    """(detection, box, IoU) pairs, unmatched detections, unmatched boxes."""
    ious = iou_matrix(p.det, p.gt) if len(p.det) and len(p.gt) else np.zeros((len(p.det), len(p.gt)))
    free, pairs, fps = set(range(len(p.gt))), [], []
    for d in range(len(p.det)):
        j = max(free, key=lambda j: ious[d, j], default=None)
        if j is not None and ious[d, j] >= MATCH_IOU:
            free.discard(j)
            pairs.append((d, j, float(ious[d, j])))
        else:
            fps.append(d)
    return pairs, fps, sorted(free)


def coco_ap(photos: list[Photo]) -> tuple[float, np.ndarray]:
    """pycocotools' AP@[.5:.95] and its AP at each of the 10 IoU thresholds."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    xywh = lambda b: [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]  # noqa: E731
    anns = [{"id": k + 1, "image_id": i, "category_id": 1, "iscrowd": 0, "bbox": xywh(b),
             "area": float((b[2] - b[0]) * (b[3] - b[1]))}
            for k, (i, b) in enumerate((i, b) for i, p in enumerate(photos, 1) for b in p.gt)]
    dets = [{"image_id": i, "category_id": 1, "score": float(s), "bbox": xywh(b)}
            for i, p in enumerate(photos, 1) for b, s in zip(p.det, p.scores, strict=True)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [{"id": i} for i in range(1, len(photos) + 1)], "annotations": anns,
                      "categories": [{"id": 1, "name": "object"}]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, 0, 0, -1]  # IoU x recall, area all, 100 detections
    per_iou = np.array([row[row > -1].mean() if (row > -1).any() else 0.0 for row in precision])
    return float(per_iou.mean()), per_iou


def side_errors(photos: list[Photo]) -> np.ndarray:
    """(M, 4) error of each matched box's sides, as a fraction of the labelled box's width/height."""
    out = []
    for p in photos:
        for d, j, _ in greedy_match(p)[0]:
            g = p.gt[j]
            wh = np.tile(g[2:] - g[:2], 2)
            out.append((p.det[d] - g) / wh)
    return np.array(out).reshape(-1, 4)


def oracles(photos: list[Photo], bias: np.ndarray) -> dict[str, float]:
    """AP with one kind of error removed."""
    def edit(fix) -> float:
        return coco_ap([fix(p, *greedy_match(p)) for p in photos])[0]

    def boxes_on_labels(p: Photo, pairs, fps, missed, k: float = 0.0) -> Photo:
        det = p.det.copy()
        for d, j, _ in pairs:
            det[d] = p.gt[j] + k * (p.det[d] - p.gt[j])
        return replace(p, det=det)

    def no_fps(p: Photo, pairs, fps, missed) -> Photo:
        keep = np.setdiff1d(np.arange(len(p.det)), fps)
        return replace(p, det=p.det[keep], scores=p.scores[keep])

    def misses_found(p: Photo, pairs, fps, missed) -> Photo:
        return replace(p, det=np.concatenate([p.det, p.gt[missed]]),
                       scores=np.concatenate([p.scores, np.full(len(missed), 0.9)]))

    def unbiased(p: Photo, *_) -> Photo:
        wh = np.tile(p.det[:, 2:] - p.det[:, :2], 2)
        return replace(p, det=p.det - bias * wh)

    return {"boxes on the labels": edit(boxes_on_labels), "no false positives": edit(no_fps),
            "misses found": edit(misses_found),
            "box errors x0.85": edit(lambda p, *m: boxes_on_labels(p, *m, k=0.85)),
            "your half's mean side error removed": edit(unbiased)}


def detect(model: torch.nn.Module, samples: list, class_id: int) -> list[Photo]:
    from toolkit.data.images import load_image
    from toolkit.evaluate.coco import EVAL_SCORE_THRESHOLD
    from toolkit.evaluate.torch_detector import TorchDetector

    detector = TorchDetector(model, score_threshold=EVAL_SCORE_THRESHOLD)
    photos = []
    for s in samples:
        d = detector(load_image(s.image_path))
        mine = d.class_ids == class_id
        order = np.argsort(-d.scores[mine], kind="stable")
        photos.append(Photo(np.asarray(s.boxes[s.labels == class_id], float).reshape(-1, 4),
                            np.asarray(d.boxes[mine][order], float).reshape(-1, 4), d.scores[mine][order]))
    return photos


def report(name: str, photos: list[Photo], bias: np.ndarray) -> str:
    ap, per_iou = coco_ap(photos)
    n_gt = sum(len(p.gt) for p in photos)
    matched = [m for p in photos for m in greedy_match(p)[0]]
    fp_scores = np.array([p.scores[d] for p in photos for d in greedy_match(p)[1]])
    ious = np.array([m[2] for m in matched])
    hist = np.histogram(ious, [0.5, 0.8, 0.85, 0.9, 0.95, 1.0])[0]
    lines = [f"## {name}: {len(photos)} photos, {n_gt} boxes", "",
             f"AP {ap:.3f}, AP50 {per_iou[0]:.3f}, AP75 {per_iou[5]:.3f}; AP at IoU .50:.95: "
             + " ".join(f"{a:.3f}" for a in per_iou),
             (f"recall at IoU 0.5 (any score) {len(matched)}/{n_gt} = {len(matched) / max(n_gt, 1):.3f}; "
             f"misses {n_gt - len(matched)}"),
             (f"false positives (unmatched at IoU 0.5) with score >= 0.5: {(fp_scores >= 0.5).sum()}, >= 0.3: "
             f"{(fp_scores >= 0.3).sum()}, >= 0.1: {(fp_scores >= 0.1).sum()} (all: {len(fp_scores)})"),
             (f"matched IoU: mean {ious.mean():.3f}, median {np.median(ious):.3f}; in [.5,.8) [.8,.85) [.85,.9) "
             f"[.9,.95) [.95,1]: {hist.tolist()}"),
             "mean side error x1 y1 x2 y2 (fraction of the labelled box): "
             + " ".join(f"{e:+.3f}" for e in side_errors(photos).mean(0)),
             "oracle AP: " + "; ".join(f"{k} {v:.3f}" for k, v in oracles(photos, bias).items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--source", nargs="+", required=True)
    parser.add_argument("--checkpoint", type=Path, help="A best.pt/last.pt (default: the zero-shot model).")
    parser.add_argument("--model", default="yolox-nano")
    parser.add_argument("--size", type=int, help="Input size (default: the model's own).")
    parser.add_argument("--half", choices=("unseen", "yours"), default="unseen")
    parser.add_argument("--label", default="stop_sign")
    args = parser.parse_args()
    os.environ["EDGESIGHT_MIRROR"] = str(Path(args.mirror).resolve())
    torch.set_num_threads(1)

    from user_domain import halves

    from devices.host import machine
    from models import create_model
    from models.base import TARGET_CLASSES, at_input_size
    from models.checkpoint import load_checkpoint
    from toolkit.data.sets import load_dataset
    from toolkit.evaluate.by_source import one_copy_each

    model = load_checkpoint(args.checkpoint) if args.checkpoint else create_model(args.model, num_classes=2,
                                                                                  pretrained=True)
    if args.size:
        model.spec = at_input_size(model.spec, args.size)
    class_id = TARGET_CLASSES.index(args.label)
    print(f"# Errors of {args.checkpoint or args.model} at {model.spec.input.width}, {args.label}, {args.half} "
          f"half; CPU: {machine()}\n")
    for source in args.source:
        yours, unseen = halves(one_copy_each(load_dataset(source)))
        bias = side_errors(detect(model, yours, class_id)).mean(0)
        photos = detect(model, unseen if args.half == "unseen" else yours, class_id)
        print(report(f"{source}, {args.half} half", photos, bias))


if __name__ == "__main__":
    main()
