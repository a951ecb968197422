"""Which layers INT8 makes faster, per runtime: ``python benchmarks/int8_kernels.py [--runs N] [--out DIR]``.

Each row is a small stack of one layer kind, at a shape the two models really run (FastestDet at 352x352,
YOLOX-Nano at 416x416), converted the way ``edgesight export`` converts a model: float32 TFLite through
litert-torch and full-integer TFLite through ai-edge-quantizer (``toolkit.export_tflite``, every activation
int8); float32 ONNX and INT8 QDQ ONNX (U8S8, per-channel weights, ``onnxruntime.quantization.quantize_static``,
the exporter's settings). The inputs are random: this script times kernels and says nothing about accuracy
(the export's accuracy gate does that, on real photos). Prints a markdown table of median milliseconds per
call at 1 thread, interleaved so that the machine's drift hits every row alike, and the INT8 speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Run from a checkout without installing: the repository root holds the packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from toolkit.export_tflite import export_tflite_fp32, export_tflite_int8

#: Layers stacked per row: enough work that one call is well above the interpreter's fixed cost.
DEPTH = 4


def _stack(make: Callable[[], nn.Module]) -> nn.Module:
    return nn.Sequential(*[make() for _ in range(DEPTH)])


def _conv(cin: int, cout: int, k: int, groups: int = 1, act: type[nn.Module] = nn.ReLU) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, k, 1, k // 2, groups=groups), act())


class Silu(nn.Module):
    """x * sigmoid(x) spelled out, as YOLOX's exported graphs hold it (LOGISTIC + MUL)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


#: name -> (module factory, input channels, height/width). Shapes are the models' own.
LAYERS: dict[str, tuple[Callable[[], nn.Module], int, int]] = {
    "1x1 conv 48->48 + ReLU, 44x44 (FastestDet stage 2)": (lambda: _stack(lambda: _conv(48, 48, 1)), 48, 44),
    "3x3 depthwise 48 + ReLU, 44x44 (FastestDet stage 2)": (
        lambda: _stack(lambda: _conv(48, 48, 3, groups=48)),
        48,
        44,
    ),
    "1x1 conv 96->96 + ReLU, 22x22 (FastestDet stage 3)": (lambda: _stack(lambda: _conv(96, 96, 1)), 96, 22),
    "1x1 conv 64->64 + SiLU, 52x52 (YOLOX-Nano dark3)": (lambda: _stack(lambda: _conv(64, 64, 1, act=Silu)), 64, 52),
    "3x3 depthwise 64 + SiLU, 52x52 (YOLOX-Nano dark3)": (
        lambda: _stack(lambda: _conv(64, 64, 3, groups=64, act=Silu)),
        64,
        52,
    ),
    "3x3 conv 32->32 + ReLU, 104x104 (dense stem-like)": (lambda: _stack(lambda: _conv(32, 32, 3)), 32, 104),
}


class _Layer(nn.Module):
    """The layer stack behind a 3 -> C 1x1 stem: the exporters take 3-channel images (same stem in every file)."""

    def __init__(self, body: nn.Module, channels: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 1)
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))


def _tflite_pair(model: nn.Module, size: int, folder: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    fp32 = export_tflite_fp32(model, folder / "fp32.tflite", (size, size))
    samples = [rng.normal(0, 1, (1, size, size, 3)).astype(np.float32) for _ in range(8)]
    int8 = export_tflite_int8(
        model, folder / "int8.tflite", samples, float_model=fp32, input_size=(size, size),
        input_range=(-4.0, 4.0), max_noise_to_signal=None,
    )  # fmt: skip
    return fp32, int8.path


def _onnx_pair(model: nn.Module, size: int, folder: Path) -> tuple[Path, Path]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32 = folder / "fp32.onnx"
    torch.onnx.export(
        model, (torch.zeros(1, 3, size, size),), str(fp32), input_names=["x"], output_names=["y"],
        opset_version=17, dynamo=False,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    batches = iter([{"x": rng.normal(0, 1, (1, 3, size, size)).astype(np.float32)} for _ in range(8)])

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(batches, None)

    int8 = folder / "int8.onnx"
    quantize_static(
        str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    return fp32, int8


def _tflite_runner(path: Path) -> Callable[[], None]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()[0]
    interpreter.set_tensor(details["index"], np.zeros(details["shape"], details["dtype"]))
    return interpreter.invoke


def _onnx_runner(path: Path, size: int) -> Callable[[], None]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.zeros((1, 3, size, size), np.float32)
    return lambda: session.run(None, {"x": x})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="timed calls per file (interleaved)")
    parser.add_argument("--out", type=Path, help="keep the converted files here (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = args.out or Path(tempfile.mkdtemp(prefix="int8-kernels-"))

    # Convert every layer once, in both formats and both precisions.
    runners: dict[tuple[str, str, str], Callable[[], None]] = {}
    for i, (name, (make, channels, size)) in enumerate(LAYERS.items()):
        model = _Layer(make(), channels).eval()
        for fmt, pair in (("tflite", _tflite_pair), ("onnx", _onnx_pair)):
            folder = work / f"layer{i}-{fmt}"
            folder.mkdir(parents=True, exist_ok=True)
            for precision, path in zip(("fp32", "int8"), pair(model, size, folder), strict=True):
                runners[name, fmt, precision] = _tflite_runner(path) if fmt == "tflite" else _onnx_runner(path, size)

    # Time them interleaved after one warm-up call each.
    times: dict[tuple[str, str, str], list[float]] = {key: [] for key in runners}
    for run in runners.values():
        run()
    for _ in range(args.runs):
        for key, run in runners.items():
            start = time.perf_counter()
            run()
            times[key].append((time.perf_counter() - start) * 1e3)

    print(f"{DEPTH} layers per row, median ms per call at 1 thread over {args.runs} interleaved calls\n")
    print("| layers | TFLite fp32 | TFLite int8 | int8 speed-up | ONNX fp32 | ONNX int8 | int8 speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in LAYERS:
        cells = []
        for fmt in ("tflite", "onnx"):
            fp32, int8 = (statistics.median(times[name, fmt, p]) for p in ("fp32", "int8"))
            cells += [f"{fp32:.3f}", f"{int8:.3f}", f"{fp32 / int8:.2f}x"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
