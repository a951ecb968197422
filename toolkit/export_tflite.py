"""Export a PyTorch detector to TFLite with litert-torch: float32, and full-integer INT8.

Both files take an NHWC input (the layout TFLite kernels run in), so no TRANSPOSE sits in front of the
first convolution. The INT8 file is quantized in PyTorch with litert-torch's PT2E quantizer (int8
per-channel symmetric weights, int8 per-tensor activations) and then given an integer input, so the
device feeds camera pixels as they are; its output stays float32 (the decode needs floats anyway).

Why a custom annotation on top of litert-torch's ``PT2EQuantizer`` (measured on YOLOX-Nano, 1 thread,
LiteRT + XNNPACK on this workstation, see the export report): the stock quantizer recognises ``cat``,
``add``, ``mul`` and pooling only through ``source_fn_stack`` metadata, which the non-strict
``torch.export`` of torch 2.14 no longer records, and it has no pattern for ``SiLU`` at all. Every
activation of YOLOX therefore ran as DEQUANTIZE -> float LOGISTIC -> float MUL -> QUANTIZE, and the
"INT8" file was slower than float32. Here SiLU is decomposed into ``x * sigmoid(x)`` and every op is
annotated by its aten target, so the whole graph runs in int8.
"""

from __future__ import annotations

import logging
import operator
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from devices.errors import CalibrationError, ConfigError, MissingDependencyError, ModelFileError

log = logging.getLogger(__name__)

# TensorType values of the TFLite schema, as modify_model_interface takes them.
_TFLITE_TYPE = {"float32": 0, "uint8": 3, "int8": 9}

#: At least this many calibration images before the ranges are trusted (a warning below it).
MIN_CALIBRATION_IMAGES = 16


@dataclass(frozen=True)
class TfliteInt8Result:
    """What the INT8 export wrote, read back from the file itself.

    Attributes:
        path: The written ``.tflite`` file.
        input_dtype: ``uint8`` or ``int8``: the element type the device feeds.
        input_scale: real = (q - input_zero_point) * input_scale, for the input tensor.
        input_zero_point: See ``input_scale``.
        input_shape: NHWC shape of the input, batch of one.
        output_dtype: Element type of the output: ``float32`` (dequantized inside the model), or
            ``int8``/``uint8`` for accelerators that need integer outputs.
        output_scale: For an integer output: real = (q - output_zero_point) * output_scale; else None.
        output_zero_point: See ``output_scale``.
        num_calibration: Number of calibration tensors observed.
        size_bytes: File size.
        op_counts: Operator name -> count in the file, to check that no float fallback crept in.
        recipe: How the file was quantized, for the bundle manifest.
    """

    path: Path
    input_dtype: str
    input_scale: float
    input_zero_point: int
    input_shape: tuple[int, ...]
    output_dtype: str
    output_scale: float | None
    output_zero_point: int | None
    num_calibration: int
    size_bytes: int
    op_counts: dict[str, int] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)


def export_tflite_fp32(model: Any, path: str | Path, input_size: tuple[int, int] | None = None) -> Path:
    """Convert a PyTorch model to a float32 TFLite file with an NHWC input.

    Args:
        model: ``nn.Module`` taking float (1, 3, H, W); evaluated in eval mode (its mode is restored).
        path: Destination ``.tflite`` file (parent folders are created).
        input_size: (height, width); defaults to ``model.spec.input``.

    Returns:
        The written path.

    Raises:
        MissingDependencyError: litert-torch is not installed (extra ``export``).
        ConfigError: The input size is unknown.
    """
    litert_torch, torch = _require_litert_torch("float32 TFLite export")
    height, width = _input_hw(model, input_size)
    path = _prepare_path(path)
    sample = torch.zeros(1, height, width, 3)
    with _eval_mode(model):
        edge = litert_torch.convert(litert_torch.to_channel_last_io(model, args=[0]).eval(), (sample,))
    edge.export(str(path))
    log.info("wrote float32 TFLite %s (%.2f MB)", path, path.stat().st_size / 1e6)
    return path


