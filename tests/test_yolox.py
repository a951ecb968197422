"""YOLOX-Nano: the authors' ONNX weights import exactly, the 2-class head keeps COCO's rows, bad files fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from devices.errors import ConfigError, ModelFileError
from devices.processing import postprocess, preprocess
from models import create_model
from models.base import COCO_ROWS, TARGET_CLASSES
from models.hub import resolve
from models.yolox import YOLOX, YOLOX_NANO_COCO, BaseConv, import_onnx_weights, yolox_nano
from tests.conftest import box_iou

# Persons (COCO train), a stop sign next to a truck (COCO val), a street stop sign (Kaggle, RGBA PNG).
PARITY_IMAGES = (
    "datasets/coco128/images/train2017/000000000086.jpg",
    "datasets/coco128/images/val2017/000000000724.jpg",
    "datasets/roadsign_kaggle_stop/images/road22.png",
)
# Objectness and class scores (0-1) must match to 1e-4. The raw box terms (grid units, |v| up to ~10)
# carry float32 noise: ONNX Runtime's own output differs from a float64 evaluation of the same weights
# by up to 2.5e-4 on coco128 images, so they are held to 5e-4 (= 0.016 px at stride 32).
SCORE_ATOL = 1e-4
BOX_ATOL = 5e-4


@pytest.fixture(scope="module")
def onnx_file(mirror: Path) -> Path:
    return resolve(YOLOX_NANO_COCO.file, "yolox-nano weights", mirror)


@pytest.fixture(scope="module")
def coco_model(mirror: Path) -> YOLOX:
    torch.set_num_threads(1)
    return yolox_nano(num_classes=80, mirror=str(mirror))


@pytest.fixture(scope="module")
def target_model(mirror: Path) -> YOLOX:
    return create_model("yolox-nano", num_classes=2, mirror=str(mirror))


def _input(mirror: Path, rel: str, model: YOLOX) -> tuple[np.ndarray, np.ndarray, object]:
    frame = cv2.imread(str(mirror / rel))
    assert frame is not None, f"cannot read {mirror / rel}"
    x, placement = preprocess(frame, model.spec.input)
    return frame, x, placement


def _run(model: YOLOX, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("rel", PARITY_IMAGES)
def test_forward_matches_authors_onnx(mirror: Path, onnx_file: Path, coco_model: YOLOX, rel: str) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
    _, x, _ = _input(mirror, rel, coco_model)
    ref = session.run(None, {"images": x})[0]
    out = _run(coco_model, x)
    assert out.shape == ref.shape == (1, 3549, 85)
    assert np.abs(out[..., 4:] - ref[..., 4:]).max() <= SCORE_ATOL
    assert np.abs(out[..., :4] - ref[..., :4]).max() <= BOX_ATOL


def test_imported_batch_norm_is_identity_plus_folded_bias(coco_model: YOLOX) -> None:
    # 113 convolutions in the file, of which 9 are the prediction convs (no batch norm).
    blocks = [m for m in coco_model.modules() if isinstance(m, BaseConv)]
    assert len(blocks) == 104
    for block in blocks:
        bn = block.bn
        y = torch.randn(2, bn.num_features, 5, 5) * 100
        with torch.no_grad():
            assert torch.equal(bn(y), y + bn.bias[:, None, None])


def test_two_class_head_equals_coco_person_and_stop_sign(mirror: Path, coco_model: YOLOX, target_model: YOLOX) -> None:
    assert target_model.spec.labels == TARGET_CLASSES == ("pedestrian", "stop_sign")
    assert target_model.spec.decode.num_classes == 2 and not target_model.training
    cols = [5 + COCO_ROWS[name] for name in TARGET_CLASSES]
    assert cols == [5, 16]
    for rel in PARITY_IMAGES[:2]:
        _, x, _ = _input(mirror, rel, coco_model)
        full, two = _run(coco_model, x), _run(target_model, x)
        assert two.shape == (1, 3549, 7)
        # Box and objectness go through identical layers; the class 1x1 conv with 2 rather than 80
        # output channels may round differently (measured 1.8e-7).
        assert np.array_equal(two[..., :5], full[..., :5])
        np.testing.assert_allclose(two[..., 5:], full[..., cols], rtol=0, atol=1e-6)


def test_two_class_model_finds_the_annotated_pedestrian(mirror: Path, target_model: YOLOX) -> None:
    rel = "datasets/coco128/images/train2017/000000000086.jpg"
    frame, x, placement = _input(mirror, rel, target_model)
    dets = postprocess(
        _run(target_model, x)[0], target_model.spec.decode, target_model.spec.input, placement, frame.shape
    )
    h, w = frame.shape[:2]
    labels = np.loadtxt(mirror / "datasets/coco128/labels/train2017/000000000086.txt", ndmin=2)
    people = labels[labels[:, 0] == 0, 1:]
    gt = np.stack([(people[:, 0] - people[:, 2] / 2) * w, (people[:, 1] - people[:, 3] / 2) * h,
                   (people[:, 0] + people[:, 2] / 2) * w, (people[:, 1] + people[:, 3] / 2) * h], 1)  # fmt: skip
    ped = dets.select(dets.class_ids == TARGET_CLASSES.index("pedestrian"))
    assert len(ped) >= 1
    assert box_iou(ped.boxes, gt).max() > 0.5


def test_two_class_model_finds_a_street_stop_sign(mirror: Path, target_model: YOLOX) -> None:
    frame, x, placement = _input(mirror, "datasets/roadsign_kaggle_stop/images/road22.png", target_model)
    dets = postprocess(
        _run(target_model, x)[0], target_model.spec.decode, target_model.spec.input, placement, frame.shape
    )
    assert (dets.class_ids == TARGET_CLASSES.index("stop_sign")).any()




def test_importer_refuses_truncated_file(onnx_file: Path, tmp_path: Path) -> None:
    cut = tmp_path / "yolox_nano.onnx"
    cut.write_bytes(onnx_file.read_bytes()[: onnx_file.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        import_onnx_weights(YOLOX(80), cut)
    with pytest.raises(ModelFileError, match="not found"):
        import_onnx_weights(YOLOX(80), tmp_path / "absent.onnx")


def test_importer_refuses_another_detector(mirror: Path) -> None:
    with pytest.raises(ModelFileError, match="not a YOLOX-Nano"):
        import_onnx_weights(YOLOX(80), mirror / "weights/fastestdet/FastestDet.onnx")


def test_importer_refuses_shape_mismatch(onnx_file: Path) -> None:
    # Same layer count, twice the width (YOLOX-Tiny-like): every tensor shape differs.
    with pytest.raises(ModelFileError, match="does not match the YOLOX-Nano structure"):
        import_onnx_weights(YOLOX(80, width=0.5), onnx_file)
    with pytest.raises(ModelFileError, match="cls_preds"):
        import_onnx_weights(YOLOX(2), onnx_file)
    with pytest.raises(ConfigError, match="out of range"):
        import_onnx_weights(YOLOX(2), onnx_file, class_rows=[0, 80])


def test_tampered_copy_is_refused_by_hash(onnx_file: Path, tmp_path: Path) -> None:
    copy = tmp_path / YOLOX_NANO_COCO.file.mirror_path
    copy.parent.mkdir(parents=True)
    shutil.copyfile(onnx_file, copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256"):
        resolve(YOLOX_NANO_COCO.file, "yolox-nano weights", tmp_path)
    with pytest.raises(ModelFileError, match="sha256"):
        yolox_nano(num_classes=2, mirror=str(tmp_path))


def test_random_init_any_size_divisible_by_32() -> None:
    model = yolox_nano(num_classes=3, pretrained=False).eval()
    x = torch.rand(2, 3, 256, 320) * 255
    with torch.no_grad():
        logits, out = model.logits(x), model(x)
    anchors = sum((256 // s) * (320 // s) for s in (8, 16, 32))
    assert logits.shape == out.shape == (2, anchors, 8)
    assert torch.equal(out[..., :4], logits[..., :4])
    assert torch.allclose(out[..., 4:], torch.sigmoid(logits[..., 4:]))
    # upstream's prior: scores start at 0.01 so early training is not swamped by false positives.
    assert model.head.cls_preds[0].bias.detach().sigmoid().sub(0.01).abs().max() < 1e-6
    assert model.spec.decode.num_classes == 3 and len(model.spec.labels) == 3


def test_pretrained_head_only_for_80_or_2_classes() -> None:
    with pytest.raises(ConfigError, match="pretrained=False"):
        yolox_nano(num_classes=5)


def test_onnx_export_matches_pytorch(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = YOLOX(2).eval()
    x = torch.rand(1, 3, 160, 224) * 255
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["images"], output_names=["output"])
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), rtol=0, atol=1e-4)


@pytest.mark.slow
def test_torch_export_with_dynamic_size() -> None:
    model = YOLOX(2).eval()
    h, w = torch.export.Dim("h", min=2, max=40), torch.export.Dim("w", min=2, max=40)
    program = torch.export.export(
        model, (torch.rand(1, 3, 256, 320) * 255,), dynamic_shapes={"x": {2: 32 * h, 3: 32 * w}}
    )
    x = torch.rand(1, 3, 416, 416) * 255
    with torch.no_grad():
        assert torch.equal(program.module()(x), model(x))
