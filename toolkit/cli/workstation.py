"""Workstation commands: train, eval, predict, data, export, bench."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from calibration.noise import MAX_NOISE_TO_SIGNAL
from toolkit.cli.base import cli

log = logging.getLogger(__name__)


@cli.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/exp1"),
              show_default=True, help="Run folder: best.pt, last.pt, summary.json, val.json.")
@click.option("--model", type=click.Choice(["yolox-nano", "fastestdet"]), default=None,
              help="Architecture (default yolox-nano, the accurate tier).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON file with recipe fields (see TrainConfig); flags override it.")
@click.option("--imgsz", type=int, help="Square input size, a multiple of 32 (default: 512 YOLOX-Nano, 416 "
              "FastestDet; their pretrained sizes are 416 and 352).")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--max-minutes", type=float, help="Stop (and keep the best checkpoint) after this long.")
@click.option("--max-train-images", type=int, help="Train on a random subset (quick trials).")
@click.option("--max-val-images", type=int, help="Validate on the first N validation images (quick trials).")
@click.option("--freeze-backbone/--train-backbone", default=None, help="Freeze the feature extractor (default).")
@click.option("--protect-classes/--allow-class-drop", default=None,
              help="Keep best.pt only from epochs where no class is below its zero-shot AP (default).")
@click.option("--workers", type=int, help="Data-loading processes.")
@click.option("--data", type=click.Path(exists=True, path_type=Path), multiple=True,
              help="Your own annotated photos, added to the bundled sets (repeatable): a COCO .json, or a YOLO "
              "(data.yaml) or Pascal VOC folder.")
@click.option("--resume", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Continue from a last.pt.")
@click.pass_context
def train(ctx: click.Context, out_dir: Path, model: str | None, config_file: Path | None, resume: Path | None,
          **overrides: object) -> None:
    """Fine-tune a COCO-pretrained detector on the bundled pedestrian and stop-sign photos."""
    from toolkit.train import recipe
    from toolkit.train import train as run_train

    fields = json.loads(config_file.read_text()) if config_file else {}
    fields.update({k: v for k, v in overrides.items() if v is not None and v != ()})
    if model:
        fields["model"] = model
    config = recipe(**fields)
    result = run_train(config, out_dir, mirror=ctx.obj["mirror"], resume=resume)
    if result is None:
        return
    click.echo(f"\nbest checkpoint: {result.best} (epoch {result.best_epoch}; epoch 0 = zero-shot)")
    if result.best_epoch == 0:
        click.echo("no epoch beat the zero-shot model on every class without losing another, so best.pt is the "
                   "zero-shot model (last.pt holds the last epoch; --allow-class-drop keeps the best mean AP).")
    rows = {"zero-shot (pretrained size)": result.zero_shot_native} if result.zero_shot_native else {}
    size = f" ({config.imgsz})" if config.imgsz else ""
    rows |= {f"zero-shot{size}": result.zero_shot, f"fine-tuned{size}": result.metrics}
    click.echo(_ap_table(rows))
    click.echo(f"wall time: {result.wall_seconds / 60:.1f} min" + (" (stopped by --max-minutes)"
                                                                     if result.stopped_early else ""))


def _ap_table(rows: dict[str, dict]) -> str:
    """Markdown table of EvalResult dicts, one row per model."""
    lines = ["| model | pedestrian AP | pedestrian AP50 | stop_sign AP | stop_sign AP50 | mean AP |",
             "|---|---:|---:|---:|---:|---:|"]

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    for name, metrics in rows.items():
        per = {c["name"]: c for c in metrics["classes"]}
        cells = [fmt(per.get(cls, {}).get(key)) for cls in ("pedestrian", "stop_sign") for key in ("ap", "ap50")]
        lines.append(f"| {name} | {' | '.join(cells)} | {fmt(metrics['map'])} |")
    return "\n".join(lines)


@cli.command("eval")
@click.argument("model_ref")
@click.option("--coco", "coco_json", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="COCO annotation json (categories matched by name: person/pedestrian, stop sign/stop_sign).")
@click.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder the json's file_name entries are relative to.")
@click.option("--save-predictions", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a COCO results list (annotation file's ids, original-image pixels).")
@click.option("--pr-curve", type=click.Path(dir_okay=False, path_type=Path), help="Write a PR-curve PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.pass_context
def eval_cmd(ctx: click.Context, model_ref: str, coco_json: Path, images_dir: Path | None,
             save_predictions: Path | None, pr_curve: Path | None, as_json: bool) -> None:
    """AP@0.5 and AP@[.5:.95] per class of MODEL_REF on a COCO json.

    MODEL_REF is a checkpoint (best.pt), a registered model name for the zero-shot COCO model
    (yolox-nano, fastestdet), or 'hog' for OpenCV's HOG people detector.
    """
    from toolkit.detector import load_detector
    from toolkit.evaluate import EVAL_SCORE_THRESHOLD, evaluate

    detector = load_detector(model_ref, score_threshold=EVAL_SCORE_THRESHOLD, mirror=ctx.obj["mirror"])
    result = evaluate(detector, coco_json, images_dir, detector.labels, save_predictions=save_predictions,
                      pr_curve=pr_curve, progress=True)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.table())


@cli.command()
@click.argument("model_ref")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("annotated"),
              show_default=True)
@click.option("--score", type=float, default=0.3, show_default=True, help="Draw detections above this score.")
@click.pass_context
def predict(ctx: click.Context, model_ref: str, inputs: tuple[Path, ...], out_dir: Path, score: float) -> None:
    """Draw labelled boxes on images (files or folders) into --out."""
    from toolkit.predict import predict_images

    for path, dets in predict_images(model_ref, inputs, out_dir, score, mirror=ctx.obj["mirror"]):
        click.echo(f"{path}: {len(dets)} detections")


@cli.command("data")
@click.option("--split", type=click.Choice(["all", "train", "val"]), default="all", show_default=True)
@click.option("--data", type=click.Path(exists=True, path_type=Path), multiple=True,
              help="Also read your own set, as `train --data` would (repeatable).")
@click.pass_context
def data_cmd(ctx: click.Context, split: str, data: tuple[Path, ...]) -> None:
    """Report the training data: images and boxes per class and source, box sizes."""
    from toolkit.data import data_report, render_report
    from toolkit.datasets import default_splits

    train_s, val_s = default_splits(mirror=ctx.obj["mirror"], data=data)
    samples = {"all": train_s + val_s, "train": train_s, "val": val_s}[split]
    click.echo(render_report(data_report(samples)))


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
def export_cmd(ctx: click.Context, checkpoint: Path, fmt: str | None, precision: str | None, export_every: bool,
               out: Path, max_drop: float, calibration_images: int, allow_few_calibration: bool,
               val_images: int | None, max_noise_to_signal: float) -> None:
    """Export CHECKPOINT to a verified TFLite/ONNX bundle (model, labels, licence, report, manifest)."""
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


@cli.command("bench")
@click.argument("bundles", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--peers", "peers_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Peer models folder (default: <mirror>/weights/peers when --mirror is set).")
@click.option("--no-peers", is_flag=True, help="Leave the peer models out.")
@click.option("--threads", default="1,2,4", show_default=True, help="Comma-separated runtime thread counts.")
@click.option("--coco", "coco_json", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Evaluation set as a COCO json (default: the validation split).")
@click.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder the json's file_name entries are relative to.")
@click.option("--no-hog", is_flag=True, help="Leave OpenCV's HOG people detector out (it takes ~1 s a frame).")
@click.option("--frames", type=int, default=20, show_default=True, help="Timed frames per model and thread count.")
@click.option("--val-images", type=int, help="Use N evenly spaced images of the evaluation set only.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench"),
              show_default=True, help="Folder for bench.md, bench.json and bench.png.")
@click.pass_context
def bench_cmd(ctx: click.Context, bundles: tuple[Path, ...], peers_dir: Path | None, no_peers: bool, threads: str,
              coco_json: Path | None, images_dir: Path | None, no_hog: bool, frames: int, val_images: int | None,
              out: Path) -> None:
    """Size, latency (model call and whole frame, per thread count) and AP per class of BUNDLES, peers and HOG."""
    from toolkit.bench import bench

    # `bench bundles/*` also matches the export report files beside the bundle folders.
    for path in bundles:
        if not path.is_dir():
            click.echo(f"skipping {path}: not a bundle folder", err=True)
    bundles = tuple(p for p in bundles if p.is_dir())
    try:
        counts = tuple(int(t) for t in threads.split(",") if t.strip())
    except ValueError as exc:
        raise click.BadParameter(f"{threads!r} is not a comma-separated list of integers", param_hint="--threads") \
            from exc
    mirror = ctx.obj["mirror"]
    if peers_dir is None and not no_peers and mirror and (Path(mirror) / "weights" / "peers").is_dir():
        peers_dir = Path(mirror) / "weights" / "peers"
    table = bench(list(bundles), None if no_peers else peers_dir, counts, coco_json=coco_json, images_dir=images_dir,
                  hog=not no_hog, out=out, frames=frames, val_limit=val_images, mirror=mirror)
    click.echo(table.markdown())
    click.echo("wrote " + ", ".join(str(p) for p in table.files.values()))
