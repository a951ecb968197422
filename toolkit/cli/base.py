"""The ``edgesight`` command group and its entry point.

Commands live in one module per stage beside this one and register themselves on ``cli``. Nothing
here imports torch: the device install runs ``edgesight run`` from the same entry point.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

import click

from devices.errors import EdgesightError, MissingDependencyError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--mirror", type=click.Path(file_okay=False), envvar="EDGESIGHT_MIRROR",
              help="Local mirror of the upstream weights and datasets (e.g. ../shared). Without it, "
                   "files are downloaded from their pinned upstream URLs into ~/.cache/edgesight.")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, mirror: str | None, verbose: int) -> None:
    """edgesight: fine-tune, quantize and deploy pedestrian and stop-sign detectors to edge devices.

    \b
    The stages, in order, and where their code is:
      data      the training photos             toolkit/data/
      train     fine-tune -> best.pt            toolkit/train/
      export    best.pt -> bundle (INT8 gate)   toolkit/export/
      eval      AP of a bundle or checkpoint    toolkit/evaluate/  (also predict, bench)
      run       the camera daemon on a board    devices/daemon/    (also config, demo, demo-clip)
      deploy    bundles onto boards over SSH    toolkit/deploy/    (also wheelhouse)
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if mirror:
        os.environ["EDGESIGHT_MIRROR"] = str(Path(mirror).resolve())
    ctx.obj = {"mirror": str(Path(mirror).resolve()) if mirror else None}


def need_workstation(command: str, *modules: str) -> None:
    """Refuse a workstation command on the device install (no torch, no Pillow) in one message, not a traceback.

    Raises:
        MissingDependencyError: The first of ``modules`` that is not installed, naming the extra.
    """
    for module in modules:
        if importlib.util.find_spec(module) is None:
            package = {"PIL": "pillow"}.get(module, module)
            raise MissingDependencyError(package, "train,export", f"`edgesight {command}` (the workstation install)")


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


