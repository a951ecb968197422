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


def test_help_names_every_stage_and_where_its_code_is() -> None:
    """A newcomer finds any stage from `edgesight --help` in one hop: each command is in the stage table,
    and each stage names a package that exists."""
    from pathlib import Path

    run = CliRunner().invoke(cli, ["--help"])
    table = run.output.split("where their code is:")[1].split("Options:")[0]
    named = set(table.replace(",", " ").replace("(", " ").replace(")", " ").split())
    assert set(cli.commands) - named == set(), "commands missing from the stage table in toolkit/cli/base.py"
    root = Path(__file__).resolve().parents[1]
    folders = [word for word in named if word.endswith("/")]
    assert folders and all((root / folder).is_dir() for folder in folders)


@pytest.mark.parametrize("broken", ["mirror", "data"])
def test_a_failed_train_leaves_no_run_folder(broken: str, mirror, tmp_path, monkeypatch) -> None:
    from devices.errors import DataError

    monkeypatch.setenv("EDGESIGHT_MIRROR", str(mirror))  # restored after the test; --mirror below changes it
    (tmp_path / "empty").mkdir()
    args = {"mirror": ["--mirror", str(tmp_path / "empty"), "train"],
            "data": ["--mirror", str(mirror), "train", "--data", str(tmp_path / "empty")]}[broken]
    run = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "run")])
    assert isinstance(run.exception, DataError)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_train_prints_each_epochs_validation_ap(mirror, tmp_path) -> None:
    import os
    import re
    import subprocess
    import sys

    args = ["--model", "fastestdet", "--epochs", "1", "--batch-size", "2", "--max-train-images", "4",
            "--max-val-images", "4", "--out", str(tmp_path / "run")]
    run = subprocess.run([sys.executable, "-m", "toolkit", "--mirror", str(mirror), "train", *args],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"epoch 1: .*AP.*\(best", run.stderr), run.stderr[-3000:]
