"""TfliteBackend: runs real TFLite files with LiteRT and with tflite-runtime 2.14, and fails clearly.

tflite-runtime needs numpy < 2, so it lives in its own venv (``.venv-tflite``, created by CI); the
checks that use it run there as a subprocess, which also keeps a runtime crash out of pytest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from devices.backends.tflite import TfliteBackend, check_flatbuffer
from devices.errors import ConfigError, MissingDependencyError, ModelFileError
from tests.conftest import box_iou

REPO = Path(__file__).resolve().parents[1]
TFLITE_VENV_PYTHON = REPO / ".venv-tflite" / "bin" / "python"
SSD = "weights/peers/ssd-mobilenetv2-fpnlite-320-coco-tflite/ssd_mobilenet_v2_fpnlite_320_coco.tflite"
STOP_SIGNS = "datasets/roboflow_stop_signs/valid"


def tflite_runtime_python() -> Path:
    """The .venv-tflite interpreter, or a skip that says how to create it."""
    if not TFLITE_VENV_PYTHON.is_file():
        pytest.skip(
            "tflite-runtime venv missing: python3 -m venv .venv-tflite && .venv-tflite/bin/pip install "
            "tflite-runtime==2.14.0 'numpy<2' opencv-python-headless"
        )
    return TFLITE_VENV_PYTHON


def run_in_tflite_runtime(code: str, *args: str) -> dict:
    """Run ``code`` with tflite-runtime's python (repo on the path); it prints one JSON line."""
    proc = subprocess.run(
        [str(tflite_runtime_python()), "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert proc.returncode == 0, f"tflite-runtime subprocess failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def ssd(mirror: Path) -> Path:
    return mirror / SSD


@pytest.fixture(scope="module")
def stop_sign(mirror: Path) -> tuple[np.ndarray, np.ndarray]:
    """A real stop-sign photo (BGR) and its labelled stop-sign boxes, normalised yxyx like the SSD's."""
    images = sorted((mirror / STOP_SIGNS / "images").glob("*.jpg"))
    for path in images:
        rows = np.loadtxt(mirror / STOP_SIGNS / "labels" / f"{path.stem}.txt", ndmin=2)
        rows = rows[rows[:, 0] == 1]  # class 1 = stop sign (0 = pole)
        if len(rows):
            cx, cy, w, h = rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4]
            return cv2.imread(str(path)), np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], 1)
    pytest.fail(f"no labelled stop sign in {mirror / STOP_SIGNS}")


def ssd_input(frame: np.ndarray) -> np.ndarray:
    """The SSD peer's preprocessing (SOURCE.txt): 320x320 stretched, RGB, (x - 127.5) / 127.5, NHWC."""
    rgb = cv2.resize(frame, (320, 320))[:, :, ::-1].astype(np.float32)
    return ((rgb - 127.5) / 127.5)[None]




def test_litert_runs_a_real_detector_and_finds_the_stop_sign(ssd, stop_sign):
    frame, labelled = stop_sign
    with TfliteBackend(ssd, threads=1, runtime="ai_edge_litert") as backend:
        assert backend.runtime == "ai_edge_litert"
        details = backend.input_details
        assert (details.shape, details.dtype, details.scale) == ((1, 320, 320, 3), np.dtype(np.float32), None)
        boxes = backend.run(ssd_input(frame))
    assert boxes.shape == (1, 10, 4)
    # Detections come best first: the top box is the labelled stop sign.
    assert box_iou(boxes[0, 0], labelled).max() > 0.5


def test_auto_prefers_ai_edge_litert(ssd):
    with TfliteBackend(ssd, threads=1) as backend:
        assert backend.runtime == "ai_edge_litert"


def test_tflite_runtime_gives_the_same_boxes(ssd, stop_sign, tmp_path):
    frame, _ = stop_sign
    tensor = tmp_path / "input.npy"
    np.save(tensor, ssd_input(frame))
    with TfliteBackend(ssd, threads=1, runtime="ai_edge_litert") as backend:
        litert_boxes = backend.run(np.load(tensor))
    result = run_in_tflite_runtime(
        """
        import json, sys
        import numpy as np
        from devices.backends.tflite import TfliteBackend
        with TfliteBackend(sys.argv[1], threads=1, runtime="tflite_runtime") as backend:
            out = backend.run(np.load(sys.argv[2]))
        print(json.dumps({"runtime": backend.runtime, "boxes": out.tolist()}))
        """,
        str(ssd),
        str(tensor),
    )
    assert result["runtime"] == "tflite_runtime"
    # The two runtimes' kernels round differently (scores differ by ~0.005 on this photo), so the
    # low-scored tail may reorder; the confident detections must be the same boxes.
    np.testing.assert_allclose(np.asarray(result["boxes"])[0, :3], litert_boxes[0, :3], atol=5e-3)


@pytest.mark.parametrize("fraction", [0.001, 0.5, 0.999])
def test_truncated_file_raises_model_file_error_with_the_fix(ssd, tmp_path, fraction):
    data = ssd.read_bytes()
    broken = tmp_path / "model.tflite"
    broken.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelFileError, match="sha256") as err:
        TfliteBackend(broken, threads=1).open()
    assert str(broken) in str(err.value)


def test_truncated_file_fails_cleanly_in_tflite_runtime(ssd, tmp_path):
    # tflite-runtime 2.14 itself segfaults on this file; the backend must refuse it before loading.
    data = ssd.read_bytes()
    broken = tmp_path / "model.tflite"
    broken.write_bytes(data[: len(data) // 2])
    result = run_in_tflite_runtime(
        """
        import json, sys
        from devices.backends.tflite import TfliteBackend
        from devices.errors import ModelFileError
        try:
            TfliteBackend(sys.argv[1], runtime="tflite_runtime").open()
            print(json.dumps({"error": None}))
        except ModelFileError as exc:
            print(json.dumps({"error": str(exc)}))
        """,
        str(broken),
    )
    assert result["error"] and "not a complete TFLite model" in result["error"]


def test_other_files_are_refused(tmp_path, ssd):
    not_tflite = tmp_path / "model.tflite"
    not_tflite.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(ModelFileError, match="TFL3"):
        TfliteBackend(not_tflite).open()
    with pytest.raises(ModelFileError, match="not found"):
        TfliteBackend(tmp_path / "missing.tflite").open()
    check_flatbuffer(ssd.read_bytes(), ssd)  # the intact file passes the structure check


def test_no_runtime_installed_names_the_tflite_extra(monkeypatch, ssd):
    for module in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    with pytest.raises(MissingDependencyError, match=r"edgesight\[tflite\]") as err:
        TfliteBackend(ssd).open()
    assert "tflite-runtime" in str(err.value)


def test_wrong_input_layout_is_a_clear_error(ssd):
    with TfliteBackend(ssd, threads=1) as backend:
        with pytest.raises(ConfigError, match="NHWC"):
            backend.run(np.zeros((1, 3, 320, 320), np.float32))


def test_bad_arguments_are_config_errors(ssd):
    with pytest.raises(ConfigError, match="threads"):
        TfliteBackend(ssd, threads=0)
    with pytest.raises(ConfigError, match="runtime"):
        TfliteBackend(ssd, runtime="tensorflow")  # type: ignore[arg-type]


def test_backend_imports_neither_torch_nor_workstation_code():
    code = (
        "import sys, devices.backends.tflite\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'toolkit', 'models', 'calibration')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
