"""Export a checkpoint to verified TFLite / ONNX bundles, fp32 or INT8, behind an accuracy gate.

For each requested file the pipeline is:

1. export the fp32 file (``toolkit.export_onnx`` / ``toolkit.export_tflite``) and check it against
   the PyTorch model on real validation photos (raw-output parity);
2. for INT8, quantize with a calibration set drawn from the **training** split
   (``calibration.select_calibration``: stratified by class, hashed);
3. evaluate every file through the device runtime (``devices.runner.BundleDetector``, the code the
   Raspberry Pi runs, not PyTorch) on the validation split;
4. for INT8, compare against the fp32 file of the same format: a drop of more than ``max_drop`` AP
   points (0.01 AP@[.5:.95]) in the mean or in any class stops the export with
   ``AccuracyGateError`` and no bundle is written;
5. time fp32 and INT8 at one thread, and say in the report which file to ship when INT8 is not
   faster (ONNX Runtime's QDQ kernels are not faster than fp32 on every CPU);
6. write the bundle (model, ``labels.txt``, upstream licence, ``REPORT.md``, ``manifest.json`` with
   every hash) in a staging folder beside the destination and move it into place only when done.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from calibration.noise import MAX_NOISE_TO_SIGNAL
from calibration.reader import iter_tensors
from calibration.report import calibration_report
from calibration.select import CalibrationSet, select_calibration
from devices.bundle import (
    MANIFEST_FILE,
    REPORT_FILE,
    Accuracy,
    ClassAccuracy,
    Manifest,
    file_sha256,
    write_labels,
    write_manifest,
)
from devices.errors import AccuracyGateError, ConfigError, ModelFileError, require
from devices.host import machine
from devices.processing import preprocess
from devices.runner import BundleDetector
from models.hub import resolve
from toolkit.data import Sample, load_image, samples_sha256, to_coco
from toolkit.evaluate import EVAL_SCORE_THRESHOLD, EvalResult, evaluate

log = logging.getLogger(__name__)

Format = Literal["tflite", "onnx"]
Precision = Literal["fp32", "int8"]

#: Largest |file - PyTorch| on the raw output accepted for an fp32 file. Measured worst cases are 4e-4
#: (YOLOX box terms in TFLite, XNNPACK's summation order) and < 1e-4 elsewhere.
PARITY_TOLERANCE = 2e-3
#: Real validation photos the parity check runs on.
PARITY_IMAGES = 4
#: Timed calls per file for the latency comparison (after warm-up), and the photos cycled through.
LATENCY_RUNS = 20
LATENCY_WARMUP = 3
LATENCY_IMAGES = 4

_EXT = {"tflite": ".tflite", "onnx": ".onnx"}


# --- results ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateCheck:
    """One line of the accuracy gate: a class, or the mean.

    Attributes:
        name: Class name, or ``mean``.
        fp32_ap: AP@[.5:.95] of the fp32 file (None: no ground truth).
        int8_ap: AP@[.5:.95] of the INT8 file.
        drop_points: ``(fp32_ap - int8_ap) * 100``; None when not defined.
        passed: Whether the drop is within the limit.
    """

    name: str
    fp32_ap: float | None
    int8_ap: float | None
    drop_points: float | None
    passed: bool


@dataclass(frozen=True)
class GateResult:
    """The accuracy gate of one INT8 file against the fp32 file of the same format."""

    format: str
    max_drop: float
    checks: tuple[GateCheck, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def table(self) -> str:
        """Markdown table: fp32 AP, INT8 AP and drop per class and for the mean."""
        rows = [
            f"| {self.format} | fp32 AP@[.5:.95] | int8 AP@[.5:.95] | drop (AP points) | limit {self.max_drop:g} |",
            "|---|---:|---:|---:|---|",
        ]
        for c in self.checks:
            drop = "n/a" if c.drop_points is None else f"{c.drop_points:+.2f}"
            rows.append(
                f"| {c.name} | {_fmt(c.fp32_ap)} | {_fmt(c.int8_ap)} | {drop} | {'ok' if c.passed else 'FAIL'} |"
            )
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "max_drop_points": self.max_drop,
            "passed": self.passed,
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }


@dataclass(frozen=True)
class BundleResult:
    """One exported file and what was measured on it.

    Attributes:
        name: Bundle folder name, e.g. ``fastestdet-tflite-int8``.
        format: ``tflite`` or ``onnx``.
        precision: ``fp32`` or ``int8``.
        path: Where the bundle was written; None when it was not (gate failed, or fp32 reference only).
        size_bytes: Model file size.
        sha256: Model file hash.
        accuracy: AP of the file through the device runtime.
        latency: ``model_ms``/``frame_ms`` medians and p90 at one thread.
        manifest: The final manifest (None when not written).
    """

    name: str
    format: str
    precision: str
    path: Path | None
    size_bytes: int
    sha256: str
    accuracy: Accuracy
    latency: dict[str, float] = field(default_factory=dict)
    manifest: Manifest | None = field(default=None, repr=False)


def _why_not_written(bundle: BundleResult, gates: Sequence[GateResult]) -> str:
    failed = any(g.format == bundle.format and not g.passed for g in gates)
    return "not written (gate failed)" if bundle.precision == "int8" and failed else "not written (fp32 reference)"


@dataclass(frozen=True)
class ExportReport:
    """What an export run produced: the files, their accuracy and speed, the gates, the timings."""

    checkpoint: Path
    arch: str
    bundles: tuple[BundleResult, ...]
    gates: tuple[GateResult, ...]
    timings_s: dict[str, float]
    notes: tuple[str, ...] = ()

    @property
    def written(self) -> tuple[BundleResult, ...]:
        return tuple(b for b in self.bundles if b.path is not None)

    def table(self) -> str:
        """Markdown: one row per file (written or reference), then each gate's table and the notes."""
        labels = [c.name for c in self.bundles[0].accuracy.classes] if self.bundles else []
        head = [
            "file",
            "size KB",
            *(f"{n} AP" for n in labels),
            "mean AP",
            "mean AP50",
            "model ms (1 thr)",
            "frame ms (1 thr)",
            "bundle",
        ]
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for b in self.bundles:
            cells = [
                f"{b.format} {b.precision}",
                f"{b.size_bytes / 1024:.0f}",
                *(_fmt(b.accuracy.ap_of(n)) for n in labels),
                _fmt(b.accuracy.map),
                _fmt(b.accuracy.map50),
                _ms(b.latency.get("model_ms")),
                _ms(b.latency.get("frame_ms")),
                str(b.path) if b.path else _why_not_written(b, self.gates),
            ]
            rows.append("| " + " | ".join(cells) + " |")
        parts = ["\n".join(rows)]
        parts += [g.table() + f"\n\ngate {g.format}: {'passed' if g.passed else 'FAILED'}" for g in self.gates]
        if self.notes:
            parts.append("\n".join(f"- {n}" for n in self.notes))
        timing = ", ".join(f"{k} {v:.1f} s" for k, v in self.timings_s.items())
        parts.append(f"timings: {timing}")
        return "\n\n".join(parts) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint),
            "arch": self.arch,
            "bundles": [
                {
                    "name": b.name,
                    "format": b.format,
                    "precision": b.precision,
                    "path": str(b.path) if b.path else None,
                    "size_bytes": b.size_bytes,
                    "sha256": b.sha256,
                    "accuracy": dataclasses.asdict(b.accuracy),
                    "latency": b.latency,
                }
                for b in self.bundles
            ],
            "gates": [g.to_dict() for g in self.gates],
            "timings_s": self.timings_s,
            "notes": list(self.notes),
        }


