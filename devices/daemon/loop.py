"""The frame loop: capture -> motion gate -> detector -> tracker/events -> sinks, in threads.

Threads and the bounded queues between them::

    capture (Source)  --latest frame / small queue-->  detect  --events queue-->  events  --> observers
                                                       gate + detector            pipeline, publisher

* ``detect`` takes the newest frame, asks the motion gate, runs the detector. Its call is watched: the
  supervisor abandons a thread stuck past ``detect_timeout`` and starts a fresh one with a reopened
  detector (``abandon_detector``). Results are handed on just before the next model call, in small
  batches while frames are waiting (``_hand_on``). Given ``Workers`` (copies of the model, the config's
  ``workers``), it keeps ``Workers.depth`` calls in flight in the workers' threads and holds the results in
  the order the frames came; a stuck copy loses its frame and those given to the workers behind it.
* ``events`` turns results into events (``EventPipeline.update``) and hands them to the publisher,
  which returns once they are durable in the spool; then it gives every frame to the observers.
* ``observers`` (the live view, an annotated-MP4 writer) run in their own thread so that a slow one
  never delays detection; for live sources a full observer queue drops (counted), for files it waits.

The loop holds no configuration of its own beyond queue sizes: the service builds the parts.

Length: the three threads, their queues, counters and the detector watchdog share state that is easier
to check for races in one file than spread over several (about 600 lines).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from devices.daemon.workers import Call, Workers
from devices.detector import TimedDetector
from devices.errors import DataError
from devices.sources import Source, SourceEnded
from devices.timing import percentile
from devices.types import Detections, Frame

log = logging.getLogger(__name__)

#: Results waiting for the events thread; small, so a stuck sink shows up as back-pressure at once.
EVENTS_QUEUE = 4
OBSERVER_QUEUE = 8
#: While the next frame is already waiting (the model is the bottleneck: a file at full speed, a camera faster
#: than the model), results are handed to the events thread in batches of up to HAND_ON_BATCH, none held past
#: HAND_ON_WAIT seconds. The events stage then runs a few frames back to back: on vtest.avi at 140 fps its CPU
#: per frame fell from 0.69 to 0.47 ms (thread CPU, the 2-core EPYC; docs/daemon.md). A model slower than
#: HAND_ON_WAIT, or a source slower than the model, hands every result on at once.
HAND_ON_BATCH = 4
HAND_ON_WAIT = 0.025
#: Consecutive detector errors (not bad frames) before the detector is reopened.
MAX_DETECTOR_ERRORS = 5
_RATE_WINDOW = 5.0
_END = object()


class _TooManyErrors(Exception):
    """The detector failed ``MAX_DETECTOR_ERRORS`` calls in a row: the input ends, the daemon exits non-zero."""


class Detector(Protocol):
    """What the loop calls: a BGR frame in, detections out (``devices.runner.BundleDetector``)."""

    def __call__(self, frame: Any) -> Detections: ...

    def close(self) -> None: ...


class Gate(Protocol):
    def check(self, frame: Frame) -> bool: ...


class Pipeline(Protocol):
    def update(self, frame: Frame, detections: Detections | None) -> list[Any]: ...

    def tracks(self) -> list[Any]: ...

    def finish(self, frame_time: float) -> list[Any]: ...


class Publisher(Protocol):
    def submit(self, events: list[Any]) -> list[Any]: ...


#: Given every frame after the events stage: the frame, its detections (None: the gate skipped the
#: detector), and the live tracks.
FrameObserver = Callable[[Frame, "Detections | None", list], None]


class RateMeter:
    """Events per second over the last few seconds."""

    def __init__(self, window: float = _RATE_WINDOW) -> None:
        self.window = window
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(now)
            self._trim(now)

    def rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            if len(self._times) < 2:
                return 0.0
            return (len(self._times) - 1) / max(now - self._times[0], 1e-9)

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window:
            self._times.popleft()


class LatencyWindow:
    """The last ``size`` latencies, for medians and p99 in /api/status and the benchmarks."""

    def __init__(self, size: int = 2000) -> None:
        self._values: collections.deque[float] = collections.deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._values.append(seconds)

    def summary(self) -> dict[str, float | int | None]:
        """``{"n", "p50_ms", "p99_ms", "max_ms"}`` over the window (None when empty)."""
        with self._lock:
            values = np.asarray(self._values, np.float64) * 1000.0
        if values.size == 0:
            return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
        return {"n": int(values.size), "p50_ms": round(percentile(values, 50), 2),
                "p99_ms": round(percentile(values, 99), 2), "max_ms": round(float(values.max()), 2)}


@dataclass
class LoopCounters:
    """What the loop counted (read by /metrics and /api/status; written by the loop's threads)."""

    frames_in: int = 0            # frames taken from the source
    detected: int = 0             # frames the detector ran on
    motion_skipped: int = 0       # frames the motion gate kept from the detector
    bad_frames: int = 0           # frames the detector refused as malformed
    detector_errors: int = 0      # detector calls that raised
    detector_stalls: int = 0      # detector calls abandoned past detect_timeout
    detector_swaps: int = 0       # detectors replaced (reloads and reopens)
    processed: int = 0            # frames through the events stage
    events: collections.Counter = field(default_factory=collections.Counter)  # (label, type) -> count
    observer_errors: int = 0
    observer_dropped: int = 0
    last_detect_mono: float | None = None     # when the detector last answered
    last_processed_mono: float | None = None  # when a frame last left the events stage


class Loop:
    """Runs the threads of one daemon over a source and a detector.

    Args:
        source: An open ``Source``.
        detector: An open detector; the loop closes the detectors it replaces, and the last one at the end.
        gate: The motion gate, or None to run the detector on every frame.
        pipeline: The event pipeline, or None to stop at detections.
        publisher: Where events go, or None.
        observers: Frame observers (more can be added with ``add_observer`` before ``start``).
        lossless_observers: Observers wait for a full queue instead of dropping (files, MP4 writers).
        on_inference: Called with (seconds, frame age in seconds) after each detector call (metrics).
        on_events: Called with (events, the frame they came from) once they are durable (metrics).
        on_detector_change: Called from the events stage when results of another detector (a reload, a
            reopen) start arriving, before the first of them is turned into events.
    """

    def __init__(
        self,
        source: Source,
        detector: Detector,
        gate: Gate | None = None,
        pipeline: Pipeline | None = None,
        publisher: Publisher | None = None,
        observers: Sequence[FrameObserver] = (),
        lossless_observers: bool | None = None,
        on_inference: Callable[[float, float], None] | None = None,
        on_events: Callable[[list[Any], Frame], None] | None = None,
        on_detector_change: Callable[[Detector], None] | None = None,
    ) -> None:
        self.source = source
        self.gate = gate
        self.pipeline = pipeline
        self.publisher = publisher
        self.observers: list[FrameObserver] = list(observers)
        self.lossless_observers = (not source.realtime) if lossless_observers is None else lossless_observers
        self.on_inference = on_inference
        self.on_events = on_events
        self.on_detector_change = on_detector_change
        self._events_detector: Detector = detector  # whose results the events stage handles now
        self.counters = LoopCounters()
        self.detect_rate, self.process_rate = RateMeter(), RateMeter()
        # Capture to the end of the events stage (every frame), and to events being durable (frames with events).
        self.frame_latency, self.event_latency = LatencyWindow(), LatencyWindow()
        self.detect_latency = LatencyWindow(200)  # one detector call: pre-processing, model, decoding
        self.ended: SourceEnded | None = None
        self.failure: str | None = None  # set when the loop cannot go on (the service exits non-zero)
        self.last_frame: Frame | None = None
        self._detector = detector
        self._pending: Detector | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._gen = 0
        self._input_ended = False
        self._busy_since: float | None = None
        self._events_q: queue.Queue = queue.Queue(EVENTS_QUEUE)
        # Results of the detect thread not yet handed on: (frame, detections, detector, when detected).
        self._held: collections.deque[tuple[Frame, Detections | None, Detector, float]] = collections.deque()
        self._last_call = 0.0  # seconds the last detector call took
        self._observer_q: queue.Queue = queue.Queue(OBSERVER_QUEUE)
        self._threads: dict[str, threading.Thread] = {}
        self._last_frame_time = 0.0

    # --- control (from the supervisor) --------------------------------------------------------------------

    def add_observer(self, observer: FrameObserver) -> None:
        self.observers.append(observer)

    def start(self) -> None:
        self._start_detect(self._detector)
        for name, target in (("events", self._events_run), ("observers", self._observers_run)):
            self._threads[name] = threading.Thread(target=target, name=name, daemon=True)
            self._threads[name].start()

    @property
    def done(self) -> bool:
        """The input ended (file end, failure) and every result went through the events stage."""
        return self._done.is_set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def stop(self, timeout: float) -> bool:
        """Stop taking frames, drain what was taken, finish open tracks; True when it all finished in time."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        detect = self._threads.get("detect")
        if detect is not None:
            detect.join(max(0.0, deadline - time.monotonic()))
            if detect.is_alive():
                log.warning("stop: the detector is still busy; its frame is abandoned")
                self._end_input()
        for name in ("events", "observers"):
            thread = self._threads.get(name)
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        finished = self._done.is_set()
        self._close_detectors()
        return finished

    def replace_detector(self, detector: Detector) -> None:
        """Use ``detector`` from the next frame on (the detect thread swaps it in and closes the old one)."""
        with self._lock:
            stale, self._pending = self._pending, detector
        if stale is not None:
            stale.close()

    def detector_busy_for(self) -> float:
        """Seconds the current detector call has been running (0 when idle)."""
        busy = self._busy_since
        return 0.0 if busy is None else time.monotonic() - busy

    def abandon_detector(self, fresh: Detector) -> None:
        """The detector call is stuck: leave its thread behind and go on with ``fresh`` in a new one."""
        with self._lock:
            self.counters.detector_stalls += 1
            self._busy_since = None
        log.error("the detector call has run for over the limit: abandoned (stall #%d); detector reopened",
                  self.counters.detector_stalls)
        self._start_detect(fresh)

    def queue_depths(self) -> dict[str, int]:
        return {"events": self._events_q.qsize(), "observers": self._observer_q.qsize()}

    # --- detect thread ------------------------------------------------------------------------------------

    def _start_detect(self, detector: Detector) -> None:
        with self._lock:
            if self._input_ended:
                detector.close()
                return
            self._gen += 1
            gen = self._gen
            self._detector = detector
            held = self._take_held()  # the results an abandoned thread had not handed on yet
        for item in held:
            self._put_result(*item)
        thread = threading.Thread(target=self._detect_run, args=(gen, detector), name=f"detect-{gen}", daemon=True)
        self._threads["detect"] = thread
        thread.start()

    def _detect_run(self, gen: int, detector: Detector) -> None:
        errors = 0
        # The same detector when it splits its call into stages, else None. 14 us a check (typing's protocol
        # check): once per detector, not per frame.
        timed: TimedDetector | None = detector if isinstance(detector, TimedDetector) else None
        workers: Workers | None = detector if isinstance(detector, Workers) else None
        # Frames given to the workers and not yet collected, oldest first, with their calls (None: the motion
        # gate skipped the frame) and when they were given; always empty for a detector called in this thread.
        flight: collections.deque[tuple[Frame, Future | None, float]] = collections.deque()
        try:
            while not self._stop.is_set() and gen == self._gen:
                # Every worker busy, or a new detector waiting for the calls in flight to end: collect the oldest.
                full = workers is not None and len(flight) >= workers.depth
                if flight and (full or self._pending is not None):
                    errors = self._count_errors(errors, self._collect(gen, detector, flight))
                    continue
                if not flight:  # a new detector only between calls
                    fresh = self._swap_if_pending(gen, detector)
                    if fresh is not detector:
                        detector = fresh
                        timed = fresh if isinstance(fresh, TimedDetector) else None
                        workers = fresh if isinstance(fresh, Workers) else None
                try:
                    frame = self.source.read(timeout=0.0) if self._held or flight else None
                    if frame is None and flight:  # none waiting: collect the oldest call meanwhile
                        errors = self._count_errors(errors, self._collect(gen, detector, flight))
                        continue
                    if frame is None:  # none waiting: what is held goes on now
                        self._hand_on(gen, force=True)
                        frame = self.source.read(timeout=0.2)
                except SourceEnded as end:
                    self.ended = end
                    break
                if frame is None:
                    continue
                with self._lock:
                    self.counters.frames_in += 1
                self.last_frame = frame
                if workers is not None:
                    self._submit(gen, workers, frame, flight)
                    continue
                detections, ok = self._detect(gen, detector, timed, frame)
                if gen != self._gen:
                    break  # abandoned while stuck: its replacement runs in a new thread
                errors = self._count_errors(errors, ok)
                if ok:
                    self._hold(gen, frame, detections, detector)
            while flight and gen == self._gen:  # the input ended or the loop stops: what was given goes on
                self._collect(gen, detector, flight)
        except _TooManyErrors as exc:
            self.failure = str(exc)
        except Exception as exc:
            log.exception("the detect thread failed")
            self.failure = f"the detect thread failed: {exc}"
        if gen == self._gen:
            self._end_input()
        else:
            detector.close()  # abandoned while stuck: its replacement runs in a new thread

    @staticmethod
    def _count_errors(errors: int, ok: bool) -> int:
        """Consecutive failed detector calls; ``_TooManyErrors`` ends the input at ``MAX_DETECTOR_ERRORS``."""
        if ok:
            return 0
        errors += 1
        if errors >= MAX_DETECTOR_ERRORS:
            raise _TooManyErrors(f"the detector failed {errors} times in a row (see the log)")
        return errors

    def _hold(self, gen: int, frame: Frame, detections: Detections | None, detector: Detector) -> None:
        with self._lock:
            if gen == self._gen:
                self._held.append((frame, detections, detector, time.monotonic()))

    def _hand_on(self, gen: int, force: bool) -> None:
        """Hand the held results to the events thread, in order; unless ``force``, only when the batch is full
        or the oldest would wait past ``HAND_ON_WAIT`` through one more detector call.

        Called just before the model runs (after the frame is prepared, for a detector with stages): the
        events stage is Python and needs the GIL, and while the model runs the detect thread has released it.
        Handed on at the end of the call instead, the events stage took the GIL while the next frame was being
        prepared and doubled that step (1 thread, the 2-core EPYC: 0.45 -> 0.9 ms; docs/daemon.md).
        """
        held = self._held
        if not held:
            return
        if not force and len(held) < HAND_ON_BATCH and time.monotonic() - held[0][3] + self._last_call < HAND_ON_WAIT:
            return
        with self._lock:
            if gen != self._gen:
                return
            items = self._take_held()
        for item in items:
            self._put_result(*item)

    def _take_held(self) -> list[tuple[Frame, Detections | None, Detector]]:
        """Empty ``_held`` (the caller holds ``_lock``)."""
        items = [item[:3] for item in self._held]
        self._held.clear()
        return items

    def _swap_if_pending(self, gen: int, detector: Detector) -> Detector:
        with self._lock:
            fresh, self._pending = self._pending, None
            if fresh is None or gen != self._gen:
                return detector
            self._detector = fresh
            self.counters.detector_swaps += 1
        detector.close()
        return fresh

    def _detect(
        self, gen: int, detector: Detector, timed: TimedDetector | None, frame: Frame
    ) -> tuple[Detections | None, bool]:
        """(detections or None when the gate skipped, False when the call failed).

        ``timed`` is ``detector`` itself when it splits its call into stages (held results are then handed on
        after pre-processing, just before the model call), else None.
        """
        if self.gate is not None and not self.gate.check(frame):
            self._hand_on(gen, force=False)
            with self._lock:
                self.counters.motion_skipped += 1
            return None, True
        started = time.monotonic()
        self._busy_since = started
        detections: Detections | None = None
        failure: Exception | None = None
        try:
            if timed is not None:
                tensor, placement = timed.prepare(frame.image)
                self._hand_on(gen, force=False)
                detections = timed.decode(timed.run_model(tensor), placement, frame.image.shape)
            else:
                self._hand_on(gen, force=False)
                detections = detector(frame.image)
        except Exception as exc:
            failure = exc
        if gen != self._gen:
            return None, True  # abandoned while stuck: its frame is counted lost; its answer or error is dropped
        self._busy_since = None
        if failure is not None:
            return None, self._failed(frame, failure)
        self._record_call(frame, started, time.monotonic())
        return detections, True

    def _submit(self, gen: int, workers: Workers, frame: Frame,
                flight: collections.deque[tuple[Frame, Future | None, float]]) -> None:
        """Give ``frame`` to a free worker (or note the motion gate's skip in its place in the order)."""
        if self.gate is not None and not self.gate.check(frame):
            with self._lock:
                self.counters.motion_skipped += 1
            flight.append((frame, None, time.monotonic()))
        else:
            flight.append((frame, workers.submit(frame.image), time.monotonic()))
            self._busy_since = self._oldest_call(flight)
        self._hand_on(gen, force=False)

    def _collect(self, gen: int, workers: Detector,
                 flight: collections.deque[tuple[Frame, Future | None, float]]) -> bool:
        """Wait for the oldest frame given to the workers and hold its result; False when its call failed."""
        frame, call, _ = flight[0]
        answer: Call | None = None
        failure: Exception | None = None
        if call is not None:
            try:
                answer = call.result()
            except Exception as exc:
                failure = exc
        if gen != self._gen:
            return True  # abandoned while stuck: the answers and errors of this thread's calls are not counted
        flight.popleft()
        self._busy_since = self._oldest_call(flight)
        detections, ok = None, True
        if failure is not None:
            ok = self._failed(frame, failure)
        elif answer is not None:
            detections, started, done = answer
            self._record_call(frame, started, done)
        if ok:
            self._hold(gen, frame, detections, workers)
        return ok

    @staticmethod
    def _oldest_call(flight: collections.deque[tuple[Frame, Future | None, float]]) -> float | None:
        """When the oldest call in flight was given (None: none), for the watchdog (``detector_busy_for``)."""
        return next((given for _, call, given in flight if call is not None), None)

    def _failed(self, frame: Frame, exc: Exception) -> bool:
        """Count a failed detector call: True for a bad frame (skipped), False for a detector error."""
        if isinstance(exc, DataError):
            with self._lock:
                self.counters.bad_frames += 1
            log.warning("frame %d skipped by the detector: %s", frame.index, exc.problem)
            return True
        with self._lock:
            self.counters.detector_errors += 1
        log.error("detector call failed on frame %d", frame.index, exc_info=exc)
        return False

    def _record_call(self, frame: Frame, started: float, done: float) -> None:
        self._last_call = done - started
        with self._lock:
            self.counters.detected += 1
            self.counters.last_detect_mono = done
        self.detect_rate.tick(done)
        self.detect_latency.add(done - started)
        if self.on_inference is not None:
            self.on_inference(done - started, started - frame.mono)

    def _put_result(self, frame: Frame, detections: Detections | None, detector: Detector) -> None:
        item = (frame, detections, detector)
        while not self._stop.is_set():
            try:
                self._events_q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        # Stopping: the frame still goes through if there is room (it was captured and detected).
        try:
            self._events_q.put_nowait(item)
        except queue.Full:
            pass

    def _end_input(self) -> None:
        with self._lock:
            if self._input_ended:
                return
            self._input_ended = True
            self._gen += 1  # a detect thread still running (stuck in the detector) is now abandoned
            held = self._take_held()
        for item in held:
            self._put_result(*item)
        try:
            self._events_q.put(_END, timeout=1.0)
        except queue.Full:
            log.error("the events stage is not draining; results still queued are lost")

    # --- events thread ------------------------------------------------------------------------------------

    def _events_run(self) -> None:
        try:
            while True:
                item = self._events_q.get()
                if item is _END:
                    break
                frame, detections, detector = item
                if detector is not self._events_detector:
                    self._events_detector = detector
                    if self.on_detector_change is not None:
                        self.on_detector_change(detector)
                self._process(frame, detections)
            self._finish_tracks()
        except Exception as exc:
            log.exception("the events stage failed")
            self.failure = f"the events stage failed: {exc}"
        finally:
            self._observer_q.put(_END)

    def _process(self, frame: Frame, detections: Detections | None) -> None:
        events = self.pipeline.update(frame, detections) if self.pipeline is not None else []
        if events:
            self._publish(events, frame)
        self._last_frame_time = frame.time
        now = time.monotonic()
        self.frame_latency.add(now - frame.mono)
        with self._lock:
            self.counters.processed += 1
            self.counters.last_processed_mono = now
        self.process_rate.tick(now)
        if self.observers:
            tracks = self.pipeline.tracks() if self.pipeline is not None else []
            self._to_observers((frame, detections, tracks))

    def _publish(self, events: list[Any], frame: Frame) -> None:
        if self.publisher is not None:
            events = self.publisher.submit(events)
        self.event_latency.add(time.monotonic() - frame.mono)
        with self._lock:
            for event in events:
                self.counters.events[(event.label, event.type)] += 1
        if self.on_events is not None:
            self.on_events(events, frame)

    def _finish_tracks(self) -> None:
        if self.pipeline is None:
            return
        events = self.pipeline.finish(self._last_frame_time or time.time())
        if events and self.last_frame is not None:
            self._publish(events, self.last_frame)

    # --- observers thread ---------------------------------------------------------------------------------

    def _to_observers(self, item: tuple) -> None:
        if self.lossless_observers:
            self._observer_q.put(item)
            return
        try:
            self._observer_q.put_nowait(item)
        except queue.Full:
            with self._lock:
                self.counters.observer_dropped += 1

    def _observers_run(self) -> None:
        while True:
            item = self._observer_q.get()
            if item is _END:
                break
            for observer in self.observers:
                try:
                    observer(*item)
                except Exception:
                    with self._lock:
                        self.counters.observer_errors += 1
                        first = self.counters.observer_errors <= 3
                    if first:
                        log.exception("frame observer %r failed", observer)
        self._done.set()

    def _close_detectors(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        for detector in (pending, self._detector):
            if detector is not None and self.detector_busy_for() == 0.0:
                try:
                    detector.close()
                except Exception:
                    log.exception("closing the detector failed")
