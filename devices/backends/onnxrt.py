"""ONNX Runtime backend: runs an ONNX model file (fp32 or INT8 QDQ) on ready-made input tensors.

Pre- and post-processing are not done here: ``devices.processing`` does them for every backend, so
that every runtime gives the same answer for the same frame.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from devices.backends.base import TensorDetails, check_threads
from devices.errors import ConfigError, ModelFileError, require
from devices.resource import Openable

log = logging.getLogger(__name__)

#: Preferred execution providers, best first. On a Jetson the onnxruntime-gpu wheel offers TensorRT
#: and CUDA; on a Raspberry Pi or a workstation only the CPU provider is present.
PREFERRED_PROVIDERS: tuple[str, ...] = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)

#: Where TensorRT keeps the engines it builds at the first start (minutes on a Jetson), so that later
#: starts load them in seconds. The systemd unit of the Jetson profile points it into the state folder.
TRT_CACHE_ENV = "EDGESIGHT_TRT_CACHE"
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def with_provider_options(providers: Sequence[str]) -> list[str | tuple[str, dict[str, str]]]:
    """The providers as ``InferenceSession`` takes them, TensorRT with its engine cache on disk."""
    cache = Path(os.environ.get(TRT_CACHE_ENV) or Path.home() / ".cache" / "edgesight" / "trt-engines")
    out: list[str | tuple[str, dict[str, str]]] = []
    for name in providers:
        if name == "TensorrtExecutionProvider":
            cache.mkdir(parents=True, exist_ok=True)
            out.append((name, {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
                               "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache)}))
        else:
            out.append(name)
    return out


def warn_on_fallback(chosen: Sequence[str], used: Sequence[str], available: Sequence[str]) -> bool:
    """Warn loudly when the session does not run on the provider it was given first (ONNX Runtime falls
    back silently when TensorRT or CUDA fail to initialise), or when a Jetson's onnxruntime has no GPU at all.

    Returns:
        True if it warned.
    """
    if chosen and used and used[0] != chosen[0]:
        log.warning("!!! ONNX Runtime runs on %s, not on %s as asked: the GPU provider failed to start (see the "
                    "lines above), so inference is much slower. Check the CUDA/TensorRT libraries of JetPack.",
                    used[0], chosen[0])
        return True
    if Path("/etc/nv_tegra_release").exists() and not any(p in available for p in _GPU_PROVIDERS):
        log.warning("!!! this is a Jetson, but this onnxruntime has neither TensorRT nor CUDA: inference runs on "
                    "the CPU. Install NVIDIA's onnxruntime-gpu wheel for your JetPack (docs/deploy.md).")
        return True
    return False


# ONNX element types the device pipeline can produce (devices.types.InputSpec.dtype).
_ONNX_DTYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int8)": np.dtype(np.int8),
}


class OnnxRuntimeBackend(Openable):
    """One ONNX model in an ONNX Runtime session; a context manager that opens and warms up once.

    Example:
        >>> with OnnxRuntimeBackend("bundle/model.onnx", threads=2) as backend:
        ...     raw = backend.run(tensor)  # tensor from devices.processing.preprocess

    Args:
        path: The ``.onnx`` file.
        threads: Intra-op threads; None lets ONNX Runtime use one per physical core.
        providers: Execution providers to use, in order of preference; None picks the best available
            from ``PREFERRED_PROVIDERS``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.threads = check_threads(threads)
        self._requested = tuple(providers) if providers is not None else None
        self._session: Any = None
        self._input_name = ""
        self._output_name = ""
        self._input_shape: tuple[int, ...] = ()
        self._input_dtype: np.dtype = np.dtype(np.float32)

    #: The runtime's key in ``devices.backends.RUNTIMES``.
    runtime = "onnxruntime"

    # --- lifecycle -----------------------------------------------------------------------------------

    def open(self) -> None:
        """Load the model, check its input, and run one warm-up inference (first-run allocations)."""
        if self._session is not None:
            return
        ort = require("onnxruntime", "onnx", "Running an ONNX model")
        if not self.path.is_file():
            raise ModelFileError(f"ONNX model not found: {self.path}", "check the path, or re-export the bundle")
        options = ort.SessionOptions()
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        providers = self._choose_providers(ort.get_available_providers())
        try:
            session = ort.InferenceSession(str(self.path), options, providers=with_provider_options(providers))
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/InvalidGraph types
            raise ModelFileError(
                f"ONNX Runtime cannot load {self.path} ({self.path.stat().st_size} bytes): {exc}",
                "the file is truncated, corrupt or not an ONNX model: copy the bundle again and compare "
                "its sha256 with the manifest, or re-export it",
            ) from exc
        self._bind(session)
        warn_on_fallback(providers, session.get_providers(), ort.get_available_providers())
        log.info(
            "opened %s on %s (input %s %s, threads=%s)",
            self.path,
            session.get_providers(),
            self._input_dtype,
            self._input_shape,
            self.threads,
        )
        self.run(np.zeros(self._input_shape, self._input_dtype))

    def close(self) -> None:
        """Release the session; ``open`` (or ``with``) loads it again."""
        self._session = None

    def _choose_providers(self, available: Sequence[str]) -> list[str]:
        if self._requested is None:
            return [p for p in PREFERRED_PROVIDERS if p in available] or list(available)
        missing = [p for p in self._requested if p not in available]
        if missing:
            raise ConfigError(
                f"execution provider(s) {missing} are not available in this onnxruntime build",
                f"use some of {list(available)}, or install the onnxruntime build that has them "
                "(onnxruntime-gpu on a Jetson)",
            )
        return list(self._requested)

    def _bind(self, session: Any) -> None:
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1:
            raise ModelFileError(
                f"{self.path} has {len(inputs)} inputs ({[i.name for i in inputs]}); a detector takes one image",
                "export the model with a single image input",
            )
        shape = inputs[0].shape
        if not all(isinstance(d, int) and d > 0 for d in shape):
            raise ModelFileError(
                f"{self.path} has a dynamic input shape {shape}",
                "export with a fixed batch of 1 and a fixed input size (toolkit.export.onnx does)",
            )
        if inputs[0].type not in _ONNX_DTYPES:
            raise ModelFileError(
                f"{self.path} takes {inputs[0].type}, which the device pipeline cannot produce",
                "export with a float32, uint8 or int8 input",
            )
        self._session = session
        self._input_name = inputs[0].name
        self._output_name = outputs[0].name
        self._input_shape = tuple(int(d) for d in shape)
        self._input_dtype = _ONNX_DTYPES[inputs[0].type]

    # --- inference ---------------------------------------------------------------------------------

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of the input tensor, batch dimension included, e.g. ``(1, 3, 416, 416)``."""
        self._require_open()
        return self._input_shape

    @property
    def input_dtype(self) -> np.dtype:
        """Element type of the input tensor."""
        self._require_open()
        return self._input_dtype

    @property
    def input_details(self) -> TensorDetails:
        """The input tensor: shape with batch and dtype (ONNX QDQ files take float, so no scale)."""
        self._require_open()
        return TensorDetails(self._input_name, self._input_shape, self._input_dtype)

    @property
    def providers(self) -> list[str]:
        """The execution providers the session really uses, best first."""
        self._require_open()
        return list(self._session.get_providers())

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """Run the model on one input tensor.

        Args:
            tensor: The preprocessed input (``devices.processing.preprocess``), batch dimension included.

        Returns:
            The model's first output as is, batch dimension kept.
        """
        self._check(tensor)
        return self._session.run([self._output_name], {self._input_name: tensor})[0]

    def run_all(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Like ``run``, but every output of the model, in the file's order (multi-output peers)."""
        self._check(tensor)
        return self._session.run(None, {self._input_name: tensor})

    def _check(self, tensor: np.ndarray) -> None:
        self._require_open()
        if tensor.shape != self._input_shape or tensor.dtype != self._input_dtype:
            raise ConfigError(
                f"input tensor {tensor.dtype} {tensor.shape} does not fit {self.path}, which takes "
                f"{self._input_dtype} {self._input_shape}",
                "preprocess frames with the InputSpec of this model's bundle",
            )

    def _require_open(self) -> None:
        if self._session is None:
            raise RuntimeError("OnnxRuntimeBackend is not open: use it as a context manager (with ... as backend)")
