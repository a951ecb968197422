"""Benchmark bundles side by side with the stock peers and OpenCV's HOG: size, latency, AP per class.

For every model the AP per class is measured once (all cores, evaluation threshold 0.01); latency is
measured per thread count at the deployment threshold, split into the model call alone and the whole
frame (preprocessing + model + decoding/NMS), median and p90 over real photos of the evaluation set.
The learned models are timed interleaved (one frame of each in turn) so that load from elsewhere on
the machine falls on all of them alike. HOG, at ~1 s a frame, is timed on fewer frames after them.

Outputs in ``out``: ``bench.md`` (a markdown table), ``bench.json`` (every number) and ``bench.png``
(AP against whole-frame latency, one line per model across thread counts; needs matplotlib, which the
device install leaves out).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from devices.errors import ConfigError, require
from devices.host import machine, package_version
from devices.runner import BundleDetector
from devices.timing import percentile, time_frame
from toolkit.evaluate.coco import EVAL_SCORE_THRESHOLD, evaluate, load_image
from toolkit.evaluate.results import EvalResult, fmt_ap

log = logging.getLogger(__name__)

#: Score threshold peers run at while timed (a bundle uses its manifest's); decoding cost depends on it.
DEPLOY_SCORE_THRESHOLD = 0.25

#: Timed frames per model and thread count, after ``WARMUP`` untimed ones.
FRAMES = 20

WARMUP = 3

#: HOG takes about a second per frame: it is timed on at most this many.
HOG_FRAMES = 5

#: Distinct photos cycled through while timing.
LATENCY_IMAGES = 8


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


@dataclass
class _Entry:
    """A model to benchmark: how to open it at a thread count and what it is."""

    name: str
    kind: str
    format: str
    precision: str
    size_bytes: int | None
    open: Callable[[int | None, float], Any]
    accuracy: EvalResult | None = None
    runtime: str = ""


def bench(
    bundles: Sequence[str | os.PathLike],
    peers_dir: str | os.PathLike | None = None,
    threads: Sequence[int] = (1, 2, 4),
    *,
    coco_json: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
    hog: bool = True,
    out: str | os.PathLike = "bench",
    frames: int = FRAMES,
    val_limit: int | None = None,
    mirror: str | None = None,
) -> BenchTable:
    """Measure bundles, peers and HOG: file size, latency per thread count, AP per class.

    Args:
        bundles: Bundle folders (``edgesight export``).
        peers_dir: Folder laid out like ``<mirror>/weights/peers`` (``toolkit.evaluate.peers``); None: no peers.
        threads: Runtime thread counts to time.
        coco_json: Evaluation set as a COCO json; None uses the default split's validation part.
        images_dir: Folder the json's ``file_name`` entries are relative to.
        hog: Include OpenCV's HOG people detector.
        out: Folder for ``bench.md``, ``bench.json`` and ``bench.png``.
        frames: Timed frames per model and thread count.
        val_limit: Use only this many images of the evaluation set (evenly spaced).
        mirror: Mirror root for the default split.

    Returns:
        The table; ``table.files`` names what was written.

    Raises:
        ConfigError: No model to benchmark, or a thread count below 1.
        ModelFileError: A bundle or peer file fails its hash check.
    """
    if not bundles and peers_dir is None and not hog:
        raise ConfigError("nothing to benchmark", "pass bundle folders, --peers or keep HOG")
    if not threads or any(int(t) < 1 for t in threads):
        raise ConfigError(f"thread counts {list(threads)} must be positive", "pass e.g. --threads 1,2,4")
    out = Path(out)
    with _evaluation_set(coco_json, images_dir, val_limit, mirror) as (ann, img_dir, description, num_images):
        entries = _entries(bundles, peers_dir, hog)
        for entry in entries:
            _accuracy(entry, ann, img_dir)
        photos = _latency_photos(ann, img_dir)
    rows = [row for t in threads for row in _time_all(entries, int(t), photos, frames)]
    classes = tuple(dict.fromkeys(c for row in rows for c in row.ap))
    table = BenchTable(tuple(rows), classes, description, num_images, machine(), _versions())
    return _write(table, out)


def _entries(bundles: Sequence[str | os.PathLike], peers_dir: str | os.PathLike | None, hog: bool) -> list[_Entry]:
    from toolkit.evaluate.peers import PEERS, open_peer

    entries = []
    for folder in bundles:
        with BundleDetector(folder) as probe:  # verifies the bundle before any timing starts
            m = probe.bundle.manifest
            size = probe.path.stat().st_size

        def open_bundle(t: int | None, score: float | None, folder: str | os.PathLike = folder) -> BundleDetector:
            return BundleDetector(folder, threads=t, score_threshold=score)

        entries.append(_Entry(Path(folder).name, "bundle", m.format, m.precision, size, open_bundle))
    if peers_dir is not None:
        peers_dir = Path(peers_dir)
        if not peers_dir.is_dir():
            raise ConfigError(f"peers folder {peers_dir} does not exist", "pass <mirror>/weights/peers")
        for record in PEERS:
            path = peers_dir / record.folder / record.filename
            if not path.is_file():
                log.info("peer %s not in %s: skipped", record.name, peers_dir)
                continue

            def open_one(t: int | None, score: float | None, record: Any = record, path: Path = path) -> Any:
                return open_peer(record, path, t, DEPLOY_SCORE_THRESHOLD if score is None else score)

            entries.append(_Entry(record.name, "peer", record.runtime, "fp32", path.stat().st_size, open_one))
    if hog:
        from toolkit.evaluate.hog import HogPeopleDetector

        entries.append(_Entry("hog", "baseline", "opencv", "-", None, lambda t, score: HogPeopleDetector()))
    return entries


def _accuracy(entry: _Entry, coco_json: Path, images_dir: Path | None) -> None:
    """AP per class of one model (all cores, evaluation threshold), once."""
    detector = entry.open(None, EVAL_SCORE_THRESHOLD)
    try:
        entry.accuracy = evaluate(detector, coco_json, images_dir, detector.labels)
        entry.runtime = detector.runtime
    finally:
        detector.close()
    log.info("%s: AP@[.5:.95] %s", entry.name, fmt_ap(entry.accuracy.map))


def _time_all(entries: Sequence[_Entry], threads: int, photos: Sequence[np.ndarray], frames: int) -> list[BenchRow]:
    """Rows of every model at ``threads``: learned models interleaved, then HOG."""
    learned = [e for e in entries if e.kind != "baseline"]
    baseline = [e for e in entries if e.kind == "baseline"]
    rows = []
    with _opencv_threads(threads):
        detectors = [e.open(threads, None) for e in learned]
        try:
            times = _interleaved(detectors, photos, frames)
        finally:
            for d in detectors:
                d.close()
        rows += [_row(e, threads, m, f) for e, (m, f) in zip(learned, times, strict=True)]
        for e in baseline:
            detector = e.open(threads, None)
            whole = []
            for i in range(min(frames, HOG_FRAMES) + 1):
                start = time.perf_counter()
                detector(photos[i % len(photos)])
                if i:  # the first call builds OpenCV's HOG buffers
                    whole.append((time.perf_counter() - start) * 1000.0)
            rows.append(_row(e, threads, [], whole))
    log.info("timed %d models at %d thread(s)", len(rows), threads)
    return rows


def _interleaved(detectors: Sequence[Any], photos: Sequence[np.ndarray], frames: int) -> list[tuple[list, list]]:
    times: list[tuple[list, list]] = [([], []) for _ in detectors]
    for i in range(WARMUP + frames):
        for k, detector in enumerate(detectors):
            model_ms, frame_ms = time_frame(detector, photos[i % len(photos)])
            if i >= WARMUP:
                times[k][0].append(model_ms)
                times[k][1].append(frame_ms)
    return times


def _row(entry: _Entry, threads: int, model_ms: Sequence[float], frame_ms: Sequence[float]) -> BenchRow:
    acc = entry.accuracy
    assert acc is not None  # every entry is evaluated before it is timed
    return BenchRow(
        name=entry.name,
        kind=entry.kind,
        format=entry.format,
        precision=entry.precision,
        runtime=entry.runtime,
        size_bytes=entry.size_bytes,
        threads=threads,
        runs=len(frame_ms),
        model_ms=statistics.median(model_ms) if model_ms else None,
        model_ms_p90=percentile(model_ms, 90) if model_ms else None,
        frame_ms=statistics.median(frame_ms),
        frame_ms_p90=percentile(frame_ms, 90),
        # Keyed by the evaluation set's category, which every model shares whatever its own label names.
        ap={c.category_name: c.ap for c in acc.classes},
        ap50={c.category_name: c.ap50 for c in acc.classes},
        map=acc.map,
        map50=acc.map50,
    )


@contextmanager
def _evaluation_set(
    coco_json: str | os.PathLike | None, images_dir: str | os.PathLike | None, val_limit: int | None, mirror: str | None
) -> Iterator[tuple[Path, Path | None, str, int]]:
    """(annotation json, images folder, description, image count); the default split is written to a temp file."""
    with tempfile.TemporaryDirectory(prefix="edgesight-bench-") as tmp:
        if coco_json is not None:
            ann = Path(coco_json)
            data = json.loads(ann.read_text())
            if val_limit is not None and val_limit < len(data["images"]):
                data = _limit_coco(data, val_limit)
                ann = Path(tmp) / "subset.json"
                ann.write_text(json.dumps(data))
                # Relative file names stay relative to the original json's folder.
                images_dir = images_dir if images_dir is not None else Path(coco_json).resolve().parent
            yield ann, Path(images_dir) if images_dir else None, f"{coco_json}", len(data["images"])
            return
        # The bundled validation split needs the dataset readers (Pillow): the workstation install.
        require("PIL", "train", "bench without --coco (it evaluates on the bundled validation split; on the "
                "device pass --coco ANNOTATIONS.json --images DIR)")
        from models.base import TARGET_CLASSES
        from toolkit.data import default_splits, evenly_spaced, to_coco

        _, val = default_splits(mirror=mirror)
        description = "default split, validation part (coco128, roadsign_kaggle_stop, roboflow_stop_signs)"
        if val_limit is not None and val_limit < len(val):
            val = evenly_spaced(val, val_limit)
            description += f", {len(val)} evenly spaced images"
        yield to_coco(val, Path(tmp) / "val.json", TARGET_CLASSES), None, description, len(val)


def _limit_coco(data: dict, n: int) -> dict:
    images = sorted(data["images"], key=lambda im: im["id"])
    keep = [images[(i * len(images)) // n] for i in range(n)]
    ids = {im["id"] for im in keep}
    return {**data, "images": keep, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}


def _latency_photos(coco_json: Path, images_dir: Path | None) -> list[np.ndarray]:
    """A few real photos of the evaluation set, decoded once, for timing."""
    data = json.loads(Path(coco_json).read_text())
    images = sorted(data["images"], key=lambda im: im["id"])
    n = min(LATENCY_IMAGES, len(images))
    chosen = [images[(i * len(images)) // n] for i in range(n)]
    photos = []
    for info in chosen:
        name = Path(info["file_name"])
        path = Path(images_dir) / name if images_dir else (name if name.is_absolute() else coco_json.parent / name)
        photos.append(load_image(path))
    return photos


def _write(table: BenchTable, out: Path) -> BenchTable:
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


@contextmanager
def _opencv_threads(threads: int) -> Iterator[None]:
    """OpenCV's own thread pool (resize, HOG) follows the thread count being measured."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _versions() -> dict[str, str]:
    return {p: package_version(p) for p in ("onnxruntime", "ai-edge-litert", "opencv-contrib-python-headless")}
