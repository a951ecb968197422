"""``edgesight demo``: the daemon's own pipeline with a live view, and a record of the run.

The demo is ``edgesight run`` with more attached to it, never a second loop: the live page
(``devices.daemon.live``, an ``Extension``: routes, events and frames), and as frame observers an OpenCV
window (``devices.daemon.window``) and, with ``record``, a ``Recorder`` that writes what ``make demo`` leaves
behind:

    annotated.mp4   every processed frame with its tracks, zones and line (the page's drawing)
    events.jsonl    the events, written by the daemon's own JSONL sink
    metrics.prom    the daemon's /metrics at the end of the run
    status.json     the daemon's /api/status at the end of the run
    SUMMARY.md      one page: the bundle and its AP, the source, FPS, events per class
"""

from __future__ import annotations

import collections
import importlib.util
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2

from devices.bundle import MANIFEST_FILE, read_manifest
from devices.daemon.config import DaemonConfig
from devices.daemon.live import LiveView
from devices.daemon.overlay import Overlay
from devices.daemon.service import Daemon, ExitCode
from devices.errors import ConfigError, DataError
from devices.host import machine
from devices.sidecar import read_about
from devices.types import Detections, Frame

log = logging.getLogger(__name__)

#: Where ``edgesight demo`` looks for bundles when none is named (``edgesight export --out bundles/...``).
BUNDLE_DIRS: tuple[str, ...] = ("bundles",)
_RUNTIMES = {"tflite": ("ai_edge_litert", "tflite_runtime"), "onnx": ("onnxruntime",)}
#: Frame rate of the annotated MP4 when the source does not say (cameras).
_DEFAULT_FPS = 15.0


def find_bundle(search: Sequence[str | os.PathLike] = BUNDLE_DIRS) -> Path:
    """The bundle with the highest mean AP in its manifest, among those this install can run.

    Raises:
        ConfigError: No runnable bundle under ``search``.
    """
    found = []
    for folder in search:
        for manifest_path in sorted(Path(folder).glob(f"*/{MANIFEST_FILE}")):
            try:
                manifest = read_manifest(manifest_path.parent)
            except Exception as exc:  # one broken folder must not hide the others
                log.warning("skipping %s: %s", manifest_path.parent, exc)
                continue
            if not any(importlib.util.find_spec(m) for m in _RUNTIMES[manifest.format]):
                log.info("skipping %s: no %s runtime installed", manifest_path.parent, manifest.format)
                continue
            ap = manifest.accuracy.map if manifest.accuracy and manifest.accuracy.map is not None else -1.0
            # Equal AP: the INT8 file, which is what the device is meant to run.
            found.append((ap, manifest.precision == "int8", manifest_path.parent))
    if not found:
        where = ", ".join(f"{Path(f).resolve()}/" for f in search)
        raise ConfigError(
            f"no bundle this install can run was found in {where}",
            "name one with --bundle DIR, or make one: `make demo`, or `edgesight export CHECKPOINT --format tflite "
            "--precision int8 --out bundles/NAME`",
        )
    best = max(found, key=lambda item: (item[0], item[1], str(item[2])))
    log.info("best bundle found: %s (mean AP %.3f)", best[2], best[0])
    return best[2]


def prepare_recording(folder: str | os.PathLike) -> None:
    """Make ``folder`` ready for a recording: new, empty, or an earlier recording (which is replaced).

    Raises:
        ConfigError: The folder holds something else (it is never deleted).
    """
    folder = Path(folder)
    if folder.is_dir() and any(folder.iterdir()):
        if not (folder / Recorder.SUMMARY).is_file():
            raise ConfigError(
                f"--record {folder} is not empty and not an earlier recording (it has no {Recorder.SUMMARY})",
                "name a new folder, or empty this one yourself",
            )
        log.info("replacing the earlier recording in %s", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)


