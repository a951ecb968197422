"""The frozen COCO teacher's class rows in the student's order, and the moving average of the student.

Where a photo's labels say nothing (people in a stop-sign set, anything the user did not label), the student
learns from the teacher: the distillation terms themselves are in ``toolkit.train.loss``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch

from models.base import COCO_ROWS, TARGET_CLASSES


def teacher_rows(student_rows: int) -> torch.Tensor:
    """Teacher (COCO-80) class rows in the student's row order (targets first, then kept 'other' rows)."""
    first = [COCO_ROWS[name] for name in TARGET_CLASSES]
    others = [r for r in range(80) if r not in first]
    return torch.tensor((first + others)[:student_rows])


class Ema:
    """Exponential moving average of the trained parameters (Polyak & Juditsky 1992): the weights a run validates
    and keeps. A few dozen photos give noisy steps; their average moves less than any one of them.

    The decay warms up over the first steps, as in YOLOX's ``ModelEMA``, so that the average is not held at the
    starting weights.

    Args:
        model: The model being trained.
        decay: The decay once warmed up.
        names: Names of the parameters that train (the others are never averaged: they do not move).
    """

    def __init__(self, model: torch.nn.Module, decay: float, names: Sequence[str]) -> None:
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.decay, self.steps = decay, 0
        averaged = dict(self.model.named_parameters())
        wanted = set(names)
        self.pairs = [(averaged[n], p) for n, p in model.named_parameters() if n in wanted]

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        d = self.decay * (1 - math.exp(-self.steps / 10))
        for avg, p in self.pairs:
            avg.mul_(d).add_(p.detach(), alpha=1 - d)
