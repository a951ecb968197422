"""Detection loss for fine-tuning, shared by both architectures, with distillation from the COCO teacher.

Each architecture's raw logits are first read into one form (``Dense``): one candidate box per anchor
in input pixels, an objectness logit and class logits. The assignment (YOLOX's SimOTA: centre prior,
then a dynamic top-k by cost, Ge et al. 2021, arXiv:2107.08430) and the losses then work the same for
YOLOX-Nano's three grids and FastestDet's single grid.

Distillation keeps what COCO taught: on every anchor the student's objectness and class outputs are
pulled toward the frozen pretrained model's (Hinton et al. 2015), weighted by the teacher's confidence,
so that people the labels miss are not learnt as background.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from devices.types import DecodeSpec


@dataclass
class Dense:
    """Per-anchor predictions of a batch: boxes (B, A, 4) xyxy input px, obj (B, A), cls (B, A, K) logits."""

    boxes: torch.Tensor
    obj: torch.Tensor
    cls: torch.Tensor
    centres: torch.Tensor  # (A, 2) anchor centres in input px
    strides: torch.Tensor  # (A,)
    softmax: bool  # classes are a softmax over K rows (FastestDet) rather than independent sigmoids


def _grid(strides: tuple[int, ...], width: int, height: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    cells, cell_strides = [], []
    for s in strides:
        gy, gx = torch.meshgrid(
            torch.arange(height // s, device=device), torch.arange(width // s, device=device), indexing="ij"
        )
        cells.append(torch.stack([gx, gy], -1).reshape(-1, 2).float())
        cell_strides.append(torch.full((cells[-1].shape[0],), float(s), device=device))
    return torch.cat(cells), torch.cat(cell_strides)


def read_dense(logits: torch.Tensor, decode: DecodeSpec, width: int, height: int) -> Dense:
    """Turn an architecture's pre-activation output into per-anchor candidates (same rule as devices/)."""
    if decode.kind == "yolox":
        grid, stride = _grid(decode.strides, width, height, logits.device)
        xy = (logits[..., :2] + grid) * stride[:, None]
        wh = torch.exp(logits[..., 2:4].clamp(max=10.0)) * stride[:, None]
        boxes = torch.cat([xy - wh / 2, xy + wh / 2], -1)
        return Dense(boxes, logits[..., 4], logits[..., 5:], (grid + 0.5) * stride[:, None], stride, False)
    # FastestDet: (B, 5 + K, H, W); centre offset tanh within the cell, size sigmoid of the whole input.
    b, c, gh, gw = logits.shape
    flat = logits.reshape(b, c, gh * gw).transpose(1, 2)
    grid, stride = _grid((height // gh,), width, height, logits.device)
    cx = (grid[:, 0] + torch.tanh(flat[..., 1])) / gw * width
    cy = (grid[:, 1] + torch.tanh(flat[..., 2])) / gh * height
    bw = torch.sigmoid(flat[..., 3]) * (decode.size_basis or width)
    bh = torch.sigmoid(flat[..., 4]) * (decode.size_basis or height)
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
    return Dense(boxes, flat[..., 0], flat[..., 5:], (grid + 0.5) * stride[:, None], stride, True)


def class_probs(dense: Dense, num_classes: int) -> torch.Tensor:
    """Probabilities of the first ``num_classes`` classes (softmax over all rows where the head has one)."""
    if dense.softmax:
        return dense.cls.softmax(-1)[..., :num_classes]
    return dense.cls[..., :num_classes].sigmoid()


@torch.no_grad()
def simota_assign(
    boxes: torch.Tensor,
    obj: torch.Tensor,
    probs: torch.Tensor,
    centres: torch.Tensor,
    strides: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    radius: float = 2.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assign anchors of one image to ground-truth boxes.

    Returns:
        fg: (A,) bool, anchors that learn a box;
        matched: (A,) index of the assigned GT for foreground anchors;
        iou: (A,) IoU of the anchor's prediction with its GT (the soft class target).
    """
    a = boxes.shape[0]
    fg = torch.zeros(a, dtype=torch.bool, device=boxes.device)
    matched = torch.zeros(a, dtype=torch.long, device=boxes.device)
    ious_out = torch.zeros(a, device=boxes.device)
    if gt_boxes.shape[0] == 0:
        return fg, matched, ious_out
    # Centre prior: anchors whose centre lies in the box or within `radius` strides of its centre.
    cx, cy = centres[:, 0:1], centres[:, 1:2]
    inside_box = (cx > gt_boxes[:, 0]) & (cx < gt_boxes[:, 2]) & (cy > gt_boxes[:, 1]) & (cy < gt_boxes[:, 3])
    gcx, gcy = (gt_boxes[:, 0] + gt_boxes[:, 2]) / 2, (gt_boxes[:, 1] + gt_boxes[:, 3]) / 2
    r = radius * strides[:, None]
    inside_centre = ((cx - gcx).abs() < r) & ((cy - gcy).abs() < r)
    candidate = (inside_box | inside_centre).T  # (G, A)
    any_candidate = candidate.any(0)
    if not any_candidate.any():
        return fg, matched, ious_out
    idx = any_candidate.nonzero().squeeze(1)
    iou = box_iou(gt_boxes, boxes[idx])  # (G, a')
    score = (obj[idx, None].sigmoid() * probs[idx]).clamp(1e-6, 1 - 1e-6)  # (a', C)
    cls_cost = -torch.log(score[:, gt_labels].T)  # (G, a')
    # As in YOLOX, anchors inside both the box and the centre region are strongly preferred.
    in_both = (inside_box & inside_centre).T[:, idx]
    cost = cls_cost + 3.0 * -torch.log(iou + 1e-8) + 1e5 * (~in_both).float()
    # Dynamic k: each GT takes as many anchors as the sum of its top-10 IoUs (at least one).
    topk = iou.topk(min(10, iou.shape[1]), dim=1).values
    ks = topk.sum(1).int().clamp(min=1)
    assign = torch.zeros_like(cost, dtype=torch.bool)
    for g in range(gt_boxes.shape[0]):
        assign[g, cost[g].topk(int(ks[g]), largest=False).indices] = True
    # An anchor claimed by several GTs keeps the cheapest.
    multi = assign.sum(0) > 1
    if multi.any():
        best = cost[:, multi].argmin(0)
        assign[:, multi] = False
        assign[best, multi.nonzero().squeeze(1)] = True
    pos = assign.any(0)
    fg[idx[pos]] = True
    matched[idx[pos]] = assign[:, pos].float().argmax(0)
    ious_out[idx[pos]] = iou[matched[idx[pos]], pos]
    return fg, matched, ious_out


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - generalised IoU of matched xyxy boxes (Rezatofighi et al. 2019)."""
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_p = (pred[:, 2:] - pred[:, :2]).clamp(min=0).prod(1)
    area_t = (target[:, 2:] - target[:, :2]).clamp(min=0).prod(1)
    union = area_p + area_t - inter + 1e-7
    iou = inter / union
    hull_wh = torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])
    hull = hull_wh.clamp(min=0).prod(1)
    return 1 - iou + (hull - union) / (hull + 1e-7)


def _soft_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


def soft_kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy minus the target's own entropy: 0 when the student matches a soft target."""
    return _soft_bce(logits, target) - _soft_bce(torch.logit(target.clamp(1e-6, 1 - 1e-6)), target)


def detection_loss(
    student: Dense,
    targets: list[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    teacher: Dense | None = None,
    teacher_class_rows: torch.Tensor | None = None,
    distill_weight: float = 1.0,
    box_distill_weight: float = 0.0,
    unlabelled: torch.Tensor | None = None,
    teacher_box_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Loss of a batch.

    Args:
        student: The model being trained.
        targets: Per image (boxes (G, 4) xyxy input px, labels (G,)): the labels of the classes it teaches.
        num_classes: Target classes (the first rows of ``student.cls``).
        teacher: The frozen COCO model's output on the same batch, for distillation.
        teacher_class_rows: Row indices into the teacher's classes matching every student class row
            (for a softmax head this includes the kept "other" rows); needed with ``teacher`` by every
            distillation term.
        distill_weight: Weight of the distillation terms.
        box_distill_weight: Weight of the box distillation: boxes of the classes a photo's labels do not teach
            are pulled toward the teacher's, so that box layers shared by all classes learn the labelled classes'
            boxes without moving the others'.
        unlabelled: (B, num_classes) bool, per image the classes its labels do not teach (box distillation).
        teacher_box_weight: Pull every box toward the teacher's where the teacher sees an object of any target
            class, labelled ones included: the labels then teach boxes only where the teacher sees none.
    """
    probs = class_probs(student, num_classes).detach()
    device = student.obj.device
    n_fg, box_l, cls_l = 0, student.obj.new_zeros(()), student.obj.new_zeros(())
    obj_target = torch.zeros_like(student.obj)
    for i, (gt_boxes, gt_labels) in enumerate(targets):
        gt_boxes, gt_labels = gt_boxes.to(device), gt_labels.to(device)
        fg, matched, iou = simota_assign(
            student.boxes[i].detach(), student.obj[i].detach(), probs[i], student.centres, student.strides,
            gt_boxes, gt_labels,
        )
        if not fg.any():
            continue
        n_fg += int(fg.sum())
        obj_target[i, fg] = 1.0
        box_l = box_l + giou_loss(student.boxes[i, fg], gt_boxes[matched[fg]]).sum()
        labels = gt_labels[matched[fg]]
        if student.softmax:
            cls_l = cls_l + F.cross_entropy(student.cls[i, fg], labels, reduction="sum")
        else:
            # IoU-aware soft targets as in YOLOX: the class score also ranks localisation quality.
            cls_t = torch.zeros_like(student.cls[i, fg])
            cls_t[torch.arange(labels.shape[0]), labels] = iou[fg]
            cls_l = cls_l + _soft_bce(student.cls[i, fg], cls_t).sum()
    norm = max(n_fg, 1)
    fg_mask = obj_target > 0
    # Objectness: assigned anchors learn 1. Elsewhere the target is the teacher's objectness when there is
    # a teacher (classes the labels do not supervise, and unlabelled objects, stay what COCO taught),
    # and 0 otherwise (plain fine-tuning).
    neg_target = teacher.obj.sigmoid() if teacher is not None else torch.zeros_like(student.obj)
    obj_l = _soft_bce(student.obj[fg_mask], obj_target[fg_mask]).sum()
    neg_w = distill_weight if teacher is not None else 1.0
    obj_l = obj_l + neg_w * soft_kl(student.obj[~fg_mask], neg_target[~fg_mask]).sum()
    out = {"box": 5.0 * box_l / norm, "obj": obj_l / norm, "cls": cls_l / norm}
    # Each distillation term reads the teacher's rows of the student classes (see teacher_class_rows).
    if teacher is not None and distill_weight > 0:
        assert teacher_class_rows is not None
        out["distill"] = distill_weight * distill_classes(student, teacher, teacher_class_rows) / norm
    if teacher is not None and box_distill_weight > 0 and unlabelled is not None and unlabelled.any():
        assert teacher_class_rows is not None
        t_probs = class_probs(teacher, teacher.cls.shape[-1])[..., teacher_class_rows[:num_classes]]
        # Where the teacher sees an object of a class the labels leave to it, and no label assigned the anchor.
        weight = teacher.obj.sigmoid() * (t_probs * unlabelled[:, None, :]).amax(-1) * ~fg_mask
        out["box_distill"] = box_distill_weight * distill_boxes(student, teacher, weight) / norm
    if teacher is not None and teacher_box_weight > 0:
        assert teacher_class_rows is not None
        # A few dozen labelled boxes scatter as much as the COCO model's own (docs/training.md): training on them
        # lost AP at IoU 0.95 while the labels taught objects COCO does not know (the backs of stop signs).
        t_probs = class_probs(teacher, teacher.cls.shape[-1])[..., teacher_class_rows[:num_classes]]
        weight = teacher.obj.sigmoid() * t_probs.amax(-1)
        out["teacher_box"] = teacher_box_weight * distill_boxes(student, teacher, weight) / norm
    # sum() starts from the int 0, so typeshed gives Tensor | int; out always holds box, obj and cls.
    out["total"] = cast(torch.Tensor, sum(out.values()))
    return out


def distill_classes(student: Dense, teacher: Dense, rows: torch.Tensor) -> torch.Tensor:
    """Pull the student's class outputs toward the teacher's where the teacher sees an object."""
    t_obj = teacher.obj.sigmoid()
    if student.softmax:
        t_cls = teacher.cls.softmax(-1)[..., rows]
        t_cls = t_cls / t_cls.sum(-1, keepdim=True).clamp(min=1e-6)
        kl = (t_cls * (t_cls.clamp(min=1e-8).log() - student.cls.log_softmax(-1))).sum(-1)
    else:
        t_cls = teacher.cls[..., rows].sigmoid()
        kl = soft_kl(student.cls, t_cls).sum(-1)
    return (kl * t_obj).sum()


def distill_boxes(student: Dense, teacher: Dense, weight: torch.Tensor) -> torch.Tensor:
    """L1 distance of the student's boxes to the teacher's, in strides, weighted per anchor (B, A)."""
    dist = ((student.boxes - teacher.boxes).abs() / student.strides[:, None]).sum(-1)
    return (dist * weight).sum()
