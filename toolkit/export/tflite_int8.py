"""Full-integer INT8 TFLite: quantize litert-torch's float32 file with ai-edge-quantizer.

Both files take an NHWC input (the layout TFLite kernels run in: no TRANSPOSE in front of the first
convolution). The INT8 file quantizes litert-torch's float32 file with ai-edge-quantizer's static
recipe (int8 per-channel weights, int8 activations, int8 input); its output stays float32.

Why not litert-torch's own PT2E path (``quant_config=QuantConfig(pt2e_quantizer=...)``), measured on
YOLOX-Nano with litert-torch 0.10 / torch 2.14 (see the export report for the numbers):

- the stock ``PT2EQuantizer`` finds ``cat``/``add``/``mul``/pooling only through ``source_fn_stack``
  metadata, which non-strict ``torch.export`` in torch 2.14 no longer records, and has no SiLU
  pattern: every activation ran as DEQUANTIZE -> float LOGISTIC -> MUL -> QUANTIZE, slower than fp32;
- with those ops annotated, the converter still quantizes every unannotated op up to the output with
  the scale of the concat before it (int8 I/O is forced), giving a LOGISTIC whose output scale is not
  the 1/256 TFLite requires, and one int8 scale for box terms and scores;
- each PT2E conversion of YOLOX-Nano takes ~5 minutes on two cores, ai-edge-quantizer ~15 seconds.

ai-edge-quantizer works on the TFLite graph itself, so the output assembly can stay float exactly.

Activations that 8-bit rounding would drown (``calibration.noise``: noise above 1/1000 of their
channels' variance) stay float: the ops that produce and read them compute in float, convolutions
among them with int8 weights dequantized once at load. Without this YOLOX-Nano lost 8 AP points.

The quantized file is then compacted (``compact_tflite``): without it, tensor names and per-channel
zero points made FastestDet's INT8 file 50 % of its float32 file instead of 27 %.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from calibration.noise import MAX_NOISE_TO_SIGNAL, ChannelMoments
from devices.errors import CalibrationError, ModelFileError
from toolkit.export.tflite import export_tflite_fp32, input_hw, prepare_path, require_quantizer
from toolkit.export.tflite_compact import compact_tflite

log = logging.getLogger(__name__)

#: At least this many calibration images before the ranges are trusted (a warning below it).
MIN_CALIBRATION_IMAGES = 16

# Ops that only assemble the output after the last convolutions; kept float in the INT8 file.
_TAIL_OPS = frozenset(
    {"CONCATENATION", "RESHAPE", "TRANSPOSE", "SLICE", "STRIDED_SLICE", "LOGISTIC", "SOFTMAX", "SPLIT", "SPLIT_V"}
)

_CONV_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D"})

#: The quantization recipe, as recorded in the bundle manifest.
INT8_RECIPE: dict[str, str] = {
    "converter": "litert-torch float32 (NHWC input) -> ai-edge-quantizer static_wi8_ai8",
    "weights": "int8 symmetric, per output channel",
    "activations": "int8 asymmetric per tensor, min/max (moving average over calibration images); "
    "sigmoid outputs at the fixed 1/256 scale",
    "input": "int8 NHWC, range fixed from the InputSpec's pixel range",
    "output": "float32; output assembly (concat/reshape/transpose/slice/sigmoid/softmax) kept float",
    "noisy activations": "float where 8-bit rounding noise exceeds 1/1000 of the channels' variance: the ops "
    "producing and reading them compute in float (convolutions keep int8 weights, dequantized at load)",
    "file": "compacted: tensor names dropped except input/output, identical quantization vectors stored once",
}


@dataclass(frozen=True)
class TfliteInt8Result:
    """What the INT8 export wrote, read back from the file itself.

    Attributes:
        path: The written ``.tflite`` file.
        input_dtype: Element type the device feeds (``int8``).
        input_scale: real = (q - input_zero_point) * input_scale, for the input tensor.
        input_zero_point: See ``input_scale``.
        input_shape: NHWC shape of the input, batch of one.
        output_dtype: Element type of the output (``float32``).
        num_calibration: Number of calibration tensors used.
        size_bytes: File size.
        op_counts: Operator name -> count in the file.
        float_ops: Operator name -> count of ops that still compute in float: the output assembly,
            the ops around noisy activations, and whatever ``keep_float`` named.
        recipe: How the file was quantized, for the bundle manifest.
        float_activations: Activations kept float for their noise-to-signal ratio (``calibration.noise``).
    """

    path: Path
    input_dtype: Literal["int8"]
    input_scale: float
    input_zero_point: int
    input_shape: tuple[int, ...]
    output_dtype: str
    num_calibration: int
    size_bytes: int
    op_counts: dict[str, int] = field(default_factory=dict)
    float_ops: dict[str, int] = field(default_factory=dict)
    recipe: dict[str, str] = field(default_factory=dict)
    float_activations: tuple[str, ...] = ()


def export_tflite_int8(
    model: Any,
    path: str | Path,
    calibration_tensors: Iterable[Any],
    *,
    float_model: str | Path | None = None,
    keep_float: str | None = None,
    input_size: tuple[int, int] | None = None,
    input_range: tuple[float, float] | None = None,
    max_noise_to_signal: float | None = MAX_NOISE_TO_SIGNAL,
) -> TfliteInt8Result:
    """Quantize a PyTorch model to a full-integer INT8 TFLite file with an NHWC int8 input.

    The float32 TFLite file (litert-torch, NHWC input) is quantized with ai-edge-quantizer's static
    recipe: int8 symmetric per-output-channel weights, int8 per-tensor activations calibrated on the
    given tensors, sigmoid outputs at TFLite's fixed 1/256 scale. The input's quantization is fixed
    from the pixel range, so camera pixels map exactly (YOLOX: int8 = pixel - 128, scale 1). The
    output assembly after the last convolutions (concat, reshape, transpose, slice, sigmoid, softmax)
    stays float: one int8 scale for box terms and scores would leave scores in coarse steps. The file
    is written compacted (``compact_tflite``: no inner tensor names, shared zero points).

    Args:
        model: ``nn.Module`` taking float (1, 3, H, W); evaluated in eval mode (its mode is restored).
        path: Destination ``.tflite`` file (parent folders are created).
        calibration_tensors: Float input tensors exactly as the model takes them after
            ``devices.processing.preprocess`` (NCHW (1, 3, H, W); NHWC (1, H, W, 3) is accepted too),
            e.g. ``calibration.reader.iter_tensors(calibration_set, model.spec.input, load_image)``.
        float_model: An existing float32 export of this very model (``export_tflite_fp32``), to skip
            converting it again.
        keep_float: Regex over TFLite op scopes (output tensor names, which carry the PyTorch module
            path, e.g. ``"Focus_stem"``) whose ops stay float: for layers too sensitive for int8.
        input_size: (height, width); defaults to ``model.spec.input``.
        input_range: Real (min, max) of the input; defaults to the range of ``model.spec.input``
            applied to pixels 0..255, else to the calibration tensors' range.
        max_noise_to_signal: Activations whose 8-bit rounding noise exceeds this share of their
            channels' variance (``calibration.noise``) stay float, with the ops that produce and read
            them. ``None`` quantizes every activation.

    Returns:
        The file's path and its input quantization, read back from the written file.

    Raises:
        MissingDependencyError: litert-torch or ai-edge-quantizer is not installed (extra ``export``).
        CalibrationError: No calibration tensor, or one of the wrong shape.
        ConfigError: Unknown input size.
        ModelFileError: The quantized file does not have the expected integer input.
    """
    height, width = input_hw(model, input_size)
    aeq = require_quantizer()
    path = prepare_path(path)
    samples = _calibration_nhwc(calibration_tensors, height, width)
    lo, hi = (
        input_range
        or _spec_input_range(model)
        or (float(min(s.min() for s in samples)), float(max(s.max() for s in samples)))
    )
    if float_model is None:
        float_model = export_tflite_fp32(model, path.with_name(path.stem + ".fp32.tmp.tflite"), (height, width))
        converted = True
    else:
        float_model, converted = Path(float_model), False
    try:
        quantized, noisy = _quantize_static(
            aeq, Path(float_model), samples, (min(lo, 0.0), max(hi, 0.0)), keep_float, max_noise_to_signal
        )
    finally:
        if converted:
            Path(float_model).unlink(missing_ok=True)
    path.write_bytes(compact_tflite(quantized))
    return _read_back(path, len(samples), keep_float, noisy)


def _quantize_static(
    aeq: Any,
    float_model: Path,
    samples: list[np.ndarray],
    input_range: tuple[float, float],
    keep_float: str | None,
    max_noise_to_signal: float | None,
) -> tuple[bytes, list[str]]:
    """The quantized model, and the activations kept float for their noise-to-signal ratio."""
    from ai_edge_litert.interpreter import Interpreter

    quantizer = aeq.quantizer.Quantizer(str(float_model))
    quantizer.load_quantization_recipe(aeq.recipe.static_wi8_ai8())
    # Later recipe entries win: the output assembly, and what the caller names, stay float.
    for scope in _output_tail_scopes(float_model):
        quantizer.update_quantization_recipe(
            regex=f"^{re.escape(scope)}$", operation_name="*", algorithm_key="no_quantize"
        )
    if keep_float:
        quantizer.update_quantization_recipe(regex=keep_float, operation_name="*", algorithm_key="no_quantize")

    interpreter = Interpreter(model_path=str(float_model))
    key = next(iter(interpreter.get_signature_list()))
    input_name = interpreter.get_signature_list()[key]["inputs"][0]
    input_tensor = interpreter.get_input_details()[0]["name"]
    qsvs = quantizer.calibrate({key: [{input_name: s} for s in samples]}, num_threads=1)
    # The input's range is known exactly (pixels 0..255 through the InputSpec); the calibrated one is a
    # moving average of per-image extremes that clips the brightest pixels.
    for name, qsv in qsvs.items():
        if name == input_tensor:
            qsvs[name] = {
                "min": np.full_like(np.asarray(qsv["min"]), input_range[0]),
                "max": np.full_like(np.asarray(qsv["max"]), input_range[1]),
            }
    noisy: list[str] = []
    if max_noise_to_signal is not None:
        ratios = _noise_to_signal(float_model, samples)
        noisy = sorted(name for name, r in ratios.items() if r > max_noise_to_signal)
        log.info("noise-to-signal: %d of %d activations above %g", len(noisy), len(ratios), max_noise_to_signal)
        # Convolutions next to a noisy activation compute in float but keep int8 weights (dequantized
        # once when the model loads), so that the file stays small; the other ops stay float.
        weight_only = aeq.qtyping.OpQuantizationConfig(
            weight_tensor_config=aeq.qtyping.TensorQuantizationConfig(
                num_bits=8, symmetric=True, granularity=aeq.qtyping.QuantGranularity.CHANNELWISE
            ),
            compute_precision=aeq.qtyping.ComputePrecision.FLOAT,
            explicit_dequantize=True,
        )
        for scope, op_name in _ops_touching(float_model, noisy):
            regex = f"^{re.escape(scope)}$"
            if op_name in _CONV_OPS:
                quantizer.update_quantization_recipe(regex=regex, operation_name=op_name, op_config=weight_only)
            else:
                quantizer.update_quantization_recipe(regex=regex, operation_name="*", algorithm_key="no_quantize")
    return bytes(quantizer.quantize(qsvs, enable_progress_report=False).quantized_model), noisy


def _noise_to_signal(float_model: Path, samples: list[np.ndarray]) -> dict[str, float]:
    """``calibration.noise`` ratio of every 4-D (NHWC) float tensor of the float model.

    The 8-bit range is approximated as the mean over images of each image's extremes (what a moving
    average of min/max tends to). Measured on YOLOX-Nano: this rule flags 110 tensors and the file keeps
    fp32 accuracy (pedestrian 0.359, stop sign 0.785 against 0.353 / 0.792); ranking on the ranges
    ai-edge-quantizer's calibration returned flagged 65 and left pedestrian at 0.305.
    """
    from ai_edge_litert.interpreter import Interpreter

    probe = Interpreter(model_path=str(float_model), experimental_preserve_all_tensors=True)
    probe.allocate_tensors()
    input_index = probe.get_input_details()[0]["index"]
    tensors = [d for d in probe.get_tensor_details() if d["dtype"] == np.float32 and len(d["shape"]) == 4]
    moments: dict[str, ChannelMoments] = {}
    extremes: dict[str, list[float]] = {}
    for sample in samples:
        probe.set_tensor(input_index, sample)
        probe.invoke()
        for d in tensors:
            try:
                values = probe.get_tensor(d["index"])
            except ValueError:  # a tensor the runtime does not keep (e.g. a constant folded away)
                continue
            moments.setdefault(d["name"], ChannelMoments(channel_axis=-1)).add(values)
            acc = extremes.setdefault(d["name"], [0.0, 0.0])
            acc[0] += float(values.min())
            acc[1] += float(values.max())
    return {
        name: m.noise_to_signal(extremes[name][0] / m.images, extremes[name][1] / m.images)
        for name, m in moments.items()
    }


def _ops_touching(float_model: Path, tensors: list[str]) -> list[tuple[str, str | None]]:
    """(scope, op name) of the ops that produce or read any of ``tensors``; the name is None for an op code
    ai-edge-quantizer does not name."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fbu

    if not tensors:
        return []
    model = fbu.read_model(str(float_model))
    graph = model.subgraphs[0]
    codes = [code.builtinCode for code in model.operatorCodes]
    wanted = set(tensors)
    names = [fbu.get_tensor_name(t) for t in graph.tensors]
    return sorted(
        {
            (fbu.get_op_scope(op, graph.tensors), _op_name(fbu, codes[op.opcodeIndex]))
            for op in graph.operators
            if wanted & {names[i] for i in [*op.inputs, *op.outputs] if i >= 0}
        }
    )


