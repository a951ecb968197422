"""Export a checkpoint to verified TFLite / ONNX bundles, fp32 or INT8, behind an accuracy gate.

For each requested file the pipeline is:

1. export the fp32 file (``toolkit.export.onnx`` / ``toolkit.export.tflite``) and check it against
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
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, cast

from calibration.noise import MAX_NOISE_TO_SIGNAL
from calibration.select import MIN_CALIBRATION_IMAGES, CalibrationSet
from devices.bundle import (
    MANIFEST_FILE,
    REPORT_FILE,
    write_manifest,
)
from devices.errors import CalibrationError, ConfigError, require
from devices.host import machine
from toolkit.data.coco import to_coco
from toolkit.data.images import load_image
from toolkit.data.sample import samples_sha256
from toolkit.data.sets import evenly_spaced
from toolkit.export.gate import GateResult, gate_error
from toolkit.export.report import BundleResult, ExportReport, render_report
from toolkit.export.stages import (
    LATENCY_IMAGES,
    LATENCY_RUNS,
    PARITY_IMAGES,
    Run,
    Staged,
    draw_calibration,
    measure_latency,
    stage_fp32,
    stage_gated_int8,
)

log = logging.getLogger(__name__)

Format = Literal["tflite", "onnx"]

Precision = Literal["fp32", "int8"]


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
    if precision == "int8" and calibration_set is None:
        _check_calibration_count(calibration_count, allow_few)
    out = Path(out)
    _check_destination(out)
    with _run_context(checkpoint, out.parent, mirror, val_limit) as run:
        fp32 = stage_fp32(run, fmt)
        if precision == "fp32":
            measure_latency(run, [fp32], latency_runs)
            _finish(run, fp32, out)
            return _report(run, [fp32], [])
        cal = calibration_set or draw_calibration(run, calibration_count, allow_few)
        int8, gate = stage_gated_int8(run, fmt, fp32, cal, max_drop, max_noise_to_signal)
        if not gate.passed:
            raise gate_error([gate], run.val_description, int8.manifest.calibration)
        measure_latency(run, [fp32, int8], latency_runs)
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
    if calibration_set is None:
        _check_calibration_count(calibration_count, allow_few)
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    with _run_context(checkpoint, out_root, mirror, val_limit) as run:
        destinations = {
            f"{run.arch}-{fmt}-{p}": out_root / f"{run.arch}-{fmt}-{p}" for fmt in formats for p in ("fp32", "int8")
        }
        for dest in destinations.values():
            _check_destination(dest)
        cal = calibration_set or draw_calibration(run, calibration_count, allow_few)
        staged: list[Staged] = []
        gates: list[GateResult] = []
        for fmt in formats:
            fp32 = stage_fp32(run, fmt)
            int8, gate = stage_gated_int8(run, fmt, fp32, cal, max_drop, max_noise_to_signal)
            gates.append(gate)
            staged += [fp32, int8]
        measure_latency(run, staged, latency_runs)
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
        raise gate_error(failed, run.val_description, calibration, list(written.values()))
    return report


@contextmanager
def _run_context(
    checkpoint: str | os.PathLike, staging_parent: Path, mirror: str | None, val_limit: int | None
) -> Iterator[Run]:
    """Load the checkpoint and the data, and hold a staging folder on the destination's filesystem."""
    require("torch", "train", "exporting a checkpoint")
    from models.base import model_spec
    from models.checkpoint import load_checkpoint, read_checkpoint
    from toolkit.data.sets import default_splits

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
        val_json = to_coco(val, work / "val.json", model_spec(model).labels)
        frames = [load_image(s.image_path) for s in evenly_spaced(val, max(PARITY_IMAGES, LATENCY_IMAGES))]
        timings["load"] = round(time.perf_counter() - start, 2)
        yield Run(
            checkpoint=checkpoint,
            model=model,
            arch=arch,
            # load_checkpoint sets it to the file's hash; nn.Module types an attribute as Tensor | Module.
            checkpoint_sha256=cast(str, model.source_sha256),
            train=train,
            val_json=val_json,
            val_description=description,
            val_sha256=samples_sha256(val),
            val_frames=frames,
            work=work,
            mirror=mirror,
            timings=timings,
            training=json.loads(payload.get("training", "null")),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _finish(run: Run, staged: Staged, dest: Path, fp32: Staged | None = None) -> None:
    """Write REPORT.md and the final manifest, then move the staged bundle to ``dest``."""
    latency: dict[str, Any] = dict(staged.latency)
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


def _size_ratio(fp32: Staged, int8: Staged) -> float:
    return fp32.model_path.stat().st_size / max(int8.model_path.stat().st_size, 1)


def _report(
    run: Run, staged: Sequence[Staged], gates: Sequence[GateResult], written: dict[str, Path] | None = None
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


def _check_calibration_count(count: int, allow_few: bool) -> None:
    """Refuse too few calibration images before any slow work (checked again on the images really found)."""
    if count < MIN_CALIBRATION_IMAGES and not allow_few:
        raise CalibrationError(
            f"--calibration-images {count} is below the {MIN_CALIBRATION_IMAGES} images that give stable INT8 "
            "activation ranges",
            "calibrate on more images (the default is 300), or pass --allow-few-calibration for a quick "
            "experiment (allow_few=True in Python)",
        )


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {what} '{value}'", f"use one of {list(choices)}")
