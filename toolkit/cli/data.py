"""Data commands: ``edgesight data`` (what the training sets hold)."""

from __future__ import annotations

from pathlib import Path

import click

from toolkit.cli.base import cli, need_workstation


@cli.command("data")
@click.option("--split", type=click.Choice(["all", "train", "val"]), default="all", show_default=True)
@click.option("--data", type=click.Path(exists=True, path_type=Path), multiple=True,
              help="Also read your own set, as `train --data` would (repeatable).")
@click.pass_context
def data_cmd(ctx: click.Context, split: str, data: tuple[Path, ...]) -> None:
    """Report the training data: images and boxes per class and source, box sizes."""
    need_workstation("data", "PIL")
    from toolkit.data import data_report, default_splits, render_report

    train_s, val_s = default_splits(mirror=ctx.obj["mirror"], data=data)
    samples = {"all": train_s + val_s, "train": train_s, "val": val_s}[split]
    click.echo(render_report(data_report(samples)))
