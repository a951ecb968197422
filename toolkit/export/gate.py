"""The accuracy gate: INT8 against fp32 of the same format, per class and in the mean.

A drop of more than ``max_drop`` AP points (0.01 AP@[.5:.95]) in the mean or in any class stops the
export with ``AccuracyGateError``, and no bundle is written for that file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices.errors import AccuracyGateError
from toolkit.evaluate.results import fmt_ap


@dataclass(frozen=True)
class GateCheck:
    """One line of the accuracy gate: a class, or the mean.

    Attributes:
        name: Class name, or ``mean``.
        fp32_ap: AP@[.5:.95] of the fp32 file (None: no ground truth).
        int8_ap: AP@[.5:.95] of the INT8 file.
        drop_points: ``(fp32_ap - int8_ap) * 100``; None when not defined.
        passed: Whether the drop is within the limit.
    """

    name: str
    fp32_ap: float | None
    int8_ap: float | None
    drop_points: float | None
    passed: bool


@dataclass(frozen=True)
class GateResult:
    """The accuracy gate of one INT8 file against the fp32 file of the same format."""

    format: str
    max_drop: float
    checks: tuple[GateCheck, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def table(self) -> str:
        """Markdown table: fp32 AP, INT8 AP and drop per class and for the mean."""
        rows = [
            f"| {self.format} | fp32 AP@[.5:.95] | int8 AP@[.5:.95] | drop (AP points) | limit {self.max_drop:g} |",
            "|---|---:|---:|---:|---|",
        ]
        for c in self.checks:
            drop = "n/a" if c.drop_points is None else f"{c.drop_points:+.2f}"
            rows.append(
                f"| {c.name} | {fmt_ap(c.fp32_ap)} | {fmt_ap(c.int8_ap)} | {drop} | {'ok' if c.passed else 'FAIL'} |"
            )
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "max_drop_points": self.max_drop,
            "passed": self.passed,
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }


def gate_error(
    gates: Sequence[GateResult],
    description: str,
    calibration: Mapping[str, Any] | None,
    written: Sequence[Path] = (),
) -> AccuracyGateError:
    tables = "\n\n".join(g.table() for g in gates)
    names = ", ".join(f"{g.format} int8" for g in gates)
    cal = calibration or {}
    used = (
        f"\ncalibrated on {cal.get('count')} images (per class {dict(cal.get('images_per_class', {}))}, "
        f"{cal.get('negatives')} negatives, sources {dict(cal.get('sources', {}))}, "
        f"sha256 {str(cal.get('sha256'))[:12]})"
    )
    kept = f"\nwritten anyway (they passed): {', '.join(map(str, written))}" if written else ""
    return AccuracyGateError(
        f"{names} lost more than the allowed AP points against fp32 on {description}; no bundle was written "
        f"for it:\n{tables}{used}{kept}",
        "calibrate on more, or more representative, images (--calibration-images), ship the fp32 bundle, "
        "or accept the loss knowingly with --max-drop",
    )
