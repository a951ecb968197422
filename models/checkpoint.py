"""Fine-tuned checkpoints: the weights plus everything needed to rebuild and run the model.

Saved with plain containers only, so ``torch.load(weights_only=True)`` reads them safely.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from devices.bundle import file_sha256
from devices.errors import ModelFileError
from devices.types import DecodeSpec, InputSpec, ModelSpec
from models.base import model_spec
from models.registry import create_model

log = logging.getLogger(__name__)

FORMAT = "edgesight-checkpoint/1"


def spec_to_dict(spec: ModelSpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


def spec_from_dict(data: dict[str, Any]) -> ModelSpec:
    inp = dict(data["input"])
    for key in ("mean", "std"):
        inp[key] = tuple(inp[key])
    dec = dict(data["decode"])
    dec["strides"] = tuple(dec["strides"])
    return ModelSpec(InputSpec(**inp), DecodeSpec(**dec), tuple(data["labels"]))


def save_checkpoint(path: Path, model: torch.nn.Module, arch: str, **extra: Any) -> Path:
    """Write ``model`` with its architecture name and spec; ``extra`` holds metrics, config, epoch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = model_spec(model)
    payload = {
        "format": FORMAT,
        "arch": arch,
        "num_classes": spec.decode.num_classes,
        "spec": spec_to_dict(spec),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: a crash mid-save never leaves a half-written best.pt
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint's payload, with a clear error for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"checkpoint not found: {path}", "pass the best.pt written by `edgesight train`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged zip or pickle
        raise ModelFileError(
            f"cannot read checkpoint {path} ({path.stat().st_size} bytes): {exc}",
            "the file is truncated or corrupt: copy it again or re-run training",
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(
            f"{path} is not an edgesight checkpoint (no '{FORMAT}' format tag)",
            "pass a best.pt/last.pt written by `edgesight train`",
        )
    return payload


def load_checkpoint(path: Path) -> torch.nn.Module:
    """Rebuild the fine-tuned model from a checkpoint, in eval mode."""
    payload = read_checkpoint(path)
    model = create_model(payload["arch"], num_classes=payload["num_classes"], pretrained=False)
    model.load_state_dict(payload["state_dict"], strict=True)
    model.spec = spec_from_dict(payload["spec"])
    model.source_sha256 = file_sha256(path)
    log.info("loaded %s (%s, %d classes)", path, payload["arch"], payload["num_classes"])
    return model.eval()
