"""TFLite backend: runs a ``.tflite`` file (float32 or full-integer INT8) with LiteRT or tflite-runtime.

Pre- and post-processing are not done here: ``devices.processing`` does them for every backend, so
that every runtime gives the same answer for the same frame. An integer output is dequantized with
its own scale and zero point, so ``run`` always returns floats that the decoders read.

Two interchangeable runtimes load the same file: ``ai-edge-litert`` (LiteRT, the maintained package)
and ``tflite-runtime`` (the last release, 2.14, still installs on Raspberry Pi OS with numpy < 2).
"""

from __future__ import annotations

import importlib
import logging
import os
import struct
from pathlib import Path
from typing import Any, Literal

import numpy as np

from devices.backends.base import TensorDetails, check_threads
from devices.errors import ConfigError, MissingDependencyError, ModelFileError
from devices.resource import Openable

log = logging.getLogger(__name__)

#: Runtime name -> module holding its ``Interpreter``, in the order ``runtime="auto"`` tries them.
RUNTIMES: dict[str, str] = {
    "ai_edge_litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
}
_PACKAGES = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}

_BROKEN_FILE_FIX = (
    "the file is truncated, corrupt or not a TFLite model: copy the bundle again and compare its sha256 "
    "with the manifest, or re-export it"
)


