"""Training commands: ``edgesight train`` (fine-tune a COCO-pretrained detector)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import click

from toolkit.cli.base import cli, need_workstation


class ModelChoice(click.Choice):
    """The registered architectures (``models.list_models``), read only when a train command needs them.

    The registry imports the networks and so torch; ``edgesight --help`` and the device commands must not.
    """

    def __init__(self) -> None:
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        from models import list_models

        return tuple(list_models())


@cli.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/exp1"),
              show_default=True, help="Run folder: best.pt, last.pt, summary.json, val.json.")
@click.option("--model", type=ModelChoice(), default=None,
              help="Architecture (default yolox-nano, the accurate tier).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON file with recipe fields (see TrainConfig); flags override it.")
@click.option("--imgsz", type=int, help="A fixed square input size, a multiple of 32 (default: train at the "
              "pretrained size, 416 YOLOX-Nano / 352 FastestDet, and choose the size after training on the validation "
              "photos, yours when --data is given).")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--max-minutes", type=float, help="Stop (and keep the best checkpoint) after this long.")
@click.option("--max-train-images", type=int, help="Train on a random subset (quick trials).")
@click.option("--max-val-images", type=int, help="Validate on the first N validation images (quick trials).")
@click.option("--train-layers", type=click.Choice(["class_rows", "outputs", "head", "neck_and_head"]),
              help="What trains (default: head).")
@click.option("--protect-classes/--allow-class-drop", default=None,
              help="Keep best.pt only from epochs where no class on any validation source is below its zero-shot AP "
              "(default).")
@click.option("--workers", type=int, help="Data-loading processes.")
@click.option("--data", type=click.Path(exists=True, path_type=Path), multiple=True,
              help="Your own annotated photos (repeatable): a COCO .json, or a YOLO (data.yaml) or Pascal VOC folder. "
              "Every class they label is learnt from them, and their validation split decides best.pt.")
@click.option("--resume", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Continue from a last.pt.")
@click.pass_context
def train(ctx: click.Context, out_dir: Path, model: str | None, config_file: Path | None, resume: Path | None,
          **overrides: object) -> None:
    """Fine-tune a COCO-pretrained detector on the bundled pedestrian and stop-sign photos."""
    need_workstation("train", "torch", "PIL")
    from toolkit.train import recipe
    from toolkit.train import train as run_train
    from toolkit.train.report import summary_text

    fields = json.loads(config_file.read_text()) if config_file else {}
    fields.update({k: v for k, v in overrides.items() if v is not None and v != ()})
    if model:
        fields["model"] = model
    config = recipe(**fields)
    # Each epoch's validation AP as it is measured, not only in summary.json at the end (the trainer logs it
    # at INFO; -v shows the rest of its log too).
    logging.getLogger("toolkit.train").setLevel(min(logging.INFO, logging.getLogger().getEffectiveLevel()))
    created = not out_dir.exists()
    try:
        result = run_train(config, out_dir, mirror=ctx.obj["mirror"], resume=resume)
    except BaseException:
        # A run that fails before its first checkpoint (no mirror, an unreadable --data) leaves no run folder.
        if created and out_dir.is_dir() and not any(out_dir.glob("*.pt")):
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    if result is None:
        return
    click.echo(f"\nbest checkpoint: {result.best} (epoch {result.best_epoch}; epoch 0 = the zero-shot weights)")
    if result.best_epoch == 0:
        click.echo("no epoch beat the zero-shot model on every validation source and class, so best.pt holds the "
                   "zero-shot weights (last.pt holds the last epoch; --allow-class-drop keeps the best mean AP).")
    click.echo(summary_text(result.summary))
    click.echo(f"wall time: {result.wall_seconds / 60:.1f} min" + (" (stopped by --max-minutes)"
                                                                     if result.stopped_early else ""))
