"""The one interface every detector satisfies: a BGR frame in, ``Detections`` out, with its labels.

``devices.runner.BundleDetector`` (an exported bundle through its device runtime), the stock peers
(``toolkit.evaluate.peers``), OpenCV's HOG people detector and the PyTorch model
(``toolkit.evaluate.torch_detector.TorchDetector``) all satisfy ``Detector``, so evaluation, ``predict``,
the benchmark and the daemon loop take any of them. Those that run a model file also split a call into
its three stages (``TimedDetector``) so that the model call can be timed apart from the whole frame.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from devices.processing import Placement
from devices.types import Detections


@runtime_checkable
class Detector(Protocol):
    """Frame in, detections out.

    ``labels[i]`` names class id ``i``; ``__call__`` takes a BGR uint8 (H, W, 3) frame and returns boxes in
    its pixels, and raises ``devices.errors.FrameError`` for anything else (``None`` from ``cv2.imread``);
    ``close`` releases what the detector holds (a no-op for those that hold nothing).
    """

    @property
    def labels(self) -> tuple[str, ...]: ...

    def __call__(self, frame: np.ndarray) -> Detections: ...

    def close(self) -> None: ...


@runtime_checkable
class TimedDetector(Detector, Protocol):
    """A detector whose call is ``decode(run_model(prepare(frame)))``, each stage callable alone."""

    def prepare(self, frame: np.ndarray) -> tuple[np.ndarray, Placement]: ...

    def run_model(self, tensor: np.ndarray) -> list[np.ndarray]: ...

    def decode(
        self, outputs: list[np.ndarray], placement: Placement, frame_shape: tuple[int, ...]
    ) -> Detections: ...
