"""Export commands: ``edgesight export`` (verified TFLite / ONNX bundles, fp32 or INT8)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import click

from calibration.noise import MAX_NOISE_TO_SIGNAL
from toolkit.cli.base import cli, need_workstation


@cli.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["tflite", "onnx"]), help="Model file format.")
@click.option("--precision", type=click.Choice(["fp32", "int8"]), help="fp32, or INT8 behind the accuracy gate.")
@click.option("--all", "export_every", is_flag=True,
              help="fp32 and INT8 in both formats, into OUT/<arch>-<format>-<precision>/.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Bundle folder (with --all: the folder that receives the bundles).")
@click.option("--max-drop", type=float, default=1.0, show_default=True,
              help="Largest INT8 loss in AP points (0.01 AP@[.5:.95]) against fp32, per class and in the mean.")
@click.option("--calibration-images", type=int, default=300, show_default=True,
              help="Calibration images drawn from the training split.")
@click.option("--allow-few-calibration", is_flag=True, help="Accept fewer calibration images than the minimum.")
@click.option("--val-images", type=int, help="Evaluate on N evenly spaced validation images only (quick trials).")
@click.option("--max-noise-to-signal", type=float, default=MAX_NOISE_TO_SIGNAL, show_default=True,
              help="INT8: when the full-integer file fails the gate, quantize again keeping float the activations "
                   "whose 8-bit rounding noise exceeds this share of their channels' variance ('inf': never).")
@click.pass_context
def export_cmd(ctx: click.Context, checkpoint: Path, fmt: Literal["tflite", "onnx"] | None,
               precision: Literal["fp32", "int8"] | None, export_every: bool,
               out: Path, max_drop: float, calibration_images: int, allow_few_calibration: bool,
               val_images: int | None, max_noise_to_signal: float) -> None:
    """Export CHECKPOINT to a verified TFLite/ONNX bundle (model, labels, licence, report, manifest)."""
    need_workstation("export", "torch", "PIL", "onnx")
    from toolkit.export import export, export_all

    options = dict(max_drop=max_drop, calibration_count=calibration_images, allow_few=allow_few_calibration,
                   mirror=ctx.obj["mirror"], val_limit=val_images, max_noise_to_signal=max_noise_to_signal)
    if export_every:
        if fmt or precision:
            raise click.UsageError("--all exports every format and precision: drop --format/--precision")
        report = export_all(checkpoint, out, **options)
    else:
        if not (fmt and precision):
            raise click.UsageError("pass --format and --precision, or --all")
        report = export(checkpoint, out, fmt, precision, **options)
    click.echo(report.table())
    for bundle in report.written:
        click.echo(f"bundle: {bundle.path}")
