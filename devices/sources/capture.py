"""``Source``: frames from a reader, captured in a thread that a watchdog can abandon.

Why a thread per connection: OpenCV's ``read()`` can block for good on a dead RTSP stream or a wedged
USB camera, whatever timeout was asked for. The capture thread records when each open and read
began; the watchdog thread abandons a thread stuck longer than ``stale_after`` (it is a daemon
thread; if its call ever returns it sees that it was abandoned, releases its device and exits) and
opens the source again with a backoff of ``reconnect_initial`` doubling to ``reconnect_max``.

Delivery:
    * cameras, streams and ``realtime`` files: *latest frame*. The consumer always gets the newest
      frame; a frame replaced before it was taken is counted in ``dropped``, so a slow model never
      builds a backlog and frame ages stay bounded;
    * files (default): every frame, in order, as fast as the consumer takes them (the capture thread
      waits on a small queue).

A file that ends raises ``SourceEnded`` in the consumer once its last frame was taken, saying whether
the file was complete. Nothing is ever invented: no placeholder frame reaches the consumer, and a
malformed image (None, not uint8, not HxWx3) is counted in ``bad`` and skipped with a log line.

Length: the capture thread, its watchdog and the reconnect backoff share one lock and one state
machine; kept in one file so that every transition can be read together (about 470 lines).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import numpy as np

from devices.daemon.config import SourceConfig
from devices.errors import SourceError
from devices.sources.readers import PROBE_TIMEOUT, Reader, make_reader
from devices.sources.uri import SourceURI, parse_uri
from devices.types import Frame

log = logging.getLogger(__name__)

State = Literal["opening", "streaming", "reconnecting", "ended", "closed"]
#: How often the watchdog looks at the capture thread.
WATCHDOG_PERIOD = 0.1
#: Frames the capture thread of a file may read ahead of the consumer.
FILE_QUEUE = 4
#: A file source is called truncated when it ends short of its declared length by more than this.
TRUNCATION_TOLERANCE = 0.01
_FPS_WINDOW = 5.0


class SourceEnded(Exception):
    """A file (or image folder) source delivered its last frame.

    Attributes:
        complete: False when the file ended short of the frames it declares (truncated or damaged).
        frames: Frames read.
        reason: One line for the log and the exit message.
    """

    def __init__(self, reason: str, complete: bool, frames: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.complete = complete
        self.frames = frames


@dataclass(frozen=True)
class SourceStats:
    """A snapshot of a source's counters (for ``/metrics`` and ``/api/status``).

    Attributes:
        uri: The source, password masked.
        kind: ``file``, ``images``, ``v4l2``, ``rtsp``, ``http``, ``csi`` or ``gstreamer``.
        state: ``opening``, ``streaming``, ``reconnecting``, ``ended`` or ``closed``.
        frames: Frames read from the device (including those dropped and bad ones).
        delivered: Frames handed to the consumer.
        dropped: Frames replaced by a newer one before the consumer took them.
        bad: Malformed images skipped.
        reconnects: Successful reopens after a loss or a stall.
        stalls: Times the watchdog abandoned an open or a read stuck past ``stale_after``.
        open_failures: Failed open attempts.
        abandoned_alive: Abandoned capture threads still blocked inside the device call.
        fps: Frames read per second over the last few seconds.
        last_frame_age: Seconds since the last frame was read (None before the first).
        last_error: Why the source was last lost or could not be opened, with its fix (None: never).
    """

    uri: str
    kind: str
    state: State
    frames: int
    delivered: int
    dropped: int
    bad: int
    reconnects: int
    stalls: int
    open_failures: int
    abandoned_alive: int
    fps: float
    last_frame_age: float | None
    last_error: str | None = None


class _Buffer:
    """Frames between the capture thread and the consumer: newest-only or a small lossless queue."""

    def __init__(self, latest: bool) -> None:
        self.latest = latest
        self.capacity = 1 if latest else FILE_QUEUE
        self.frames: collections.deque[Frame] = collections.deque()
        self.cond = threading.Condition()
        self.dropped = 0
        self.end: SourceEnded | None = None
        self.closed = False

    def put(self, frame: Frame, alive: Callable[[], bool]) -> None:
        with self.cond:
            if self.latest:
                if self.frames:
                    self.frames.popleft()
                    self.dropped += 1
            else:
                while len(self.frames) >= self.capacity and alive() and not self.closed:
                    self.cond.wait(0.1)
                if not alive() or self.closed:
                    return
            self.frames.append(frame)
            self.cond.notify_all()

    def get(self, timeout: float) -> Frame | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.frames:
                if self.end is not None:
                    raise self.end
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    return None
                self.cond.wait(left)
            frame = self.frames.popleft()
            self.cond.notify_all()
            return frame

    def finish(self, end: SourceEnded) -> None:
        with self.cond:
            self.end = end
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class Source:
    """Frames from a camera, a stream, a file or an image folder; a context manager.

    Example:
        >>> with Source(SourceConfig(uri="rtsp://cam/stream")) as source:
        ...     frame = source.read(timeout=1.0)   # the newest frame, or None if none came

    Args:
        cfg: The ``source`` section of the daemon's config.
        reader_factory: Builds a fresh reader for each (re)open (default: ``make_reader`` for the URI).

    Raises:
        SourceError: From ``open``: a bad URI, a missing file or package, a file that cannot be
            decoded. A stream or camera that is merely unreachable is retried in the background.
    """

    def __init__(self, cfg: SourceConfig, reader_factory: Callable[[], Reader] | None = None) -> None:
        self.cfg = cfg
        self.uri: SourceURI = parse_uri(cfg.uri)
        self._factory = reader_factory or (lambda: make_reader(self.uri, cfg))
        self.live = self.uri.live
        self.realtime = self.live or bool(cfg.realtime)
        self._buffer = _Buffer(latest=self.realtime)
        self._stream_frames = 0  # frames of an unpaced file delivered so far, across --loop restarts
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._gen = 0
        self._state: State = "closed"
        self._busy_since: float | None = None  # monotonic start of the open/read in progress
        self._busy_what = ""
        self._reopen_at = 0.0
        self._backoff = cfg.reconnect_initial
        self._recovering = False
        self._abandoned: list[threading.Thread] = []
        self._frames = self._delivered = self._bad = 0
        self._reconnects = self._stalls = self._open_failures = 0
        self._last_frame: float | None = None
        self._last_error: str | None = None
        self._recent: collections.deque[float] = collections.deque()
        self._watchdog: threading.Thread | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------------------

    def open(self) -> Source:
        """Check the source and start capturing (files open here, so that a bad file fails now)."""
        first = self._factory()
        first.check()
        if not self.live:
            first.open()
        self._stop.clear()
        with self._lock:
            self._state = "streaming" if not self.live else "opening"
            self._start_generation(first if not self.live else None)
        self._watchdog = threading.Thread(target=self._watch, name="source-watchdog", daemon=True)
        self._watchdog.start()
        log.info("source %s (%s) started", self.uri.display, self.uri.kind)
        return self

    def close(self) -> None:
        """Stop capturing; a capture thread stuck in the device is left behind, not waited for."""
        self._stop.set()
        with self._lock:
            self._gen += 1
            self._state = "closed"
        self._buffer.close()
        for thread in (self._watchdog, self._thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=0.25)  # a file's reader returns at once; a stuck one is not waited for

    def __enter__(self) -> Source:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- the consumer's side ------------------------------------------------------------------------------

    def read(self, timeout: float) -> Frame | None:
        """The next frame (files) or the newest one (live), waiting at most ``timeout`` seconds.

        Returns:
            The frame, or None when none arrived in time (the source may be reconnecting).

        Raises:
            SourceEnded: A file or image folder ended and its last frame was already returned.
        """
        frame = self._buffer.get(timeout)
        if frame is not None:
            with self._lock:
                self._delivered += 1
        return frame

    def stats(self) -> SourceStats:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0] < now - _FPS_WINDOW:
                self._recent.popleft()
            span = min(_FPS_WINDOW, now - self._recent[0]) if self._recent else 0.0
            self._abandoned = [t for t in self._abandoned if t.is_alive()]
            return SourceStats(
                uri=self.uri.display, kind=self.uri.kind, state=self._state, frames=self._frames,
                delivered=self._delivered, dropped=self._buffer.dropped, bad=self._bad,
                reconnects=self._reconnects, stalls=self._stalls, open_failures=self._open_failures,
                abandoned_alive=len(self._abandoned),
                fps=(len(self._recent) - 1) / span if span > 0 and len(self._recent) > 1 else 0.0,
                last_frame_age=None if self._last_frame is None else now - self._last_frame,
                last_error=self._last_error,
            )

    # --- capture thread -----------------------------------------------------------------------------------

    def _start_generation(self, reader: Reader | None) -> None:
        """Start a capture thread (caller holds the lock); ``reader`` already open, or None to open one."""
        self._gen += 1
        self._thread = threading.Thread(target=self._capture, args=(self._gen, reader),
                                        name=f"capture-{self._gen}", daemon=True)
        self._thread.start()

    def _current(self, gen: int) -> bool:
        return gen == self._gen and not self._stop.is_set()

    def _capture(self, gen: int, reader: Reader | None) -> None:
        try:
            if reader is None:
                reader = self._open_reader(gen)
                if reader is None:
                    return
            self._stream(gen, reader)
        except Exception as exc:  # a reader bug must not end the daemon: treat it as a lost source
            log.exception("source %s: capture failed", self.uri.display)
            self._lost(gen, f"capture failed: {exc}")
        finally:
            if reader is not None:
                try:
                    reader.close()
                except Exception:
                    log.exception("source %s: closing the reader failed", self.uri.display)

    def _open_reader(self, gen: int) -> Reader | None:
        reader = self._factory()
        self._busy(gen, "open")
        try:
            reader.open()
        except SourceError as exc:
            # Also an error that looks permanent: the start-up check passed, so the device was there.
            self._busy(gen, None)
            with self._lock:
                self._open_failures += 1
                first = self._backoff == self.cfg.reconnect_initial  # the first failure since the source worked
            error = f"{exc.problem}; fix: {exc.fix}" if exc.fix else exc.problem
            # The fix is logged once per outage; /api/status always has it (last_error).
            self._lost(gen, error if first else exc.problem, error)
            return None
        self._busy(gen, None)
        if not self._current(gen):
            reader.close()
            return None
        with self._lock:
            self._state = "streaming"
        return reader

    def _stream(self, gen: int, reader: Reader) -> None:
        started = time.monotonic()
        count = 0  # frames of this open (pacing of realtime files; empty-loop check)
        fps = reader.fps or 10.0
        while self._current(gen):
            self._busy(gen, "read")
            ok, image = reader.read()
            captured, mono = time.time(), time.monotonic()
            self._busy(gen, None)
            if not self._current(gen):
                return  # abandoned by the watchdog while blocked in read(), or stopped
            if not ok:
                if self.live:
                    self._lost(gen, "the stream ended or the read failed")
                    return
                if self.cfg.loop and count > 0:
                    log.info("source %s: end of file, starting again (loop)", self.uri.display)
                    reader = self._reopen_file(reader)
                    started, count = time.monotonic(), 0
                    continue
                self._file_ended(reader, count)
                return
            count += 1
            stream_time = None
            if not self.realtime:
                # An unpaced file's own timeline, continuous across --loop restarts.
                stream_time = self._stream_frames / fps
                self._stream_frames += 1
            self._deliver(gen, image, captured, mono, stream_time)
            if self.realtime and not self.live:
                # Pace a file at its own rate, as a camera would deliver it.
                delay = started + count / fps - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)

    def _reopen_file(self, reader: Reader) -> Reader:
        reader.close()
        fresh = self._factory()
        fresh.check()
        fresh.open()
        return fresh

    def _deliver(self, gen: int, image: Any, captured: float, mono: float, stream_time: float | None) -> None:
        with self._lock:
            index = self._frames
            self._frames += 1
            self._last_frame = mono
            self._recent.append(mono)
            recovered = False
            if self._recovering:
                self._recovering = False
                self._backoff = self.cfg.reconnect_initial
                recovered = index > 0  # a first connection after failed opens is no reconnect
                self._reconnects += recovered
        if recovered:
            log.warning("source %s: frames again (reconnect #%d)", self.uri.display, self._reconnects)
        problem = image_problem(image)
        if problem is not None:
            with self._lock:
                self._bad += 1
                bad = self._bad
            if bad <= 10 or bad % 100 == 0:
                log.warning("source %s: frame %d skipped: %s (%d bad frames so far)",
                            self.uri.display, index, problem, bad)
            return
        self._buffer.put(Frame(image, index, captured, mono, stream_time), alive=lambda: self._current(gen))

    def _file_ended(self, reader: Reader, count: int) -> None:
        expected = reader.expected_frames
        with self._lock:
            total = self._frames
            self._state = "ended"
        short = expected is not None and count < expected * (1 - TRUNCATION_TOLERANCE) - 1
        if count == 0:
            reason = f"{self.uri.display}: no frame could be read (the file is empty or damaged)"
        elif short:
            reason = (f"{self.uri.display} ended after {count} of the {expected} frames it declares: "
                      "the file is truncated or damaged")
        else:
            reason = f"{self.uri.display}: end of file after {count} frames"
        (log.info if not short and count else log.error)("source %s", reason)
        self._buffer.finish(SourceEnded(reason, complete=bool(count) and not short, frames=total))

    def _busy(self, gen: int, what: str | None) -> None:
        with self._lock:
            if gen == self._gen:
                self._busy_since = time.monotonic() if what else None
                self._busy_what = what or ""

    def _lost(self, gen: int, reason: str, error: str | None = None) -> None:
        """The current connection is gone: schedule a reopen after the backoff (``error``: the reason with its
        fix, for ``last_error``, when the log line leaves the fix out)."""
        with self._lock:
            if gen != self._gen or self._stop.is_set():
                return
            self._schedule_reopen(reason, error)

    def _schedule_reopen(self, reason: str, error: str | None = None) -> None:
        """(Caller holds the lock.)"""
        self._last_error = error or reason
        self._gen += 1  # whatever still runs under the old generation is abandoned
        self._state = "reconnecting"
        self._recovering = True
        self._busy_since = None
        wait = self._backoff
        self._reopen_at = time.monotonic() + wait
        self._backoff = min(self._backoff * 2, self.cfg.reconnect_max)
        log.warning("source %s: %s; reopening in %.0f s", self.uri.display, reason, wait)

    # --- watchdog -----------------------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(WATCHDOG_PERIOD):
            now = time.monotonic()
            with self._lock:
                if self._state in ("ended", "closed"):
                    continue
                if self._busy_since is not None and now - self._busy_since > self._stall_limit():
                    self._stalls += 1
                    if self._thread is not None:
                        self._abandoned.append(self._thread)
                    problem = (f"{self._busy_what} blocked for {now - self._busy_since:.1f} s "
                               f"(stall #{self._stalls}); the capture thread is abandoned")
                    if self.live:
                        self._schedule_reopen(problem)
                    else:
                        self._end_stalled(problem)
                elif self._state == "reconnecting" and now >= self._reopen_at:
                    self._state = "opening"
                    self._start_generation(None)

    def _stall_limit(self) -> float:
        # An open may legitimately take open_timeout, and a stream that did not open is then probed for why;
        # a read must produce a frame within stale_after.
        if self._busy_what == "open":
            return max(self.cfg.stale_after, self.cfg.open_timeout + PROBE_TIMEOUT + 1.0)
        return self.cfg.stale_after

    def _end_stalled(self, problem: str) -> None:
        """A file whose read hangs ends the run with an error instead of hanging it (caller holds the lock)."""
        self._gen += 1
        self._state = "ended"
        self._busy_since = None
        reason = f"{self.uri.display}: {problem}"
        log.error("source %s", reason)
        self._buffer.finish(SourceEnded(reason, complete=False, frames=self._frames))


def image_problem(image: Any) -> str | None:
    """Why an image cannot go to the model, or None when it is a BGR uint8 (H, W, 3) array."""
    if image is None:
        return "the device returned no image (None)"
    if not isinstance(image, np.ndarray):
        return f"a {type(image).__name__}, not a numpy array"
    if image.dtype != np.uint8:
        return f"dtype {image.dtype}, expected uint8"
    if image.ndim != 3 or image.shape[2] != 3:
        return f"shape {image.shape}, expected (height, width, 3) BGR"
    if image.shape[0] < 2 or image.shape[1] < 2:
        return f"shape {image.shape} is empty"
    return None
