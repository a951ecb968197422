"""The daemon's parts in-process: a stuck detector abandoned and reopened, when results are handed to the
events stage, frame observers, the HTTP server's routes and token, and the sd_notify protocol on a real unix
datagram socket."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from devices.backends import RUNTIMES
from devices.daemon.config import DaemonConfig
from devices.daemon.http import HttpServer, Response, bearer_token_ok
from devices.daemon.loop import HAND_ON_BATCH, HAND_ON_WAIT, Loop
from devices.daemon.service import Daemon, ExitCode, bundle_detector_factory
from devices.daemon.systemd import Notifier
from devices.daemon.workers import Workers
from devices.errors import FrameError
from devices.sources import Source
from devices.sources.readers import MemoryReader
from devices.types import Detections, Frame

INT8 = "yolox-nano-tflite-int8"


def _config(test_bundles: Path, clip: Path, tmp: Path, **fields) -> DaemonConfig:
    return DaemonConfig.model_validate({"bundle": str(test_bundles / INT8), "source": {"uri": str(clip)},
                                        "http": None, "events": {"snapshots": str(tmp / "snapshots"),
                                                                 "spool": str(tmp / "spool" / "events.sqlite")},
                                        **fields})


def _run_in_thread(daemon: Daemon, limit: float = 60) -> ExitCode:
    result: dict = {}
    worker = threading.Thread(target=lambda: result.setdefault("code", daemon.run()), daemon=True)
    worker.start()
    worker.join(limit)
    assert not worker.is_alive(), "the daemon did not finish"
    return result["code"]


class _HangsOnce:
    """A real BundleDetector whose ``hang_on``-th call blocks until released: a wedged runtime or driver."""

    def __init__(self, inner, hang_on: int, release: threading.Event) -> None:
        self.inner, self.hang_on, self.release, self.calls = inner, hang_on, release, 0
        self.bundle, self.labels = inner.bundle, inner.labels

    def __call__(self, image: np.ndarray) -> Detections:
        self._count()
        return self.inner(image)

    def _count(self) -> None:
        self.calls += 1
        if self.calls == self.hang_on:
            self.release.wait()

    def close(self) -> None:
        self.inner.close()


class _HangsOnceInTheModel(_HangsOnce):
    """The same with the three stages of ``devices.detector.TimedDetector``: it hangs in ``run_model``, after
    the loop handed on what it held."""

    def prepare(self, image: np.ndarray):
        return self.inner.prepare(image)

    def run_model(self, tensor: np.ndarray):
        self._count()
        return self.inner.run_model(tensor)

    def decode(self, outputs, placement, frame_shape) -> Detections:
        return self.inner.decode(outputs, placement, frame_shape)


@pytest.mark.parametrize("kind", [_HangsOnce, _HangsOnceInTheModel])
def test_a_stuck_detector_is_abandoned_and_reopened(test_bundles: Path, clip: Path, tmp_path: Path, kind) -> None:
    cfg = _config(test_bundles, clip, tmp_path, detect_timeout=1.0)
    opened, release = [], threading.Event()
    real = bundle_detector_factory(cfg)

    def open_detector(path: Path):
        detector = kind(real(path), hang_on=10 if not opened else 0, release=release)
        opened.append(detector)
        return detector

    seen: list[int] = []
    daemon = Daemon(cfg, open_detector=open_detector, observers=[lambda frame, d, t: seen.append(frame.index)])
    started = time.monotonic()
    code = _run_in_thread(daemon)
    release.set()
    counters = daemon.loop.counters
    assert code == ExitCode.OK
    assert counters.detector_stalls == 1 and len(opened) == 2
    assert counters.frames_in == 60 and counters.detected == 59  # only the frame it was stuck on is lost
    assert counters.processed == 59
    assert seen == [i for i in range(60) if i != 9]  # what the stuck thread held went on first, in order
    assert time.monotonic() - started < 30


class _HangsThenAnswers(_HangsOnceInTheModel):
    """Hangs in ``run_model`` on its 10th call; once released, that call answers, or raises when ``fails``."""

    fails = False

    def run_model(self, tensor: np.ndarray):
        self._count()
        if self.calls == self.hang_on and self.fails:
            raise RuntimeError("the driver came back with an error")
        return self.inner.run_model(tensor)


@pytest.mark.parametrize("fails", [False, True])
def test_an_abandoned_call_that_comes_back_is_not_counted(test_bundles: Path, clip: Path, tmp_path: Path,
                                                          fails: bool) -> None:
    # Its frame is already counted lost; its result, or its error, belongs to no detector that runs.
    capture = cv2.VideoCapture(str(clip))
    images = [capture.read()[1] for _ in range(60)] * 40
    capture.release()
    cfg = _config(test_bundles, clip, tmp_path, detect_timeout=1.0, motion={"enabled": False})
    release, real, opened = threading.Event(), bundle_detector_factory(cfg), []

    def open_detector(path: Path) -> _HangsThenAnswers:
        detector = _HangsThenAnswers(real(path), hang_on=10 if not opened else 0, release=release)
        detector.fails = fails
        opened.append(detector)
        return detector

    daemon = Daemon(cfg, open_detector=open_detector,
                    source=Source(cfg.source, reader_factory=lambda: MemoryReader(images)))
    result: dict = {}
    runner = threading.Thread(target=lambda: result.setdefault("code", daemon.run()), daemon=True)
    runner.start()
    assert daemon.ready.wait(30)
    counters = daemon.loop.counters
    _wait_for(lambda: counters.detector_stalls == 1 and counters.detected > 30, "the stuck call abandoned")
    (abandoned,) = [t for t in threading.enumerate() if t.name == "detect-1"]
    release.set()
    abandoned.join(10)
    assert not abandoned.is_alive()
    daemon.request_stop("the test is done")
    runner.join(10)
    assert result["code"] == ExitCode.OK
    assert counters.detector_errors == 0
    assert counters.detected == counters.frames_in - 1  # every frame read but the one the call was stuck on


class _HangsInOneWorker:
    """Opens ``Workers`` of two real detectors; in the first pair, the first copy hangs on its 5th call."""

    def __init__(self, cfg: DaemonConfig, release: threading.Event) -> None:
        self.real = bundle_detector_factory(cfg.model_copy(update={"workers": 1}))
        self.release, self.opened = release, []

    def __call__(self, path: Path) -> Workers:
        first = not self.opened
        copies = [_HangsOnce(self.real(path), hang_on=5 if first and i == 0 else 0, release=self.release)
                  for i in range(2)]
        self.opened.append(Workers(copies))
        return self.opened[-1]


def test_a_stuck_worker_is_abandoned_and_the_workers_reopened(test_bundles: Path, clip: Path, tmp_path: Path) -> None:
    cfg = _config(test_bundles, clip, tmp_path, detect_timeout=1.0, workers=2, threads=1)
    release = threading.Event()
    open_detector = _HangsInOneWorker(cfg, release)
    seen: list[int] = []
    daemon = Daemon(cfg, open_detector=open_detector, observers=[lambda frame, d, t: seen.append(frame.index)])
    code = _run_in_thread(daemon)
    release.set()
    counters = daemon.loop.counters
    assert code == ExitCode.OK
    assert counters.detector_stalls == 1 and len(open_detector.opened) == 2
    # The stuck frame is lost, and so are those given to the workers behind it (at most depth - 1 more).
    lost = sorted(set(range(60)) - set(seen))
    assert counters.frames_in == 60 and 1 <= len(lost) <= open_detector.opened[0].depth
    assert lost == list(range(lost[0], lost[0] + len(lost)))
    assert counters.processed == counters.detected == 60 - len(lost)
    assert seen == sorted(seen)  # in frame order across the swap


# --- when results reach the events stage ------------------------------------------------------------------


class _StagedModel:
    """A detector with stages whose model call takes ``seconds``; it notes how many results the loop still
    held, not yet handed to the events stage, each time the model starts."""

    labels = ("pedestrian",)

    def __init__(self, seconds: float) -> None:
        self.seconds, self.loop, self.held_at_model = seconds, None, []

    def __call__(self, image: np.ndarray) -> Detections:
        return self.decode(self.run_model(self.prepare(image)[0]), None, image.shape)

    def prepare(self, image: np.ndarray):
        return image, None

    def run_model(self, tensor: np.ndarray):
        self.held_at_model.append(len(self.loop._held))
        time.sleep(self.seconds)
        return [tensor]

    def decode(self, outputs, placement, frame_shape) -> Detections:
        return Detections.empty()

    def close(self) -> None:
        pass


class _Recorder:
    """An event pipeline that notes the frames it is given."""

    def __init__(self) -> None:
        self.frames: list[int] = []

    def update(self, frame: Frame, detections: Detections | None) -> list:
        self.frames.append(frame.index)
        return []

    def tracks(self) -> list:
        return []

    def finish(self, frame_time: float) -> list:
        return []


def _run_loop(clip: Path, detector: _StagedModel, frames: int) -> _Recorder:
    images = [np.full((48, 64, 3), i, np.uint8) for i in range(frames)]  # read as fast as the loop takes them
    source = Source(DaemonConfig.model_validate({"bundle": "b", "source": {"uri": str(clip)}}).source,
                    reader_factory=lambda: MemoryReader(images))
    recorder = _Recorder()
    with source:
        loop = Loop(source, detector, pipeline=recorder)
        detector.loop = loop
        loop.start()
        assert loop.wait(30), "the loop did not finish"
        loop.stop(2.0)
    return recorder


def test_results_of_a_fast_model_go_on_in_small_batches_in_order(clip: Path) -> None:
    detector = _StagedModel(seconds=0.001)
    recorder = _run_loop(clip, detector, frames=40)
    assert recorder.frames == list(range(40))  # every result, in order, none left held at the end
    assert max(detector.held_at_model) == HAND_ON_BATCH - 1  # the next frames were waiting: results batched
    assert min(detector.held_at_model) == 0


def test_results_of_a_slow_model_go_on_before_its_next_call(clip: Path) -> None:
    detector = _StagedModel(seconds=HAND_ON_WAIT * 1.5)
    recorder = _run_loop(clip, detector, frames=8)
    assert recorder.frames == list(range(8))
    assert detector.held_at_model == [0] * 8  # never held through a model call longer than HAND_ON_WAIT


def test_observers_see_every_frame_of_a_file_and_a_failing_one_is_counted(test_bundles: Path, clip: Path,
                                                                          tmp_path: Path) -> None:
    seen: list[tuple[int, int | None]] = []

    def record(frame: Frame, detections: Detections | None, tracks: list) -> None:
        seen.append((frame.index, None if detections is None else len(detections)))
        time.sleep(0.01)  # slower than nothing: a lossless observer must still get every frame

    def broken(frame: Frame, detections: Detections | None, tracks: list) -> None:
        raise RuntimeError("observer bug")

    daemon = Daemon(_config(test_bundles, clip, tmp_path), observers=[record, broken])
    assert _run_in_thread(daemon) == ExitCode.OK
    assert [index for index, _ in seen] == list(range(60))
    assert sum(n for _, n in seen) > 60  # vtest is full of pedestrians
    assert daemon.loop.counters.observer_errors == 60


# --- HTTP server ------------------------------------------------------------------------------------------


def _fetch(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_http_routes_prefixes_and_token() -> None:
    server = HttpServer("127.0.0.1", 0)
    server.route("GET", "/api/status", lambda r: Response.json({"ok": True, "q": r.query.get("x")}))
    server.route("GET", "/snapshots", lambda r: Response.text(f"file {r.path}"), prefix=True)
    server.route("POST", "/api/reload", lambda r: bearer_token_ok(r, "0123456789") or Response.json({"ok": True}))
    with pytest.raises(ValueError, match="already registered"):
        server.route("GET", "/api/status", lambda r: Response.text(""))
    server.start()
    try:
        assert server.host == "127.0.0.1" and server.port > 0
        code, body = _fetch(f"{server.url}/api/status?x=1")
        assert code == 200 and json.loads(body) == {"ok": True, "q": ["1"]}
        assert _fetch(f"{server.url}/snapshots/a/b.jpg") == (200, b"file /snapshots/a/b.jpg\n")
        assert _fetch(f"{server.url}/nope")[0] == 404
        assert _fetch(f"{server.url}/api/status", "POST")[0] == 405
        assert _fetch(f"{server.url}/api/reload", "POST")[0] == 401
        assert _fetch(f"{server.url}/api/reload", "POST", {"Authorization": "Bearer 0123456789"})[0] == 200
    finally:
        server.close()


def test_http_port_in_use_is_a_config_error() -> None:
    from devices.errors import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = HttpServer("127.0.0.1", taken.getsockname()[1])
        with pytest.raises(ConfigError, match="cannot listen") as info:
            server.start()
    assert "port 0 picks a free one" in info.value.fix


# --- sd_notify --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_datagrams(tmp_path: Path, abstract: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"@edgesight-test-{time.monotonic_ns()}" if abstract else str(tmp_path / "notify")
    receiver.bind("\0" + name[1:] if abstract else name)
    receiver.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = Notifier.from_env()
    assert notifier.enabled and notifier.watchdog_interval == 1.5
    assert notifier.ready("running")
    assert receiver.recv(1024) == b"READY=1\nSTATUS=running"
    assert notifier.watchdog()
    assert receiver.recv(1024) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert receiver.recv(1024) == b"STOPPING=1"
    notifier.close()
    receiver.close()


def test_sd_notify_off_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")  # another process's watchdog
    notifier = Notifier.from_env()
    assert not notifier.enabled and not notifier.ready() and notifier.watchdog_interval is None


# --- workers: copies of the model side by side ------------------------------------------------------------


class _Sleeper:
    """A detector without stages that sleeps longer on every third frame (its index is the image's value),
    so that a later frame often finishes first; it notes how many calls ran at once."""

    labels = ("pedestrian",)

    def __init__(self, counter: dict) -> None:
        self.counter = counter

    def __call__(self, image: np.ndarray) -> Detections:
        with self.counter["lock"]:
            self.counter["now"] += 1
            self.counter["most"] = max(self.counter["most"], self.counter["now"])
        time.sleep(0.03 if int(image[0, 0, 0]) % 3 == 0 else 0.002)
        if int(image[0, 0, 0]) == 7:
            image = None  # what cv2.imread gives for a bad file: a bad frame, counted and skipped
        with self.counter["lock"]:
            self.counter["now"] -= 1
        if image is None:
            raise FrameError("the frame is None", "check the source")
        return Detections.empty()

    def close(self) -> None:
        self.counter["closed"] += 1


def test_workers_run_side_by_side_and_results_go_on_in_frame_order(clip: Path) -> None:
    counter: dict = {"lock": threading.Lock(), "now": 0, "most": 0, "closed": 0}
    workers = Workers([_Sleeper(counter), _Sleeper(counter)])
    images = [np.full((48, 64, 3), i, np.uint8) for i in range(30)]
    source = Source(DaemonConfig.model_validate({"bundle": "b", "source": {"uri": str(clip)}}).source,
                    reader_factory=lambda: MemoryReader(images))
    recorder = _Recorder()
    with source:
        loop = Loop(source, workers, pipeline=recorder)
        loop.start()
        assert loop.wait(30), "the loop did not finish"
        loop.stop(2.0)
    assert recorder.frames == list(range(30))  # every frame, in order, though later ones often finished first
    assert counter["most"] == 2  # two calls ran at once
    assert loop.counters.bad_frames == 1 and loop.counters.detected == 29
    assert counter["closed"] == 2  # the loop closed both copies


def test_two_workers_give_the_events_of_one(test_bundles: Path, clip: Path, tmp_path: Path) -> None:
    # A file is read without loss, and each frame gets the same model call whichever copy runs it: the events
    # must be the same, field for field, except the times (a file's frames are stamped when they are read).
    timeless = ("id", "frame_time", "frame_time_unix", "start_time", "last_seen", "snapshot")
    events = []
    for workers in (1, 2):
        out = tmp_path / f"workers-{workers}"
        cfg = _config(test_bundles, clip, out, workers=workers, threads=1,
                      sinks={"jsonl": {"path": str(out / "events.jsonl")}})
        daemon = Daemon(cfg)
        assert _run_in_thread(daemon) == ExitCode.OK
        assert daemon.loop.counters.detected == 60 - daemon.loop.counters.motion_skipped
        shown = daemon.status()["bundle"]  # /api/status says how the model runs
        assert (shown["workers"], shown["threads"]) == (workers, 1) and shown["runtime"].split()[0] in RUNTIMES
        lines = (out / "events.jsonl").read_text().splitlines()
        events.append([{k: v for k, v in json.loads(line).items() if k not in timeless} for line in lines])
    assert len(events[0]) > 5 and events[1] == events[0]


def test_a_reload_swaps_the_workers_while_frames_flow(test_bundles: Path, clip: Path, tmp_path: Path) -> None:
    # Frames from memory always wait for the loop, so a call is in flight at all times: the swap must still
    # happen, between two calls.
    capture = cv2.VideoCapture(str(clip))
    images = [capture.read()[1] for _ in range(60)] * 20
    capture.release()
    cfg = _config(test_bundles, clip, tmp_path, workers=2, threads=1)
    daemon = Daemon(cfg, source=Source(cfg.source, reader_factory=lambda: MemoryReader(images)))
    result: dict = {}
    runner = threading.Thread(target=lambda: result.setdefault("code", daemon.run()), daemon=True)
    runner.start()
    assert daemon.ready.wait(30)
    counters = daemon.loop.counters
    _wait_for(lambda: counters.detected > 20, "frames flowing")
    assert daemon.reload("a test")["ok"]
    _wait_for(lambda: counters.detector_swaps == 1, "the new workers swapped in")
    swapped = counters.detected
    _wait_for(lambda: counters.detected > swapped + 20, "frames through the new workers")
    daemon.request_stop("the test is done")
    runner.join(10)
    assert result["code"] == ExitCode.OK and counters.detector_errors == 0


def _wait_for(condition, what: str, limit: float = 20) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_signal_while_the_supervisor_holds_the_stop_events_lock_is_not_a_deadlock(test_bundles: Path, clip: Path,
                                                                                   tmp_path: Path) -> None:
    # A handler runs between two bytecodes of the main thread, which may then be inside Event.wait() holding the
    # event's lock. Play that: hold the locks and deliver the signals; the handler must return at once, and the
    # supervisor's next tick must act on them.
    daemon = Daemon(_config(test_bundles, clip, tmp_path))

    def deliver() -> None:
        with daemon._stop._cond, daemon._reload_requested._cond:
            daemon._on_signal(signal.SIGHUP, None)
            daemon._on_signal(signal.SIGTERM, None)

    handler = threading.Thread(target=deliver, daemon=True)
    handler.start()
    handler.join(5)
    assert not handler.is_alive(), "the signal handler waited on a lock its own thread holds"
    assert not daemon._stop.is_set()
    daemon._take_signals()
    assert daemon._reload_requested.is_set() and daemon._stop.is_set() and daemon._stop_reason == "SIGTERM"
