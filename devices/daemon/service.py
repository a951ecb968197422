"""``edgesight run``: the daemon's life from start to exit code.

The main thread supervises: it turns signals into actions, reopens a stuck detector, reloads a
changed bundle, pings systemd's watchdog while frames make progress, and decides the exit code. The
work happens in the loop's threads (``devices.daemon.loop``) and the HTTP server's.

Exit codes (``ExitCode``):
    0  stopped by SIGTERM/SIGINT, or a file source ended at its last frame; sinks flushed
    1  an unexpected internal error (a bug: the traceback is in the log)
    2  refused to start: invalid config, bundle missing or tampered with, source cannot be opened,
       HTTP port taken (the message says which and how to fix it)
    3  a file source ended early: truncated or damaged (frames read < frames the file declares), or
       its read hung
    4  the detector failed: repeated errors, or it could not be reopened after a stall

Length: ``Daemon`` is the one owner of the process's state (detector, loop, publisher, HTTP, signals,
reload, health); its methods are short, and splitting the class across files would hide which thread
touches what (about 600 lines).
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from devices.daemon.config import DaemonConfig
from devices.daemon.events import EventPipeline
from devices.daemon.http import HttpServer, Request, Response, bearer_token_ok
from devices.daemon.loop import Detector, FrameObserver, Loop
from devices.daemon.motion import MotionGate
from devices.daemon.publisher import Publisher, build_publisher
from devices.daemon.systemd import Notifier
from devices.daemon.workers import Workers
from devices.errors import ConfigError, EdgesightError, ModelFileError, require
from devices.sources import Source
from devices.types import Detections, Frame

log = logging.getLogger(__name__)

#: The supervisor's tick: how quickly signals, stalls and reloads are acted on.
TICK = 0.1
#: Seconds between checks of the bundle on disk.
BUNDLE_POLL = 2.0
#: SIGTERM to the end of ``run`` (the promise is 2 s to exit; the interpreter's own exit takes the rest,
#: 0.1-0.8 s measured on the loaded 2-core workstation).
STOP_BUDGET = 1.2
#: Share of the stop budget the sinks get to flush.
FLUSH_SHARE = 0.5


class ExitCode(enum.IntEnum):
    OK = 0
    INTERNAL = 1
    START_REFUSED = 2
    SOURCE_ENDED_EARLY = 3
    DETECTOR_FAILED = 4


@dataclass(frozen=True)
class BundleInfo:
    """What runs: shown in /api/status, the bundle metric and every event."""

    name: str
    path: str
    sha256: str
    format: str
    precision: str
    arch: str
    labels: tuple[str, ...]
    loaded_utc: str
    runtime: str | None = None  # e.g. "ai_edge_litert 2.1.0"; None for a detector that does not say
    threads: int | None = None  # runtime threads of each copy; None: the runtime chose (every core)
    workers: int = 1  # copies of the model side by side (the config's ``workers``)

    @classmethod
    def of(cls, detector: Any) -> BundleInfo:
        manifest = detector.bundle.manifest
        copies = getattr(detector, "detectors", (detector,))  # Workers holds its copies; else the one detector
        return cls(
            name=Path(detector.bundle.path).name, path=str(detector.bundle.path),
            sha256=manifest.files[manifest.model_file], format=manifest.format, precision=manifest.precision,
            arch=manifest.arch, labels=tuple(detector.labels),
            loaded_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            runtime=getattr(copies[0], "runtime", None), threads=getattr(copies[0], "threads", None),
            workers=len(copies),
        )


DetectorFactory = Callable[[Path], Detector]
#: Given the events of a frame once they are durable, and that frame (on the loop's events thread: be quick).
EventListener = Callable[[list[Any], Frame], None]


class Extension(Protocol):
    """Something that plugs into the daemon (the live page, the demo's recorder), never a second loop."""

    def attach(self, daemon: Daemon) -> None:
        """Called once the loop and the HTTP server exist, before either starts: add observers, routes and
        event listeners here (``daemon.loop.add_observer``, ``daemon.http.route``, ``daemon.add_event_listener``).
        """


def bundle_detector_factory(cfg: DaemonConfig) -> DetectorFactory:
    """Opens ``devices.runner.BundleDetector`` (hashes verified on load) with the config's runtime settings;
    ``workers`` copies of it in ``devices.daemon.workers.Workers`` when the config asks for more than one."""

    def open_detector(path: Path) -> Detector:
        from devices.runner import BundleDetector

        if cfg.workers == 1:
            return BundleDetector(path, threads=cfg.threads, runtime=cfg.runtime)
        copies: list[BundleDetector] = []
        try:
            for _ in range(cfg.workers):
                copies.append(BundleDetector(path, threads=cfg.threads, runtime=cfg.runtime))
        except BaseException:
            for copy in copies:
                copy.close()
            raise
        return Workers(copies)

    return open_detector


class Daemon:
    """One camera, one bundle: build everything from the config, run until stopped or the file ends.

    Args:
        cfg: The validated config.
        open_detector: Opens and verifies a bundle folder (default: ``BundleDetector``).
        source: The frame source, not yet open (default: ``Source(cfg.source)``).
        observers: Frame observers (the live view, an MP4 writer): given each frame after the events stage.
        extensions: Attached before the daemon starts (see ``Extension``).
    """

    def __init__(
        self,
        cfg: DaemonConfig,
        open_detector: DetectorFactory | None = None,
        source: Source | None = None,
        observers: Sequence[FrameObserver] = (),
        extensions: Sequence[Extension] = (),
    ) -> None:
        self.cfg = cfg
        self.observers = list(observers)
        self.open_detector = open_detector or bundle_detector_factory(cfg)
        # Built in run() from the config: the motion gate (None when off), tracks and events, sinks.
        self.gate: MotionGate | None = None
        self.pipeline: EventPipeline | None = None
        self.publisher: Publisher | None = None
        self.notifier = Notifier.from_env()
        self.started = time.monotonic()
        self.bundle: BundleInfo | None = None
        self.source: Source | None = source
        self.loop: Loop | None = None
        self.http: HttpServer | None = None
        self.metrics: Any = None
        self.extensions = tuple(extensions)
        #: Set once the loop and the HTTP server run (``http.url`` then holds the bound port).
        self.ready = threading.Event()
        self._event_listeners: list[EventListener] = []
        self.reloads: dict[str, Any] = {"ok": 0, "refused": 0, "last": None}
        self._token = _read_token(cfg.http.token_file) if cfg.http and cfg.http.token_file else None
        self._stop = threading.Event()
        self._stop_reason = ""
        self._reload_requested = threading.Event()
        #: Signals received and not yet acted on (appended by the handler, taken by the supervisor).
        self._signals: list[int] = []
        self._reload_lock = threading.Lock()
        self._bundle_signature: tuple | None = None
        self._refused_signature: tuple | None = None

    # --- the whole run ----------------------------------------------------------------------------------

    def run(self) -> ExitCode:
        """Start, supervise, stop; the exit code says why it ended.

        Raises:
            EdgesightError: Refused to start (the CLI prints it and exits 2).
        """
        detector, bundle = self._start_detector()
        try:
            publisher = self.publisher = build_publisher(self.cfg)
            source = self.source = (self.source or Source(self.cfg.source)).open()
        except BaseException:
            detector.close()
            if self.publisher is not None:
                self.publisher.close(timeout=0.5)
            raise
        try:
            self.gate = MotionGate(self.cfg.motion) if self.cfg.motion.enabled else None
            self.pipeline = EventPipeline(self.cfg, bundle.labels, bundle.name, bundle.sha256)
            loop = self.loop = self._make_loop(detector, source)
            self.http = self._make_http()
            for extension in self.extensions:
                extension.attach(self)
            if self.http is not None:
                self.http.start()
            self._install_signals()
            publisher.start()
            loop.start()
            self.ready.set()
            self.notifier.ready(f"running {bundle.name} on {source.uri.display}")
            log.info("running %s on %s (camera %s)", bundle.name, source.uri.display, self.cfg.camera)
            self._supervise(loop, source)
        finally:
            code = self._shutdown()
        return code

    def request_stop(self, reason: str) -> None:
        self._stop_reason = self._stop_reason or reason
        self._stop.set()

    def request_reload(self) -> None:
        self._reload_requested.set()

    def add_event_listener(self, listener: EventListener) -> None:
        """Call ``listener(events, frame)`` with every batch of events once they are durable."""
        self._event_listeners.append(listener)

    def _start_detector(self) -> tuple[Detector, BundleInfo]:
        detector = self.open_detector(self.cfg.bundle)
        bundle = self.bundle = BundleInfo.of(detector)
        self._bundle_signature = bundle_signature(self.cfg.bundle)
        log.info("bundle %s (%s %s, sha256 %s) verified", bundle.name, bundle.format, bundle.precision,
                 bundle.sha256[:12])
        return detector, bundle

    def _make_loop(self, detector: Detector, source: Source) -> Loop:
        self.metrics = self._make_metrics()
        return Loop(
            source, detector, gate=self.gate, pipeline=self.pipeline, publisher=self.publisher,
            observers=self.observers,
            on_inference=self.metrics.observe_inference if self.metrics else None,
            on_events=self._on_events, on_detector_change=self._on_detector_change,
        )

    def _make_metrics(self) -> Any:
        if self.cfg.http is None:
            return None
        require("prometheus_client", "device", "the daemon's /metrics page")
        from devices.daemon.metrics import DaemonMetrics

        return DaemonMetrics(self.status)

    def _on_detector_change(self, detector: Detector) -> None:
        # Events name the bundle whose detections made them: frames queued before a reload keep the old one.
        info = BundleInfo.of(detector)
        pipeline = self.pipeline
        assert pipeline is not None  # built before the loop that calls this
        pipeline.bundle_name, pipeline.bundle_sha256 = info.name, info.sha256

    def _on_events(self, events: list[Any], frame: Frame) -> None:
        if self.metrics is not None:
            self.metrics.observe_events(time.monotonic() - frame.mono)
        for listener in self._event_listeners:
            try:
                listener(events, frame)
            except Exception:
                # A listener only shows events; the events themselves are already in the spool.
                log.exception("event listener %r failed", listener)

    # --- supervision ---------------------------------------------------------------------------------------

    def _supervise(self, loop: Loop, source: Source) -> None:
        next_poll = time.monotonic() + BUNDLE_POLL
        next_status = time.monotonic()
        watchdog = _WatchdogPinger(self.notifier)
        while not self._stop.wait(TICK):
            self._take_signals()
            if self._stop.is_set() or loop.done:
                break
            if loop.detector_busy_for() > self.cfg.detect_timeout:
                self._replace_stuck_detector(loop)
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.reload("SIGHUP")
            now = time.monotonic()
            if self.cfg.watch_bundle and now >= next_poll:
                next_poll = now + BUNDLE_POLL
                self._check_bundle_on_disk()
            watchdog.tick(loop.counters.processed)
            if now >= next_status:
                next_status = now + 10.0
                self.notifier.status(self._status_line(loop, source))

    def _replace_stuck_detector(self, loop: Loop) -> None:
        try:
            fresh = self.open_detector(self.cfg.bundle)
        except EdgesightError as exc:
            log.error("the detector is stuck and cannot be reopened: %s", exc)
            loop.failure = f"the detector is stuck and cannot be reopened: {exc.problem}"
            self.request_stop("detector failed")
            return
        loop.abandon_detector(fresh)

    def _check_bundle_on_disk(self) -> None:
        signature = bundle_signature(self.cfg.bundle)
        if signature in (self._bundle_signature, self._refused_signature):
            return
        # Wait for the copy to settle: the signature must hold still for one poll.
        time.sleep(min(1.0, BUNDLE_POLL / 2))
        if bundle_signature(self.cfg.bundle) != signature:
            return
        result = self.reload("the bundle changed on disk")
        if not result["ok"]:
            self._refused_signature = signature

    def reload(self, why: str) -> dict[str, Any]:
        """Open the bundle again, verify it (hashes, then one inference), and swap it in.

        The detector in use keeps running until the new one has passed; a bundle that fails is
        refused and the old one stays. Safe to call from any thread.

        Returns:
            ``{"ok": True, "bundle": ...}`` or ``{"ok": False, "error": ..., "fix": ...}``.
        """
        with self._reload_lock:
            # Only a reload replaces the bundle, under this lock: what runs stays put until the swap below.
            loop, running = self.loop, self.bundle
            assert loop is not None and running is not None, "reload() is for a daemon whose loop runs"
            log.info("reloading the bundle %s (%s)", self.cfg.bundle, why)
            signature = bundle_signature(self.cfg.bundle)
            try:
                fresh = self.open_detector(self.cfg.bundle)
                info = self._verify(fresh, running)
            except EdgesightError as exc:
                self.reloads["refused"] += 1
                self.reloads["last"] = {"ok": False, "why": why, "error": exc.problem, "fix": exc.fix,
                                        "utc": _utc_now()}
                log.error("reload refused, %s keeps running: %s", running.name, exc)
                return {"ok": False, "error": exc.problem, "fix": exc.fix, "running": asdict(running)}
            loop.replace_detector(fresh)
            self.bundle = info
            self._bundle_signature = signature
            self._refused_signature = None
            self.reloads["ok"] += 1
            self.reloads["last"] = {"ok": True, "why": why, "bundle": info.name, "sha256": info.sha256,
                                    "utc": _utc_now()}
            log.info("reloaded: now running %s (sha256 %s)", info.name, info.sha256[:12])
            return {"ok": True, "bundle": asdict(info)}

    def _verify(self, fresh: Detector, running: BundleInfo) -> BundleInfo:
        """One test inference on the newest real frame (never given to the pipeline); closes ``fresh`` on failure."""
        try:
            info = BundleInfo.of(fresh)
            if info.labels != running.labels:
                raise ModelFileError(
                    f"the new bundle's labels {list(info.labels)} differ from the running {list(running.labels)}",
                    "restart the daemon to switch to a bundle with other classes (the config's classes refer to them)",
                )
            last = self.loop.last_frame if self.loop else None
            image = last.image if last is not None else np.full((480, 640, 3), 114, np.uint8)
            detections = _call_with_timeout(fresh, image, self.cfg.detect_timeout)
            _check_detections(detections, image.shape)
        except Exception:
            fresh.close()
            raise
        return info

    # --- stopping ------------------------------------------------------------------------------------------

    def _shutdown(self) -> ExitCode:
        deadline = time.monotonic() + STOP_BUDGET
        reason = self._stop_reason or self._end_reason()
        self.notifier.stopping(reason)
        log.info("stopping: %s", reason)
        finished = True
        if self.loop is not None:
            finished = self.loop.stop(timeout=(deadline - time.monotonic()) * (1 - FLUSH_SHARE))
        if self.publisher is not None:
            self._close_publisher(self.publisher, deadline)
        if self.source is not None:
            self.source.close()
        if self.http is not None:
            self.http.close()
        self.notifier.close()
        code = self._exit_code()
        if not finished:
            log.warning("stop: not every queued frame was processed within %.1f s", STOP_BUDGET)
        counters = self.loop.counters if self.loop else None
        if counters is not None:
            log.info("stopped (exit %d, %s): %d frames, %d detected, %d skipped by motion, %d events", code,
                     code.name, counters.frames_in, counters.detected, counters.motion_skipped,
                     sum(counters.events.values()))
        return code

    def _close_publisher(self, publisher: Publisher, deadline: float) -> None:
        """Let the sinks deliver until the deadline; one that hangs (a webhook mid-POST) is not waited for.

        Nothing is lost by leaving it: an event leaves the spool only once acknowledged, so what is not
        acknowledged by now goes out at the next start.
        """
        budget = max(0.1, deadline - time.monotonic())
        closer = threading.Thread(target=publisher.close, kwargs={"timeout": budget}, name="publisher-close",
                                  daemon=True)
        closer.start()
        closer.join(max(0.0, deadline - time.monotonic()) + 0.1)
        if closer.is_alive():
            log.warning("stop: a sink is still busy after the %.1f s stop budget; its unacknowledged events stay "
                        "in the spool for the next start", STOP_BUDGET)

    def _end_reason(self) -> str:
        loop = self.loop
        if loop is None:
            return "start failed"
        if loop.failure:
            return loop.failure
        if loop.ended is not None:
            return loop.ended.reason
        return "stopped"

    def _exit_code(self) -> ExitCode:
        loop = self.loop
        if loop is None:
            return ExitCode.INTERNAL
        if loop.failure:
            return ExitCode.DETECTOR_FAILED
        if loop.ended is not None and not loop.ended.complete:
            return ExitCode.SOURCE_ENDED_EARLY
        return ExitCode.OK

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # embedded in a test or another program: the caller stops it with request_stop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        # Python runs a handler in the main thread between two bytecodes, and that can be inside Event.wait()
        # while the thread holds the event's lock: Event.set() here would wait on its own thread forever (a
        # SIGTERM that never stopped the daemon, once in CI). So the handler takes no lock; the supervisor acts
        # on the signal within a TICK.
        self._signals.append(signum)

    def _take_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGHUP:
                self.request_reload()
            else:
                self.request_stop(signal.Signals(signum).name)

    # --- HTTP ----------------------------------------------------------------------------------------------

    def _make_http(self) -> HttpServer | None:
        """The server with the daemon's routes, not yet listening (extensions add theirs first)."""
        if self.cfg.http is None:
            return None
        http = HttpServer(self.cfg.http.host, self.cfg.http.port)
        http.route("GET", "/metrics", self._metrics_page)
        http.route("GET", "/healthz", self._healthz_page)
        http.route("GET", "/api/status", lambda _: Response.json(self.status()))
        http.route("POST", "/api/reload", self._reload_page)
        if self.cfg.events.snapshots is not None:
            http.route("GET", "/snapshots", self._snapshot_page, prefix=True)
        return http

    def snapshot_url(self, path: str | None) -> str | None:
        """The HTTP path (``snapshots/<camera>/<id>.jpg``) of an event's snapshot file, or None."""
        folder = self.cfg.events.snapshots
        if path is None or folder is None:
            return None
        try:
            return "snapshots/" + Path(path).resolve().relative_to(Path(folder).resolve()).as_posix()
        except ValueError:
            return None

    def _snapshot_page(self, request: Request) -> Response:
        assert self.cfg.events.snapshots is not None  # the route exists only then
        root = Path(self.cfg.events.snapshots).resolve()
        relative = request.path.removeprefix("/snapshots/")
        target = (root / relative).resolve()
        # Only JPEGs inside the snapshot folder: a crafted path must not read anything else on the device.
        if target.is_relative_to(root) and target.suffix.lower() == ".jpg" and target.is_file():
            return Response(200, target.read_bytes(), "image/jpeg", (("Cache-Control", "max-age=3600"),))
        return Response.text(f"no such snapshot: {relative}", 404)

    def _metrics_page(self, _: Request) -> Response:
        body, content_type = self.metrics.exposition()
        return Response(200, body, content_type)

    def _healthz_page(self, _: Request) -> Response:
        ok, reason = self.health()
        return Response.text(("ok: " if ok else "unhealthy: ") + reason, 200 if ok else 503)

    def _reload_page(self, request: Request) -> Response:
        refusal = bearer_token_ok(request, self._token)
        if refusal is not None:
            return refusal
        result = self.reload("POST /api/reload")
        return Response.json(result, 200 if result["ok"] else 409)

    # --- status --------------------------------------------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        """(True, ...) only when frames flow and the detector answers; else (False, why)."""
        loop, source = self.loop, self.source
        if loop is None or source is None:
            return False, "starting"
        stats = source.stats()
        if stats.state == "ended":
            return False, "the source ended"
        why = f"; last error: {stats.last_error}" if stats.last_error and stats.state != "streaming" else ""
        if stats.last_frame_age is None:
            return False, f"no frame yet from {stats.uri} ({stats.state}{why})"
        if stats.last_frame_age > self.cfg.source.stale_after:
            return False, f"no frame for {stats.last_frame_age:.1f} s from {stats.uri} ({stats.state}{why})"
        busy = loop.detector_busy_for()
        if busy > self.cfg.detect_timeout:
            return False, f"the detector has been stuck for {busy:.1f} s"
        last = loop.counters.last_detect_mono
        # With the motion gate the detector may rest for max_idle; beyond that plus its own limit it is not answering.
        limit = self.cfg.detect_timeout + (self.cfg.motion.max_idle if self.gate is not None else 0) + 2.0
        if last is None:
            started_for = time.monotonic() - self.started
            return (started_for < limit, "waiting for the first detection" if started_for < limit
                    else f"the detector has not answered in {started_for:.0f} s")
        if time.monotonic() - last > limit:
            return False, f"the detector last answered {time.monotonic() - last:.1f} s ago"
        return True, f"frames flow ({stats.fps:.1f} fps) and the detector answers"

    def status(self) -> dict[str, Any]:
        """Everything /api/status shows (and /metrics reads); asked only once ``run`` has built the loop."""
        loop, source, bundle = self.loop, self.source, self.bundle
        assert loop is not None and source is not None and bundle is not None, "status() before the loop is built"
        counters = loop.counters
        ok, reason = self.health()
        last = counters.last_detect_mono
        return {
            "camera": self.cfg.camera,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started, 3),
            "memory_rss_bytes": _rss_bytes(),
            "health": {"ok": ok, "reason": reason},
            "bundle": asdict(bundle),
            "source": asdict(source.stats()),
            "loop": {
                "frames_in": counters.frames_in, "detected": counters.detected,
                "motion_skipped": counters.motion_skipped, "bad_frames": counters.bad_frames,
                "detector_errors": counters.detector_errors, "detector_stalls": counters.detector_stalls,
                "detector_swaps": counters.detector_swaps, "processed": counters.processed,
                "observer_errors": counters.observer_errors, "observer_dropped": counters.observer_dropped,
                "detect_fps": loop.detect_rate.rate(), "process_fps": loop.process_rate.rate(),
                "detector_busy_s": loop.detector_busy_for(),
                "last_detect_age_s": None if last is None else time.monotonic() - last,
            },
            "queues": loop.queue_depths(),
            "latency": {"capture_to_processed": loop.frame_latency.summary(),
                        "capture_to_event": loop.event_latency.summary(),
                        "detect": loop.detect_latency.summary()},
            "events": [{"label": label, "type": kind, "count": n}
                       for (label, kind), n in sorted(counters.events.items())],
            "reloads": dict(self.reloads),
            "motion": self.gate.stats() if self.gate is not None else {"enabled": False},
            "tracks": self.pipeline.stats() if self.pipeline is not None else None,
            "publisher": self.publisher.stats() if self.publisher is not None else None,
        }

    def _status_line(self, loop: Loop, source: Source) -> str:
        counters = loop.counters
        return (f"{counters.processed} frames, {loop.detect_rate.rate():.1f} detections/s, "
                f"source {source.stats().state}")


