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
from toolkit.evaluate.by_source import Matches, compare

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
        note: Why a larger size with a higher mean AP was not kept, when that happened.
    """

    size: int
    weights: str
    native: int
    table: dict = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict:
        return {"size": self.size, "weights": self.weights, "native": self.native, "candidates": self.table,
                "note": self.note}


def choose_input_size(candidates: dict[tuple[str, int], Matches], native: int, user_sources: Sequence[str] = (),
                      fixed: int | None = None) -> SizeChoice:
    """Keep the (weights, size) with the highest mean AP among those that hold every measured cell of the zero-shot
    model at its pretrained size; ties go to the smaller, faster size and then to the fine-tuned weights.

    A larger size costs time on every frame, so it is kept only when it beats the best candidate at a smaller size
    beyond the noise of the deciding photos (``beats_beyond_noise``): on 13-17 photos of your own, a larger size
    that was 0.6 points better there lost 1.6 on the photos the run never saw (docs/training.md).

    Args:
        candidates: ``(weights, size)`` -> matching on the deciding photos; must hold ``("zero-shot", native)``
            unless ``fixed`` is given.
        native: The pretrained size.
        user_sources: Sources that are the user's photos (their cells count from one box).
        fixed: ``--imgsz``: only candidates at this size compete (the fine-tuned weights when they hold).
    """
    floor_size = native if ("zero-shot", native) in candidates or fixed is None else fixed
    floor_key = ("zero-shot", floor_size)
    floor = cells(candidates[floor_key], user_sources)
    table, best, best_mean = {}, floor_key, mean_ap(floor)
    held: dict[tuple[str, int], float] = {}
    for (weights, size), m in sorted(candidates.items(), key=lambda kv: (kv[0][1], kv[0][0] != "fine-tuned")):
        c = cells(m, user_sources)
        ok = holds(c, floor)
        table[f"{weights}@{size}"] = {"cells": c, "mean_ap": mean_ap(c), "median_ms": m.median_ms, "holds": ok}
        if fixed is not None and size != fixed:
            continue
        if ok:
            held[(weights, size)] = mean_ap(c)
        if (ok and mean_ap(c) > best_mean) or (fixed is not None and best[1] != fixed):
            best, best_mean = (weights, size), mean_ap(c)
    note = ""
    smaller = [key for key in held if key[1] < best[1]]
    if smaller:
        runner_up = max(smaller, key=lambda key: held[key])  # the first of equals: the smaller size
        beats, gains = beats_beyond_noise(candidates[best], candidates[runner_up], floor)
        if not beats:
            note = (f"{best[1]} ({best[0]}) was not kept: against {runner_up[1]} ({runner_up[0]}) it gained "
                    f"{gains}, not beyond the noise of these photos, and costs "
                    f"{candidates[best].median_ms / max(candidates[runner_up].median_ms, 1e-9):.2f}x the time")
            best = runner_up
    return SizeChoice(best[1], best[0], native, table, note)


def beats_beyond_noise(model: Matches, reference: Matches, measured: Cells) -> tuple[bool, str]:
    """Whether ``model`` loses no measured cell against ``reference`` and its mean gain over the cells exceeds their
    mean bootstrap noise (paired, over each source's photos); with the gains as text, for the log."""
    compared, gains = [], []
    for source, per in measured.items():
        for cls in per:
            cell = compare(model, reference, source, cls)
            if cell.gain is not None:
                compared.append(cell)
                gains.append(cell.gain)
    if not compared:
        return False, "nothing measurable"
    noise = [c.noise or 0.0 for c in compared]
    text = ", ".join(f"{c.gain:+.3f} ± {c.noise or 0.0:.3f}" for c in compared)
    return min(gains) >= 0 and float(np.mean(gains)) > float(np.mean(noise)), text
