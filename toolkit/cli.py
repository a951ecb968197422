"""The ``edgesight`` command line. Each command is a thin wrapper over one library function."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from devices.errors import EdgesightError

log = logging.getLogger(__name__)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--mirror", type=click.Path(file_okay=False), envvar="EDGESIGHT_MIRROR",
              help="Local mirror of the upstream weights and datasets (e.g. ../shared). Without it, "
                   "files are downloaded from their pinned upstream URLs into ~/.cache/edgesight.")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, mirror: str | None, verbose: int) -> None:
    """edgesight: fine-tune, quantize and deploy pedestrian and stop-sign detectors to edge devices."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if mirror:
        os.environ["EDGESIGHT_MIRROR"] = str(Path(mirror).resolve())
    ctx.obj = {"mirror": str(Path(mirror).resolve()) if mirror else None}


@cli.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/exp1"),
              show_default=True, help="Run folder: best.pt, last.pt, summary.json, val.json.")
@click.option("--model", type=click.Choice(["yolox-nano", "fastestdet"]), default=None,
              help="Architecture (default yolox-nano, the accurate tier).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON file with recipe fields (see TrainConfig); flags override it.")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--max-minutes", type=float, help="Stop (and keep the best checkpoint) after this long.")
@click.option("--max-train-images", type=int, help="Train on a random subset (quick trials).")
@click.option("--resume", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Continue from a last.pt.")
@click.pass_context
def train(ctx: click.Context, out_dir: Path, model: str | None, config_file: Path | None, resume: Path | None,
          **overrides: object) -> None:
    """Fine-tune a COCO-pretrained detector on the bundled pedestrian and stop-sign photos."""
    from toolkit.train import TrainConfig
    from toolkit.train import train as run_train

    fields = json.loads(config_file.read_text()) if config_file else {}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if model:
        fields["model"] = model
    result = run_train(TrainConfig(**fields), out_dir, mirror=ctx.obj["mirror"], resume=resume)
    if result is None:
        return
    click.echo(f"\nbest checkpoint: {result.best} (epoch {result.best_epoch}; epoch 0 = zero-shot)")
    click.echo(_ap_table({"zero-shot": result.zero_shot, "fine-tuned": result.metrics}))
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
@click.pass_context
def data_cmd(ctx: click.Context, split: str) -> None:
    """Report the bundled training data: images and boxes per class and source, box sizes."""
    from toolkit.data import data_report, render_report
    from toolkit.datasets import default_splits

    train_s, val_s = default_splits(mirror=ctx.obj["mirror"])
    samples = {"all": train_s + val_s, "train": train_s, "val": val_s}[split]
    click.echo(render_report(data_report(samples)))


def main() -> None:
    """Console entry point: user errors print their fix and exit 2, without a traceback."""
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EdgesightError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
