"""The stages one exported file goes through, in a staging folder: fp32, INT8 behind the gate, timing.

Each staged file is checked (fp32: parity with PyTorch on real photos) and evaluated through the device
runtime (``devices.runner.BundleDetector``, the code the Raspberry Pi runs, not PyTorch).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import shutil
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibration.reader import iter_tensors
from calibration.report import calibration_report
from calibration.select import CalibrationSet, select_calibration
from devices.bundle import (
    Accuracy,
    ClassAccuracy,
    Manifest,
    write_labels,
    write_manifest,
)
from devices.errors import CalibrationError, ConfigError, ModelFileError, require
from devices.host import package_version
from devices.processing import preprocess
from devices.runner import BundleDetector
from devices.timing import percentile, time_frame
from toolkit.data.images import load_image
from toolkit.data.sample import Sample
from toolkit.evaluate.coco import EVAL_SCORE_THRESHOLD, evaluate
from toolkit.evaluate.results import EvalResult, fmt_ap
from toolkit.export.gate import GateCheck, GateResult
from toolkit.export.licence import write_license

log = logging.getLogger(__name__)

#: Largest |file - PyTorch| on the raw output accepted for an fp32 file. Measured worst cases are 4e-4
#: (YOLOX box terms in TFLite, XNNPACK's summation order) and < 1e-4 elsewhere.
PARITY_TOLERANCE = 2e-3

#: Real validation photos the parity check runs on.
PARITY_IMAGES = 4

#: Timed calls per file for the latency comparison (after warm-up), and the photos cycled through.
LATENCY_RUNS = 20

LATENCY_WARMUP = 3

LATENCY_IMAGES = 4

MODEL_SUFFIX = {"tflite": ".tflite", "onnx": ".onnx"}


@dataclass
class Run:
    """What every file exported from one checkpoint shares."""

    checkpoint: Path
    model: Any
    arch: str
    checkpoint_sha256: str
    train: list[Sample]
    val_json: Path
    val_description: str
    val_sha256: str
    val_frames: list[np.ndarray]
    work: Path
    mirror: str | None
    timings: dict[str, float] = field(default_factory=dict)
    training: dict | None = None  # the checkpoint's record of its training and input size

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[key] = round(self.timings.get(key, 0.0) + time.perf_counter() - start, 2)


@dataclass
class Staged:
    """A bundle being assembled in the staging folder."""

    name: str
    folder: Path
    format: str
    precision: str
    manifest: Manifest
    accuracy: Accuracy | None = None
    latency: dict[str, float] = field(default_factory=dict)
    gate: GateResult | None = None
    reference: Accuracy | None = None

    @property
    def model_path(self) -> Path:
        return self.folder / self.manifest.model_file


def stage_fp32(run: Run, fmt: str) -> Staged:
    """Export the fp32 file, bundle it in staging, check parity with PyTorch and measure its AP."""
    staged = _new_stage(run, fmt, "fp32")
    with run.timed(f"export {fmt} fp32"):
        if fmt == "onnx":
            from toolkit.export.onnx import export_onnx_fp32

            export_onnx_fp32(run.model, staged.model_path)
        else:
            from toolkit.export.tflite import export_tflite_fp32

            export_tflite_fp32(run.model, staged.model_path)
    staged.manifest = write_manifest(staged.folder, staged.manifest)
    with run.timed(f"parity {fmt} fp32"):
        parity = _parity(run, staged)
    staged.manifest = dataclasses.replace(staged.manifest, parity=parity)
    _evaluate(run, staged)
    return staged


def stage_gated_int8(
    run: Run, fmt: str, fp32: Staged, cal: CalibrationSet, max_drop: float, max_noise_to_signal: float | None
) -> tuple[Staged, GateResult]:
    """The first INT8 file that passes the gate, trying the fastest first; else the last one tried.

    1. Full-integer: the fastest, and the only kind NPUs run.
    2. The noisy activations float (YOLOX-Nano's full-integer files lose 8 points).
    3. ONNX only: the same with 7-bit weights. ORT's U8S8 kernels on x86 without VNNI add pairs of
       u8 x s8 products in int16 and can saturate; 7-bit weights cannot (FastestDet at 416: stop sign
       -1.41 points with 8-bit weights, +0.29 with 7-bit).

    Each refused try is recorded in the manifest (``quantization.<try>_gate``) and named in REPORT.md.
    """
    tries: list[tuple[str, float | None, bool]] = [("full_integer", None, False)]
    if max_noise_to_signal is not None and not math.isinf(max_noise_to_signal):
        tries.append(("eight_bit_weights", max_noise_to_signal, False))
        if fmt == "onnx":
            tries.append(("seven_bit_weights", max_noise_to_signal, True))
    refused: dict[str, Any] = {}
    for index, (name, noise, reduce_range) in enumerate(tries):
        staged = stage_int8(run, fmt, fp32, cal, noise, reduce_range)
        staged.manifest = dataclasses.replace(
            staged.manifest, quantization={**(staged.manifest.quantization or {}), **refused}
        )
        gate = apply_gate(staged, fp32, max_drop)
        if gate.passed or index == len(tries) - 1:
            return staged, gate
        log.info("%s %s file failed the gate; trying %s", name.replace("_", " "), fmt, tries[index + 1][0])
        refused[f"{name}_gate"] = gate.to_dict()
        shutil.rmtree(staged.folder)
    raise AssertionError("unreachable: the last try always returns")


def stage_int8(
    run: Run,
    fmt: str,
    fp32: Staged,
    cal: CalibrationSet,
    max_noise_to_signal: float | None,
    reduce_range: bool = False,
) -> Staged:
    """Quantize with the calibration set, bundle the INT8 file in staging and measure its AP.

    ``reduce_range`` (7-bit weights) applies to ONNX only.
    """
    staged = _new_stage(run, fmt, "int8")
    spec = run.model.spec.input
    with run.timed(f"quantize {fmt} int8"):
        if fmt == "onnx":
            from toolkit.export.onnx_int8 import quantize_onnx_int8

            result = quantize_onnx_int8(
                fp32.model_path,
                staged.model_path,
                cal,
                spec,
                max_noise_to_signal=max_noise_to_signal,
                reduce_range=reduce_range,
                class_names=run.model.spec.labels,
            )
            recipe = result.manifest()
            calibration = dict(result.calibration)
            input_spec = staged.manifest.input
        else:
            from toolkit.export.tflite_int8 import export_tflite_int8

            tflite = export_tflite_int8(
                run.model,
                staged.model_path,
                iter_tensors(cal, spec, load_image),
                float_model=fp32.model_path,
                max_noise_to_signal=max_noise_to_signal,
            )
            recipe = dict(
                tflite.recipe,
                float_ops=tflite.float_ops,
                op_counts=tflite.op_counts,
                float_activations=list(tflite.float_activations),
            )
            calibration = calibration_report(
                cal, "min/max, moving average (static_wi8_ai8)", "ai-edge-quantizer", run.model.spec.labels
            )
            input_spec = dataclasses.replace(
                staged.manifest.input,
                dtype=tflite.input_dtype,
                quant_scale=tflite.input_scale,
                quant_zero_point=tflite.input_zero_point,
            )
    staged.manifest = write_manifest(
        staged.folder,
        dataclasses.replace(staged.manifest, input=input_spec, calibration=calibration, quantization=recipe),
    )
    _evaluate(run, staged)
    return staged


def _new_stage(run: Run, fmt: str, precision: str) -> Staged:
    name = f"{run.arch}-{fmt}-{precision}"
    folder = run.work / name
    folder.mkdir()
    spec = run.model.spec
    input_spec = dataclasses.replace(spec.input, layout="NHWC") if fmt == "tflite" else spec.input
    write_labels(folder, tuple(spec.labels))
    license_record = write_license(folder, run.arch, run.mirror)
    manifest = Manifest(
        format=fmt,  # type: ignore[arg-type]
        precision=precision,  # type: ignore[arg-type]
        model_file=f"{run.arch.replace('-', '_')}_{precision}{MODEL_SUFFIX[fmt]}",
        files={},
        input=input_spec,
        decode=spec.decode,
        labels=tuple(spec.labels),
        arch=run.arch,
        source_checkpoint_sha256=run.checkpoint_sha256,
        toolkit_version=package_version("edgesight"),
        created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        license=license_record,
        training=run.training,
    )
    return Staged(name, folder, fmt, precision, manifest)


def draw_calibration(run: Run, count: int, allow_few: bool) -> CalibrationSet:
    with run.timed("calibration set"):
        try:
            return select_calibration(run.train, count=count, allow_few=allow_few)
        except CalibrationError as exc:
            raise CalibrationError(
                exc.problem,
                "add training images (train --data), or pass --allow-few-calibration for a quick experiment "
                "(allow_few=True in Python)",
            ) from exc


def _parity(run: Run, staged: Staged) -> dict[str, Any]:
    """Largest |file - PyTorch| on the raw output over real validation photos, through the device runtime."""
    torch = require("torch", "train", "the parity check")
    worst = 0.0
    with BundleDetector(staged.folder, threads=None) as detector:
        for frame in run.val_frames[:PARITY_IMAGES]:
            tensor, _ = detector.prepare(frame)
            reference, _ = preprocess(frame, run.model.spec.input)
            with torch.no_grad():
                expected = run.model(torch.from_numpy(reference)).numpy()
            worst = max(worst, float(np.abs(detector.run_model(tensor)[0] - expected).max()))
    if worst > PARITY_TOLERANCE:
        raise ModelFileError(
            f"the fp32 {staged.format} file differs from the PyTorch model by {worst:.3g} on real validation photos "
            f"(tolerance {PARITY_TOLERANCE:g})",
            "the converter changed the network: report it with the checkpoint; do not ship this file",
        )
    log.info("%s: parity with PyTorch %.2g (max abs, %d photos)", staged.name, worst, PARITY_IMAGES)
    return {"max_abs_diff": worst, "tolerance": PARITY_TOLERANCE, "images": min(PARITY_IMAGES, len(run.val_frames))}


def _evaluate(run: Run, staged: Staged) -> None:
    """AP of the staged file through the device runtime, at the evaluation threshold."""
    with run.timed(f"evaluate {staged.format} {staged.precision}"):
        with BundleDetector(staged.folder, threads=None, score_threshold=EVAL_SCORE_THRESHOLD) as detector:
            result = evaluate(detector, run.val_json, None, detector.labels)
            runtime = detector.runtime
    staged.accuracy = to_accuracy(result, run.val_description, run.val_sha256, runtime)
    staged.manifest = dataclasses.replace(staged.manifest, accuracy=staged.accuracy)
    log.info(
        "%s: AP@[.5:.95] %s (%s)",
        staged.name,
        fmt_ap(result.map),
        ", ".join(f"{c.name} {fmt_ap(c.ap)}" for c in result.classes),
    )


def apply_gate(int8: Staged, fp32: Staged, max_drop: float) -> GateResult:
    """Compare INT8 with fp32 of the same format, per class and for the mean."""
    if max_drop < 0:
        raise ConfigError(f"max_drop={max_drop} is negative", "pass the accepted loss in AP points, e.g. 1.0")
    assert int8.accuracy is not None and fp32.accuracy is not None  # both staged files were evaluated
    pairs = [(c.name, c.ap, int8.accuracy.ap_of(c.name)) for c in fp32.accuracy.classes]
    pairs.append(("mean", fp32.accuracy.map, int8.accuracy.map))
    checks = []
    for name, ref, got in pairs:
        if ref is None or got is None:
            checks.append(GateCheck(name, ref, got, None, True))  # no ground truth: nothing to compare
            continue
        drop = (ref - got) * 100.0
        checks.append(GateCheck(name, ref, got, round(drop, 3), drop <= max_drop + 1e-9))
    gate = GateResult(int8.format, max_drop, tuple(checks))
    int8.gate, int8.reference = gate, fp32.accuracy
    int8.manifest = dataclasses.replace(int8.manifest, reference_accuracy=fp32.accuracy, gate=gate.to_dict())
    log.info("accuracy gate %s int8: %s\n%s", int8.format, "passed" if gate.passed else "FAILED", gate.table())
    return gate


def measure_latency(run: Run, staged: Sequence[Staged], runs: int) -> None:
    """Median and p90 latency at one thread, model call and whole frame, interleaved across files.

    Interleaving (one call of each file in turn) spreads the load of a shared machine evenly over
    the files compared, so their ratio is fair even when absolute numbers drift.
    """
    with run.timed("latency"):
        detectors = [BundleDetector(s.folder, threads=1) for s in staged]
        try:
            model_ms: list[list[float]] = [[] for _ in staged]
            frame_ms: list[list[float]] = [[] for _ in staged]
            frames = run.val_frames[:LATENCY_IMAGES]
            for i in range(LATENCY_WARMUP + runs):
                for k, detector in enumerate(detectors):
                    m, f = time_frame(detector, frames[i % len(frames)])
                    if i >= LATENCY_WARMUP:
                        model_ms[k].append(m)
                        frame_ms[k].append(f)
        finally:
            for detector in detectors:
                detector.close()
    for s, model_runs, frame_runs in zip(staged, model_ms, frame_ms, strict=True):
        s.latency = {
            "threads": 1,
            "runs": runs,
            "model_ms": statistics.median(model_runs),
            "model_ms_p90": percentile(model_runs, 90),
            "frame_ms": statistics.median(frame_runs),
            "frame_ms_p90": percentile(frame_runs, 90),
        }


def to_accuracy(result: EvalResult, dataset: str, dataset_sha256: str, runtime: str) -> Accuracy:
    """The manifest's accuracy record from an evaluation."""
    return Accuracy(
        map=result.map,
        map50=result.map50,
        classes=tuple(ClassAccuracy(c.name, c.ap, c.ap50, c.num_gt) for c in result.classes),
        dataset=dataset,
        dataset_sha256=dataset_sha256,
        num_images=result.num_images,
        runtime=runtime,
        score_threshold=EVAL_SCORE_THRESHOLD,
    )