# --- shared state of one run ------------------------------------------------------------------------------


@dataclass
class _Run:
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

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[key] = round(self.timings.get(key, 0.0) + time.perf_counter() - start, 2)


@dataclass
class _Staged:
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


# --- public API ---------------------------------------------------------------------------------------------


def export(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    fmt: Format,
    precision: Precision,
    *,
    max_drop: float = 1.0,
    calibration_count: int = 300,
    allow_few: bool = False,
    mirror: str | None = None,
    val_limit: int | None = None,
    calibration_set: CalibrationSet | None = None,
    latency_runs: int = LATENCY_RUNS,
    max_noise_to_signal: float | None = MAX_NOISE_TO_SIGNAL,
) -> ExportReport:
    """Export one file of a checkpoint as a verified bundle in ``out``.

    Args:
        checkpoint: A ``best.pt`` from ``edgesight train`` (``models.checkpoint``).
        out: The bundle folder to write; an existing bundle there is replaced, only once the new one is done.
        fmt: ``tflite`` or ``onnx``.
        precision: ``fp32`` or ``int8``.
        max_drop: Largest INT8 loss accepted against the fp32 file, in AP points (0.01 AP@[.5:.95]),
            for the mean and for every class.
        calibration_count: Calibration images drawn from the training split.
        allow_few: Accept fewer than ``calibration.select_calibration``'s minimum (quick experiments).
        mirror: Mirror root of the datasets and upstream licence files.
        val_limit: Evaluate on this many validation images only (evenly spaced; quick runs and tests).
        calibration_set: Calibrate on these images instead of drawing from the training split
            (e.g. frames from the deployment camera).
        latency_runs: Timed model calls per file at one thread.
        max_noise_to_signal: INT8 is first quantized full-integer; if that file fails the gate, it is
            quantized again with the activations whose 8-bit rounding noise exceeds this share of their
            channels' variance kept float (``calibration.noise``). ``None`` or ``inf``: no second try.

    Returns:
        The report; ``report.written[0].path`` is the bundle.

    Raises:
        AccuracyGateError: INT8 lost more than ``max_drop`` points; nothing was written.
        ModelFileError: The checkpoint is unreadable, or the fp32 file differs from PyTorch.
        ConfigError: Unknown format or precision, or ``out`` is a non-empty folder that is not a bundle.
        CalibrationError: Too few calibration images.
    """
    _check_choice("format", fmt, ("tflite", "onnx"))
    _check_choice("precision", precision, ("fp32", "int8"))
    out = Path(out)
    _check_destination(out)
    with _run_context(checkpoint, out.parent, mirror, val_limit) as run:
        fp32 = _stage_fp32(run, fmt)
        if precision == "fp32":
            _measure_latency(run, [fp32], latency_runs)
            _finish(run, fp32, out)
            return _report(run, [fp32], [])
        cal = calibration_set or _calibration(run, calibration_count, allow_few)
        int8, gate = _stage_gated_int8(run, fmt, fp32, cal, max_drop, max_noise_to_signal)
        if not gate.passed:
            raise _gate_error([gate], run.val_description, int8.manifest.calibration)
        _measure_latency(run, [fp32, int8], latency_runs)
        _finish(run, int8, out, fp32=fp32)
        return _report(run, [fp32, int8], [gate], written={int8.name: out})


