"""What an evaluation measured: AP per class (``ClassResult``) and for the detector (``EvalResult``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ClassResult:
    """AP of one detector class against its matched category.

    Attributes:
        name: The detector's label.
        category_id: Id of the matched category in the annotation file.
        category_name: Name of that category in the annotation file.
        ap: AP averaged over IoU 0.50:0.95, or None when the category has no ground-truth box.
        ap50: AP at IoU 0.50, or None likewise.
        num_gt: Ground-truth boxes of this category (crowd regions excluded).
        num_images: Images with at least one such box.
        num_detections: Detections of this class written to the results.
    """

    name: str
    category_id: int
    category_name: str
    ap: float | None
    ap50: float | None
    num_gt: int
    num_images: int
    num_detections: int


@dataclass(frozen=True)
class EvalResult:
    """What an evaluation measured.

    Attributes:
        classes: One entry per detector label that matched a category of the annotation file.
        map: Mean of ``ap`` over classes that have ground truth (None when none has).
        map50: Mean of ``ap50`` likewise.
        num_images: Images the detector ran on.
        median_ms: Median detector time per image (the callable only, not image decoding).
        total_s: Wall time of the whole evaluation.
        coco_stats: The 12 standard COCOeval numbers over all matched categories
            (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl); -1 where undefined.
    """

    classes: tuple[ClassResult, ...]
    map: float | None
    map50: float | None
    num_images: int
    median_ms: float
    total_s: float
    coco_stats: tuple[float, ...]

    def by_name(self, name: str) -> ClassResult:
        """The result of the detector label ``name``."""
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(f"no evaluated class '{name}'; evaluated: {[c.name for c in self.classes]}")

    def table(self) -> str:
        """A markdown table: AP per class, the mean, image count and speed."""
        rows = [
            "| class | AP@[.5:.95] | AP@0.5 | GT boxes | images |",
            "|---|---:|---:|---:|---:|",
        ]
        for c in self.classes:
            if c.ap is None:
                rows.append(f"| {c.name} | no GT | no GT | 0 | 0 |")
            else:
                rows.append(f"| {c.name} | {c.ap:.3f} | {c.ap50:.3f} | {c.num_gt} | {c.num_images} |")
        mean = "n/a" if self.map is None else f"{self.map:.3f}"
        mean50 = "n/a" if self.map50 is None else f"{self.map50:.3f}"
        rows.append(f"| **mean** | {mean} | {mean50} | {sum(c.num_gt for c in self.classes)} | |")
        missing = [c.name for c in self.classes if c.ap is None]
        notes = [f"{self.num_images} images, detector median {self.median_ms:.1f} ms/image"]
        if missing:
            notes.append(f"no ground truth for {', '.join(missing)}: excluded from the mean")
        return "\n".join(rows) + "\n\n" + "; ".join(notes) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN-free: undefined values are None)."""
        return asdict(self)


def fmt_ap(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
