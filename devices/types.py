"""Records both sides share: detections, the model's input contract and its decode contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Detections in one frame.

    Attributes:
        boxes: (N, 4) float32, ``x1, y1, x2, y2`` in pixels of the original frame.
        scores: (N,) float32 confidence in [0, 1].
        class_ids: (N,) int64 index into the model's labels.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64))

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def select(self, keep: np.ndarray) -> Detections:
        """Return the subset given by a boolean mask or index array."""
        return Detections(self.boxes[keep], self.scores[keep], self.class_ids[keep])


@dataclass(frozen=True)
class InputSpec:
    """How a BGR uint8 camera frame becomes the model's input tensor.

    The preprocessing travels with the weights (as torchvision's ``Weights`` do): the same spec drives
    training, evaluation, export, calibration and the device loop.

    Attributes:
        width: Model input width in pixels.
        height: Model input height in pixels.
        resize: ``letterbox`` keeps the aspect ratio and pads with ``pad_value``; ``stretch`` resizes
            both axes independently.
        channel_order: ``BGR`` (OpenCV order) or ``RGB``.
        scale: Multiplier applied to the 0-255 pixels before ``mean``/``std``.
        mean: Per-channel mean subtracted after scaling (in ``channel_order``).
        std: Per-channel divisor after the mean.
        layout: ``NCHW`` (PyTorch, ONNX) or ``NHWC`` (TFLite).
        dtype: Element type of the tensor the model takes: ``float32``, or ``uint8``/``int8`` for
            integer-input quantized models.
        quant_scale: For integer input: real = (q - zero_point) * quant_scale.
        quant_zero_point: For integer input.
    """

    width: int
    height: int
    resize: Literal["letterbox", "stretch"] = "letterbox"
    pad_value: int = 114
    channel_order: Literal["BGR", "RGB"] = "BGR"
    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["float32", "uint8", "int8"] = "float32"
    quant_scale: float | None = None
    quant_zero_point: int | None = None


@dataclass(frozen=True)
class DecodeSpec:
    """How the model's raw output becomes detections.

    Attributes:
        kind: ``yolox`` (anchor-free grid at ``strides``, output (A, 5 + C): x, y, log w, log h, obj,
            classes, obj and classes already sigmoided) or ``fastestdet`` (one grid, output
            (5 + C, H, W): obj, tx, ty, tw, th, classes; score = obj^0.6 * cls^0.4).
        strides: Feature strides of the output grids, in input pixels.
        num_classes: Number of classes the output carries.
        score_threshold: Detections below this score are dropped.
        nms_iou: IoU above which a lower-scored box of the same class is suppressed.
        max_detections: At most this many detections per frame, best first.
        size_basis: ``fastestdet`` only: the input size (pixels) whose fractions its width/height terms are.
            The weights learn it at their training size; a model run at another size keeps it (None: the
            input width and height, i.e. the model runs at the size it learned).
    """

    kind: Literal["yolox", "fastestdet"]
    strides: tuple[int, ...]
    num_classes: int
    score_threshold: float = 0.25
    nms_iou: float = 0.45
    max_detections: int = 100
    size_basis: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    """Everything the device needs besides the model file itself."""

    input: InputSpec
    decode: DecodeSpec
    labels: tuple[str, ...] = field(default=("pedestrian", "stop_sign"))


@dataclass(frozen=True)
class Frame:
    """One frame from a source, with when it was captured.

    Attributes:
        image: BGR uint8 (H, W, 3), a new array per frame. Never drawn on in place (draw on a copy): the
            events stage keeps frames, uncopied, for the best snapshots of the objects it tracks.
        index: Frame number at the source, counting every frame read (also those dropped later), from 0.
        time: Wall-clock capture time (``time.time()``), for events.
        mono: ``time.monotonic()`` at capture, for frame ages and latencies.
        stream_time: For a file read as fast as possible (not paced): seconds on the video's own timeline
            (frames read / its frame rate, from the first open); None for live and paced sources.
    """

    image: np.ndarray = field(repr=False)
    index: int
    time: float
    mono: float
    stream_time: float | None = None

    @property
    def clock(self) -> float:
        """Seconds on the timeline that tracking and the motion gate run on: the video's own for a file read
        as fast as possible (so its events do not depend on how fast this machine decodes and detects),
        ``mono`` otherwise."""
        return self.mono if self.stream_time is None else self.stream_time
