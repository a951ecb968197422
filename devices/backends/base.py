"""What every backend shares: the record of its model file's tensors, and the thread-count check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from devices.errors import ConfigError


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


def check_threads(threads: int | None) -> int | None:
    """``threads`` if it is a thread count (or None: let the runtime choose).

    Raises:
        ConfigError: Zero, a negative number, or not an integer.
    """
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ConfigError(
            f"threads={threads!r} is not a thread count", "use a positive integer, or None for all cores"
        )
    return threads
