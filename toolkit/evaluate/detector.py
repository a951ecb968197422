"""``load_detector``: what a MODEL_REF on the command line names, as a ``devices.detector.Detector``.

A bundle folder and ``hog`` run on the device install (numpy, OpenCV, one runtime); a checkpoint or a
registered model name runs in PyTorch and needs the workstation install, which the error then says.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from devices.bundle import MANIFEST_FILE
from devices.detector import Detector
from devices.errors import ConfigError, MissingDependencyError


def load_detector(ref: str, score_threshold: float | None = None, mirror: str | None = None) -> Detector:
    """Build a detector from a bundle folder, a checkpoint, a registered model name (zero-shot), or 'hog'.

    Args:
        ref: A bundle folder (``edgesight export``), ``path/to/best.pt``, ``yolox-nano`` / ``fastestdet``
            (the COCO model's two-class head), or ``hog``.
        score_threshold: Overrides the model's default threshold.
        mirror: Mirror root for pretrained weights.

    Raises:
        ConfigError: Nothing of that name.
        MissingDependencyError: A checkpoint or model name on an install without torch.
        ModelFileError: A bundle that fails its checks, or a folder that is not a bundle.
    """
    from devices.runner import BundleDetector

    if ref == "hog":
        from toolkit.evaluate.hog import HogPeopleDetector

        return HogPeopleDetector()
    path = Path(ref)
    if path.is_dir() and (path / MANIFEST_FILE).is_file():
        # A bundle runs through the device runtime, exactly as on the Raspberry Pi or Jetson.
        return BundleDetector(path, score_threshold=score_threshold)
    if importlib.util.find_spec("torch") is None:
        if path.is_dir():
            return BundleDetector(path, score_threshold=score_threshold)  # not a bundle: its error says why
        if not path.exists():
            raise ConfigError(
                f"cannot find {ref!r}",
                "pass a bundle folder or 'hog'; checkpoints and registered model names (yolox-nano, fastestdet) "
                "need the workstation install: pip install 'edgesight[train]'",
            )
        raise MissingDependencyError("torch", "train", f"Running the checkpoint {ref} in PyTorch")

    from models import create_model, list_models
    from models.checkpoint import load_checkpoint
    from toolkit.evaluate.torch_detector import TorchDetector

    if path.is_dir() and ref not in list_models():
        # Another folder is refused with the reason (unless it merely shares a model's name).
        return BundleDetector(path, score_threshold=score_threshold)
    if path.is_file():
        return TorchDetector(load_checkpoint(path), score_threshold)
    if ref in list_models():
        return TorchDetector(create_model(ref, num_classes=2, pretrained=True, mirror=mirror), score_threshold)
    raise ConfigError(
        f"cannot find a model called '{ref}'",
        f"pass a bundle folder, a checkpoint file, 'hog', or one of: {', '.join(list_models())}",
    )
