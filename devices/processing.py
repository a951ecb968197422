"""Pre- and post-processing in numpy, shared by every backend and by the PyTorch evaluation.

One implementation means every runtime gives the same answer for the same frame.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from devices.errors import FrameError
from devices.types import DecodeSpec, Detections, InputSpec


@dataclass(frozen=True)
class Placement:
    """Where the original frame sits inside the model input: input = original * scale + pad."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_original(self, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
        """Map xyxy boxes from input pixels back to the original frame, clipped to it."""
        out = boxes.astype(np.float32, copy=True)
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale_x
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale_y
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
        return out


def place(frame: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, Placement]:
    """Resize (and pad) a BGR uint8 frame to the model's input size, keeping uint8 pixels."""
    h, w = frame.shape[:2]
    if spec.resize == "stretch":
        sx, sy = spec.width / w, spec.height / h
        img = cv2.resize(frame, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR)
        return img, Placement(sx, sy, 0.0, 0.0)
    # Letterbox at the top-left corner, as YOLOX trains and exports (its demo pads right/bottom only).
    r = min(spec.width / w, spec.height / h)
    nw, nh = round(w * r), round(h * r)
    img = np.full((spec.height, spec.width, 3), spec.pad_value, np.uint8)
    img[:nh, :nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return img, Placement(r, r, 0.0, 0.0)


def to_tensor(placed: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Turn a placed uint8 BGR image (H, W, 3) into the model's batch-of-one input tensor."""
    img = placed[:, :, ::-1] if spec.channel_order == "RGB" else placed
    x: np.ndarray  # the branches below give float32, uint8 or int8
    if spec.dtype == "float32":
        x = img.astype(np.float32) * spec.scale
        if spec.mean != (0.0, 0.0, 0.0) or spec.std != (1.0, 1.0, 1.0):
            x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    elif (offset := pixel_offset(spec)) is not None:
        # The input quantization undoes the normalisation: camera pixels go in with an integer shift, no floats.
        if spec.dtype == "int8" and offset == -128:
            x = (img ^ np.uint8(0x80)).view(np.int8)
        elif spec.dtype == "uint8" and offset == 0:
            x = img
        else:
            info = np.iinfo(np.dtype(spec.dtype))
            x = (img.astype(np.int16) + offset).clip(info.min, info.max).astype(spec.dtype)
    else:
        # Integer input: quantize the float the model was trained on with the input's scale/zero point (an
        # integer InputSpec carries both; BundleDetector checks them against the model file when it opens).
        assert spec.quant_scale is not None and spec.quant_zero_point is not None
        real: np.ndarray = img.astype(np.float32) * spec.scale
        real = (real - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
        info = np.iinfo(np.dtype(spec.dtype))
        q = np.round(real / spec.quant_scale) + spec.quant_zero_point
        x = q.clip(info.min, info.max).astype(spec.dtype)
    if spec.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None])


@functools.lru_cache(maxsize=16)
def pixel_offset(spec: InputSpec) -> int | None:
    """``k`` when an integer input is exactly ``pixel + k`` for every channel, else None.

    That holds when the input's quantization inverts the normalisation (YOLOX: pixels as they are, scale 1,
    zero point -128; FastestDet: pixels / 255, scale 1/255, zero point -128): q = p * g + o with g = 1 and
    o an integer.
    """
    if spec.dtype == "float32" or spec.quant_scale is None or spec.quant_zero_point is None:
        return None
    std = np.asarray(spec.std, np.float64)
    gain = spec.scale / (std * spec.quant_scale)
    offset = spec.quant_zero_point - np.asarray(spec.mean, np.float64) / (std * spec.quant_scale)
    k = round(float(offset[0]))
    if np.allclose(gain, 1.0, rtol=0, atol=1e-5) and np.allclose(offset, k, rtol=0, atol=1e-3):
        return k
    return None


def check_frame(frame: object) -> np.ndarray:
    """``frame`` if it is a BGR uint8 (H, W, 3) image.

    Raises:
        FrameError: Anything else, naming what it is: ``None`` is what ``cv2.imread`` returns for a file it
            cannot read, and what a failed camera read gives.
    """
    if frame is None:
        raise FrameError(
            "expected a BGR uint8 frame (H, W, 3), got None (cv2.imread returns None for a file it cannot read, "
            "and a camera read that failed gives None)",
            "check that the image file exists and is an image, or that the camera delivered a frame",
        )
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        what = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise FrameError(
            f"expected a BGR uint8 frame (H, W, 3), got {what}",
            "pass the image as cv2.imread/cv2.VideoCapture give it (grey images: cv2.cvtColor(img, "
            "cv2.COLOR_GRAY2BGR))",
        )
    return frame


def preprocess(frame: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, Placement]:
    """BGR uint8 frame -> (input tensor with batch dimension, placement to map boxes back).

    Raises:
        FrameError: ``frame`` is not a BGR uint8 image (``check_frame``).
    """
    placed, placement = place(check_frame(frame), spec)
    return to_tensor(placed, spec), placement


#: Per decode kind: how a box's objectness and class probability make its class score. FastestDet's
#: authors weight objectness 0.6 and class 0.4 (their runtime example); YOLOX multiplies them. Written
#: with operators only, so the trainer applies the same rule to torch tensors.
SCORE_RULES: dict[str, Callable[[Any, Any], Any]] = {
    "yolox": lambda obj, cls: obj * cls,
    "fastestdet": lambda obj, cls: (obj**0.6) * (cls**0.4),
}


def combine_scores(kind: str, obj: Any, cls: Any) -> Any:
    """Class scores from objectness and class probabilities by the rule of decode ``kind``."""
    return SCORE_RULES[kind](obj, cls)


@functools.lru_cache(maxsize=8)
def _grid(strides: tuple[int, ...], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell offsets and strides of every anchor, computed once per input size (read-only: shared by every call)."""
    cells, cell_strides = [], []
    for s in strides:
        gy, gx = np.meshgrid(np.arange(height // s), np.arange(width // s), indexing="ij")
        cells.append(np.stack([gx, gy], -1).reshape(-1, 2))
        cell_strides.append(np.full((cells[-1].shape[0], 1), s))
    grid, stride = np.concatenate(cells).astype(np.float32), np.concatenate(cell_strides).astype(np.float32)
    grid.setflags(write=False)
    stride.setflags(write=False)
    return grid, stride


def decode_yolox(raw: np.ndarray, spec: DecodeSpec, width: int, height: int) -> tuple[np.ndarray, ...]:
    """YOLOX raw output (A, 5 + C) -> boxes xyxy in input pixels, per-class scores (A, C)."""
    grid, stride = _grid(spec.strides, width, height)
    if raw.shape[0] != grid.shape[0]:
        raise ValueError(f"YOLOX output has {raw.shape[0]} anchors, expected {grid.shape[0]} for {width}x{height}")
    xy = (raw[:, :2] + grid) * stride
    wh = np.exp(np.minimum(raw[:, 2:4], 10.0)) * stride
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)
    return boxes, combine_scores("yolox", raw[:, 4:5], raw[:, 5 : 5 + spec.num_classes])


def decode_fastestdet(raw: np.ndarray, spec: DecodeSpec, width: int, height: int) -> tuple[np.ndarray, ...]:
    """FastestDet raw output (5 + C, H, W) -> boxes xyxy in input pixels, per-class scores (H*W, C).

    Box centres are offsets within the cell (tanh), sizes are fractions of the whole input (sigmoid),
    as in the authors' runtime example; of ``spec.size_basis`` pixels when the model runs at another
    size than the one it learned.
    """
    c, gh, gw = raw.shape
    flat = raw.reshape(c, -1).T
    gy, gx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    cx = (gx.reshape(-1) + np.tanh(flat[:, 1])) / gw * width
    cy = (gy.reshape(-1) + np.tanh(flat[:, 2])) / gh * height
    bw = 1.0 / (1.0 + np.exp(-flat[:, 3])) * (spec.size_basis or width)
    bh = 1.0 / (1.0 + np.exp(-flat[:, 4])) * (spec.size_basis or height)
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    obj = np.clip(flat[:, 0:1], 0.0, 1.0)
    cls = np.clip(flat[:, 5 : 5 + spec.num_classes], 0.0, 1.0)
    return boxes, combine_scores("fastestdet", obj, cls)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, limit: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best first, at most ``limit`` of them."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    keep: list[np.intp] = []
    while order.size and (limit is None or len(keep) < limit):
        i = order[0]
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = (xx2 - xx1).clip(0) * (yy2 - yy1).clip(0)
        overlap = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, np.int64)


PRE_NMS_TOP_K = 2000

_DECODERS = {"yolox": decode_yolox, "fastestdet": decode_fastestdet}


def postprocess(
    raw: np.ndarray, decode: DecodeSpec, spec: InputSpec, placement: Placement, frame_shape: tuple[int, ...]
) -> Detections:
    """Raw output of one image (batch dimension removed) -> detections in original-frame pixels."""
    boxes, scores = _DECODERS[decode.kind](raw.astype(np.float32), decode, spec.width, spec.height)
    # One candidate per (anchor, class) above threshold: a box may count for both classes, as in
    # YOLOX's and pycocotools' own per-class evaluation.
    anchor, cls = np.nonzero(scores >= decode.score_threshold)
    if anchor.size == 0:
        return Detections.empty()
    boxes, scores = boxes[anchor], scores[anchor, cls]
    # At evaluation thresholds (~0.01) thousands of candidates pass; the best few thousand are plenty
    # for 100 detections and keep NMS cheap.
    if scores.size > PRE_NMS_TOP_K:
        top = np.argpartition(-scores, PRE_NMS_TOP_K)[:PRE_NMS_TOP_K]
        boxes, scores, cls = boxes[top], scores[top], cls[top]
    # Class-aware NMS by offsetting each class's boxes far apart.
    offset = cls[:, None].astype(np.float32) * (max(spec.width, spec.height) * 4.0)
    keep = nms(boxes + offset, scores, decode.nms_iou, decode.max_detections)
    out = placement.to_original(boxes[keep], frame_shape[1], frame_shape[0])
    return Detections(out, scores[keep].astype(np.float32), cls[keep].astype(np.int64))