class TfliteBackend(Openable):
    """One TFLite model in an interpreter; a context manager that loads, allocates and warms up once.

    Example:
        >>> with TfliteBackend("bundle/model_int8.tflite", threads=4) as backend:
        ...     raw = backend.run(tensor)  # tensor from devices.processing.preprocess

    Args:
        path: The ``.tflite`` file.
        threads: CPU threads for the interpreter (and its XNNPACK delegate); None uses every core.
        runtime: ``auto`` (ai-edge-litert if installed, else tflite-runtime), ``ai_edge_litert`` or
            ``tflite_runtime``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        runtime: Literal["auto", "ai_edge_litert", "tflite_runtime"] = "auto",
    ) -> None:
        check_threads(threads)
        if runtime != "auto" and runtime not in RUNTIMES:
            raise ConfigError(f"unknown TFLite runtime {runtime!r}", f"use 'auto' or one of {list(RUNTIMES)}")
        self.path = Path(path)
        self.threads = threads
        self.requested_runtime = runtime
        self.runtime = ""
        self._interpreter: Any = None
        self._input: TensorDetails | None = None
        self._output: TensorDetails | None = None
        self._input_index = -1
        self._output_index = -1
        self._outputs: list[tuple[TensorDetails, int]] = []

    # --- lifecycle -----------------------------------------------------------------------------------

    def open(self) -> None:
        """Load the model, allocate its tensors, check its input and run one warm-up inference."""
        if self._interpreter is not None:
            return
        runtime, module = _import_runtime(self.requested_runtime)
        if not self.path.is_file():
            raise ModelFileError(f"TFLite model not found: {self.path}", "check the path, or re-export the bundle")
        content = self.path.read_bytes()
        # tflite-runtime 2.14 does not verify the flatbuffer and segfaults on a truncated file, so the
        # structure is checked here, before any runtime touches it.
        check_flatbuffer(content, self.path)
        threads = self.threads if self.threads is not None else (os.cpu_count() or 1)
        try:
            interpreter = module.Interpreter(model_content=content, num_threads=threads)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(
                f"{runtime} cannot load {self.path} ({len(content)} bytes): {exc}", _BROKEN_FILE_FIX
            ) from exc
        self._bind(interpreter)
        self.runtime = runtime
        log.info(
            "opened %s with %s (input %s %s, scale %s, zero point %s; threads=%d)",
            self.path, runtime, self.input_details.dtype, self.input_details.shape,
            self.input_details.scale, self.input_details.zero_point, threads,
        )  # fmt: skip
        self.run(np.zeros(self.input_details.shape, self.input_details.dtype))

    def close(self) -> None:
        """Release the interpreter; ``open`` (or ``with``) loads it again."""
        self._interpreter = None

    def _bind(self, interpreter: Any) -> None:
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        if len(inputs) != 1:
            raise ModelFileError(
                f"{self.path} has {len(inputs)} inputs ({[i['name'] for i in inputs]}); a detector takes one image",
                "export the model with a single image input (toolkit.export.tflite does)",
            )
        details = TensorDetails.from_runtime(inputs[0])
        if details.dtype.name not in ("float32", "uint8", "int8"):
            raise ModelFileError(
                f"{self.path} takes {details.dtype.name}, which the device pipeline cannot produce",
                "export with a float32, uint8 or int8 input",
            )
        self._interpreter = interpreter
        self._input, self._input_index = details, int(inputs[0]["index"])
        self._outputs = [(TensorDetails.from_runtime(o), int(o["index"])) for o in outputs]
        self._output, self._output_index = self._outputs[0]

    # --- inference ---------------------------------------------------------------------------------

    @property
    def input_details(self) -> TensorDetails:
        """The input tensor: NHWC shape with batch, dtype, and scale/zero point for an integer input."""
        self._require_open()
        assert self._input is not None  # set together with the interpreter
        return self._input

    @property
    def output_details(self) -> TensorDetails:
        """The (first) output tensor as stored in the file, before dequantization."""
        self._require_open()
        assert self._output is not None
        return self._output

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """Run the model on one input tensor.

        Args:
            tensor: The preprocessed input (``devices.processing.preprocess`` with the bundle's
                ``InputSpec``: NHWC, of the input's dtype), batch dimension included.

        Returns:
            The model's first output, batch dimension kept; float32, dequantized if stored as integers.
        """
        self._invoke(tensor)
        return self._read(self.output_details, self._output_index)

    def run_all(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Like ``run``, but every output of the model, in the file's order (multi-output peers)."""
        self._invoke(tensor)
        return [self._read(details, index) for details, index in self._outputs]

    def _invoke(self, tensor: np.ndarray) -> None:
        inp = self.input_details
        if tensor.shape != inp.shape or tensor.dtype != inp.dtype:
            raise ConfigError(
                f"input tensor {tensor.dtype} {tensor.shape} does not fit {self.path}, which takes "
                f"{inp.dtype} {inp.shape}",
                "preprocess frames with the InputSpec of this model's bundle (TFLite files take NHWC)",
            )
        self._interpreter.set_tensor(self._input_index, tensor)
        self._interpreter.invoke()

    def _read(self, details: TensorDetails, index: int) -> np.ndarray:
        # get_tensor copies, so outputs stay valid after the next invoke.
        raw = self._interpreter.get_tensor(index)
        if details.scale is not None:
            return ((raw.astype(np.float32) - np.float32(details.zero_point)) * np.float32(details.scale)).astype(
                np.float32
            )
        return raw

    def _require_open(self) -> None:
        if self._interpreter is None:
            raise RuntimeError("TfliteBackend is not open: use it as a context manager (with ... as backend)")


def _import_runtime(requested: str) -> tuple[str, Any]:
    """Import the requested runtime's interpreter module, or the first available for ``auto``."""
    names = list(RUNTIMES) if requested == "auto" else [requested]
    for name in names:
        try:
            return name, importlib.import_module(RUNTIMES[name])
        except ImportError:
            log.debug("TFLite runtime %s is not installed", name)
    package = _PACKAGES[names[0]]
    raise MissingDependencyError(
        package, "tflite", "Running a TFLite model (ai-edge-litert; on a Raspberry Pi tflite-runtime works too)"
    )


# --- flatbuffer structure check ----------------------------------------------------------------------

# Field slots of the TFLite schema tables that the check walks (tensorflow/lite/schema/schema.fbs).
_MODEL_OPERATOR_CODES, _MODEL_SUBGRAPHS, _MODEL_BUFFERS = 1, 2, 4
_SUBGRAPH_TENSORS, _SUBGRAPH_INPUTS, _SUBGRAPH_OUTPUTS, _SUBGRAPH_OPERATORS = 0, 1, 2, 3
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2


class _Reader:
    """Bounds-checked reads of a flatbuffer: every offset must land inside the file."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path = data, path

    def fail(self, what: str) -> ModelFileError:
        return ModelFileError(
            f"{self.path} ({len(self.data)} bytes) is not a complete TFLite model: {what}", _BROKEN_FILE_FIX
        )

    def unpack(self, fmt: str, pos: int) -> int:
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.data):
            raise self.fail(f"an offset points past the end of the file (byte {pos})")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def table(self, pos: int) -> tuple[int, int, int]:
        """(table position, vtable position, vtable size) of the table at ``pos``."""
        vtable = pos - self.unpack("<i", pos)
        return pos, vtable, self.unpack("<H", vtable)

    def field(self, table: tuple[int, int, int], slot: int) -> int:
        """Position of a field's value, or 0 when the field is absent."""
        pos, vtable, vsize = table
        if 4 + 2 * slot >= vsize:
            return 0
        offset = self.unpack("<H", vtable + 4 + 2 * slot)
        return pos + offset if offset else 0

    def vector(self, table: tuple[int, int, int], slot: int, elem_size: int) -> tuple[int, int]:
        """(first element position, length) of a vector field; (0, 0) when absent."""
        at = self.field(table, slot)
        if not at:
            return 0, 0
        start = at + self.unpack("<I", at)
        length = self.unpack("<I", start)
        if start + 4 + length * elem_size > len(self.data):
            raise self.fail(f"a vector of {length} elements at byte {start} runs past the end of the file")
        return start + 4, length

    def tables(self, table: tuple[int, int, int], slot: int) -> list[tuple[int, int, int]]:
        start, length = self.vector(table, slot, 4)
        return [self.table(start + 4 * i + self.unpack("<I", start + 4 * i)) for i in range(length)]


def check_flatbuffer(data: bytes, path: Path) -> None:
    """Check that a TFLite flatbuffer is structurally complete before a runtime reads it.

    Walks the model's operator codes, subgraphs (tensors, operators, inputs, outputs) and buffers,
    and checks that every table and vector, and every weight buffer stored after the flatbuffer,
    lies inside the file: a truncated copy fails here instead of crashing the interpreter.

    Raises:
        ModelFileError: The file is not a TFLite model or is truncated.
    """
    reader = _Reader(data, path)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise reader.fail(f"it does not carry the TFLite identifier 'TFL3' (starts with {data[:8]!r})")
    model = reader.table(reader.unpack("<I", 0))
    reader.tables(model, _MODEL_OPERATOR_CODES)
    subgraphs = reader.tables(model, _MODEL_SUBGRAPHS)
    if not subgraphs:
        raise reader.fail("it has no subgraph")
    for subgraph in subgraphs:
        reader.tables(subgraph, _SUBGRAPH_TENSORS)
        reader.tables(subgraph, _SUBGRAPH_OPERATORS)
        reader.vector(subgraph, _SUBGRAPH_INPUTS, 4)
        reader.vector(subgraph, _SUBGRAPH_OUTPUTS, 4)
    for buffer in reader.tables(model, _MODEL_BUFFERS):
        reader.vector(buffer, _BUFFER_DATA, 1)
        offset_at, size_at = reader.field(buffer, _BUFFER_OFFSET), reader.field(buffer, _BUFFER_SIZE)
        offset = reader.unpack("<Q", offset_at) if offset_at else 0
        size = reader.unpack("<Q", size_at) if size_at else 0
        # Models over 2 GB keep their weights after the flatbuffer, at offsets from the file's start.
        if offset and offset + size > len(data):
            raise reader.fail(f"a weight buffer at bytes {offset}..{offset + size} lies past the end of the file")
