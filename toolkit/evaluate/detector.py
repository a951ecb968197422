"""The PyTorch model as a frame-in, detections-out callable, through the shared numpy pre/post-processing."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from devices.processing import postprocess, preprocess
from devices.types import Detections


class TorchDetector:
    """Run a models/ network on BGR uint8 frames exactly as the device backends do.

    Args:
        model: A network from ``models`` (has ``spec`` and ``forward`` giving the raw output contract).
        score_threshold: Overrides the spec's threshold (evaluation wants ~0.01 to trace the PR curve).
    """

    def __init__(self, model: torch.nn.Module, score_threshold: float | None = None) -> None:
        self.model = model.eval()
        self.spec = model.spec
        self.decode = self.spec.decode
        if score_threshold is not None:
            self.decode = dataclasses.replace(self.decode, score_threshold=score_threshold)
        self.device = next(model.parameters()).device

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels

    @property
    def runtime(self) -> str:
        return f"torch {torch.__version__}"

    def close(self) -> None:
        """Nothing to release (``devices.detector.Detector``)."""

    @torch.no_grad()
    def __call__(self, frame: np.ndarray) -> Detections:
        tensor, placement = preprocess(frame, self.spec.input)
        raw = self.model(torch.from_numpy(tensor).to(self.device))[0].cpu().numpy()
        return postprocess(raw, self.decode, self.spec.input, placement, frame.shape)


def load_detector(ref: str, score_threshold: float | None = None, mirror: str | None = None):
    """Build a detector callable from a checkpoint, a bundle folder, a registered model name (zero-shot), or 'hog'.

    Args:
        ref: ``path/to/best.pt``, a bundle folder (``edgesight export``), ``yolox-nano`` / ``fastestdet`` (the
            COCO model's two-class head), or ``hog``.
        score_threshold: Overrides the model's default threshold.
        mirror: Mirror root for pretrained weights.
    """
    from pathlib import Path

    from devices.errors import ConfigError
    from models import create_model, list_models
    from models.checkpoint import load_checkpoint

    path = Path(ref)
    if ref == "hog":
        from toolkit.evaluate.hog import HogPeopleDetector

        return HogPeopleDetector()
    if path.is_dir() and ((path / "manifest.json").is_file() or ref not in list_models()):
        # A bundle runs through the device runtime, exactly as on the Raspberry Pi or Jetson; another
        # folder is refused with the reason (unless it merely shares a model's name).
        from devices.runner import BundleDetector

        return BundleDetector(path, score_threshold=score_threshold)
    if path.is_file():
        return TorchDetector(load_checkpoint(path), score_threshold)
    if ref in list_models():
        return TorchDetector(create_model(ref, num_classes=2, pretrained=True, mirror=mirror), score_threshold)
    raise ConfigError(f"cannot find a model called '{ref}'",
                      f"pass a checkpoint file, a bundle folder, 'hog', or one of: {', '.join(list_models())}")
