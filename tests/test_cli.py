"""The command line as a newcomer meets it: what each command takes, said in its help."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from toolkit.cli import cli


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_model_ref_help_names_every_kind_of_model(command: str) -> None:
    run = CliRunner().invoke(cli, [command, "--help"])
    assert run.exit_code == 0
    text = " ".join(run.output.split())
    for kind in ("bundle folder", "edgesight export", "best.pt", "yolox-nano", "hog", "device install"):
        assert kind in text, kind