def export_tflite_int8(
    model: Any,
    path: str | Path,
    calibration_tensors: Iterable[Any],
    *,
    input_dtype: Literal["uint8", "int8"] = "uint8",
    output_dtype: Literal["float32", "uint8", "int8"] = "float32",
    input_size: tuple[int, int] | None = None,
    input_range: tuple[float, float] | None = None,
) -> TfliteInt8Result:
    """Quantize a PyTorch model to a full-integer INT8 TFLite file with an NHWC integer input.

    Weights are int8 symmetric per output channel; activations int8 per tensor (histogram observer);
    sigmoid and softmax outputs use TFLite's fixed 1/256 scale. The input's quantization is fixed from
    the pixel range rather than observed, so that a camera's 0..255 pixels are represented exactly
    (YOLOX: uint8 input, scale 1, zero point 0 -- the raw frame).

    Args:
        model: ``nn.Module`` taking float (1, 3, H, W); evaluated in eval mode (its mode is restored).
        path: Destination ``.tflite`` file (parent folders are created).
        calibration_tensors: Float input tensors exactly as the model takes them after
            ``devices.processing.preprocess`` (NCHW (1, 3, H, W); NHWC (1, H, W, 3) is accepted too),
            e.g. ``calibration.reader.iter_tensors(calibration_set, model.spec.input)``.
        input_dtype: Integer type of the input tensor: ``uint8`` (camera pixels as they come) or ``int8``.
        output_dtype: ``float32`` (default: the decoders need floats, and the DEQUANTIZE is cheap) or an
            integer type for accelerators such as the Edge TPU that need integer outputs; the device
            backend dequantizes an integer output with its scale and zero point.
        input_size: (height, width); defaults to ``model.spec.input``.
        input_range: Real (min, max) of the input; defaults to the range of ``model.spec.input``
            applied to pixels 0..255, else to the calibration tensors' range.

    Returns:
        The file's path and its input quantization, read back from the written file.

    Raises:
        MissingDependencyError: litert-torch or ai-edge-litert is not installed (extra ``export``).
        CalibrationError: No calibration tensor, or one of the wrong shape.
        ConfigError: Unknown ``input_dtype``/``output_dtype`` or input size.
        ModelFileError: The converter wrote a file whose input is not of ``input_dtype``.
    """
    if input_dtype not in ("uint8", "int8"):
        raise ConfigError(f"input_dtype={input_dtype!r}", "use 'uint8' (camera pixels) or 'int8'")
    if output_dtype not in _TFLITE_TYPE:
        raise ConfigError(f"output_dtype={output_dtype!r}", f"use one of {list(_TFLITE_TYPE)}")
    litert_torch, torch = _require_litert_torch("INT8 TFLite export")
    modify_interface = _require_modify_interface()
    height, width = _input_hw(model, input_size)
    path = _prepare_path(path)
    samples = _calibration_nhwc(calibration_tensors, height, width)
    lo, hi = (
        input_range
        or _spec_input_range(model)
        or (float(min(s.min() for s in samples)), float(max(s.max() for s in samples)))
    )
    input_qparams = _int8_qparams(lo, hi)

    # Stage 1: export NHWC-in, annotate the whole graph, observe calibration data, fold to Q/DQ.
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = _whole_graph_quantizer(input_qparams)
    with _eval_mode(model), torch.no_grad():
        wrapped = litert_torch.to_channel_last_io(model, args=[0]).eval()
        graph = torch.export.export(wrapped, (torch.from_numpy(samples[0]),)).module()
        observed = prepare_pt2e(graph, quantizer)
        for sample in samples:
            observed(torch.from_numpy(sample))
        quantized = convert_pt2e(observed, fold_quantize=False)
        # PT2E forbids .eval() on the result; its graph is already inference-only (batch norm folded),
        # the flag only silences litert-torch's "converted in training mode" warning.
        quantized.training = False
        # Stage 2: lower to TFLite with float I/O (QUANTIZE after the input, DEQUANTIZE before outputs).
        edge = litert_torch.convert(
            quantized, (torch.from_numpy(samples[0]),), quant_config=QuantConfig(pt2e_quantizer=quantizer)
        )
    float_io = path.with_name(path.name + ".float-io.tmp")
    edge.export(str(float_io))
    # Stage 3: drop the float input: the first QUANTIZE becomes the input (uint8 keeps a cheap
    # uint8->int8 requantize); for a float32 output the final DEQUANTIZE stays.
    try:
        status = modify_interface(str(float_io), str(path), _TFLITE_TYPE[input_dtype], _TFLITE_TYPE[output_dtype])
    finally:
        float_io.unlink(missing_ok=True)
    if status != 0:
        raise ModelFileError(
            f"setting the {input_dtype} input interface of {path} failed (status {status})",
            "the quantized graph must start with a QUANTIZE op; report the model to the maintainers",
        )
    return _read_back(path, input_dtype, output_dtype, len(samples), input_qparams)


