"""Feed calibration images to converters through exactly the preprocessing used at inference.

A calibration tensor that differs from the inference tensor (another resize, channel order or scale)
calibrates ranges the model never sees; both therefore go through ``devices.processing.preprocess``
with the model's own ``InputSpec``. The caller says how an image file is decoded (``load_image``: path ->
BGR uint8), so that this package depends on no dataset reader.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from calibration.select import CalibrationSet
from devices.errors import require
from devices.processing import preprocess
from devices.types import InputSpec

log = logging.getLogger(__name__)


#: Decodes an image file as BGR uint8 (H, W, 3), e.g. ``toolkit.data.images.load_image``.
ImageLoader = Callable[[Path], np.ndarray]


def iter_tensors(
    calibration_set: CalibrationSet, input_spec: InputSpec, load_image: ImageLoader
) -> Iterator[np.ndarray]:
    """Yield each calibration image as the model's input tensor (batch of one), in set order.

    Args:
        calibration_set: The images.
        input_spec: The model's preprocessing, as on the device.
        load_image: Decodes a file as BGR uint8; the one training used, so calibration sees its pixels.

    Raises:
        DataError: An image cannot be decoded (as ``load_image`` reports it).
    """
    for path in calibration_set.paths:
        tensor, _ = preprocess(load_image(path), input_spec)
        yield tensor


def ort_calibration_reader(
    calibration_set: CalibrationSet, input_spec: InputSpec, load_image: ImageLoader, input_name: str = "images"
) -> Any:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over the calibration set.

    Args:
        calibration_set: The images.
        input_spec: The model's preprocessing.
        load_image: Decodes a file as BGR uint8 (see ``iter_tensors``).
        input_name: Name of the ONNX model's input.

    Returns:
        A reader whose ``get_next()`` returns ``{input_name: tensor}`` per image, then None; ``rewind()``
        starts again (ORT's Percentile/Entropy calibrators read the data once, others may read it twice).
    """
    # Imported when called (an optional extra), so its classes are untyped here.
    quantization: Any = require("onnxruntime.quantization", "export", "INT8 calibration for ONNX Runtime")

    class _Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            tensor = next(self._tensors, None)
            return None if tensor is None else {input_name: tensor}

        def __len__(self) -> int:
            return len(calibration_set)

        def rewind(self) -> None:
            self._tensors = iter_tensors(calibration_set, input_spec, load_image)

    return _Reader()
