"""Evaluation commands: ``eval`` (AP on a COCO json), ``predict`` (annotated photos), ``bench`` (side by side)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from toolkit.cli.base import cli


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

    MODEL_REF is one of:

    \b
      BUNDLE_DIR   a bundle folder (edgesight export), run by its device runtime as on the board
      best.pt      a checkpoint of edgesight train
      yolox-nano   a registered model name: the zero-shot COCO model (see edgesight train --help)
      hog          OpenCV's HOG people detector, the classical baseline

    On the device install (no torch) only a bundle folder and 'hog' run.
    """
    from toolkit.evaluate import EVAL_SCORE_THRESHOLD, evaluate
    from toolkit.evaluate.detector import load_detector

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
    """Draw labelled boxes on images (files or folders) into --out.

    MODEL_REF is what eval takes: a bundle folder (edgesight export), a checkpoint (best.pt), a registered
    model name (yolox-nano, fastestdet: the zero-shot COCO model) or 'hog'; on the device install a bundle
    folder or 'hog'. An unreadable image is reported and skipped; the command exits non-zero at the end,
    naming them all.
    """
    from devices.errors import DataError
    from toolkit.evaluate.predict import predict_images

    skipped = []
    for p in predict_images(model_ref, inputs, out_dir, score, mirror=ctx.obj["mirror"]):
        if p.detections is not None:  # written, else skipped with the error
            click.echo(f"{p.written}: {len(p.detections)} detections")
        else:
            click.echo(f"{p.source}: skipped, {p.error}", err=True)
            skipped.append(str(p.source))
    if skipped:
        raise DataError(
            f"{len(skipped)} image(s) could not be read and were skipped: {', '.join(skipped)}",
            f"re-export or remove them; every other image was written to {out_dir}",
        )


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
    from toolkit.evaluate.bench import bench

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