# --- helpers -----------------------------------------------------------------------------------------


def _require_litert_torch(purpose: str) -> tuple[Any, Any]:
    try:
        import litert_torch
        import torch
    except ImportError as exc:
        raise MissingDependencyError("litert-torch", "export", purpose) from exc
    return litert_torch, torch


def _require_modify_interface() -> Any:
    try:
        from ai_edge_litert import _pywrap_modify_model_interface as mmi
    except ImportError as exc:
        raise MissingDependencyError("ai-edge-litert", "export", "INT8 TFLite integer input") from exc
    return mmi.modify_model_interface


def _input_hw(model: Any, input_size: tuple[int, int] | None) -> tuple[int, int]:
    if input_size is not None:
        return int(input_size[0]), int(input_size[1])
    spec = getattr(getattr(model, "spec", None), "input", None)
    if spec is None:
        raise ConfigError(
            f"{type(model).__name__} has no spec.input to take the input size from",
            "pass input_size=(height, width)",
        )
    return spec.height, spec.width


def _prepare_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix != ".tflite":
        raise ConfigError(f"TFLite output path {path} does not end in .tflite", "name the file *.tflite")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Put a module in eval mode for the export and restore its previous mode afterwards."""
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


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


def _int8_qparams(lo: float, hi: float) -> tuple[float, int]:
    # Affine int8 spanning exactly [lo, hi] (widened to include 0, as TFLite requires): pixels 0..255
    # scaled by s map to int8 -128..127 with scale s, so the uint8 input is the raw pixel value.
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    return scale, int(np.clip(-128 - round(lo / scale), -128, 127))


def _read_back(
    path: Path, input_dtype: str, output_dtype: str, num_calibration: int, qparams: tuple[float, int]
) -> TfliteInt8Result:
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path))
    except ValueError as exc:
        raise ModelFileError(f"the written file {path} does not load: {exc}", "rerun the export") from exc
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    found = (np.dtype(inp["dtype"]).name, np.dtype(out["dtype"]).name)
    if found != (input_dtype, output_dtype):
        raise ModelFileError(
            f"{path} has a {found[0]} input and {found[1]} output, expected {input_dtype} and {output_dtype}",
            "the quantized graph must start with a QUANTIZE op; report the model to the maintainers",
        )
    ops = Counter(op["op_name"] for op in interpreter._get_ops_details())
    scale, zero_point = inp["quantization"]
    out_scale, out_zero_point = out["quantization"] if output_dtype != "float32" else (None, None)
    recipe = {
        "converter": "litert-torch PT2E (static), whole graph annotated, SiLU as x*sigmoid(x)",
        "weights": "int8 symmetric per output channel (min/max)",
        "activations": "int8 affine per tensor (histogram observer); sigmoid/softmax fixed 1/256",
        "input": f"{input_dtype} NHWC, fixed qparams from the pixel range (int8 scale {qparams[0]:.6g}, "
        f"zero point {qparams[1]})",
        "output": "float32 (dequantized in the model)" if output_dtype == "float32" else output_dtype,
    }
    result = TfliteInt8Result(
        path=path,
        input_dtype=input_dtype,
        input_scale=float(scale),
        input_zero_point=int(zero_point),
        input_shape=tuple(int(d) for d in inp["shape"]),
        output_dtype=output_dtype,
        output_scale=None if out_scale is None else float(out_scale),
        output_zero_point=None if out_zero_point is None else int(out_zero_point),
        num_calibration=num_calibration,
        size_bytes=path.stat().st_size,
        op_counts=dict(sorted(ops.items())),
        recipe=recipe,
    )
    log.info(
        "wrote INT8 TFLite %s (%.2f MB, %s input scale %.6g zero point %d, ops %s)",
        path, result.size_bytes / 1e6, input_dtype, result.input_scale, result.input_zero_point, result.op_counts,
    )  # fmt: skip
    return result


# --- whole-graph PT2E annotation ---------------------------------------------------------------------


def _whole_graph_quantizer(input_qparams: tuple[float, int]) -> Any:
    """litert-torch's PT2E quantizer with SiLU decomposed and every op annotated by its aten target."""
    import torch
    from litert_torch.quantize import pt2e_quantizer as pq

    class _WholeGraphQuantizer(pq.PT2EQuantizer):
        def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().transform_for_annotation(model)
            _decompose_silu(model)
            return model

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)  # conv/linear with per-channel weights, by target
            tail = _output_tail(model)
            for node in tail:
                node.meta.pop("quantization_annotation", None)
            _annotate_rest(model, self.global_config, input_qparams, tail)
            return model

    return _WholeGraphQuantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True))