def export_all(
    checkpoint: str | os.PathLike,
    out_root: str | os.PathLike,
    *,
    formats: Sequence[Format] = ("tflite", "onnx"),
    max_drop: float = 1.0,
    calibration_count: int = 300,
    allow_few: bool = False,
    mirror: str | None = None,
    val_limit: int | None = None,
    calibration_set: CalibrationSet | None = None,
    latency_runs: int = LATENCY_RUNS,
    max_noise_to_signal: float | None = MAX_NOISE_TO_SIGNAL,
) -> ExportReport:
    """Export fp32 and INT8 in every format into ``out_root/<arch>-<format>-<precision>/``.

    One calibration set serves both formats. Bundles that pass are written even when another INT8
    file fails its gate; ``out_root`` also receives ``EXPORT_REPORT-<arch>.md`` and ``export_report-<arch>.json``
    (one pair per architecture, so exporting both models into one folder keeps both reports).
    Arguments as for ``export``.

    Raises:
        AccuracyGateError: After writing the others, when an INT8 file failed its gate (it was not written).
    """
    for fmt in formats:
        _check_choice("format", fmt, ("tflite", "onnx"))
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    with _run_context(checkpoint, out_root, mirror, val_limit) as run:
        destinations = {
            f"{run.arch}-{fmt}-{p}": out_root / f"{run.arch}-{fmt}-{p}" for fmt in formats for p in ("fp32", "int8")
        }
        for dest in destinations.values():
            _check_destination(dest)
        cal = calibration_set or _calibration(run, calibration_count, allow_few)
        staged: list[_Staged] = []
        gates: list[GateResult] = []
        for fmt in formats:
            fp32 = _stage_fp32(run, fmt)
            int8, gate = _stage_gated_int8(run, fmt, fp32, cal, max_drop, max_noise_to_signal)
            gates.append(gate)
            staged += [fp32, int8]
        _measure_latency(run, staged, latency_runs)
        written: dict[str, Path] = {}
        for s in staged:
            if s.gate is not None and not s.gate.passed:
                continue
            fp32_pair = next(f for f in staged if f.format == s.format and f.precision == "fp32")
            _finish(run, s, destinations[s.name], fp32=fp32_pair if s.precision == "int8" else None)
            written[s.name] = destinations[s.name]
        report = _report(run, staged, gates, written=written)
    (out_root / f"EXPORT_REPORT-{run.arch}.md").write_text(
        f"# Export of {report.checkpoint}\n\n{report.table()}", encoding="utf-8"
    )
    (out_root / f"export_report-{run.arch}.json").write_text(
        json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8"
    )
    failed = [g for g in gates if not g.passed]
    if failed:
        calibration = next(s.manifest.calibration for s in staged if s.gate is not None and not s.gate.passed)
        raise _gate_error(failed, run.val_description, calibration, list(written.values()))
    return report


