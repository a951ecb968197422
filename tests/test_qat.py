"""Quantization-aware fine-tuning: batch-norm folding is exact, the simulation is removable, a run works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from devices.errors import ConfigError
from devices.processing import preprocess
from models import create_model
from models.checkpoint import load_checkpoint, save_checkpoint
from toolkit.data import load_image
from toolkit.datasets import default_splits
from toolkit.qat import fold_batchnorm, prepare, quantization_aware_finetune


def _real_input(mirror: Path, model: torch.nn.Module) -> torch.Tensor:
    _, val = default_splits(mirror=str(mirror))
    tensor, _ = preprocess(load_image(val[0].image_path), model.spec.input)
    return torch.from_numpy(tensor)


@pytest.mark.parametrize("arch", ["yolox-nano", "fastestdet"])
def test_folding_batchnorm_keeps_the_output(mirror: Path, arch: str) -> None:
    model = create_model(arch, num_classes=2, pretrained=True, mirror=str(mirror)).eval()
    x = _real_input(mirror, model)
    with torch.no_grad():
        expected = model(x)
        folded = fold_batchnorm(model)
        got = model(x)
    assert folded > 20
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    # Every batch norm is now a pure shift, and the state dict still loads into a fresh model.
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(bool((bn.weight == 1).all()) and bool((bn.running_mean == 0).all()) for bn in bns)
    create_model(arch, num_classes=2, pretrained=False).load_state_dict(model.state_dict(), strict=True)


def test_simulation_changes_the_output_and_is_removed_without_a_trace(mirror: Path) -> None:
    model = create_model("yolox-nano", num_classes=2, pretrained=True, mirror=str(mirror)).eval()
    x = _real_input(mirror, model)
    fold_batchnorm(model)
    keys = set(model.state_dict())
    with torch.no_grad():
        float_out = model(x)
        sim = prepare(model)
        model(x)  # observe the activation ranges
        sim.freeze_ranges()
        quantized = model(x)
        sim.remove()
        restored = model(x)
    assert len(sim.convs) > 100 and len(sim.observers) > 100
    assert (quantized - float_out).abs().max() > 1e-2  # 8-bit activations are visible
    assert torch.equal(restored, float_out)
    assert set(model.state_dict()) == keys


@pytest.mark.slow
def test_quantization_aware_finetune_writes_a_loadable_checkpoint(mirror: Path, tmp_path: Path) -> None:
    model = create_model("fastestdet", num_classes=2, pretrained=True, mirror=str(mirror))
    source = save_checkpoint(tmp_path / "best.pt", model, "fastestdet")
    result = quantization_aware_finetune(source, tmp_path / "qat", epochs=1, batch_size=4, mirror=str(mirror),
                                         max_train_images=8, max_val_images=12, progress=False)
    summary = json.loads((tmp_path / "qat" / "qat_summary.json").read_text())
    assert [h["epoch"] for h in summary["simulated_int8"]] == [0, 1]
    # Simulated INT8 AP is measured on the same images as the float AP, and is lower before training.
    assert summary["simulated_int8"][0]["map"] < result.source_metrics["map"]
    reloaded = load_checkpoint(result.checkpoint)
    x = _real_input(mirror, reloaded)
    with torch.no_grad():
        assert torch.isfinite(reloaded(x)).all()


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="epochs=0"):
        quantization_aware_finetune(tmp_path / "best.pt", tmp_path / "qat", epochs=0)
