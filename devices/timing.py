"""Latency of one frame through a detector, split into the model call and the whole frame."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from devices.detector import TimedDetector


def time_frame(detector: TimedDetector, frame: np.ndarray) -> tuple[float, float]:
    """(model call ms, whole frame ms) of one frame through a detector's three stages."""
    t0 = time.perf_counter()
    tensor, placement = detector.prepare(frame)
    t1 = time.perf_counter()
    outputs = detector.run_model(tensor)
    t2 = time.perf_counter()
    detector.decode(outputs, placement, frame.shape)
    t3 = time.perf_counter()
    return (t2 - t1) * 1000.0, (t3 - t0) * 1000.0


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The q-th percentile (linear interpolation)."""
    return float(np.percentile(np.asarray(values, np.float64), q))