# --- stages ----------------------------------------------------------------------------------------------


@contextmanager
def _run_context(
    checkpoint: str | os.PathLike, staging_parent: Path, mirror: str | None, val_limit: int | None
) -> Iterator[_Run]:
    """Load the checkpoint and the data, and hold a staging folder on the destination's filesystem."""
    require("torch", "train", "exporting a checkpoint")
    from models.checkpoint import load_checkpoint, read_checkpoint
    from toolkit.datasets import default_splits

    staging_parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".edgesight-export-", dir=staging_parent))
    try:
        timings: dict[str, float] = {}
        start = time.perf_counter()
        checkpoint = Path(checkpoint)
        payload = read_checkpoint(checkpoint)
        arch = str(payload["arch"])
        # Photos the checkpoint was trained on beside the bundled sets (`train --data`): calibration and
        # the gate use them as training did.
        data = json.loads(payload.get("data", "[]"))
        model = load_checkpoint(checkpoint)
        train, val = default_splits(mirror=mirror, data=data)
        description = (
            "default split, validation part (coco128, roadsign_kaggle_stop, roboflow_stop_signs"
            + "".join(f", {p}" for p in data) + "; 20 %, seed 0)"
        )
        if val_limit is not None and val_limit < len(val):
            val = evenly_spaced(val, val_limit)
            description += f", {len(val)} evenly spaced images (val_limit)"
        val_json = to_coco(val, work / "val.json", model.spec.labels)
        frames = [load_image(s.image_path) for s in evenly_spaced(val, max(PARITY_IMAGES, LATENCY_IMAGES))]
        timings["load"] = round(time.perf_counter() - start, 2)
        yield _Run(
            checkpoint=checkpoint,
            model=model,
            arch=arch,
            checkpoint_sha256=model.source_sha256,
            train=train,
            val_json=val_json,
            val_description=description,
            val_sha256=samples_sha256(val),
            val_frames=frames,
            work=work,
            mirror=mirror,
            timings=timings,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stage_fp32(run: _Run, fmt: str) -> _Staged:
    """Export the fp32 file, bundle it in staging, check parity with PyTorch and measure its AP."""
    staged = _new_stage(run, fmt, "fp32")
    with run.timed(f"export {fmt} fp32"):
        if fmt == "onnx":
            from toolkit.export_onnx import export_onnx_fp32

            export_onnx_fp32(run.model, staged.model_path)
        else:
            from toolkit.export_tflite import export_tflite_fp32

            export_tflite_fp32(run.model, staged.model_path)
    staged.manifest = write_manifest(staged.folder, staged.manifest)
    with run.timed(f"parity {fmt} fp32"):
        parity = _parity(run, staged)
    staged.manifest = dataclasses.replace(staged.manifest, parity=parity)
    _evaluate(run, staged)
    return staged


def _stage_gated_int8(
    run: _Run, fmt: str, fp32: _Staged, cal: CalibrationSet, max_drop: float, max_noise_to_signal: float | None
) -> tuple[_Staged, GateResult]:
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
        staged = _stage_int8(run, fmt, fp32, cal, noise, reduce_range)
        staged.manifest = dataclasses.replace(
            staged.manifest, quantization={**(staged.manifest.quantization or {}), **refused}
        )
        gate = _apply_gate(staged, fp32, max_drop)
        if gate.passed or index == len(tries) - 1:
            return staged, gate
        log.info("%s %s file failed the gate; trying %s", name.replace("_", " "), fmt, tries[index + 1][0])
        refused[f"{name}_gate"] = gate.to_dict()
        shutil.rmtree(staged.folder)
    raise AssertionError("unreachable: the last try always returns")


def _stage_int8(
    run: _Run,
    fmt: str,
    fp32: _Staged,
    cal: CalibrationSet,
    max_noise_to_signal: float | None,
    reduce_range: bool = False,
) -> _Staged:
    """Quantize with the calibration set, bundle the INT8 file in staging and measure its AP.

    ``reduce_range`` (7-bit weights) applies to ONNX only.
    """
    staged = _new_stage(run, fmt, "int8")
    spec = run.model.spec.input
    with run.timed(f"quantize {fmt} int8"):
        if fmt == "onnx":
            from toolkit.export_onnx import quantize_onnx_int8

            result = quantize_onnx_int8(
                fp32.model_path,
                staged.model_path,
                cal,
                spec,
                max_noise_to_signal=max_noise_to_signal,
                reduce_range=reduce_range,
            )
            recipe = result.manifest()
            calibration = dict(result.calibration)
            input_spec = staged.manifest.input
        else:
            from toolkit.export_tflite import export_tflite_int8

            tflite = export_tflite_int8(
                run.model,
                staged.model_path,
                iter_tensors(cal, spec),
                float_model=fp32.model_path,
                max_noise_to_signal=max_noise_to_signal,
            )
            recipe = dict(
                tflite.recipe,
                float_ops=tflite.float_ops,
                op_counts=tflite.op_counts,
                float_activations=list(tflite.float_activations),
            )
            calibration = calibration_report(cal, "min/max, moving average (static_wi8_ai8)", "ai-edge-quantizer")
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


def _new_stage(run: _Run, fmt: str, precision: str) -> _Staged:
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
        model_file=f"{run.arch.replace('-', '_')}_{precision}{_EXT[fmt]}",
        files={},
        input=input_spec,
        decode=spec.decode,
        labels=tuple(spec.labels),
        arch=run.arch,
        source_checkpoint_sha256=run.checkpoint_sha256,
        toolkit_version=_version("edgesight"),
        created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        license=license_record,
    )
    return _Staged(name, folder, fmt, precision, manifest)


