"""The shared numpy pre/post-processing: what every backend relies on for the same answer."""

from __future__ import annotations

import numpy as np
import pytest

from devices.processing import decode_yolox, nms, pixel_offset, postprocess, preprocess, to_tensor
from devices.types import DecodeSpec, InputSpec

YOLOX_IN = InputSpec(width=64, height=64, resize="letterbox", pad_value=114)


def test_letterbox_keeps_aspect_and_maps_boxes_back() -> None:
    frame = np.zeros((50, 100, 3), np.uint8)
    frame[10:20, 30:60] = 255
    tensor, placement = preprocess(frame, YOLOX_IN)
    assert tensor.shape == (1, 3, 64, 64) and tensor.dtype == np.float32
    # 100x50 -> 64x32 at the top-left; the rest is padding.
    assert tensor[0, 0, 40, 10] == 114
    assert tensor[0, 0, 8, 25] == 255
    box_in_input = np.array([[30 * 0.64, 10 * 0.64, 60 * 0.64, 20 * 0.64]], np.float32)
    back = placement.to_original(box_in_input, 100, 50)
    np.testing.assert_allclose(back, [[30, 10, 60, 20]], atol=1e-4)


def test_stretch_and_integer_nhwc_input() -> None:
    spec = InputSpec(width=32, height=16, resize="stretch", scale=1 / 255, layout="NHWC", dtype="int8",
                     quant_scale=1 / 255, quant_zero_point=-128)
    frame = np.full((40, 40, 3), 255, np.uint8)
    tensor, placement = preprocess(frame, spec)
    assert tensor.shape == (1, 16, 32, 3) and tensor.dtype == np.int8
    assert int(tensor.max()) == 127  # 1.0 / (1/255) - 128
    assert placement.scale_x == pytest.approx(0.8) and placement.scale_y == pytest.approx(0.4)


def test_preprocess_rejects_non_bgr_frames() -> None:
    with pytest.raises(ValueError, match="BGR uint8"):
        preprocess(np.zeros((10, 10), np.uint8), YOLOX_IN)


def test_nms_suppresses_overlaps_only() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    keep = nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), 0.5)
    assert keep.tolist() == [0, 2]


def test_yolox_decode_and_postprocess_place_a_box_in_the_original_frame() -> None:
    spec = DecodeSpec(kind="yolox", strides=(8, 16, 32), num_classes=2, score_threshold=0.3)
    anchors = (64 // 8) ** 2 + (64 // 16) ** 2 + (64 // 32) ** 2
    raw = np.zeros((anchors, 7), np.float32)
    raw[:, 2:4] = np.log(1.0)
    # One confident stop sign at the stride-16 cell (2, 1): centre (2.5*16, 1.5*16) = (40, 24), size 32x32.
    i = 64 + 1 * 4 + 2
    raw[i] = [0.5, 0.5, np.log(2.0), np.log(2.0), 0.9, 0.1, 1.0]
    boxes, _scores = decode_yolox(raw, spec, 64, 64)
    np.testing.assert_allclose(boxes[i], [24, 8, 56, 40])
    frame = np.zeros((128, 128, 3), np.uint8)  # letterboxed at scale 0.5
    _, placement = preprocess(frame, YOLOX_IN)
    dets = postprocess(raw, spec, YOLOX_IN, placement, frame.shape)
    assert len(dets) == 1 and dets.class_ids[0] == 1
    np.testing.assert_allclose(dets.boxes[0], [48, 16, 112, 80])
    assert dets.scores[0] == pytest.approx(0.9)


def _quantized_reference(placed: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The definition: normalise in float64, quantize with the input's scale and zero point."""
    img = placed[:, :, ::-1] if spec.channel_order == "RGB" else placed
    real = (img.astype(np.float64) * spec.scale - np.asarray(spec.mean)) / np.asarray(spec.std)
    info = np.iinfo(np.dtype(spec.dtype))
    q = np.clip(np.round(real / spec.quant_scale) + spec.quant_zero_point, info.min, info.max)
    q = q.astype(spec.dtype)
    return (q.transpose(2, 0, 1) if spec.layout == "NCHW" else q)[None]


@pytest.mark.parametrize(
    "spec",
    [
        # YOLOX-Nano's int8 TFLite input: pixels as they are, scale 1, zero point -128.
        InputSpec(width=64, height=48, layout="NHWC", dtype="int8", quant_scale=1.0, quant_zero_point=-128),
        # FastestDet's: pixels / 255, with the scale float32(1/255) as read back from the file.
        InputSpec(width=64, height=48, resize="stretch", channel_order="RGB", scale=1 / 255, layout="NHWC",
                  dtype="int8", quant_scale=float(np.float32(1 / 255)), quant_zero_point=-128),
        InputSpec(width=64, height=48, layout="NCHW", dtype="uint8", quant_scale=1.0, quant_zero_point=0),
    ],
)
def test_integer_input_shifts_pixels_exactly_as_quantizing_would(spec: InputSpec) -> None:
    assert pixel_offset(spec) is not None
    placed = np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8)
    placed[0, :3] = [[0, 0, 0], [255, 255, 255], [127, 128, 129]]
    fast = to_tensor(placed, spec)
    assert fast.dtype == np.dtype(spec.dtype)
    assert np.array_equal(fast, _quantized_reference(placed, spec))


def test_integer_input_with_a_real_normalisation_is_quantized_from_floats() -> None:
    spec = InputSpec(width=8, height=8, resize="stretch", channel_order="RGB", scale=1 / 255,
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), layout="NHWC", dtype="int8",
                     quant_scale=0.0187, quant_zero_point=-14)
    assert pixel_offset(spec) is None
    placed = np.random.default_rng(1).integers(0, 256, (8, 8, 3), np.uint8)
    assert np.array_equal(to_tensor(placed, spec), _quantized_reference(placed, spec))
