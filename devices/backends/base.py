"""What every backend reports about the tensors of its model file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TensorDetails:
    """One input or output tensor of the model.

    Attributes:
        name: Tensor name in the file.
        shape: Shape with the batch dimension, e.g. ``(1, 416, 416, 3)`` (TFLite files are NHWC).
        dtype: Element type.
        scale: For an integer tensor: real = (q - zero_point) * scale; None for a float tensor.
        zero_point: See ``scale``; None for a float tensor.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float | None = None
    zero_point: int | None = None

    @classmethod
    def from_runtime(cls, details: dict[str, Any]) -> TensorDetails:
        scale, zero_point = details.get("quantization", (0.0, 0))
        quantized = np.issubdtype(details["dtype"], np.integer) and scale != 0.0
        return cls(
            name=str(details["name"]),
            shape=tuple(int(d) for d in details["shape"]),
            dtype=np.dtype(details["dtype"]),
            scale=float(scale) if quantized else None,
            zero_point=int(zero_point) if quantized else None,
        )