def _calibration(run: _Run, count: int, allow_few: bool) -> CalibrationSet:
    with run.timed("calibration set"):
        return select_calibration(run.train, count=count, allow_few=allow_few)


def _parity(run: _Run, staged: _Staged) -> dict[str, Any]:
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


def _evaluate(run: _Run, staged: _Staged) -> None:
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
        _fmt(result.map),
        ", ".join(f"{c.name} {_fmt(c.ap)}" for c in result.classes),
    )


def _apply_gate(int8: _Staged, fp32: _Staged, max_drop: float) -> GateResult:
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


def _gate_error(
    gates: Sequence[GateResult],
    description: str,
    calibration: Mapping[str, Any] | None,
    written: Sequence[Path] = (),
) -> AccuracyGateError:
    tables = "\n\n".join(g.table() for g in gates)
    names = ", ".join(f"{g.format} int8" for g in gates)
    cal = calibration or {}
    used = (
        f"\ncalibrated on {cal.get('count')} images (per class {dict(cal.get('images_per_class', {}))}, "
        f"{cal.get('negatives')} negatives, sources {dict(cal.get('sources', {}))}, "
        f"sha256 {str(cal.get('sha256'))[:12]})"
    )
    kept = f"\nwritten anyway (they passed): {', '.join(map(str, written))}" if written else ""
    return AccuracyGateError(
        f"{names} lost more than the allowed AP points against fp32 on {description}; no bundle was written "
        f"for it:\n{tables}{used}{kept}",
        "calibrate on more, or more representative, images (--calibration-images), ship the fp32 bundle, "
        "or accept the loss knowingly with --max-drop",
    )


def _measure_latency(run: _Run, staged: Sequence[_Staged], runs: int) -> None:
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
    for s, m, f in zip(staged, model_ms, frame_ms, strict=True):
        s.latency = {
            "threads": 1,
            "runs": runs,
            "model_ms": statistics.median(m),
            "model_ms_p90": percentile(m, 90),
            "frame_ms": statistics.median(f),
            "frame_ms_p90": percentile(f, 90),
        }


