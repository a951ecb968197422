"""Runtime backends: each runs a model file on input tensors and returns its raw output, nothing more.

Pre- and post-processing are ``devices.processing``'s, shared by every backend, so that every runtime gives
the same answer for the same frame. A backend satisfies ``Backend``; ``RUNTIMES`` is the registry of the
runtimes that can run a model file, keyed by runtime name, and ``create_backend`` picks one for a file's
format (``auto``: the first installed, in ``RUNTIMES`` order).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from devices.backends.base import TensorDetails
from devices.backends.onnxrt import OnnxRuntimeBackend
from devices.backends.tflite import RUNTIMES as TFLITE_MODULES
from devices.backends.tflite import TfliteBackend
from devices.errors import ConfigError
from devices.host import package_version

log = logging.getLogger(__name__)


@runtime_checkable
class Backend(Protocol):
    """One model file in one runtime: open once (load, check, warm up), run tensors, close.

    ``runtime`` names the runtime in use (a key of ``RUNTIMES``) once open; ``input_details`` is the input
    tensor the file takes (shape with batch, dtype, and scale/zero point for an integer input).
    """

    path: Path
    runtime: str

    def open(self) -> None: ...

    def close(self) -> None: ...

    @property
    def input_details(self) -> TensorDetails: ...

    def run(self, tensor: np.ndarray) -> np.ndarray: ...

    def run_all(self, tensor: np.ndarray) -> list[np.ndarray]: ...


#: ``(path, threads, providers) -> Backend``, unopened.
BackendFactory = Callable[[Path, int | None, Sequence[str] | None], Backend]


@dataclass(frozen=True)
class Runtime:
    """A runtime that can run model files of one format.

    Attributes:
        name: The key users pass (``BundleDetector(runtime=...)``).
        format: The model format it runs (a bundle manifest's ``format``).
        module: What must import for it to run.
        distribution: Its pip package, for reports and install hints.
        create: ``(path, threads, providers) -> Backend``, unopened.
    """

    name: str
    format: str
    module: str
    distribution: str
    create: BackendFactory


def _onnxruntime(path: Path, threads: int | None, providers: Sequence[str] | None) -> Backend:
    return OnnxRuntimeBackend(path, threads=threads, providers=providers)


def _tflite(name: str) -> BackendFactory:
    def create(path: Path, threads: int | None, providers: Sequence[str] | None) -> Backend:
        if providers is not None:
            log.warning("execution providers %s are ignored by %s (%s)", list(providers), name, path)
        return TfliteBackend(path, threads=threads, runtime=name)  # type: ignore[arg-type]

    return create


#: Every runtime, keyed by name; for each format, ``auto`` takes the first one installed in this order.
RUNTIMES: dict[str, Runtime] = {
    "onnxruntime": Runtime("onnxruntime", "onnx", "onnxruntime", "onnxruntime", _onnxruntime),
    "ai_edge_litert": Runtime(
        "ai_edge_litert", "tflite", TFLITE_MODULES["ai_edge_litert"], "ai-edge-litert", _tflite("ai_edge_litert")
    ),
    "tflite_runtime": Runtime(
        "tflite_runtime", "tflite", TFLITE_MODULES["tflite_runtime"], "tflite-runtime", _tflite("tflite_runtime")
    ),
}


def create_backend(
    path: str | os.PathLike,
    fmt: str,
    runtime: str = "auto",
    threads: int | None = None,
    providers: Sequence[str] | None = None,
) -> Backend:
    """An unopened backend for the model file ``path`` of format ``fmt`` (``onnx`` or ``tflite``).

    Args:
        path: The model file.
        fmt: Its format.
        runtime: ``auto`` (the first installed runtime of the format; when none is, the first, whose
            ``open`` then names the package to install) or a key of ``RUNTIMES``.
        threads: Runtime CPU threads; None lets the runtime choose.
        providers: ONNX Runtime execution providers, best first (ignored, with a warning, elsewhere).

    Raises:
        ConfigError: No runtime runs this format, or the named runtime runs another format.
    """
    candidates = [r for r in RUNTIMES.values() if r.format == fmt]
    if not candidates:
        raise ConfigError(f"no runtime runs {fmt!r} model files ({path})", "export the model as tflite or onnx")
    if runtime == "auto":
        chosen = next((r for r in candidates if _importable(r.module)), candidates[0])
    elif runtime in RUNTIMES and RUNTIMES[runtime].format == fmt:
        chosen = RUNTIMES[runtime]
    else:
        raise ConfigError(
            f"runtime {runtime!r} cannot run the {fmt.upper() if fmt == 'onnx' else 'TFLite'} model {path}",
            f"use runtime='auto' or one of {[r.name for r in candidates]}",
        )
    return chosen.create(Path(path), threads, providers)


def runtime_label(backend: Backend) -> str:
    """Runtime and version a backend runs on, e.g. ``onnxruntime 1.32.0``, for reports."""
    info = RUNTIMES.get(backend.runtime)
    return f"{backend.runtime} {package_version(info.distribution if info else backend.runtime)}"


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
