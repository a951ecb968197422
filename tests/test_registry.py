"""The model registry is the only list of architectures: every other part of the toolkit reads each model's entry."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from devices.errors import ConfigError
from devices.types import DecodeSpec, InputSpec
from models import create_model, list_models, register_model
from models.base import COCO80, PretrainedWeights
from models.hub import RemoteFile
from models.registry import _MODELS, model_entry


@pytest.mark.parametrize("name", list_models())
def test_each_entry_names_real_parts_of_its_network(name: str) -> None:
    """The backbone prefix and the class-score rows the trainer freezes or trains exist in the network."""
    entry = model_entry(name)
    model = create_model(name, num_classes=2, pretrained=False)
    params = dict(model.named_parameters())
    backbone = [n for n in params if n.startswith(entry.backbone_prefix)]
    assert backbone and len(backbone) < len(params)  # a feature extractor, and a head outside it
    if entry.class_rows_prefix is not None:
        rows = [p for n, p in params.items() if n.startswith(entry.class_rows_prefix)]
        assert rows and all(p.shape[0] == 2 for p in rows)  # one row per class
    assert entry.weights.decode.kind == model.spec.decode.kind


def test_cli_model_choices_are_the_registry() -> None:
    from toolkit.cli import cli

    run = CliRunner().invoke(cli, ["train", "--help"])
    assert run.exit_code == 0
    assert f"[{'|'.join(list_models())}]" in run.output.replace("\n", "").replace(" ", "")


@pytest.fixture
def third_architecture(monkeypatch: pytest.MonkeyPatch):
    """A third architecture registered only in the registry, as a new file in models/ would."""
    monkeypatch.setattr("models.registry._MODELS", dict(_MODELS))
    weights = PretrainedWeights(
        name="tiny-coco",
        file=RemoteFile(url="https://example.org/tiny.pt", sha256="0" * 64, mirror_path="weights/tiny.pt"),
        license="MIT",
        license_file=None,
        categories=COCO80,
        input=InputSpec(width=64, height=64),
        decode=DecodeSpec(kind="yolox", strides=(8, 16, 32), num_classes=80),
        license_url="https://example.org/LICENSE",
        license_notice="Tiny is MIT-licensed by Example.\n",
    )

    @register_model("tiny", weights=weights, backbone_prefix="backbone.")
    def tiny(num_classes: int = 2, pretrained: bool = True, mirror: str | None = None) -> None:
        raise NotImplementedError

    return weights


def test_a_new_architecture_needs_nothing_but_its_entry(third_architecture, tmp_path: Path) -> None:
    from toolkit.cli import cli
    from toolkit.export.licence import write_license
    from toolkit.train import recipe

    assert "tiny" in CliRunner().invoke(cli, ["train", "--help"]).output
    assert recipe(model="tiny").model == "tiny"
    with pytest.raises(ConfigError, match="one sigmoid per class"):
        recipe(model="tiny", train_layers="class_rows")  # its entry names no class-score rows
    record = write_license(tmp_path, "tiny")
    assert record == {"spdx": "MIT", "file": "LICENSE", "source": "https://example.org/LICENSE"}
    assert (tmp_path / "LICENSE").read_text().startswith("Tiny is MIT-licensed by Example.\n")


def test_unknown_and_duplicate_names_are_refused(third_architecture) -> None:
    from toolkit.train import recipe

    with pytest.raises(ConfigError, match="unknown model 'mystery'"):
        recipe(model="mystery")
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny", weights=third_architecture, backbone_prefix="x.")(lambda **_: None)