class Recorder:
    """Records a run into a folder: the annotated MP4 as it goes, the metrics, status and summary at the end.

    Every processed frame goes into the MP4 (the loop gives observers every frame of a file that is not
    played in real time), drawn by the same ``Overlay`` as the live page.

    Args:
        folder: Created if missing.
        overlay: The drawing.
        fps: Frame rate written into the MP4 (the source's own rate for files).
    """

    VIDEO = "annotated.mp4"
    EVENTS = "events.jsonl"
    SUMMARY = "SUMMARY.md"

    def __init__(self, folder: str | os.PathLike, overlay: Overlay, fps: float) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.overlay = overlay
        self.fps = fps
        self.frames = 0
        self.first_mono: float | None = None
        self.last_mono: float | None = None
        self._writer: cv2.VideoWriter | None = None
        self._lock = threading.Lock()

    def observe(self, frame: Frame, detections: Detections | None, tracks: list) -> None:
        image = self.overlay.draw(frame.image, tracks)
        now = time.monotonic()
        with self._lock:
            if self._writer is None:
                path = self.folder / self.VIDEO
                # OpenCV's generated stubs omit VideoWriter_fourcc, which its bindings still provide (opencv#24818).
                fourcc = cv2.VideoWriter_fourcc(*"mp4v")  # type: ignore[attr-defined]
                self._writer = cv2.VideoWriter(str(path), fourcc, self.fps, (image.shape[1], image.shape[0]))
                if not self._writer.isOpened():
                    raise DataError(f"OpenCV cannot write {path}", "check the folder is writable")
                self.first_mono = now
            self._writer.write(image)
            self.frames += 1
            self.last_mono = now

    def finish(self, daemon: Daemon, code: ExitCode, seconds: float) -> Path:
        """Close the MP4 and write the metrics, status and summary; returns the summary's path."""
        with self._lock:
            if self._writer is not None:
                self._writer.release()
                self._writer = None
        status = daemon.status() if daemon.loop is not None else {}
        (self.folder / "status.json").write_text(json.dumps(status, indent=1, default=str) + "\n")
        if daemon.metrics is not None:
            (self.folder / "metrics.prom").write_bytes(daemon.metrics.exposition()[0])
        summary = self.folder / self.SUMMARY
        summary.write_text(render_summary(daemon, status, self, code, seconds))
        return summary


def render_summary(daemon: Daemon, status: dict[str, Any], recorder: Recorder, code: ExitCode, seconds: float) -> str:
    """The one-page Markdown summary of a recorded run."""
    cfg = daemon.cfg
    manifest = read_manifest(cfg.bundle)
    size = (Path(cfg.bundle) / manifest.model_file).stat().st_size
    about = read_about(cfg.source.uri)
    lines = [f"# edgesight demo run: {Path(cfg.bundle).name} on {Path(cfg.source.uri).name}", ""]

    # What ran: the bundle and the AP its manifest records for this very file.
    spec = manifest.input
    lines.append(f"- bundle: `{cfg.bundle}` ({manifest.arch}, {manifest.format} {manifest.precision}, "
                 f"input {spec.width}x{spec.height}, {size / 1e6:.2f} MB)")
    accuracy = manifest.accuracy
    if accuracy is not None:
        per_class = ", ".join(f"{c.name} {_num(c.ap)}" for c in accuracy.classes)
        lines.append(f"- AP@[.5:.95] of this file: mean {_num(accuracy.map)} ({per_class}); measured through "
                     f"{accuracy.runtime} on {accuracy.num_images} images: {accuracy.dataset}")
    else:
        lines.append("- AP: not recorded in the manifest")
    lines += [f"- source: `{cfg.source.uri}`" + (f" -- **{about['description']}**" if about else ""),
              f"- host: {machine()}", f"- exit: {int(code)} ({code.name})", ""]

    # How fast: the whole run, first to last processed frame.
    loop = status.get("loop", {})
    first, last = recorder.first_mono, recorder.last_mono
    span = last - first if recorder.frames > 1 and first is not None and last is not None else 0.0
    fps = (recorder.frames - 1) / span if span > 0 else 0.0
    row = (f"| {recorder.frames} | {loop.get('detected', 0)} | {loop.get('motion_skipped', 0)} | {seconds:.1f} s "
           f"| {fps:.1f} |")
    lines += ["## Speed", "", "| frames processed | detector ran on | skipped by motion | wall time | FPS |",
              "|---:|---:|---:|---:|---:|", row, ""]
    detect = status.get("latency", {}).get("detect") or {}
    if detect.get("p50_ms") is not None:
        lines += [(f"Detector call (pre-processing, model, decoding): p50 {detect['p50_ms']:.1f} ms, "
                   f"p99 {detect['p99_ms']:.1f} ms over the last {detect['n']} calls."), ""]

    # What it saw: events per class and type, from the JSONL the sink wrote.
    counts = _event_counts(recorder.folder / Recorder.EVENTS)
    lines += ["## Events", "", "| class | new | update | end |", "|---|---:|---:|---:|"]
    for label in manifest.labels:
        c: Mapping[str, int] = counts.get(label, {})
        lines.append(f"| {label} | {c.get('new', 0)} | {c.get('update', 0)} | {c.get('end', 0)} |")
    line_stats = (status.get("tracks") or {}).get("line")
    if line_stats:
        crossings = {k: v for k, v in line_stats.items() if k != "name"}
        lines += ["", f"Line `{line_stats.get('name')}`: {json.dumps(crossings)}"]
    lines += ["", "## Files", ""]
    for name in (Recorder.VIDEO, Recorder.EVENTS, "metrics.prom", "status.json"):
        path = recorder.folder / name
        if path.is_file():
            lines.append(f"- `{path}` ({path.stat().st_size / 1e6:.2f} MB)")
    return "\n".join(lines) + "\n"


