"""OnnxRuntimeBackend: runs real ONNX files on preprocessed frames and fails clearly on bad files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devices.backends.onnxrt import OnnxRuntimeBackend
from devices.errors import ConfigError, MissingDependencyError, ModelFileError
from devices.processing import postprocess, preprocess
from devices.types import DecodeSpec, InputSpec

REPO = Path(__file__).resolve().parents[1]
YOLOX_ONNX = "weights/peers/yolox-nano-onnx/yolox_nano.onnx"
YOLOX_INPUT = InputSpec(width=416, height=416)
YOLOX_DECODE = DecodeSpec(kind="yolox", strides=(8, 16, 32), num_classes=80)
STOP_SIGN = 11  # COCO-80 row of "stop sign"


@pytest.fixture(scope="module")
def yolox(mirror: Path) -> Path:
    return mirror / YOLOX_ONNX


@pytest.fixture(scope="module")
def road_photo(mirror: Path) -> np.ndarray:
    from toolkit.data.images import load_image

    return load_image(mirror / "datasets/roadsign_kaggle_stop/images/road160.png")  # RGBA PNG with a stop sign


def test_runs_stock_yolox_and_finds_the_stop_sign(yolox: Path, road_photo: np.ndarray) -> None:
    with OnnxRuntimeBackend(yolox, threads=1) as backend:
        assert backend.input_shape == (1, 3, 416, 416)
        assert backend.input_dtype == np.float32
        assert backend.providers[-1] == "CPUExecutionProvider"
        tensor, placement = preprocess(road_photo, YOLOX_INPUT)
        raw = backend.run(tensor)
    assert raw.shape == (1, 3549, 85)  # batch dimension kept
    dets = postprocess(raw[0], YOLOX_DECODE, YOLOX_INPUT, placement, road_photo.shape)
    stops = dets.select(dets.class_ids == STOP_SIGN)
    assert len(stops) >= 1 and stops.scores.max() > 0.5
    # The labelled stop sign of road160.xml is at x 180-233, y 89-137.
    x1, y1, x2, y2 = stops.boxes[np.argmax(stops.scores)]
    assert abs(x1 - 180) < 10 and abs(y1 - 89) < 10 and abs(x2 - 233) < 10 and abs(y2 - 137) < 10


def test_same_answer_on_every_run(yolox: Path, road_photo: np.ndarray) -> None:
    tensor, _ = preprocess(road_photo, YOLOX_INPUT)
    with OnnxRuntimeBackend(yolox, threads=1) as backend:
        first, second = backend.run(tensor), backend.run(tensor)
    np.testing.assert_array_equal(first, second)


def test_truncated_file_is_a_model_file_error(yolox: Path, tmp_path: Path) -> None:
    data = yolox.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError) as info:
        OnnxRuntimeBackend(truncated).open()
    assert str(truncated) in str(info.value)
    assert "sha256" in info.value.fix


def test_not_an_onnx_file_is_a_model_file_error(tmp_path: Path) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    with pytest.raises(ModelFileError), OnnxRuntimeBackend(bogus):
        pass


def test_missing_file_is_a_model_file_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not found"), OnnxRuntimeBackend(tmp_path / "absent.onnx"):
        pass


def test_wrong_tensor_is_refused(yolox: Path) -> None:
    with OnnxRuntimeBackend(yolox, threads=1) as backend:
        with pytest.raises(ConfigError, match=r"\(1, 3, 416, 416\)"):
            backend.run(np.zeros((1, 3, 320, 320), np.float32))
        with pytest.raises(ConfigError, match="uint8"):
            backend.run(np.zeros((1, 3, 416, 416), np.uint8))


def test_unavailable_provider_is_a_config_error(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    with pytest.raises(ConfigError, match="NoSuchExecutionProvider"):
        OnnxRuntimeBackend(model, providers=["NoSuchExecutionProvider"]).open()


def test_bad_thread_count_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="threads=0"):
        OnnxRuntimeBackend(tmp_path / "model.onnx", threads=0)


def test_run_needs_an_open_backend(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="context manager"):
        OnnxRuntimeBackend(tmp_path / "model.onnx").run(np.zeros((1, 3, 416, 416), np.float32))


def test_missing_onnxruntime_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes "import onnxruntime" raise ImportError
    with pytest.raises(MissingDependencyError) as info:
        OnnxRuntimeBackend(model).open()
    assert "edgesight[onnx]" in info.value.fix


def test_device_side_does_not_import_torch() -> None:
    code = "import sys, devices.backends.onnxrt; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False).returncode == 0
