"""Quantize an fp32 ONNX file to INT8 QDQ for ONNX Runtime, with ranges from real calibration photos.

What the defaults follow from (each measured; the figures and the machine are in docs/int8.md):

- Activations ``QUInt8``, weights ``QInt8`` (U8S8). ORT on x86 fuses QDQ into QLinearConv /
  QLinearSigmoid / QLinearMul only for U8S8 (``session.qdqisint8allowed`` is ARM-only): with S8S8
  activations every Conv ran as DequantizeLinear -> fp32 Conv -> QuantizeLinear, much slower than fp32.
- Per-channel weights (opset >= 13; older graphs are converted). The loss is in the 8-bit per-tensor
  activations, not the weights: batch-norm-folded depthwise networks have channels 100x smaller than
  their neighbours'.
- Ranges from our own histogram calibration minimising each tensor's expected quantization error
  (``toolkit.export.onnx_ranges``, ``method="mse"``): min-max ranges left AP near 0, ORT's Percentile
  calibrator lost a third to a half of it.
- The decode tail (every node with no Conv downstream) stays fp32, so that scores in [0, 1] are not
  requantized with the scale of the box offsets they are concatenated with.
- **Noisy activations stay float** (``noise_to_signal``): each tensor whose 8-bit rounding noise exceeds
  1/1000 of its channels' variance (mean over channels) keeps its producing and reading nodes in fp32.
  Ranking tensors by this ratio beat ranking them by single-tensor sensitivity and by counting channels
  under 16 levels; 16-bit activations for the same tensors are as accurate but slower, and TensorRT reads
  only 8-bit QDQ.
- 8-bit weights (``reduce_range`` off). ORT's U8S8 kernels on x86 without VNNI add pairs of u8 x s8
  products in int16 (``vpmaddubsw``) and can saturate; ARM and TensorRT never do. The export tries 8-bit
  weights first and 7-bit ones only when that file fails the accuracy gate.

INT8 pays on CPUs with int8 dot products (VNNI, ARM dotprod) and on TensorRT; on x86 without them it runs
at about the speed of fp32.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibration.noise import MAX_NOISE_TO_SIGNAL, ChannelMoments
from calibration.reader import ImageLoader, iter_tensors
from calibration.report import calibration_report
from calibration.select import CalibrationSet
from devices.errors import CalibrationError, ConfigError, EdgesightError, ModelFileError, require
from devices.types import InputSpec
from models.base import TARGET_CLASSES
from toolkit.data import images
from toolkit.export.onnx import (
    MIN_PER_CHANNEL_OPSET,
    cpu_session,
    load_onnx,
    opset_of,
    run_session,
    sha256_of,
    with_opset,
)
from toolkit.export.onnx_ranges import METHODS, Method, activation_ranges

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantizeResult:
    """An INT8 ONNX file and every choice that produced it (recorded in the bundle manifest).

    Attributes:
        path: The quantized model.
        sha256: Hash of ``path``.
        source_sha256: Hash of the fp32 model it was quantized from.
        opset: Opset of the quantized model.
        quant_format: ``QDQ``.
        activation_type: ORT quant type of activations (``QUInt8``).
        weight_type: ORT quant type of weights (``QInt8``).
        per_channel: Whether weights have one scale per output channel.
        reduce_range: Whether weights use 7 bits.
        method: How activation ranges were chosen.
        excluded_nodes: Nodes left in fp32.
        calibration: The calibration report (count per class, set hash, method, converter version).
    """

    path: Path
    sha256: str
    source_sha256: str
    opset: int
    quant_format: str
    activation_type: str
    weight_type: str
    per_channel: bool
    reduce_range: bool
    method: str
    excluded_nodes: tuple[str, ...]
    float_activations: tuple[str, ...] = ()
    calibration: Mapping[str, Any] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        """JSON-ready record for the bundle manifest."""
        return {
            "file": self.path.name,
            "sha256": self.sha256,
            "source_sha256": self.source_sha256,
            "opset": self.opset,
            "format": self.quant_format,
            "activation_type": self.activation_type,
            "weight_type": self.weight_type,
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "method": self.method,
            "excluded_nodes": list(self.excluded_nodes),
            "float_activations": list(self.float_activations),
            "calibration": dict(self.calibration),
        }


def quantize_onnx_int8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration_set: CalibrationSet,
    input_spec: InputSpec,
    *,
    method: Method = "mse",
    per_channel: bool = True,
    reduce_range: bool = False,
    keep_tail_fp32: bool = True,
    max_noise_to_signal: float | None = MAX_NOISE_TO_SIGNAL,
    nodes_to_exclude: Sequence[str] = (),
    load_image: ImageLoader = images.load_image,
    class_names: Sequence[str] = TARGET_CLASSES,
) -> QuantizeResult:
    """Quantize an fp32 ONNX model to INT8 QDQ (U8S8) with ranges from real calibration images.

    Args:
        fp32_path: The fp32 model (``export_onnx_fp32``); opsets older than 13 are converted.
        out_path: Where to write the INT8 model.
        calibration_set: The images (``calibration.select_calibration``), fed through ``input_spec``.
        input_spec: The model's preprocessing, exactly as at inference.
        method: Activation range rule: ``mse`` (minimise expected quantization error, the default),
            ``percentile`` (keep the central 99.99 %) or ``minmax``.
        per_channel: One weight scale per output channel.
        reduce_range: 7-bit weights, for ORT's U8S8 kernels on x86 CPUs without VNNI, whose int16 pair
            sums can saturate with 8-bit weights (see the module notes for when that matters).
        keep_tail_fp32: Leave nodes with no Conv downstream (the decode tail) in fp32.
        max_noise_to_signal: Activations whose 8-bit rounding noise exceeds this share of their
            channels' variance (``noise_to_signal``) stay float, with the nodes that produce and read
            them. ``None`` quantizes every activation.
        nodes_to_exclude: More node names to leave in fp32.
        load_image: Decodes a calibration image as BGR uint8 (the training decoder by default).
        class_names: Names of the class indices, for the calibration report.

    Returns:
        The quantized file and the recipe.

    Raises:
        ConfigError: Unknown method.
        CalibrationError: The calibration set is empty.
        ModelFileError: The fp32 file cannot be read, or the quantized file does not run.
    """
    onnx = require("onnx", "export", "INT8 quantization")
    quantization = require("onnxruntime.quantization", "export", "INT8 quantization")
    if method not in METHODS:
        raise ConfigError(f"unknown calibration method '{method}'", f"use one of {list(METHODS)}")
    if len(calibration_set) == 0:
        raise CalibrationError("the calibration set is empty", "select images with calibration.select_calibration")
    _require_calibration_cache(quantization)
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    proto = load_onnx(fp32_path)

    with tempfile.TemporaryDirectory(prefix="edgesight-quant-") as tmp:
        # Per-channel QDQ needs opset 13; convert older graphs and check the conversion changed nothing.
        source = with_opset(proto, MIN_PER_CHANNEL_OPSET, input_spec) if per_channel else proto
        source_path = Path(tmp) / "fp32.onnx"
        onnx.save(source, str(source_path))

        # Activation ranges from the calibration images, handed to ORT as a MinMax calibration cache.
        moments: dict[str, ChannelMoments] | None = {} if max_noise_to_signal is not None else None
        tensors = functools.partial(iter_tensors, calibration_set, input_spec, load_image)
        ranges = activation_ranges(source, tensors, method, moments)
        cache = Path(tmp) / "ranges.json"
        _write_cache(quantization, ranges, cache)

        noisy: list[str] = []
        if moments is not None and max_noise_to_signal is not None:
            ratios = noise_to_signal(moments, ranges)
            noisy = sorted(name for name, r in ratios.items() if r > max_noise_to_signal)
        excluded = tuple(
            dict.fromkeys(
                [*(decode_tail(source) if keep_tail_fp32 else []), *nodes_touching(source, noisy), *nodes_to_exclude]
            )
        )
        out_path.parent.mkdir(parents=True, exist_ok=True)
        quantization.quantize_static(
            str(source_path),
            str(out_path),
            calibration_data_reader=None,
            calibration_cache_path=str(cache),
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax,
            nodes_to_exclude=list(excluded),
        )

    # The quantized file must load and run before anyone bundles it.
    first = next(iter_tensors(calibration_set, input_spec, load_image))
    try:
        run_session(cpu_session(str(out_path)), first)
    except Exception as exc:
        raise ModelFileError(f"the quantized model {out_path} does not run: {exc}", "report this as a bug") from exc
    result = QuantizeResult(
        path=out_path,
        sha256=sha256_of(out_path),
        source_sha256=sha256_of(fp32_path),
        opset=opset_of(onnx.load(str(out_path))),
        quant_format="QDQ",
        activation_type="QUInt8",
        weight_type="QInt8",
        per_channel=per_channel,
        reduce_range=reduce_range,
        method=method,
        excluded_nodes=excluded,
        float_activations=tuple(noisy),
        calibration=calibration_report(calibration_set, method, "onnxruntime", class_names),
    )
    log.info(
        "quantized %s -> %s (%s, %d noisy activations and %d nodes kept fp32)",
        fp32_path,
        out_path,
        method,
        len(noisy),
        len(excluded),
    )
    return result


def decode_tail(proto: Any) -> list[str]:
    """Names of the nodes from which no Conv is reachable: the output's activations and reshaping."""
    consumers: dict[str, list[Any]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    feeds_conv: dict[int, bool] = {}
    # Graph nodes are topologically sorted: walk backwards so that every consumer is decided first.
    for node in reversed(proto.graph.node):
        below = [c for out in node.output for c in consumers.get(out, [])]
        feeds_conv[id(node)] = any(c.op_type == "Conv" or feeds_conv.get(id(c), False) for c in below)
    return [n.name for n in proto.graph.node if n.op_type != "Conv" and not feeds_conv[id(n)]]


def nodes_touching(proto: Any, tensors: Iterable[str]) -> list[str]:
    """Names of the nodes that produce or read any of ``tensors``: what must stay float to keep them float."""
    wanted = set(tensors)
    return [n.name for n in proto.graph.node if wanted & {*n.input, *n.output}]


def noise_to_signal(
    channel_moments: Mapping[str, ChannelMoments], ranges: Mapping[str, tuple[float, float]]
) -> dict[str, float]:
    """``calibration.noise`` ratio of every tensor with channel moments and an 8-bit range.

    Args:
        channel_moments: From ``activation_ranges(..., channel_moments=...)``.
        ranges: The 8-bit ranges (``activation_ranges``).

    Returns:
        Tensor name -> mean over channels of rounding-noise power / channel variance.
    """
    return {name: m.noise_to_signal(*ranges[name]) for name, m in channel_moments.items() if name in ranges}


def _write_cache(quantization: Any, ranges: Mapping[str, tuple[float, float]], path: Path) -> None:
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    data = {k: (np.float32(lo), np.float32(hi)) for k, (lo, hi) in ranges.items()}
    save_tensors_data(TensorsData(quantization.CalibrationMethod.MinMax, data), path)


def _require_calibration_cache(quantization: Any) -> None:
    if "calibration_cache_path" not in inspect.signature(quantization.quantize_static).parameters:
        raise EdgesightError(
            "this onnxruntime's quantize_static cannot take precomputed ranges (no calibration_cache_path)",
            "pip install -U onnxruntime (1.32 or newer)",
        )