def _decompose_silu(model: Any) -> None:
    # TFLite has no SiLU kernel: as one op it lowers to float LOGISTIC + MUL between a DEQUANTIZE and a
    # QUANTIZE. Split in the graph, both halves get int8 annotations (sigmoid's fixed 1/256 scale).
    import torch

    aten = torch.ops.aten
    for node in list(model.graph.nodes):
        if node.op != "call_function" or node.target not in (aten.silu.default, aten.silu_.default):
            continue
        with model.graph.inserting_before(node):
            sig = model.graph.call_function(aten.sigmoid.default, (node.args[0],))
            mul = model.graph.call_function(aten.mul.Tensor, (node.args[0], sig))
        for new in (sig, mul):
            new.meta = {k: v for k, v in node.meta.items() if k != "quantization_annotation"}
        node.replace_all_uses_with(mul)
        model.graph.erase_node(node)
    model.graph.lint()
    model.recompile()


def _layout_ops() -> set[Any]:
    """Ops that only move, select or pool values: int8 kernels keep the input's scale for them."""
    import torch

    aten = torch.ops.aten
    return {
        aten.permute.default, aten.slice.Tensor, aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default,
        aten.max_pool2d.default, aten.avg_pool2d.default, aten.view.default, aten.reshape.default,
        aten.flatten.using_ints, aten._unsafe_view.default, aten.clone.default, aten.relu.default,
        aten.hardtanh.default, aten.squeeze.dim, aten.unsqueeze.default, aten.transpose.int,
        aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default,
    }  # fmt: skip


def _output_tail(model: Any) -> set[Any]:
    """The detector's output assembly: the layout ops, concats and score activations after the last
    convolutions. Kept float: one int8 scale for box terms (up to ~10) and scores (0..1) would leave
    scores in ~0.04 steps, and on (1, 3549, 7) values float costs nothing measurable."""
    import torch

    aten = torch.ops.aten
    tail_ops = _layout_ops() | {
        aten.cat.default, aten.sigmoid.default, aten._softmax.default, aten.softmax.int, operator.getitem,
    }  # fmt: skip
    tail: set[Any] = set()
    stack = [a for node in model.graph.nodes if node.op == "output" for a in node.all_input_nodes]
    while stack:
        node = stack.pop()
        if node in tail or node.op != "call_function" or node.target not in tail_ops:
            continue
        tail.add(node)
        stack.extend(node.all_input_nodes)
    return tail