def _event_counts(path: Path) -> dict[str, collections.Counter]:
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                event = json.loads(line)
                counts[event["label"]][event["type"]] += 1
    return counts


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def file_fps(uri: str) -> float | None:
    """The frame rate a video file declares (None for cameras, streams and files that do not say)."""
    if not Path(uri).is_file():
        return None
    capture = cv2.VideoCapture(uri)
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
    finally:
        capture.release()
    return fps if fps and 0 < fps < 1000 else None


def run_demo(
    cfg: DaemonConfig,
    record: str | os.PathLike | None = None,
    window: bool = False,
    on_ready: Callable[[Daemon], None] | None = None,
) -> ExitCode:
    """Run the daemon for ``cfg`` with the live page (when ``cfg.http`` is set) and the chosen extras.

    Args:
        cfg: The daemon's config (the CLI sets ``source.realtime`` and the JSONL sink of a recording).
        record: Folder for the recording (see the module docstring), or None.
        window: Show the frames in an OpenCV window (needs a display and an OpenCV built with a GUI).
        on_ready: Called once the daemon runs (``daemon.http.url`` is then the page's address).

    Raises:
        EdgesightError: The daemon refused to start, or ``window`` cannot open a window here.
    """
    labels = read_manifest(cfg.bundle).labels
    about = read_about(cfg.source.uri) or {}
    if about.get("camera_moves") and cfg.motion.enabled:
        # The motion gate compares frames of a fixed camera; a moving one would keep boxes where things were.
        log.info("motion gate off: %s says its camera moves", cfg.source.uri)
        cfg = cfg.model_copy(update={"motion": cfg.motion.model_copy(update={"enabled": False})})
    overlay = Overlay(labels, cfg.zones, cfg.line)
    live = LiveView(cfg, labels)
    observers = []
    recorder = None
    if record is not None:
        recorder = Recorder(record, overlay, file_fps(cfg.source.uri) or _DEFAULT_FPS)
        observers.append(recorder.observe)
    viewer = None
    if window:
        from devices.daemon.window import Window

        viewer = Window(overlay, title=f"edgesight: {Path(cfg.source.uri).name}")
        observers.append(viewer.observe)
    daemon = Daemon(cfg, observers=observers, extensions=[live])
    if on_ready is not None:
        threading.Thread(target=_when_ready, args=(daemon, on_ready), name="demo-ready", daemon=True).start()
    started = time.monotonic()
    try:
        code = viewer.run(daemon) if viewer is not None else daemon.run()
    finally:
        live.close()
    if recorder is not None:
        summary = recorder.finish(daemon, code, time.monotonic() - started)
        log.info("recorded the run in %s (summary %s)", recorder.folder, summary)
    return code


def _when_ready(daemon: Daemon, on_ready: Callable[[Daemon], None]) -> None:
    if daemon.ready.wait(timeout=120):
        on_ready(daemon)
