"""Export to bundles: what a bundle holds, that ``edgesight eval`` on it measures what the runtime gives by
hand, and that the accuracy gate stops a broken INT8 file without writing anything.

FastestDet converts in seconds to ONNX, so the fast tests use it; the TFLite INT8 path (a minute or two
on two cores) is marked slow.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from devices.backends.onnxrt import OnnxRuntimeBackend
from devices.bundle import load_bundle
from devices.errors import AccuracyGateError, ConfigError
from devices.processing import postprocess, preprocess
from devices.runner import BundleDetector
from toolkit.evaluate import EVAL_SCORE_THRESHOLD, evaluate

torch = pytest.importorskip("torch")
from calibration.select import select_calibration  # noqa: E402
from models import create_model  # noqa: E402
from models.checkpoint import save_checkpoint  # noqa: E402
from toolkit.data import (  # noqa: E402
    Sample,
    evenly_spaced,
    to_coco,
)
from toolkit.data.sets import default_splits  # noqa: E402
from toolkit.export import export, export_all  # noqa: E402

VAL_IMAGES = 12


@pytest.fixture(scope="module")
def checkpoint(mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zero-shot FastestDet (COCO person / stop sign rows) saved as a training checkpoint."""
    torch.set_num_threads(1)
    model = create_model("fastestdet", num_classes=2, pretrained=True, mirror=str(mirror))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", model, "fastestdet")


