"""Export a detector to an fp32 ONNX file and check it against PyTorch; the ONNX helpers INT8 shares."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from devices.errors import ConfigError, EdgesightError, ModelFileError, require
from devices.processing import preprocess
from devices.types import InputSpec

log = logging.getLogger(__name__)

INPUT_NAME = "images"

OUTPUT_NAME = "output"

#: Per-channel QDQ (the ``axis`` attribute of QuantizeLinear/DequantizeLinear) exists from opset 13.
MIN_PER_CHANNEL_OPSET = 13

#: Largest output change accepted from graph simplification (onnxslim) or opset conversion.
REWRITE_TOLERANCE = 1e-4


def export_onnx_fp32(model: Any, path: str | os.PathLike, opset: int = 17, *, simplify: bool = True) -> Path:
    """Export a model's ``forward`` (the raw-output contract) to ONNX with a fixed batch of one.

    The graph takes ``images`` (1, 3, H, W) float32 as ``model.spec.input`` describes and returns
    ``output``. It is simplified with onnxslim when installed, and the simplified graph is kept only if
    its output matches the plain export within ``REWRITE_TOLERANCE``.

    Args:
        model: A ``models`` network (``nn.Module`` with ``spec``).
        path: Where to write the ``.onnx`` file.
        opset: ONNX opset; 13 or newer is needed for per-channel INT8 later.
        simplify: Try onnxslim.

    Returns:
        The written path.

    Raises:
        ConfigError: ``opset`` is older than 13, which per-channel INT8 quantization needs.
        ModelFileError: The written graph fails ``onnx.checker``.
    """
    torch = require("torch", "train", "ONNX export")
    onnx = require("onnx", "export", "ONNX export")
    if opset < MIN_PER_CHANNEL_OPSET:
        raise ConfigError(
            f"opset={opset} is older than {MIN_PER_CHANNEL_OPSET}",
            f"use opset >= {MIN_PER_CHANNEL_OPSET} (per-channel INT8 quantization needs it); 17 is the default",
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = model.spec.input
    dummy = torch.zeros(1, 3, spec.height, spec.width, dtype=torch.float32)

    # Export in eval mode (batch norm folded into the convolutions) and restore the caller's mode.
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            torch.onnx.export(
                model,
                (dummy,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,  # the TorchScript exporter: the dynamo one needs onnxscript and opset >= 18
            )
    finally:
        model.train(was_training)

    proto = onnx.load(str(path))
    if simplify:
        proto = _simplified(proto, spec)
    _check(proto, path)
    onnx.save(proto, str(path))
    log.info("exported %s (opset %d, %d nodes)", path, opset, len(proto.graph.node))
    return path


def _simplified(proto: Any, spec: InputSpec) -> Any:
    """onnxslim's graph when it computes the same output, else the unsimplified graph."""
    try:
        onnxslim = require("onnxslim", "export", "ONNX graph simplification")
    except EdgesightError:
        log.info("onnxslim not installed: keeping the graph as exported")
        return proto
    slim = onnxslim.slim(proto)
    diff = max_output_diff(proto, slim, check_inputs(spec))
    if diff > REWRITE_TOLERANCE:
        log.warning(
            "onnxslim changed the output by %.3g (> %.0e): keeping the unsimplified graph", diff, REWRITE_TOLERANCE
        )
        return proto
    log.info("onnxslim: %d -> %d nodes, output change %.2g", len(proto.graph.node), len(slim.graph.node), diff)
    return slim


def check_inputs(spec: InputSpec) -> list[np.ndarray]:
    # Inputs for checking a graph rewrite (not for calibration): an all-padding frame and a fixed
    # pseudo-random frame, both through the real preprocessing so that values span the input range.
    rng = np.random.default_rng(0)
    frames = [
        np.full((spec.height, spec.width, 3), spec.pad_value, np.uint8),
        rng.integers(0, 256, (240, 320, 3), np.uint8),
    ]
    return [preprocess(f, spec)[0] for f in frames]


def max_output_diff(a: Any, b: Any, inputs: Sequence[np.ndarray]) -> float:
    sa, sb = cpu_session(a.SerializeToString()), cpu_session(b.SerializeToString())
    return max(float(np.abs(run_session(sa, x) - run_session(sb, x)).max()) for x in inputs)


def _check(proto: Any, path: Path) -> None:
    onnx = require("onnx", "export", "ONNX export")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx raises ValidationError and InferenceError
        raise ModelFileError(f"exported graph {path} fails onnx.checker: {exc}", "report this as a bug") from exc


def max_abs_diff(model: Any, onnx_path: str | os.PathLike, images: Iterable[np.ndarray | str | os.PathLike]) -> float:
    """Largest absolute difference between the PyTorch model and an ONNX file on real images.

    Args:
        model: The ``models`` network the file was exported from.
        onnx_path: The exported file.
        images: BGR uint8 frames or image paths, preprocessed with ``model.spec.input``.

    Returns:
        The maximum over images and output elements of ``|torch - onnxruntime|``.
    """
    torch = require("torch", "train", "ONNX parity check")
    from toolkit.data.images import load_image

    session = cpu_session(str(onnx_path))
    was_training = model.training
    model.eval()
    worst = 0.0
    try:
        for image in images:
            frame = image if isinstance(image, np.ndarray) else load_image(image)
            tensor, _ = preprocess(frame, model.spec.input)
            with torch.no_grad():
                expected = model(torch.from_numpy(tensor)).numpy()
            worst = max(worst, float(np.abs(expected - run_session(session, tensor)).max()))
    finally:
        model.train(was_training)
    return worst


def load_onnx(path: Path) -> Any:
    onnx = require("onnx", "export", "ONNX quantization")
    if not path.is_file():
        raise ModelFileError(f"fp32 ONNX model not found: {path}", "export it first with export_onnx_fp32")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelFileError(f"cannot read ONNX model {path}: {exc}", "re-export the fp32 model") from exc


def opset_of(proto: Any) -> int:
    return max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def with_opset(proto: Any, opset: int, spec: InputSpec) -> Any:
    if opset_of(proto) >= opset:
        return proto
    onnx = require("onnx", "export", "ONNX opset conversion")
    from onnx import version_converter

    converted = version_converter.convert_version(proto, opset)
    diff = max_output_diff(proto, converted, check_inputs(spec))
    if diff > REWRITE_TOLERANCE:
        raise ModelFileError(
            f"converting the model from opset {opset_of(proto)} to {opset} changed its output by {diff:.3g}",
            f"re-export the model with opset >= {opset}",
        )
    onnx.checker.check_model(converted)
    log.info("converted opset %d -> %d for per-channel quantization", opset_of(proto), opset)
    return converted


def cpu_session(model: str | bytes) -> Any:
    ort = require("onnxruntime", "export", "ONNX Runtime checks")
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def run_session(session: Any, tensor: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: tensor})[0]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
