"""The frozen COCO teacher: its class rows in the student's order, and its pseudo-labels of people.

Photos whose sets do not annotate people get the teacher's confident person detections as labels, so
their people are not learnt as background; the distillation terms themselves are in ``toolkit.train.loss``.
"""

from __future__ import annotations

import torch
from torchvision.ops import nms

from devices.processing import combine_scores
from models.base import COCO_ROWS, TARGET_CLASSES
from toolkit.train.loss import class_probs


def teacher_rows(student_rows: int) -> torch.Tensor:
    """Teacher (COCO-80) class rows in the student's row order (targets first, then kept 'other' rows)."""
    first = [COCO_ROWS[name] for name in TARGET_CLASSES]
    others = [r for r in range(80) if r not in first]
    return torch.tensor((first + others)[:student_rows])


@torch.no_grad()
def pseudo_people(teacher_dense, decode_kind: str, score: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Confident teacher detections of people, per image: labels for photos whose set skips people."""
    probs = class_probs(teacher_dense, 80)[..., COCO_ROWS["pedestrian"]]
    obj = teacher_dense.obj.sigmoid()
    conf = combine_scores(decode_kind, obj, probs)  # the rule the device decodes this architecture with
    out = []
    for boxes, c in zip(teacher_dense.boxes, conf, strict=True):
        keep = c >= score
        b, s = boxes[keep], c[keep]
        k = nms(b, s, 0.45)
        out.append((b[k], torch.zeros(len(k), dtype=torch.long, device=b.device)))
    return out