def time_frame(detector: Any, frame: np.ndarray) -> tuple[float, float]:
    """(model call ms, whole frame ms) of one frame through a ``prepare``/``run_model``/``decode`` detector."""
    t0 = time.perf_counter()
    tensor, placement = detector.prepare(frame)
    t1 = time.perf_counter()
    outputs = detector.run_model(tensor)
    t2 = time.perf_counter()
    detector.decode(outputs, placement, frame.shape)
    t3 = time.perf_counter()
    return (t2 - t1) * 1000.0, (t3 - t0) * 1000.0


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (linear interpolation)."""
    return float(np.percentile(np.asarray(values, np.float64), q))


def _finish(run: _Run, staged: _Staged, dest: Path, fp32: _Staged | None = None) -> None:
    """Write REPORT.md and the final manifest, then move the staged bundle to ``dest``."""
    latency = dict(staged.latency)
    notes = list(staged.manifest.notes)
    if fp32 is not None and fp32.latency:
        latency["fp32_model_ms"] = fp32.latency["model_ms"]
        latency["fp32_frame_ms"] = fp32.latency["frame_ms"]
        latency["fp32_model_file"] = fp32.manifest.model_file
        if staged.latency["model_ms"] >= fp32.latency["model_ms"]:
            latency["recommendation"] = "fp32"
            notes.append(
                f"INT8 is not faster than fp32 here: {staged.latency['model_ms']:.1f} ms against "
                f"{fp32.latency['model_ms']:.1f} ms per model call at 1 thread on {machine()}. Ship the fp32 "
                f"{staged.format} bundle ({fp32.manifest.model_file}, `edgesight export --precision fp32`) on CPUs "
                f"like this one, unless the {_size_ratio(fp32, staged):.1f}x smaller file matters more; measure on "
                "the device with `edgesight bench`."
            )
        else:
            latency["recommendation"] = "int8"
            notes.append(
                f"INT8 is {fp32.latency['model_ms'] / staged.latency['model_ms']:.2f}x faster than fp32 per model "
                f"call at 1 thread on {machine()}."
            )
    latency["machine"] = machine()
    staged.manifest = dataclasses.replace(staged.manifest, latency=latency, notes=tuple(notes))
    (staged.folder / REPORT_FILE).write_text(render_report(staged.manifest, staged.model_path), encoding="utf-8")
    staged.manifest = write_manifest(staged.folder, staged.manifest)
    _publish(staged.folder, dest)
    staged.folder = dest
    log.info("wrote bundle %s", dest)


def _size_ratio(fp32: _Staged, int8: _Staged) -> float:
    return fp32.model_path.stat().st_size / max(int8.model_path.stat().st_size, 1)


def _report(
    run: _Run, staged: Sequence[_Staged], gates: Sequence[GateResult], written: dict[str, Path] | None = None
) -> ExportReport:
    written = written if written is not None else {s.name: s.folder for s in staged}
    bundles = []
    for s in staged:
        path = written.get(s.name)
        model = (path / s.manifest.model_file) if path else s.model_path
        assert s.accuracy is not None  # every staged file is evaluated before reporting
        bundles.append(
            BundleResult(
                name=s.name,
                format=s.format,
                precision=s.precision,
                path=path,
                size_bytes=model.stat().st_size if model.exists() else 0,
                sha256=s.manifest.files.get(s.manifest.model_file, ""),
                accuracy=s.accuracy,
                latency={k: v for k, v in s.latency.items() if isinstance(v, (int, float))},
                manifest=s.manifest if path else None,
            )
        )
    notes = [n for s in staged if s.name in written for n in s.manifest.notes]
    return ExportReport(run.checkpoint, run.arch, tuple(bundles), tuple(gates), dict(run.timings), tuple(notes))


# --- destination ---------------------------------------------------------------------------------------------


def _check_destination(dest: Path) -> None:
    """Refuse to replace anything but an earlier bundle or an empty folder (checked before the slow work)."""
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not (dest / MANIFEST_FILE).is_file())):
        raise ConfigError(
            f"{dest} exists and is not a bundle folder; exporting there would overwrite it",
            "pass a new or empty folder for --out (an earlier bundle there is replaced)",
        )


def _publish(staged: Path, dest: Path) -> None:
    """Move a finished bundle into place; an earlier bundle there is removed only after the move."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
    try:
        staged.rename(dest)
    except OSError:
        if old is not None:
            old.rename(dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- licence ----------------------------------------------------------------------------------------------------


def write_license(folder: Path, arch: str, mirror: str | None = None) -> dict[str, str]:
    """Put the upstream weights' licence in the bundle; returns the manifest's ``license`` record.

    FastestDet's BSD-3-Clause ``LICENSE.md`` is copied from its pinned upstream file (verified by
    sha256). YOLOX-Nano is Apache-2.0 upstream, but the pinned weights come from a copy without a
    licence file, so a notice naming the licence and its upstream URL is written instead.

    Raises:
        ConfigError: An architecture without a known licence.
    """
    if arch == "fastestdet":
        from models.fastestdet import FASTESTDET_COCO as record

        source = resolve(record.license_file, "FastestDet licence", mirror)
        shutil.copyfile(source, folder / "LICENSE.md")
        return {"spdx": record.license, "file": "LICENSE.md", "source": record.license_file.url}
    if arch == "yolox-nano":
        from models.yolox import YOLOX_LICENSE_URL, YOLOX_NANO_COCO

        text = (
            "This model was fine-tuned from the YOLOX-Nano COCO weights of Megvii (YOLOX,\n"
            "https://github.com/Megvii-BaseDetection/YOLOX), which are licensed under the\n"
            "Apache License, Version 2.0. Copyright (c) 2021-2022 Megvii Inc.\n\n"
            f"Full licence text: {YOLOX_LICENSE_URL}\n"
            "(also https://www.apache.org/licenses/LICENSE-2.0)\n\n"
            f"Weights source: {YOLOX_NANO_COCO.file.url} (sha256 {YOLOX_NANO_COCO.file.sha256})\n"
        )
        (folder / "LICENSE").write_text(text, encoding="utf-8")
        return {"spdx": YOLOX_NANO_COCO.license, "file": "LICENSE", "source": YOLOX_LICENSE_URL}
    raise ConfigError(
        f"no licence record for architecture '{arch}'", "add its upstream licence to toolkit.export.write_license"
    )


# --- report ----------------------------------------------------------------------------------------------------


def render_report(manifest: Manifest, model_path: Path) -> str:
    """REPORT.md of a bundle: what the file is, how accurate and fast it measured, what it was calibrated on."""
    sections = [
        _report_header(manifest, model_path),
        _report_accuracy(manifest),
        _report_latency(manifest),
        _report_calibration(manifest),
        ["## Notes", "", *(f"- {n}" for n in manifest.notes)] if manifest.notes else [],
        _report_use(manifest),
    ]
    return "\n\n".join("\n".join(lines) for lines in sections if lines) + "\n"


def _report_header(m: Manifest, model_path: Path) -> list[str]:
    quant = ""
    if m.input.quant_scale is not None:
        quant = f" (scale {m.input.quant_scale:g}, zero point {m.input.quant_zero_point})"
    size_kb = model_path.stat().st_size / 1024
    return [
        f"# {m.arch} — {m.format.upper()} {m.precision.upper()}",
        "",
        f"- model file: `{m.model_file}` ({size_kb:.0f} KB, sha256 `{file_sha256(model_path)}`)",
        (
            f"- input: {m.input.width}x{m.input.height} {m.input.resize} {m.input.channel_order} {m.input.layout} "
            f"{m.input.dtype}{quant}"
        ),
        f"- labels: {', '.join(m.labels)}; deployment score threshold {m.decode.score_threshold:g}",
        (
            f"- exported from checkpoint sha256 `{m.source_checkpoint_sha256}` by edgesight {m.toolkit_version}, "
            f"{m.created_utc}"
        ),
    ]


def _report_accuracy(m: Manifest) -> list[str]:
    a, ref = m.accuracy, m.reference_accuracy
    if a is None:
        return []
    lines = [
        "## Accuracy of this file",
        "",
        (
            f"Measured through {a.runtime} on {a.dataset}: {a.num_images} images, set sha256 "
            f"`{a.dataset_sha256[:16]}`, score threshold {a.score_threshold:g}."
        ),
        "",
        "| class | AP@[.5:.95] | AP@0.5 | GT boxes |" + (" fp32 AP@[.5:.95] | drop (AP points) |" if ref else ""),
        "|---|---:|---:|---:|" + ("---:|---:|" if ref else ""),
    ]
    for c in a.classes:
        extra = f" {_fmt(ref.ap_of(c.name))} | {_drop(ref.ap_of(c.name), c.ap)} |" if ref else ""
        lines.append(f"| {c.name} | {_fmt(c.ap)} | {_fmt(c.ap50)} | {c.num_gt} |{extra}")
    extra = f" {_fmt(ref.map)} | {_drop(ref.map, a.map)} |" if ref else ""
    lines.append(f"| **mean** | {_fmt(a.map)} | {_fmt(a.map50)} | |{extra}")
    if m.gate:
        verdict = "passed" if m.gate["passed"] else "FAILED"
        lines += [
            "",
            (
                f"Accuracy gate: INT8 may lose at most {m.gate['max_drop_points']:g} AP points (0.01 AP each) "
                f"against fp32, per class and in the mean: **{verdict}**."
            ),
        ]
    if m.parity:
        lines += [
            "",
            (
                f"fp32 parity with PyTorch: max |difference| {m.parity['max_abs_diff']:.2g} on the raw output "
                f"over {m.parity['images']} validation photos (tolerance {m.parity['tolerance']:g})."
            ),
        ]
    return lines


def _report_latency(m: Manifest) -> list[str]:
    lat = m.latency
    if not lat:
        return []
    lines = [
        "## Latency (1 thread, median / p90)",
        "",
        f"Measured on {lat.get('machine', '?')}.",
        "",
        "| file | model call ms | whole frame ms |",
        "|---|---:|---:|",
        (
            f"| {m.model_file} | {_ms(lat.get('model_ms'))} / {_ms(lat.get('model_ms_p90'))} | "
            f"{_ms(lat.get('frame_ms'))} / {_ms(lat.get('frame_ms_p90'))} |"
        ),
    ]
    if "fp32_model_ms" in lat:
        lines.append(
            f"| {lat['fp32_model_file']} (fp32, not in this bundle) | {_ms(lat['fp32_model_ms'])} | "
            f"{_ms(lat['fp32_frame_ms'])} |"
        )
    return lines


def _report_calibration(m: Manifest) -> list[str]:
    c = m.calibration
    if not c:
        return []
    per_class = ", ".join(f"{k} {v}" for k, v in dict(c.get("images_per_class", {})).items())
    return [
        "## Calibration",
        "",
        (
            f"{c.get('count')} training images ({per_class}; {c.get('negatives')} without objects), "
            f"sources {dict(c.get('sources', {}))}, set sha256 `{str(c.get('sha256', ''))[:16]}`, "
            f"method {c.get('method')}, {c.get('converter')} {c.get('converter_version')}."
        ),
        *_report_float_activations(m),
    ]


def _report_float_activations(m: Manifest) -> list[str]:
    noisy = (m.quantization or {}).get("float_activations") or []
    if not noisy:
        return []
    tried = []
    for key, what in (
        ("full_integer_gate", "The full-integer file"),
        ("eight_bit_weights_gate", "The file with the noisy activations float and 8-bit weights"),
    ):
        gate = (m.quantization or {}).get(key) or {}
        failed = [c for c in gate.get("checks", []) if not c.get("passed", True)]
        if failed:
            losses = ", ".join(f"{c['name']} -{c['drop_points']:.2f}" for c in failed)
            tried += ["", f"{what} failed the gate ({losses} AP points), so the export quantized again."]
    if (m.quantization or {}).get("eight_bit_weights_gate"):
        tried += [
            "",
            (
                "The weights now use 7 bits: ONNX Runtime's U8S8 kernels on x86 CPUs without VNNI add pairs of "
                "8-bit products in 16 bits and can saturate; 7-bit weights cannot. ARM CPUs and TensorRT do not "
                "saturate, so on them an 8-bit file would do as well."
            ),
        ]
    return [
        *tried,
        "",
        (
            f"{len(noisy)} activations stay float: on them 8-bit rounding noise exceeds 1/1000 of the variance of "
            "their channels (batch-norm folding leaves channels 100x smaller than their neighbours'), so the "
            "operations that produce and read them compute in float. The list is in `manifest.json` "
            "(`quantization.float_activations`)."
        ),
    ]


def _report_use(m: Manifest) -> list[str]:
    lic = m.license or {}
    return [
        "## Use",
        "",
        "```",
        "edgesight eval <this folder> --coco annotations.json --images images/",
        "edgesight bench <this folder> --threads 1,2,4",
        "```",
        "",
        "```python",
        "from devices.runner import BundleDetector",
        "",
        "with BundleDetector('<this folder>', threads=4) as detector:  # verifies every sha256 first",
        "    detections = detector(frame)  # frame: BGR uint8 (H, W, 3), e.g. from cv2.VideoCapture",
        "```",
        "",
        f"Licence of the upstream weights: {lic.get('spdx', '?')} (`{lic.get('file', '?')}`, {lic.get('source', '')}).",
    ]


# --- helpers -----------------------------------------------------------------------------------------------------


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


def evenly_spaced(items: Sequence[Any], n: int) -> list[Any]:
    """``n`` items spread over the whole sequence (the splits are ordered by source dataset)."""
    if n >= len(items):
        return list(items)
    if n < 1:
        raise ConfigError(f"val_limit={n} leaves no validation image", "pass a positive number, or none")
    return [items[(i * len(items)) // n] for i in range(n)]


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {what} '{value}'", f"use one of {list(choices)}")


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _ms(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.1f}"


def _drop(ref: float | None, got: float | None) -> str:
    return "n/a" if ref is None or got is None else f"{(ref - got) * 100:+.2f}"
