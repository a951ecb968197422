"""TFLite export: float32 parity with PyTorch, and an INT8 file that is integer, small and still detects.

Conversions take tens of seconds each on a two-core machine, so each file is made once per module and
the tests that need one are marked slow.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from devices.backends.tflite import TfliteBackend
from devices.errors import CalibrationError, MissingDependencyError
from devices.processing import postprocess, preprocess
from devices.types import Detections

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")
from models import create_model  # noqa: E402
from tests.conftest import box_iou  # noqa: E402
from toolkit.export.tflite import export_tflite_fp32  # noqa: E402
from toolkit.export.tflite_compact import compact_tflite  # noqa: E402
from toolkit.export.tflite_int8 import export_tflite_int8  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TFLITE_VENV_PYTHON = REPO / ".venv-tflite" / "bin" / "python"
CALIBRATION_IMAGES = 16


def real_images(mirror: Path) -> list[np.ndarray]:
    """Street photos with people (COCO) and a stop sign (Roboflow valid split), not used to calibrate."""
    coco = sorted((mirror / "datasets/coco128/images/train2017").glob("*.jpg"))[:3]
    stop = sorted((mirror / "datasets/roboflow_stop_signs/valid/images").glob("*.jpg"))[:1]
    return [cv2.imread(str(p)) for p in [*coco, *stop]]


def calibration_paths(mirror: Path) -> list[Path]:
    coco = sorted((mirror / "datasets/coco128/images/val2017").glob("*.jpg"))[: CALIBRATION_IMAGES * 3 // 4]
    stop = sorted((mirror / "datasets/roboflow_stop_signs/train/images").glob("*.jpg"))[: CALIBRATION_IMAGES // 4]
    return [*coco, *stop]


def torch_raw(model: torch.nn.Module, tensor: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(tensor)).numpy()


def nhwc(spec, backend: TfliteBackend):
    """The model's InputSpec for the TFLite file: NHWC, and the file's integer input if it has one."""
    details = backend.input_details
    return dataclasses.replace(
        spec, layout="NHWC", dtype=details.dtype.name, quant_scale=details.scale, quant_zero_point=details.zero_point
    )




def matched_fraction(reference: list[Detections], candidate: list[Detections], min_score: float = 0.5) -> float:
    """Share of the reference's confident detections that the candidate finds (same class, IoU >= 0.5)."""
    found = total = 0
    for ref, cand in zip(reference, candidate, strict=True):
        confident = ref.select(ref.scores >= min_score)
        total += len(confident)
        for box, cls in zip(confident.boxes, confident.class_ids, strict=True):
            same = cand.select(cand.class_ids == cls)
            found += bool(len(same)) and bool(box_iou(box[None], same.boxes).max() >= 0.5)
    assert total > 0, "the reference found nothing confident on these photos"
    return found / total


@pytest.fixture(scope="module")
def yolox(mirror: Path) -> torch.nn.Module:
    torch.set_num_threads(1)
    return create_model("yolox-nano", num_classes=2, mirror=str(mirror)).eval()


@pytest.fixture(scope="module")
def yolox_fp32(yolox, tmp_path_factory) -> Path:
    return export_tflite_fp32(yolox, tmp_path_factory.mktemp("tflite") / "yolox_fp32.tflite")


@pytest.fixture(scope="module")
def yolox_int8(yolox, yolox_fp32, mirror):
    tensors = (preprocess(cv2.imread(str(p)), yolox.spec.input)[0] for p in calibration_paths(mirror))
    return export_tflite_int8(yolox, yolox_fp32.with_name("yolox_int8.tflite"), tensors, float_model=yolox_fp32)


@pytest.fixture(scope="module")
def fastestdet(mirror: Path) -> torch.nn.Module:
    torch.set_num_threads(1)
    return create_model("fastestdet", num_classes=2, mirror=str(mirror)).eval()


@pytest.fixture(scope="module")
def fastestdet_fp32(fastestdet, tmp_path_factory) -> Path:
    return export_tflite_fp32(fastestdet, tmp_path_factory.mktemp("tflite") / "fastestdet_fp32.tflite")