def _op_name(fbu: Any, code: int) -> str | None:
    return getattr(fbu.TFL_OP_CODE_TO_NAME.get(code), "value", None)


def _output_tail_scopes(float_model: Path) -> list[str]:
    """Scopes of the ops between the last convolutions and the model output (walked back from it)."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fbu

    model = fbu.read_model(str(float_model))
    graph = model.subgraphs[0]
    codes = [code.builtinCode for code in model.operatorCodes]
    producer = {out: op for op in graph.operators for out in op.outputs}
    scopes: list[str] = []
    seen: set[int] = set()
    stack = list(graph.outputs)
    while stack:
        op = producer.get(stack.pop())
        if op is None or id(op) in seen or _op_name(fbu, codes[op.opcodeIndex]) not in _TAIL_OPS:
            continue
        seen.add(id(op))
        scopes.append(fbu.get_op_scope(op, graph.tensors))
        stack.extend(i for i in op.inputs if i >= 0)
    return scopes


def _calibration_nhwc(tensors: Iterable[Any], height: int, width: int) -> list[np.ndarray]:
    samples = []
    for i, tensor in enumerate(tensors):
        x = np.asarray(tensor.detach().cpu() if hasattr(tensor, "detach") else tensor, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if x.shape == (1, 3, height, width):
            x = x.transpose(0, 2, 3, 1)
        if x.shape != (1, height, width, 3):
            raise CalibrationError(
                f"calibration tensor {i} has shape {tuple(np.shape(tensor))}, expected (1, 3, {height}, {width})",
                "feed tensors from devices.processing.preprocess with the model's own InputSpec",
            )
        samples.append(np.ascontiguousarray(x))
    if not samples:
        raise CalibrationError("no calibration tensors were given", "pass the calibration set's tensors")
    if len(samples) < MIN_CALIBRATION_IMAGES:
        log.warning("only %d calibration images: activation ranges may be unrepresentative", len(samples))
    return samples


def _spec_input_range(model: Any) -> tuple[float, float] | None:
    spec = getattr(getattr(model, "spec", None), "input", None)
    if spec is None or len(set(spec.mean)) != 1 or len(set(spec.std)) != 1:
        return None  # per-channel normalisation: no single range; fall back to the calibration data
    ends = [(p * spec.scale - spec.mean[0]) / spec.std[0] for p in (0.0, 255.0)]
    return min(ends), max(ends)


def _read_back(path: Path, num_calibration: int, keep_float: str | None, noisy: list[str]) -> TfliteInt8Result:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        interpreter = Interpreter(
            model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
    except ValueError as exc:
        raise ModelFileError(f"the written file {path} does not load: {exc}", "rerun the export") from exc
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    if np.dtype(inp["dtype"]) != np.int8:
        raise ModelFileError(
            f"{path} has a {np.dtype(inp['dtype']).name} input, expected int8",
            "the float model must start with an op ai-edge-quantizer quantizes; report the model",
        )
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # the op list, for the census below; no public equivalent
    float_ops = Counter(
        op["op_name"]
        for op in ops
        if op["op_name"] != "DEQUANTIZE" and any(tensors[i]["dtype"] == np.float32 for i in op["outputs"])
    )
    scale, zero_point = inp["quantization"]
    result = TfliteInt8Result(
        path=path,
        input_dtype="int8",
        input_scale=float(scale),
        input_zero_point=int(zero_point),
        input_shape=tuple(int(d) for d in inp["shape"]),
        output_dtype=np.dtype(out["dtype"]).name,
        num_calibration=num_calibration,
        size_bytes=path.stat().st_size,
        op_counts=dict(sorted(Counter(op["op_name"] for op in ops).items())),
        float_ops=dict(sorted(float_ops.items())),
        recipe={**INT8_RECIPE, **({"kept_float": keep_float} if keep_float else {})},
        float_activations=tuple(noisy),
    )
    log.info(
        "wrote INT8 TFLite %s (%.2f MB, int8 input scale %.6g zero point %d, float ops %s)",
        path, result.size_bytes / 1e6, result.input_scale, result.input_zero_point, result.float_ops,
    )  # fmt: skip
    return result
