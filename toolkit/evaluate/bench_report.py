"""What a benchmark measured (``BenchRow`` per model and thread count, ``BenchTable``) and its files:
``bench.md``, ``bench.json`` and, where matplotlib is installed, ``bench.png``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devices.errors import require
from toolkit.evaluate.coco import EVAL_SCORE_THRESHOLD
from toolkit.evaluate.results import fmt_ap

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchRow:
    """One model at one thread count.

    Attributes:
        name: Bundle folder name, peer name, or ``hog``.
        kind: ``bundle``, ``peer`` or ``baseline``.
        format: ``onnx``, ``tflite`` or ``opencv``.
        precision: ``fp32``, ``int8`` or ``-``.
        runtime: Runtime and version.
        size_bytes: Model file size (None for HOG, built into OpenCV).
        threads: Runtime threads.
        runs: Timed frames.
        model_ms: Median time of the model call alone (None for HOG, which has no separate call).
        model_ms_p90: 90th percentile of the same.
        frame_ms: Median of the whole frame: preprocessing, model, decoding and NMS.
        frame_ms_p90: 90th percentile of the same.
        ap: Category of the evaluation set -> AP@[.5:.95] (None: no ground truth of that category).
        ap50: Category -> AP@0.5.
        map: Mean AP@[.5:.95] over classes with ground truth.
        map50: Mean AP@0.5.
    """

    name: str
    kind: str
    format: str
    precision: str
    runtime: str
    size_bytes: int | None
    threads: int
    runs: int
    model_ms: float | None
    model_ms_p90: float | None
    frame_ms: float
    frame_ms_p90: float
    ap: dict[str, float | None]
    ap50: dict[str, float | None]
    map: float | None
    map50: float | None


@dataclass(frozen=True)
class BenchTable:
    """Every row of a benchmark run, and where it ran.

    Attributes:
        rows: One per model and thread count.
        classes: Evaluated categories of the evaluation set.
        dataset: The evaluation set.
        num_images: Images in it.
        machine: CPU description.
        versions: Runtime package -> version.
        files: Output kind (``markdown``, ``json``, ``png``) -> path written.
    """

    rows: tuple[BenchRow, ...]
    classes: tuple[str, ...]
    dataset: str
    num_images: int
    machine: str
    versions: dict[str, str]
    files: dict[str, Path] = field(default_factory=dict)

    def markdown(self) -> str:
        """The table in markdown, with the set, machine and versions above it."""
        head = [
            "model",
            "kind",
            "format",
            "precision",
            "size MB",
            "threads",
            "model ms p50 / p90",
            "frame ms p50 / p90",
            *(f"{c} AP" for c in self.classes),
            "mean AP",
            "mean AP50",
        ]
        lines = [
            (
                f"Evaluation set: {self.dataset} ({self.num_images} images). AP@[.5:.95] measured once per model "
                f"at score threshold {EVAL_SCORE_THRESHOLD}; latency per thread count at the deployment threshold."
            ),
            "",
            f"Machine: {self.machine}; " + ", ".join(f"{k} {v}" for k, v in self.versions.items()),
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * 4 + "---:|" * (len(head) - 4),
        ]
        for r in self.rows:
            size = "built-in" if r.size_bytes is None else f"{r.size_bytes / 1e6:.2f}"
            model = "n/a" if r.model_ms is None else f"{r.model_ms:.1f} / {r.model_ms_p90:.1f}"
            cells = [
                r.name,
                r.kind,
                r.format,
                r.precision,
                size,
                str(r.threads),
                model,
                f"{r.frame_ms:.1f} / {r.frame_ms_p90:.1f}",
                *(fmt_ap(r.ap.get(c)) for c in self.classes),
                fmt_ap(r.map),
                fmt_ap(r.map50),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "num_images": self.num_images,
            "machine": self.machine,
            "versions": self.versions,
            "classes": list(self.classes),
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }


def write_bench(table: BenchTable, out: Path) -> BenchTable:
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "bench.md", "json": out / "bench.json"}
    files["markdown"].write_text(table.markdown(), encoding="utf-8")
    files["json"].write_text(json.dumps(table.to_dict(), indent=2) + "\n", encoding="utf-8")
    if importlib.util.find_spec("matplotlib") is not None:
        files["png"] = plot(table, out / "bench.png")
    else:
        log.warning("matplotlib is not installed (the device install leaves it out): no bench.png")
    log.info("wrote %s", ", ".join(str(p) for p in files.values()))
    return dataclasses.replace(table, files=files)


def plot(table: BenchTable, path: Path) -> Path:
    """AP against whole-frame latency: one panel per class and one for the mean, a line per model over threads."""
    require("matplotlib", "train", "the benchmark plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("mean", None), *((c, c) for c in table.classes)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    names = list(dict.fromkeys(r.name for r in table.rows))
    for ax, (title, cls) in zip(axes[0], panels, strict=True):
        for name in names:
            rows = sorted((r for r in table.rows if r.name == name), key=lambda r: r.threads)
            ap = rows[0].map if cls is None else rows[0].ap.get(cls)
            if ap is None:
                continue
            xs = [r.frame_ms for r in rows]
            marker = {"bundle": "o", "peer": "s", "baseline": "^"}[rows[0].kind]
            ax.plot(xs, [ap] * len(xs), marker=marker, label=name)
            ax.annotate(f"{rows[0].threads}t", (xs[0], ap), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log")
        ax.set(title=f"{title} AP@[.5:.95]", xlabel="whole frame ms (median; points: thread counts)", ylabel="AP")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{table.machine}: accuracy vs latency", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