@pytest.fixture(scope="module")
def yolox_reference(yolox, mirror) -> list[tuple[np.ndarray, np.ndarray, Detections]]:
    """(frame, PyTorch raw output, PyTorch detections) per real photo."""
    out = []
    for frame in real_images(mirror):
        tensor, placement = preprocess(frame, yolox.spec.input)
        raw = torch_raw(yolox, tensor)
        out.append((frame, raw, postprocess(raw[0], yolox.spec.decode, yolox.spec.input, placement, frame.shape)))
    return out


def run_in_tflite_runtime(path: Path, inputs: list[np.ndarray], folder: Path) -> list[np.ndarray]:
    """The file's first output per input in tflite-runtime 2.14, which lives in its own venv (numpy < 2)."""
    if not TFLITE_VENV_PYTHON.is_file():
        pytest.skip("tflite-runtime venv missing: create .venv-tflite (see tests/test_backend_tflite.py)")
    folder.mkdir(parents=True, exist_ok=True)
    for i, tensor in enumerate(inputs):
        np.save(folder / f"input{i}.npy", tensor)
    code = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from devices.backends.tflite import TfliteBackend\n"
        "folder = Path(sys.argv[2])\n"
        "with TfliteBackend(sys.argv[1], threads=1, runtime='tflite_runtime') as b:\n"
        "    for i in range(int(sys.argv[3])):\n"
        "        np.save(folder / f'output{i}.npy', b.run(np.load(folder / f'input{i}.npy')))\n"
    )
    subprocess.run(
        [str(TFLITE_VENV_PYTHON), "-c", code, str(path), str(folder), str(len(inputs))],
        check=True, timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    return [np.load(folder / f"output{i}.npy") for i in range(len(inputs))]


def run_file(path: Path, spec, frames: list[np.ndarray], decode, runtime: str = "auto") -> list[Detections]:
    with TfliteBackend(path, threads=1, runtime=runtime) as backend:
        file_spec = nhwc(spec, backend)
        dets = []
        for frame in frames:
            tensor, placement = preprocess(frame, file_spec)
            dets.append(postprocess(backend.run(tensor)[0], decode, file_spec, placement, frame.shape))
    return dets


@pytest.mark.slow
def test_fp32_yolox_matches_torch_on_real_photos(yolox, yolox_fp32, yolox_reference):
    with TfliteBackend(yolox_fp32, threads=1) as backend:
        assert backend.input_details.shape == (1, 416, 416, 3)
        assert backend.input_details.dtype == np.float32
        for frame, raw, _ in yolox_reference:
            tensor, _ = preprocess(frame, nhwc(yolox.spec.input, backend))
            out = backend.run(tensor)
            assert out.shape == raw.shape == (1, 3549, 7)
            # Scores agree to 1e-4. Box terms (grid units, <= 1e-3 = 0.03 px at stride 32) differ more:
            # with 0..255 inputs the activations reach ~100, and XNNPACK sums in another order than
            # PyTorch (measured 4e-4 worst; 1.4e-4 with TFLite's reference kernels).
            np.testing.assert_allclose(out[..., 4:], raw[..., 4:], atol=1e-4, rtol=0)
            np.testing.assert_allclose(out[..., :4], raw[..., :4], atol=1e-3, rtol=0)


@pytest.mark.slow
def test_fp32_fastestdet_matches_torch_on_real_photos(mirror, fastestdet, fastestdet_fp32):
    with TfliteBackend(fastestdet_fp32, threads=1) as backend:
        assert backend.input_details.shape == (1, 352, 352, 3)
        for frame in real_images(mirror):
            tensor, _ = preprocess(frame, fastestdet.spec.input)
            out = backend.run(np.ascontiguousarray(tensor.transpose(0, 2, 3, 1)))
            np.testing.assert_allclose(out, torch_raw(fastestdet, tensor), atol=1e-4, rtol=0)


def xnnpack_partitions(path: Path) -> tuple[list[str], int]:
    """(op names in the file, number of XNNPACK partitions the default CPU interpreter makes of it)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    return [op for op in ops if op != "DELEGATE"], ops.count("DELEGATE")


@pytest.mark.slow
@pytest.mark.parametrize("exported", ["yolox_fp32", "fastestdet_fp32"])
def test_float_graph_stays_in_xnnpack(exported, request):
    # XNNPACK cannot run a strided slice; each one cut the graph out of the delegate. FastestDet's 26
    # channel-split slices made 16 partitions (10.3 ms against 5.4 ms without them, one run, 1 thread)
    # and YOLOX-Nano's Focus slices cost it 28.6 against 19.5 ms. What stays outside is the
    # nearest-neighbour upsampling (and FastestDet's -inf max-pool padding): at most 3 partitions.
    ops, partitions = xnnpack_partitions(request.getfixturevalue(exported))
    assert "STRIDED_SLICE" not in ops
    assert 1 <= partitions <= 3


@pytest.mark.slow
def test_int8_is_integer_small_and_int8_throughout(yolox_fp32, yolox_int8):
    # The device feeds camera pixels: int8 = pixel - 128 exactly (scale 1), NHWC.
    assert yolox_int8.input_dtype == "int8"
    assert (yolox_int8.input_scale, yolox_int8.input_zero_point) == (1.0, -128)
    assert yolox_int8.input_shape == (1, 416, 416, 3)
    assert yolox_int8.output_dtype == "float32"
    # Besides the output assembly, only the ops around noisy activations compute in float (convolutions,
    # and the SiLUs' LOGISTIC/MUL), and every convolution still stores int8 weights.
    assert yolox_int8.float_activations
    assert set(yolox_int8.float_ops) <= {
        "CONCATENATION", "RESHAPE", "TRANSPOSE", "SLICE", "LOGISTIC", "MUL", "CONV_2D", "DEPTHWISE_CONV_2D", "PAD",
    }  # fmt: skip
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(yolox_int8.path))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    producer = {o: op for op in ops for o in op["outputs"]}

    def weight_dtype(op):  # int8 directly, or an int8 constant dequantized once at load
        w = op["inputs"][1]
        if tensors[w]["dtype"] == np.float32 and w in producer and producer[w]["op_name"] == "DEQUANTIZE":
            w = producer[w]["inputs"][0]
        return tensors[w]["dtype"]

    convs = [op for op in ops if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert len(convs) > 100 and all(weight_dtype(op) == np.int8 for op in convs)
    integer_convs = [op for op in convs if tensors[op["outputs"][0]]["dtype"] == np.int8]
    assert len(integer_convs) >= 30
    # The int8 weights are 23 % of the float file; their per-channel scales, the int32 biases and the
    # graph add 4 % (27 % measured; 37 % before compact_tflite dropped tensor names and shared zero points).
    assert yolox_int8.size_bytes <= 0.3 * yolox_fp32.stat().st_size


@pytest.mark.slow
def test_full_integer_fastestdet_is_small_and_runs_in_both_runtimes(mirror, fastestdet, fastestdet_fp32, tmp_path):
    # The file the export ships for FastestDet: full-integer (its first try passes the gate).
    tensors = (preprocess(cv2.imread(str(p)), fastestdet.spec.input)[0] for p in calibration_paths(mirror))
    int8 = export_tflite_int8(
        fastestdet,
        fastestdet_fp32.with_name("fastestdet_int8.tflite"),
        tensors,
        float_model=fastestdet_fp32,
        max_noise_to_signal=None,
    )
    assert int8.float_activations == ()
    assert not {"CONV_2D", "DEPTHWISE_CONV_2D"} & set(int8.float_ops)
    # Its int8 weights are 20 % of the float file (whose tensor names are another 16 %); the weight and
    # bias scales (8 bytes a channel), int32 biases and the graph add 7 % (27 % measured).
    assert int8.size_bytes <= 0.3 * fastestdet_fp32.stat().st_size

    frames = list(real_images(mirror))
    with TfliteBackend(int8.path, threads=1) as backend:
        spec = nhwc(fastestdet.spec.input, backend)
    raws = run_in_tflite_runtime(int8.path, [preprocess(frame, spec)[0] for frame in frames], tmp_path)
    litert = run_file(int8.path, fastestdet.spec.input, frames, fastestdet.spec.decode, runtime="ai_edge_litert")
    legacy = [
        postprocess(raw[0], fastestdet.spec.decode, spec, preprocess(frame, spec)[1], frame.shape)
        for raw, frame in zip(raws, frames, strict=True)
    ]
    assert matched_fraction(litert, legacy) >= 0.9


@pytest.mark.slow
def test_int8_detections_agree_with_fp32(yolox, yolox_fp32, yolox_int8, yolox_reference):
    frames = [frame for frame, _, _ in yolox_reference]
    fp32 = run_file(yolox_fp32, yolox.spec.input, frames, yolox.spec.decode)
    int8 = run_file(yolox_int8.path, yolox.spec.input, frames, yolox.spec.decode)
    assert matched_fraction(fp32, int8) >= 0.7


@pytest.mark.slow
def test_int8_runs_in_tflite_runtime_2_14(yolox, yolox_int8, yolox_reference, tmp_path):
    frames = [frame for frame, _, _ in yolox_reference]
    with TfliteBackend(yolox_int8.path, threads=1) as backend:
        spec = nhwc(yolox.spec.input, backend)
    raws = run_in_tflite_runtime(yolox_int8.path, [preprocess(frame, spec)[0] for frame in frames], tmp_path)
    litert = run_file(yolox_int8.path, yolox.spec.input, frames, yolox.spec.decode, runtime="ai_edge_litert")
    legacy = []
    for raw, frame in zip(raws, frames, strict=True):
        _, placement = preprocess(frame, spec)
        legacy.append(postprocess(raw[0], yolox.spec.decode, spec, placement, frame.shape))
    # Same file, two runtimes' int8 kernels: the same detections.
    assert matched_fraction(litert, legacy) >= 0.9


@pytest.mark.slow
def test_compaction_shrinks_the_file_and_keeps_every_output(yolox, yolox_fp32, yolox_reference, mirror, tmp_path):
    # The quantizer's own file, before export_tflite_int8 compacts it.
    tensors = (preprocess(cv2.imread(str(p)), yolox.spec.input)[0] for p in calibration_paths(mirror))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("toolkit.export.tflite_int8.compact_tflite", lambda data: data)
        plain = export_tflite_int8(yolox, tmp_path / "plain.tflite", tensors, float_model=yolox_fp32).path
    compact = tmp_path / "compact.tflite"
    compact.write_bytes(compact_tflite(plain.read_bytes()))
    # Tensor names and per-channel zero points were a quarter of the file (1.42 MB -> 1.04 MB measured).
    assert compact.stat().st_size <= 0.8 * plain.stat().st_size
    with TfliteBackend(plain, threads=1) as before, TfliteBackend(compact, threads=1) as after:
        assert (after.input_details, after.output_details) == (before.input_details, before.output_details)
        inputs = [preprocess(frame, nhwc(yolox.spec.input, before))[0] for frame, _, _ in yolox_reference]
        for tensor in inputs:
            assert np.array_equal(after.run(tensor), before.run(tensor))
    # The same file, not just a similar one, in the legacy runtime too.
    legacy_before = run_in_tflite_runtime(plain, inputs, tmp_path / "before")
    legacy_after = run_in_tflite_runtime(compact, inputs, tmp_path / "after")
    assert all(np.array_equal(a, b) for a, b in zip(legacy_after, legacy_before, strict=True))


def test_missing_litert_torch_names_the_export_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    with pytest.raises(MissingDependencyError, match=r"edgesight\[export\]"):
        export_tflite_fp32(torch.nn.Identity(), tmp_path / "m.tflite", input_size=(32, 32))


def test_calibration_tensors_of_the_wrong_shape_are_refused(tmp_path):
    with pytest.raises(CalibrationError, match=r"\(1, 3, 64, 64\)"):
        export_tflite_int8(torch.nn.Identity(), tmp_path / "m.tflite", [np.zeros((1, 3, 32, 32))], input_size=(64, 64))
    with pytest.raises(CalibrationError, match="no calibration"):
        export_tflite_int8(torch.nn.Identity(), tmp_path / "m.tflite", [], input_size=(64, 64))