@pytest.fixture(scope="module")
def onnx_fp32(checkpoint: Path, mirror: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("bundles") / "fastestdet-onnx-fp32"
    return export(checkpoint, out, "onnx", "fp32", mirror=str(mirror), val_limit=VAL_IMAGES, latency_runs=3)


@pytest.fixture(scope="module")
def val_json(mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same validation images the export evaluated on."""
    _, val = default_splits(mirror=str(mirror))
    return to_coco(evenly_spaced(val, VAL_IMAGES), tmp_path_factory.mktemp("val") / "val.json")


def test_fp32_bundle_holds_a_verified_file_with_its_measured_accuracy(onnx_fp32, mirror: Path) -> None:
    (result,) = onnx_fp32.written
    bundle = load_bundle(result.path)
    m = bundle.manifest
    assert (m.format, m.precision, m.arch) == ("onnx", "fp32", "fastestdet")
    assert sorted(m.files) == ["LICENSE.md", "REPORT.md", "fastestdet_fp32.onnx", "labels.txt"]
    assert m.labels == ("pedestrian", "stop_sign") and m.input.layout == "NCHW"
    assert m.source_checkpoint_sha256 and m.toolkit_version
    # Accuracy of this very file through ONNX Runtime, on both classes of the validation images.
    assert m.accuracy.num_images == VAL_IMAGES and m.accuracy.runtime.startswith("onnxruntime")
    assert m.accuracy.ap_of("pedestrian") > 0.1 and m.accuracy.ap_of("stop_sign") > 0.3
    assert m.parity["max_abs_diff"] <= 2e-3
    assert m.latency["threads"] == 1 and m.latency["model_ms"] > 0
    # The upstream BSD-3 licence travels with the weights.
    license_text = (result.path / "LICENSE.md").read_text()
    assert license_text == (mirror / "weights/fastestdet/LICENSE.md").read_text()
    assert m.license["spdx"] == "BSD-3-Clause"
    report = (result.path / "REPORT.md").read_text()
    assert "AP@[.5:.95]" in report and f"{m.accuracy.map:.3f}" in report
    # No staging folder is left behind.
    assert [p.name for p in result.path.parent.iterdir()] == [result.path.name]


def test_eval_on_a_bundle_equals_the_runtime_by_hand(onnx_fp32, val_json: Path, mirror: Path) -> None:
    from click.testing import CliRunner

    from toolkit.cli import cli

    bundle = onnx_fp32.written[0].path
    run = CliRunner().invoke(cli, ["--mirror", str(mirror), "eval", str(bundle), "--coco", str(val_json), "--json"])
    assert run.exit_code == 0, run.output
    via_cli = json.loads(run.stdout)

    manifest = load_bundle(bundle).manifest
    decode = dataclasses.replace(manifest.decode, score_threshold=EVAL_SCORE_THRESHOLD)
    with OnnxRuntimeBackend(bundle / manifest.model_file) as backend:

        def by_hand(frame: np.ndarray):
            tensor, placement = preprocess(frame, manifest.input)
            return postprocess(backend.run(tensor)[0], decode, manifest.input, placement, frame.shape)

        expected = evaluate(by_hand, val_json, None, manifest.labels)
    for got, want in zip(via_cli["classes"], expected.classes, strict=True):
        assert got["ap"] == pytest.approx(want.ap, abs=1e-9)
        assert got["ap50"] == pytest.approx(want.ap50, abs=1e-9)
    # And the manifest recorded the same numbers for the same images.
    assert manifest.accuracy.map == pytest.approx(expected.map, abs=1e-9)


def test_a_model_trained_above_its_size_exports_at_that_size(mirror: Path, tmp_path: Path) -> None:
    from models.base import at_input_size
    from models.checkpoint import load_checkpoint
    from toolkit.evaluate.torch_detector import TorchDetector

    model = create_model("fastestdet", num_classes=2, pretrained=True, mirror=str(mirror))
    model.spec = at_input_size(model.spec, 416)
    ckpt = save_checkpoint(tmp_path / "best.pt", model, "fastestdet")
    (result,) = export(ckpt, tmp_path / "b", "onnx", "fp32", mirror=str(mirror), val_limit=4, latency_runs=1).written
    manifest = load_bundle(result.path).manifest
    assert (manifest.input.width, manifest.input.height, manifest.decode.size_basis) == (416, 416, 352)
    # The device decodes the file's output as PyTorch does: same boxes, same scores.
    frame = cv2.imread(str(mirror / "datasets/roadsign_kaggle_stop/images/road22.png"), cv2.IMREAD_COLOR)
    got = BundleDetector(result.path)(frame)
    want = TorchDetector(load_checkpoint(ckpt))(frame)
    assert len(want) and len(got) == len(want)
    np.testing.assert_allclose(got.boxes, want.boxes, atol=0.5)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)


def dark_calibration(mirror: Path, folder: Path) -> list[Sample]:
    """Near-black crops of real photos: a calibration set nothing like the camera's frames."""
    folder.mkdir()
    samples = []
    for i, path in enumerate(sorted((mirror / "datasets/coco128/images/train2017").glob("*.jpg"))[:4]):
        crop = (cv2.imread(str(path))[:96, :96].astype(np.float32) * 0.04).astype(np.uint8)
        cv2.imwrite(str(folder / f"dark{i}.png"), crop)
        samples.append(Sample(folder / f"dark{i}.png", 96, 96, np.zeros((0, 4)), np.zeros(0), "dark", f"dark/{i}"))
    return samples


def export_dark_int8(checkpoint: Path, mirror: Path, tmp_path: Path, dest: Path, **options: Any) -> None:
    """ONNX INT8 export of ``checkpoint`` into ``dest``, calibrated on 4 dark crops."""
    cal = select_calibration(dark_calibration(mirror, tmp_path / "dark"), count=4, allow_few=True)
    export(
        checkpoint,
        dest,
        "onnx",
        "int8",
        mirror=str(mirror),
        val_limit=VAL_IMAGES,
        calibration_set=cal,
        latency_runs=1,
        **options,
    )


def test_gate_stops_a_badly_calibrated_int8_file_and_writes_nothing(checkpoint, mirror: Path, tmp_path: Path) -> None:
    # Every activation quantized (no noise-to-signal escape), ranges from 4 dark crops: the file must fail.
    out_root = tmp_path / "bundles"
    with pytest.raises(AccuracyGateError) as err:
        export_dark_int8(checkpoint, mirror, tmp_path, out_root / "int8", max_noise_to_signal=math.inf)
    message = str(err.value)
    assert "| mean |" in message and "FAIL" in message and "calibrated on 4 images" in message
    assert "--max-drop" in err.value.fix
    assert list(out_root.iterdir()) == []  # neither the bundle nor a staging folder


def test_a_full_integer_file_that_fails_is_quantized_again_with_noisy_activations_float(
    checkpoint, mirror: Path, tmp_path: Path
) -> None:
    # The same broken calibration as above: its full-integer file fails; the second try keeps the activations
    # that 8-bit rounding drowns in float, and this time the gate passes.
    export_dark_int8(checkpoint, mirror, tmp_path, tmp_path / "int8")
    quantization = load_bundle(tmp_path / "int8").manifest.quantization
    assert quantization["full_integer_gate"]["passed"] is False
    assert quantization["float_activations"]
    assert "The full-integer file failed the gate" in (tmp_path / "int8" / "REPORT.md").read_text()


def test_export_refuses_to_overwrite_a_folder_that_is_not_a_bundle(checkpoint, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a bundle folder"):
        export(checkpoint, tmp_path, "onnx", "fp32")
    with pytest.raises(ConfigError, match="unknown precision"):
        export(checkpoint, tmp_path / "new", "onnx", "int4")
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_export_all_tflite_writes_fp32_and_int8_with_gate_and_latency(checkpoint, mirror: Path, tmp_path: Path) -> None:
    # A generous limit: 16 images give noisy AP, so whether the file passes is not the point here; the gate's
    # arithmetic on the two files' own measurements is.
    report = export_all(
        checkpoint,
        tmp_path,
        formats=("tflite",),
        mirror=str(mirror),
        val_limit=16,
        calibration_count=32,
        allow_few=True,
        max_drop=50.0,
        latency_runs=5,
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "EXPORT_REPORT-fastestdet.md",
        "export_report-fastestdet.json",
        "fastestdet-tflite-fp32",
        "fastestdet-tflite-int8",
    ]
    int8 = load_bundle(tmp_path / "fastestdet-tflite-int8").manifest
    # The device feeds int8 NHWC pixels with the file's own quantization, recorded in the manifest.
    assert (int8.input.layout, int8.input.dtype) == ("NHWC", "int8")
    assert int8.input.quant_scale == pytest.approx(1 / 255, rel=1e-5) and int8.input.quant_zero_point == -128
    assert int8.calibration["count"] == 32 and len(int8.calibration["sha256"]) == 64
    fp32 = load_bundle(tmp_path / "fastestdet-tflite-fp32").manifest
    assert int8.reference_accuracy == fp32.accuracy
    fp32_ap = {c.name: c.ap for c in fp32.accuracy.classes} | {"mean": fp32.accuracy.map}
    int8_ap = {c.name: c.ap for c in int8.accuracy.classes} | {"mean": int8.accuracy.map}
    checks = {c["name"]: c for c in int8.gate["checks"]}
    assert set(checks) == {"pedestrian", "stop_sign", "mean"}
    for name, check in checks.items():
        drop = (fp32_ap[name] - int8_ap[name]) * 100
        assert check["drop_points"] == pytest.approx(drop, abs=1e-3)
        assert check["passed"] == (drop <= 50.0)
    assert int8.gate["passed"] == all(c["passed"] for c in checks.values())
    # The report recommends INT8 only where it measured faster than fp32.
    faster = int8.latency["model_ms"] < int8.latency["fp32_model_ms"]
    assert int8.latency["recommendation"] == ("int8" if faster else "fp32")
    assert "INT8" in " ".join(int8.notes)
    # It runs on a real photo through LiteRT and finds something.
    with BundleDetector(tmp_path / "fastestdet-tflite-int8", threads=1, score_threshold=0.3) as detector:
        photo = cv2.imread(str(sorted((mirror / "datasets/roboflow_stop_signs/valid/images").glob("*.jpg"))[0]))
        assert 1 in detector(photo).class_ids
    assert {b.name for b in report.written} == {"fastestdet-tflite-fp32", "fastestdet-tflite-int8"}
    assert report.gates[0].passed and "timings" in report.table()


def test_licence_notice_names_the_upstream_licence(tmp_path: Path, mirror: Path) -> None:
    from toolkit.export.licence import write_license

    record = write_license(tmp_path, "yolox-nano", str(mirror))
    assert record["spdx"] == "Apache-2.0" and record["file"] == "LICENSE"
    text = (tmp_path / "LICENSE").read_text()
    assert "Apache License, Version 2.0" in text and "Megvii-BaseDetection/YOLOX" in text
    with pytest.raises(ConfigError, match="no licence record"):
        write_license(tmp_path, "mystery-net")


def test_cli_export_wants_format_and_precision_or_all(checkpoint: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from toolkit.cli import cli

    run = CliRunner().invoke(cli, ["export", str(checkpoint), "--all", "--format", "onnx", "--out", str(tmp_path)])
    assert run.exit_code == 2 and "drop --format/--precision" in run.output
    run = CliRunner().invoke(cli, ["export", str(checkpoint), "--format", "onnx", "--out", str(tmp_path)])
    assert run.exit_code == 2 and "pass --format and --precision, or --all" in run.output


@pytest.mark.parametrize("how", [["--format", "onnx", "--precision", "int8"], ["--all"]])
def test_too_few_calibration_images_are_refused_before_any_work_naming_the_flag(tmp_path: Path, how) -> None:
    from click.testing import CliRunner

    from devices.errors import CalibrationError
    from toolkit.cli import cli

    # Not a checkpoint at all: the refusal must come before the checkpoint is even read.
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"not read")
    out = tmp_path / "bundles"
    run = CliRunner().invoke(cli, ["export", str(checkpoint), *how, "--calibration-images", "3", "--out", str(out)])
    assert isinstance(run.exception, CalibrationError)
    assert "--calibration-images 3" in str(run.exception) and "--allow-few-calibration" in run.exception.fix
    assert not out.exists()


def test_int8_tries_run_fastest_first_and_stop_at_the_first_that_passes(monkeypatch, tmp_path: Path) -> None:
    """The ladder itself, with the quantizer and the gate replaced: which tries run, what the manifest keeps."""
    import toolkit.export.stages as ex
    from devices.bundle import Manifest
    from devices.types import DecodeSpec, InputSpec
    from toolkit.export.gate import GateCheck, GateResult
    from toolkit.export.report import _report_float_activations

    tried: list[tuple[float | None, bool]] = []

    def fake_stage(run, fmt, fp32, cal, noise, reduce_range=False):
        folder = tmp_path / f"try{len(tried)}"
        folder.mkdir()
        tried.append((noise, reduce_range))
        manifest = Manifest(format=fmt, precision="int8", model_file="m", files={}, input=InputSpec(32, 32),
                               decode=DecodeSpec("fastestdet", (16,), 2), labels=("a", "b"), arch="fastestdet",
                               quantization={"reduce_range": reduce_range})
        return ex.Staged("s", folder, fmt, "int8", manifest)

    def fake_gate(staged, fp32, max_drop):
        passed = staged.manifest.quantization["reduce_range"]  # only the 7-bit file passes
        return GateResult("onnx", max_drop, (GateCheck("stop_sign", 0.66, 0.65, 1.4 if not passed else 0.3,
                                                             passed),))

    monkeypatch.setattr(ex, "stage_int8", fake_stage)
    monkeypatch.setattr(ex, "apply_gate", fake_gate)
    staged, gate = ex.stage_gated_int8(None, "onnx", None, None, 1.0, 1e-3)
    assert tried == [(None, False), (1e-3, False), (1e-3, True)] and gate.passed
    assert {k for k in staged.manifest.quantization if k.endswith("_gate")} == {
        "full_integer_gate", "eight_bit_weights_gate"}
    assert [p.name for p in tmp_path.iterdir()] == ["try2"]  # refused tries leave nothing behind
    assert "7 bits" in "\n".join(_report_float_activations(
        dataclasses.replace(staged.manifest, quantization={**staged.manifest.quantization,
                                                          "float_activations": ["x"]})))
    # TFLite has no 7-bit try; with --max-noise-to-signal inf only the full-integer file is tried.
    tried.clear()
    ex.stage_gated_int8(None, "tflite", None, None, 1.0, 1e-3)
    assert tried == [(None, False), (1e-3, False)]
    tried.clear()
    ex.stage_gated_int8(None, "onnx", None, None, 1.0, math.inf)
    assert tried == [(None, False)]