class _WatchdogPinger:
    """``WATCHDOG=1`` every half ``WatchdogSec``, but only if frames went through since the last ping."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.interval = notifier.watchdog_interval
        self.next_at = time.monotonic()
        self.last_count = -1

    def tick(self, processed: int) -> None:
        if self.interval is None or time.monotonic() < self.next_at:
            return
        if processed > self.last_count:
            self.notifier.watchdog()
            self.last_count = processed
            self.next_at = time.monotonic() + self.interval
        # No progress: no ping; systemd restarts the service once WatchdogSec passes without one.


def bundle_signature(path: Path) -> tuple:
    """What changes when any file of the bundle changes: resolved folder, names, sizes, mtimes."""
    folder = Path(path).resolve()
    try:
        entries = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
    except OSError:
        entries = []
    return (str(folder), tuple(entries))


def run_daemon(cfg: DaemonConfig, **parts: Any) -> ExitCode:
    """Run the daemon for ``cfg`` until it stops; see ``ExitCode``.

    Raises:
        EdgesightError: It refused to start.
    """
    return Daemon(cfg, **parts).run()


def _call_with_timeout(detector: Detector, image: np.ndarray, timeout: float) -> Detections:
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            result["value"] = detector(image)
        except Exception as exc:
            result["error"] = exc

    worker = threading.Thread(target=call, name="reload-test", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise ModelFileError(f"the test inference did not finish within detect_timeout ({timeout:g} s)",
                             "check the bundle on the workstation with `edgesight bench`")
    if "error" in result:
        raise ModelFileError(f"the test inference failed: {result['error']}",
                             "check the bundle with `edgesight eval` on the device")
    return result["value"]


def _check_detections(detections: Any, shape: tuple[int, ...]) -> None:
    if not isinstance(detections, Detections):
        raise ModelFileError(f"the test inference returned {type(detections).__name__}, not Detections",
                             "re-export the bundle with `edgesight export`")
    finite = np.isfinite(detections.boxes).all() and np.isfinite(detections.scores).all()
    if not finite or (len(detections) and not (0 <= detections.scores.min() <= detections.scores.max() <= 1)):
        raise ModelFileError("the test inference gave non-finite boxes or scores outside [0, 1]",
                             "re-export the bundle with `edgesight export`; check it with `edgesight eval`")


def _read_token(path: Path) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"http.token_file {path} cannot be read: {exc.strerror or exc}",
                          "create it with a secret (e.g. `openssl rand -hex 16 > FILE; chmod 600 FILE`)") from None
    if len(token) < 8:
        raise ConfigError(f"http.token_file {path} holds a token of {len(token)} characters",
                          "use at least 8 characters (e.g. `openssl rand -hex 16`)")
    return token


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
