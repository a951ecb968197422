"""The PyTorch model as a frame-in, detections-out callable, through the shared numpy pre/post-processing."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from devices.processing import postprocess, preprocess
from devices.types import Detections
from models.base import model_spec


class TorchDetector:
    """Run a models/ network on BGR uint8 frames exactly as the device backends do.

    Args:
        model: A network from ``models`` (has ``spec`` and ``forward`` giving the raw output contract).
        score_threshold: Overrides the spec's threshold (evaluation wants ~0.01 to trace the PR curve).
    """

    def __init__(self, model: torch.nn.Module, score_threshold: float | None = None) -> None:
        self.model = model.eval()
        self.spec = model_spec(model)
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
