"""What a set holds: images and boxes per class and source, box sizes (``edgesight data``)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any

from models.base import TARGET_CLASSES
from toolkit.data.sample import Sample

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
