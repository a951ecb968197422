"""Which weights and which input size a run keeps, decided per validation source and class.

A figure pooled over a few sources chose settings that did not travel (issue 15): an input size that gained
small COCO people lost 7.9 stop-sign points on a user's photos of large signs, and an epoch that gained on the
user's photos was thrown away because the pooled figure, mostly COCO, moved the other way. So every decision
here compares *cells*, one per (validation source, class), and a candidate replaces the zero-shot model only if
it holds every measured cell: never worse anywhere beats best on average.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from models.base import TARGET_CLASSES
from toolkit.evaluate.by_source import Matches

#: A bundled validation cell (one source, one class) with fewer boxes than this decides nothing: its AP moves by
#: several points when one box is found or missed (coco128's validation part has 2 stop signs). The user's
#: photos count from one box: their validation split is small, and it is the only measure of their camera.
MIN_BOXES = 10

Cells = dict[str, dict[str, float]]


def cells(matches: Matches, user_sources: Sequence[str] = ()) -> Cells:
    """AP@[.5:.95] per source and class, for the cells with enough boxes to be measured."""
    out: Cells = {}
    for source in dict.fromkeys(matches.sources):
        images = matches.images_of(source)
        for cls in TARGET_CLASSES:
            if matches.num_gt(cls, images) >= (1 if source in user_sources else MIN_BOXES):
                out.setdefault(source, {})[cls] = float(matches.ap(cls, images) or 0.0)
    return out


def holds(candidate: Cells, floor: Cells) -> bool:
    """Whether no measured cell of ``candidate`` is below the same cell of ``floor``."""
    return all(candidate.get(s, {}).get(c, 0.0) >= ap for s, per in floor.items() for c, ap in per.items())


def mean_ap(table: Cells) -> float:
    """Mean AP over the cells (each source and class weighs the same, whatever its number of photos)."""
    values = [ap for per in table.values() for ap in per.values()]
    return float(np.mean(values)) if values else 0.0


def describe(table: Cells) -> str:
    """One line for the log: AP per measured source and class, or why nothing was measured."""
    if not table:
        return f"AP not measured (no validation source has {MIN_BOXES} boxes of a class, nor any of your photos)"
    return ", ".join(f"{source} {cls} AP {ap:.3f}" for source, per in table.items() for cls, ap in per.items())


def improves_on(metrics: Cells, best: Cells, zero_shot: Cells, protect_classes: bool = True) -> bool:
    """Whether an epoch replaces best.pt: a higher mean AP over the cells and, with ``protect_classes``, no cell
    below the zero-shot model's.

    The second rule is the "no forgetting" promise, per source: a fine-tune that trades pedestrians for stop
    signs, or one source's stop signs for another's, is not kept.
    """
    return (holds(metrics, zero_shot) or not protect_classes) and mean_ap(metrics) > mean_ap(best)


@dataclass(frozen=True)
class SizeChoice:
    """The input size a run keeps, with the figures it was chosen on.

    Attributes:
        size: The chosen square input size.
        weights: ``"fine-tuned"`` or ``"zero-shot"``: which weights run at that size.
        native: The pretrained size (the reference every candidate must hold against).
        table: Per candidate ``"<weights>@<size>"``: ``cells`` (AP per source and class), ``mean_ap``,
            ``median_ms`` (PyTorch, per photo, as the run measured it) and ``holds`` (no cell below the zero-shot
            model at its pretrained size).
    """

    size: int
    weights: str
    native: int
    table: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"size": self.size, "weights": self.weights, "native": self.native, "candidates": self.table}


def choose_input_size(candidates: dict[tuple[str, int], Matches], native: int, user_sources: Sequence[str] = (),
                      fixed: int | None = None) -> SizeChoice:
    """Keep the (weights, size) with the highest mean AP among those that hold every measured cell of the zero-shot
    model at its pretrained size; ties go to the smaller, faster size and then to the fine-tuned weights.

    Args:
        candidates: ``(weights, size)`` -> matching on the deciding photos; must hold ``("zero-shot", native)``
            unless ``fixed`` is given.
        native: The pretrained size.
        user_sources: Sources that are the user's photos (their cells count from one box).
        fixed: ``--imgsz``: only candidates at this size compete (the fine-tuned weights when they hold).
    """
    floor_key = ("zero-shot", native) if ("zero-shot", native) in candidates else ("zero-shot", fixed)
    floor = cells(candidates[floor_key], user_sources)
    table, best, best_mean = {}, floor_key, mean_ap(floor)
    for (weights, size), m in sorted(candidates.items(), key=lambda kv: (kv[0][1], kv[0][0] != "fine-tuned")):
        c = cells(m, user_sources)
        held = holds(c, floor)
        table[f"{weights}@{size}"] = {"cells": c, "mean_ap": mean_ap(c), "median_ms": m.median_ms, "holds": held}
        if fixed is not None and size != fixed:
            continue
        if (held and mean_ap(c) > best_mean) or (fixed is not None and best[1] != fixed):
            best, best_mean = (weights, size), mean_ap(c)
    return SizeChoice(best[1], best[0], native, table)