def _annotate_rest(model: Any, config: Any, input_qparams: tuple[float, int], skip: set[Any]) -> None:
    """Annotate every op the stock patterns missed, in graph order, so no float island remains."""
    import torch
    from torchao.quantization.pt2e.quantizer import (
        FixedQParamsQuantizationSpec,
        QuantizationAnnotation,
        SharedQuantizationSpec,
    )

    aten = torch.ops.aten
    act, fixed = config.input_activation, config.fixed_qparams
    same_scale = _layout_ops()
    input_spec = FixedQParamsQuantizationSpec(
        dtype=torch.int8, scale=input_qparams[0], zero_point=input_qparams[1], quant_min=-128, quant_max=127,
        qscheme=torch.per_tensor_affine,
    )  # fmt: skip

    def done(node: Any) -> bool:
        ann = node.meta.get("quantization_annotation")
        return ann is not None and ann._annotated

    def root_spec(spec: Any) -> Any:
        # Follow SharedQuantizationSpec links to the spec that really sets the scale.
        for _ in range(10_000):
            if not isinstance(spec, SharedQuantizationSpec):
                return spec
            ref = spec.edge_or_node
            if isinstance(ref, tuple):
                spec = ref[1].meta["quantization_annotation"].input_qspec_map.get(ref[0])
            else:
                spec = ref.meta["quantization_annotation"].output_qspec
        return spec

    def consumed_as(arg: Any) -> Any:
        # Reuse the producer's own quantization where it has one: a different spec on the edge would
        # become an int8->int8 requantize (or violate the same-scale rule of slicing and pooling).
        if arg.op == "placeholder":
            return input_spec
        ann = arg.meta.get("quantization_annotation")
        return SharedQuantizationSpec(arg) if ann is not None and ann.output_qspec is not None else act

    for node in model.graph.nodes:
        if node.op != "call_function" or done(node) or node in skip:
            continue
        args = [a for a in node.args if isinstance(a, torch.fx.Node)]
        if node.target in same_scale and args:
            src = args[0]
            node.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map={src: consumed_as(src)},
                output_qspec=SharedQuantizationSpec((src, node)),
                _annotated=True,
            )
        elif node.target is operator.getitem and done(args[0]):
            # One output of a split: it shares the split's own quantization.
            node.meta["quantization_annotation"] = QuantizationAnnotation(
                output_qspec=SharedQuantizationSpec(args[0]), _annotated=True
            )
        elif node.target in (aten.sigmoid.default, aten._softmax.default, aten.softmax.int) and args:
            node.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map={args[0]: consumed_as(args[0])}, output_qspec=fixed, _annotated=True
            )
        elif node.target in (aten.add.Tensor, aten.mul.Tensor) and len(args) == 2:
            node.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map={a: consumed_as(a) for a in args}, output_qspec=act, _annotated=True
            )
        elif node.target == aten.cat.default:
            inputs = [a for a in node.args[0] if isinstance(a, torch.fx.Node)]
            # The converter requires one scale for all inputs and the output of CONCATENATION: take the
            # first input's (no requantize for it), unless that is a fixed 0..1 range (a sigmoid).
            first = consumed_as(inputs[0])
            if root_spec(first) == fixed:
                first = act
            shared = SharedQuantizationSpec((inputs[0], node))
            node.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map={a: first if i == 0 else shared for i, a in enumerate(inputs)},
                output_qspec=shared,
                _annotated=True,
            )
        else:
            log.debug("left float: %s", node.target)
