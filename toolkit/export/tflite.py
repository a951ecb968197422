"""Export a PyTorch detector to a float32 TFLite file with litert-torch (NHWC input).

The input is NHWC, the layout TFLite kernels run in: no TRANSPOSE in front of the first convolution.
The INT8 file (``toolkit.export.tflite_int8``) quantizes this file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from devices.errors import ConfigError, MissingDependencyError

log = logging.getLogger(__name__)


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
    litert_torch, torch = require_litert_torch("float32 TFLite export")
    height, width = input_hw(model, input_size)
    path = prepare_path(path)
    sample = torch.zeros(1, height, width, 3)
    with eval_mode(model):
        edge = litert_torch.convert(litert_torch.to_channel_last_io(model, args=[0]).eval(), (sample,))
    edge.export(str(path))
    log.info("wrote float32 TFLite %s (%.2f MB)", path, path.stat().st_size / 1e6)
    return path


def require_litert_torch(purpose: str) -> tuple[Any, Any]:
    try:
        import litert_torch
        import torch
    except ImportError as exc:
        raise MissingDependencyError("litert-torch", "export", purpose) from exc
    return litert_torch, torch


def input_hw(model: Any, input_size: tuple[int, int] | None) -> tuple[int, int]:
    if input_size is not None:
        return int(input_size[0]), int(input_size[1])
    spec = getattr(getattr(model, "spec", None), "input", None)
    if spec is None:
        raise ConfigError(
            f"{type(model).__name__} has no spec.input to take the input size from",
            "pass input_size=(height, width)",
        )
    return spec.height, spec.width


def prepare_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix != ".tflite":
        raise ConfigError(f"TFLite output path {path} does not end in .tflite", "name the file *.tflite")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Put a module in eval mode for the export and restore its previous mode afterwards."""
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def require_quantizer() -> Any:
    try:
        import ai_edge_quantizer.quantizer
        import ai_edge_quantizer.recipe
    except ImportError as exc:
        raise MissingDependencyError("ai-edge-quantizer", "export", "INT8 TFLite export") from exc
    return ai_edge_quantizer
