"""Run a verified bundle on camera frames: BGR frame in, ``Detections`` out.

``BundleDetector`` loads and verifies the bundle (``devices.bundle.load_bundle``), opens the runtime
its format needs once (``devices.backends.create_backend``: ONNX Runtime, LiteRT or tflite-runtime), and
runs every frame through the shared ``devices.processing`` with the manifest's ``InputSpec`` and
``DecodeSpec``. It is a ``devices.detector.TimedDetector``: the three stages are public (``prepare``,
``run_model``, ``decode``) so that a benchmark can time the model call apart from the whole frame.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from devices.backends import Backend, create_backend, runtime_label
from devices.bundle import Bundle, load_bundle
from devices.errors import ConfigError, ModelFileError
from devices.processing import Placement, postprocess, preprocess
from devices.resource import Openable
from devices.types import DecodeSpec, Detections, InputSpec

log = logging.getLogger(__name__)


class BundleDetector(Openable):
    """A bundle as a frame-in, detections-out callable; open once, call per frame, close.

    Example:
        >>> with BundleDetector("bundles/fastestdet-tflite-int8", threads=4) as detector:
        ...     detections = detector(frame)  # BGR uint8 (H, W, 3)

    Args:
        bundle_dir: The bundle folder (verified by sha256 before anything is loaded).
        threads: Runtime CPU threads; None lets the runtime use every core.
        runtime: ``auto``, or a runtime of ``devices.backends.RUNTIMES`` that runs the bundle's format:
            ``ai_edge_litert`` or ``tflite_runtime`` for a TFLite bundle, ``onnxruntime`` for an ONNX one.
        score_threshold: Overrides the manifest's deployment threshold (evaluation uses 0.01).
        providers: ONNX Runtime execution providers, best first (None: the best available).

    Raises:
        ModelFileError: The bundle is missing, tampered with, or its model disagrees with its manifest.
        ConfigError: A runtime that cannot run this bundle's format, or a bad threshold.
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike,
        threads: int | None = None,
        runtime: str = "auto",
        score_threshold: float | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:
            raise ConfigError(
                f"score_threshold {score_threshold} is outside [0, 1]", "use 0.01 to evaluate, ~0.3 to deploy"
            )
        self.bundle: Bundle = load_bundle(bundle_dir)
        manifest = self.bundle.manifest
        self.name = Path(bundle_dir).name
        self.threads = threads
        self.input: InputSpec = manifest.input
        self.decode_spec: DecodeSpec = manifest.decode
        if score_threshold is not None:
            self.decode_spec = dataclasses.replace(self.decode_spec, score_threshold=score_threshold)
        self.backend: Backend = create_backend(self.bundle.model_path, manifest.format, runtime, threads, providers)
        self._open = False
        self.open()

    # --- lifecycle ---------------------------------------------------------------------------------------

    def open(self) -> None:
        """Open (and warm up) the runtime and check the file against the manifest; a no-op when open."""
        if self._open:
            return
        self.backend.open()
        self._open = True
        try:
            self._check_input()
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        """Release the runtime; ``open`` loads it again."""
        self.backend.close()
        self._open = False

    # --- what it is ----------------------------------------------------------------------------------------

    @property
    def labels(self) -> tuple[str, ...]:
        return self.bundle.labels

    @property
    def path(self) -> Path:
        """The model file."""
        return self.bundle.model_path

    @property
    def runtime(self) -> str:
        """Runtime and version actually used, e.g. ``onnxruntime 1.32.0``."""
        return runtime_label(self.backend)

    # --- one frame, in three timed stages ------------------------------------------------------------------

    def prepare(self, frame: np.ndarray) -> tuple[np.ndarray, Placement]:
        """BGR uint8 frame -> (input tensor, where the frame sits in it).

        Raises:
            FrameError: ``frame`` is not a BGR uint8 image (``None`` from ``cv2.imread``, a grey array).
        """
        return preprocess(frame, self.input)

    def run_model(self, tensor: np.ndarray) -> list[np.ndarray]:
        """The model call alone; its output (batch kept), in a list like every ``TimedDetector``'s."""
        if not self._open:
            raise RuntimeError(f"BundleDetector {self.name} is closed: use it in a `with` block or call open()")
        return [self.backend.run(tensor)]

    def decode(self, outputs: list[np.ndarray], placement: Placement, frame_shape: tuple[int, ...]) -> Detections:
        """Raw output -> detections in original-frame pixels."""
        return postprocess(outputs[0][0], self.decode_spec, self.input, placement, frame_shape)

    def __call__(self, frame: np.ndarray) -> Detections:
        tensor, placement = self.prepare(frame)
        return self.decode(self.run_model(tensor), placement, frame.shape)

    def __repr__(self) -> str:
        m = self.bundle.manifest
        return f"BundleDetector({str(self.bundle.path)!r}, {m.format} {m.precision}, threads={self.threads})"

    # --- checks ----------------------------------------------------------------------------------------------

    def _check_input(self) -> None:
        """The file's input tensor must be what the manifest's InputSpec produces."""
        spec = self.input
        expected_shape = (1, 3, spec.height, spec.width) if spec.layout == "NCHW" else (1, spec.height, spec.width, 3)
        details = self.backend.input_details
        shape, dtype, scale, zero_point = details.shape, details.dtype, details.scale, details.zero_point
        problems = []
        if tuple(shape) != expected_shape:
            problems.append(f"input shape {tuple(shape)} != {expected_shape}")
        if np.dtype(dtype) != np.dtype(spec.dtype):
            problems.append(f"input dtype {np.dtype(dtype).name} != {spec.dtype}")
        if spec.dtype != "float32" and (
            scale is None
            or spec.quant_scale is None
            or not math.isclose(scale, spec.quant_scale, rel_tol=1e-6)
            or zero_point != spec.quant_zero_point
        ):
            problems.append(
                f"input quantization (scale {scale}, zero point {zero_point}) != manifest "
                f"({spec.quant_scale}, {spec.quant_zero_point})"
            )
        if problems:
            raise ModelFileError(
                f"{self.path} does not match its manifest: {'; '.join(problems)}",
                "re-export the bundle with `edgesight export` (the manifest was written for another file)",
            )
