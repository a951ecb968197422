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

import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from devices.errors import ConfigError, require
from devices.host import machine, package_version
from devices.runner import BundleDetector
from devices.timing import percentile, time_frame
from toolkit.evaluate.bench_report import BenchRow, BenchTable, write_bench
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


@dataclass
class _Entry:
    """A model to benchmark: how to open it at a thread count and what it is."""

    name: str
    kind: str
    format: str
    precision: str
    size_bytes: int | None
    open: Callable[[int | None, float | None], Any]
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
    return write_bench(table, out)


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
