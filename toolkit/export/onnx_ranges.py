"""Activation ranges for INT8 from real calibration images: a histogram per tensor, and the range that
minimises its expected quantization error (``mse``), keeps its central 99.99 % (``percentile``) or its
extremes (``minmax``). Min-max ranges left YOLOX-Nano's AP near 0; see docs/int8.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import numpy as np

from calibration.noise import ChannelMoments
from devices.errors import require

#: Histogram bins per tensor for range calibration.
HISTOGRAM_BINS = 2048


#: At most about 2^17 values per tensor and image enter the histogram.
HISTOGRAM_SAMPLE_BITS = 17


Method = Literal["mse", "percentile", "minmax"]


METHODS: tuple[str, ...] = ("mse", "percentile", "minmax")


#: Two-sided percentile kept by ``method="percentile"``.
PERCENTILE = 99.99


def activation_ranges(
    proto: Any,
    tensors: Callable[[], Iterable[np.ndarray]],
    method: Method = "mse",
    channel_moments: dict[str, ChannelMoments] | None = None,
) -> dict[str, tuple[float, float]]:
    """Range (always containing 0) of every float tensor of the graph, from calibration inputs.

    Two passes over the inputs: extremes, then a histogram over them. The histogram is what the
    range rule reads.

    Args:
        proto: The fp32 ``onnx.ModelProto``.
        tensors: Returns a fresh iterable of model inputs (batch of one) on each call; it is read twice
            rather than holding a few hundred input tensors in memory.
        method: ``mse``, ``percentile`` or ``minmax``.
        channel_moments: Filled during the first pass with the per-channel moments of every 4-D
            (NCHW) tensor, for ``noise_to_signal``.

    Returns:
        Tensor name -> (low, high).
    """
    session = _probe_session(proto)
    extremes: dict[str, list[float]] = {}
    for values in _probe(session, tensors()):
        for name, v in values.items():
            lo_hi = extremes.setdefault(name, [np.inf, -np.inf])
            lo_hi[0], lo_hi[1] = min(lo_hi[0], float(v.min())), max(lo_hi[1], float(v.max()))
            if channel_moments is not None and v.ndim == 4:
                channel_moments.setdefault(name, ChannelMoments(channel_axis=1)).add(v)
    if method == "minmax":
        return {k: (min(lo, 0.0), max(hi, 0.0)) for k, (lo, hi) in extremes.items()}

    hists = {k: np.zeros(HISTOGRAM_BINS, np.int64) for k in extremes}
    for values in _probe(session, tensors()):
        for name, v in values.items():
            hists[name] += _histogram(v, *extremes[name])
    rule = _mse_range if method == "mse" else _percentile_range
    return {k: rule(hists[k], *extremes[k]) for k in extremes}


def _probe_session(proto: Any) -> Any:
    """A session that outputs every intermediate tensor (non-float ones are dropped when read)."""
    onnx = require("onnx", "export", "INT8 calibration")
    ort = require("onnxruntime", "export", "INT8 calibration")
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    declared = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in declared:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    # Unoptimised, so that every tensor the quantizer will see exists under its own name.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _probe(session: Any, inputs: Iterable[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    for x in inputs:
        values = dict(zip(names, session.run(names, {input_name: x}), strict=True))
        values[input_name] = x
        yield {k: v for k, v in values.items() if v.dtype == np.float32 and v.size}


def _histogram(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Counts over ``HISTOGRAM_BINS`` equal bins of [lo, hi] (bincount: several times np.histogram's speed)."""
    scale = HISTOGRAM_BINS / (hi - lo) if hi > lo else 0.0
    # A regular subsample of the largest maps: 2^17 values per image and tensor still puts millions in
    # each histogram over a few hundred images, and the exact extremes come from the first pass.
    flat = values.ravel()
    flat = flat[:: max(1, flat.size >> HISTOGRAM_SAMPLE_BITS)]
    idx = ((flat - np.float32(lo)) * np.float32(scale)).astype(np.int64)
    np.clip(idx, 0, HISTOGRAM_BINS - 1, out=idx)
    return np.bincount(idx, minlength=HISTOGRAM_BINS)


def _mse_range(hist: np.ndarray, lo: float, hi: float, levels: int = 255, candidates: int = 48) -> tuple[float, float]:
    """The [a, b] (a <= 0 <= b) minimising expected squared error of 8-bit quantization over ``hist``.

    Error = clipping error of values outside [a, b] + rounding error step^2 / 12 of values inside;
    candidates are quantiles of each tail, from the extreme down to 5 % clipped.
    """
    edges = np.linspace(lo, hi, hist.size + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    h = hist.astype(np.float64)
    total = h.sum()
    if total == 0 or hi <= lo:
        return min(lo, 0.0), max(hi, 0.0)
    cdf = np.cumsum(h) / total
    tails = np.concatenate([[0.0], np.geomspace(1e-7, 0.05, candidates - 1)])
    lows = np.unique(np.minimum(np.append(np.interp(tails, cdf, centres), lo), 0.0))
    highs = np.unique(np.maximum(np.append(np.interp(1 - tails, cdf, centres), hi), 0.0))

    # Prefix sums give each candidate's clipped mass and moments in O(1).
    n, s1, s2 = np.cumsum(h), np.cumsum(h * centres), np.cumsum(h * centres**2)
    below = np.searchsorted(centres, lows, side="left")  # bins strictly below a
    above = np.searchsorted(centres, highs, side="right")  # bins up to and including b

    def upto(arr: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return np.where(idx > 0, arr[np.maximum(idx - 1, 0)], 0.0)

    n_lo, s1_lo, s2_lo = upto(n, below), upto(s1, below), upto(s2, below)
    n_hi, s1_hi, s2_hi = upto(n, above), upto(s1, above), upto(s2, above)
    clip_lo = s2_lo - 2 * lows * s1_lo + lows**2 * n_lo  # sum h (c - a)^2 over c < a
    clip_hi = (s2[-1] - s2_hi) - 2 * highs * (s1[-1] - s1_hi) + highs**2 * (n[-1] - n_hi)
    inside = n_hi[None, :] - n_lo[:, None]
    step = (highs[None, :] - lows[:, None]) / levels
    err = clip_lo[:, None] + clip_hi[None, :] + inside * step**2 / 12
    err[step <= 0] = np.inf
    i, j = np.unravel_index(np.argmin(err), err.shape)
    return float(lows[i]), float(highs[j])


def _percentile_range(hist: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    edges = np.linspace(lo, hi, hist.size + 1)
    cdf = np.cumsum(hist) / max(hist.sum(), 1)
    cut = (100.0 - PERCENTILE) / 200.0
    a = edges[np.searchsorted(cdf, cut)]
    b = edges[min(int(np.searchsorted(cdf, 1.0 - cut)) + 1, hist.size)]
    return min(float(a), 0.0), max(float(b), 0.0)
