"""Which layers INT8 makes faster, per runtime: ``python benchmarks/int8_kernels.py [--runs N] [--out DIR]``.

To time on another machine (a Raspberry Pi, a server with VNNI), convert here with ``--convert-only --out DIR``,
copy DIR there and run ``python benchmarks/int8_kernels.py --time DIR``: timing needs only numpy and the two
runtimes, no torch.

Each row is a small stack of one layer kind, at a shape the two models really run (FastestDet at 352x352,
YOLOX-Nano at 416x416), converted the way ``edgesight export`` converts a model: float32 TFLite through
litert-torch and full-integer TFLite through ai-edge-quantizer (``toolkit.export.tflite_int8``, every activation
int8); float32 ONNX and INT8 QDQ ONNX (U8S8, per-channel weights, ``onnxruntime.quantization.quantize_static``,
the exporter's settings). The inputs are random: this script times kernels and says nothing about accuracy
(the export's accuracy gate does that, on real photos). Prints a markdown table of median milliseconds per
call at 1 thread, interleaved so that the machine's drift hits every row alike, and the INT8 speed-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Run from a checkout without installing: the repository root holds the packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devices.host import machine

#: Layers stacked per row: enough work that one call is well above the interpreter's fixed cost.
DEPTH = 4
#: Written by conversion beside the files: each row's name, folder and input size, in order.
INDEX = "layers.json"


def _layers() -> dict[str, tuple[Callable[[], object], int, int]]:
    """name -> (module factory, input channels, height/width). Shapes are the models' own."""
    import torch
    from torch import nn

    class Silu(nn.Module):
        """x * sigmoid(x) spelled out, as YOLOX's exported graphs hold it (LOGISTIC + MUL)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(x)

    def stack(make: Callable[[], nn.Module]) -> nn.Module:
        return nn.Sequential(*[make() for _ in range(DEPTH)])

    def conv(cin: int, cout: int, k: int, groups: int = 1, act: type[nn.Module] = nn.ReLU) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, k, 1, k // 2, groups=groups), act())

    return {
        "1x1 conv 48->48 + ReLU, 44x44 (FastestDet stage 2)": (lambda: stack(lambda: conv(48, 48, 1)), 48, 44),
        "3x3 depthwise 48 + ReLU, 44x44 (FastestDet stage 2)": (
            lambda: stack(lambda: conv(48, 48, 3, groups=48)), 48, 44),
        "1x1 conv 96->96 + ReLU, 22x22 (FastestDet stage 3)": (lambda: stack(lambda: conv(96, 96, 1)), 96, 22),
        "1x1 conv 64->64 + SiLU, 52x52 (YOLOX-Nano dark3)": (
            lambda: stack(lambda: conv(64, 64, 1, act=Silu)), 64, 52),
        "1x1 conv 64->64 + ReLU, 52x52 (same, ReLU)": (lambda: stack(lambda: conv(64, 64, 1)), 64, 52),
        "SiLU alone (LOGISTIC + MUL), 64 x 52x52": (lambda: stack(Silu), 64, 52),
        "3x3 depthwise 64 + SiLU, 52x52 (YOLOX-Nano dark3)": (
            lambda: stack(lambda: conv(64, 64, 3, groups=64, act=Silu)), 64, 52),
        "3x3 conv 32->32 + ReLU, 104x104 (dense stem-like)": (lambda: stack(lambda: conv(32, 32, 3)), 32, 104),
    }  # fmt: skip


def _convert(work: Path) -> list[dict]:
    """Every layer in both formats and both precisions, into ``work``; returns (and writes) the index."""
    import torch
    from torch import nn

    torch.set_num_threads(1)

    class Layer(nn.Module):
        """The stack behind a 3 -> C 1x1 stem: the exporters take 3-channel images (same stem in every file)."""

        def __init__(self, body: nn.Module, channels: int) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, channels, 1)
            self.body = body

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(self.stem(x))

    index = []
    for i, (name, (make, channels, size)) in enumerate(_layers().items()):
        model = Layer(make(), channels).eval()
        for fmt, pair in (("tflite", _tflite_pair), ("onnx", _onnx_pair)):
            (work / f"layer{i}-{fmt}").mkdir(parents=True, exist_ok=True)
            pair(model, size, work / f"layer{i}-{fmt}")
        index.append({"name": name, "folder": f"layer{i}", "size": size})
    (work / INDEX).write_text(json.dumps(index, indent=1))
    return index


def _tflite_pair(model: object, size: int, folder: Path) -> None:
    from toolkit.export.tflite import export_tflite_fp32
    from toolkit.export.tflite_int8 import export_tflite_int8

    rng = np.random.default_rng(0)
    fp32 = export_tflite_fp32(model, folder / "fp32.tflite", (size, size))
    samples = [rng.normal(0, 1, (1, size, size, 3)).astype(np.float32) for _ in range(8)]
    export_tflite_int8(
        model, folder / "int8.tflite", samples, float_model=fp32, input_size=(size, size),
        input_range=(-4.0, 4.0), max_noise_to_signal=None,
    )  # fmt: skip


def _onnx_pair(model: object, size: int, folder: Path) -> None:
    import torch
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

    quantize_static(
        str(fp32), str(folder / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip


def _tflite_runner(path: Path) -> Callable[[], None]:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # the Raspberry Pi wheel
        from tflite_runtime.interpreter import Interpreter

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


def _time(work: Path, index: list[dict], runs: int) -> None:
    """Median ms per call of every file at 1 thread, interleaved so that drift hits every row alike."""
    runners: dict[tuple[str, str, str], Callable[[], None]] = {}
    for row in index:
        for precision in ("fp32", "int8"):
            runners[row["name"], "tflite", precision] = _tflite_runner(
                work / f"{row['folder']}-tflite" / f"{precision}.tflite")
            runners[row["name"], "onnx", precision] = _onnx_runner(
                work / f"{row['folder']}-onnx" / f"{precision}.onnx", row["size"])  # fmt: skip
    times: dict[tuple[str, str, str], list[float]] = {key: [] for key in runners}
    for run in runners.values():
        run()
    for _ in range(runs):
        for key, run in runners.items():
            start = time.perf_counter()
            run()
            times[key].append((time.perf_counter() - start) * 1e3)

    print(f"{machine()}; {DEPTH} layers per row, median ms per call at 1 thread "
          f"over {runs} interleaved calls\n")
    print("| layers | TFLite fp32 | TFLite int8 | int8 speed-up | ONNX fp32 | ONNX int8 | int8 speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in index:
        cells = []
        for fmt in ("tflite", "onnx"):
            fp32, int8 = (statistics.median(times[row["name"], fmt, p]) for p in ("fp32", "int8"))
            cells += [f"{fp32:.3f}", f"{int8:.3f}", f"{fp32 / int8:.2f}x"]
        print(f"| {row['name']} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="timed calls per file (interleaved)")
    parser.add_argument("--out", type=Path, help="keep the converted files here (default: a temporary folder)")
    parser.add_argument("--convert-only", action="store_true", help="convert into --out and stop")
    parser.add_argument("--time", type=Path, metavar="DIR", help="time the files a --convert-only run left in DIR")
    args = parser.parse_args()
    if args.time:
        _time(args.time, json.loads((args.time / INDEX).read_text()), args.runs)
        return
    if args.convert_only and not args.out:
        parser.error("--convert-only needs --out")
    work = args.out or Path(tempfile.mkdtemp(prefix="int8-kernels-"))
    index = _convert(work)
    if not args.convert_only:
        _time(work, index, args.runs)


if __name__ == "__main__":
    main()
