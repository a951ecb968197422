"""Copies of one detector run side by side on successive frames: the config's ``workers``.

A model given 2 threads on 2 cores does not keep both busy: its threads wait for each other at every layer.
Two copies with 1 thread each, each on its own frame, did more frames a second on the same cores (vtest.avi,
the INT8 YOLOX-Nano bundle, 2-vCPU AMD EPYC: 256 against 223 FPS, docs/daemon.md). A frame still waits for
one whole call, so its latency is that of one copy at its thread count; the cost is one model's memory per
copy. The loop (``devices.daemon.loop``) keeps up to ``size`` calls in flight and hands the results on in
the order the frames came.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from devices.detector import Detector
from devices.types import Detections

#: What a call given to the workers returns: the detections, and when the call started and ended (monotonic).
Call = tuple[Detections, float, float]


class Workers:
    """``size`` open detectors of one bundle, each call run in a thread of the pool.

    Args:
        detectors: Open detectors of the same bundle; ``Workers`` closes them.

    ``__call__`` runs one call in the caller's thread (the daemon's test inference before a reload); the loop
    uses ``submit``.
    """

    def __init__(self, detectors: Sequence[Detector]) -> None:
        if not detectors:
            raise ValueError("Workers needs at least one detector")
        self.detectors = tuple(detectors)
        self.size = len(self.detectors)
        #: Calls the loop keeps in flight: one per copy, and one waiting so that a copy that finishes starts on
        #: the next frame at once instead of waiting for the loop's thread to give it one.
        self.depth = self.size + 1
        self.labels = self.detectors[0].labels
        # The bundle, for ``BundleInfo.of`` (a BundleDetector's; absent on detectors that run no bundle).
        self.bundle: Any = getattr(self.detectors[0], "bundle", None)
        self._free: queue.SimpleQueue[Detector] = queue.SimpleQueue()
        for detector in self.detectors:
            self._free.put(detector)
        self._pool = ThreadPoolExecutor(self.size, thread_name_prefix="detect-worker")

    def __call__(self, frame: np.ndarray) -> Detections:
        return self._call(frame)[0]

    def submit(self, frame: np.ndarray) -> Future[Call]:
        """Run ``frame`` on the first copy free, in a pool thread."""
        return self._pool.submit(self._call, frame)

    def _call(self, frame: np.ndarray) -> Call:
        detector = self._free.get()
        try:
            started = time.monotonic()
            detections = detector(frame)
            return detections, started, time.monotonic()
        finally:
            self._free.put(detector)

    def close(self) -> None:
        """Wait for the calls in flight, then close every copy."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        for detector in self.detectors:
            detector.close()
