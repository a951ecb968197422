"""Build the bundles that the device and daemon tests run: ``python -m tests.make_test_bundles OUT``.

The zero-shot COCO models (their two-class heads, at the pretrained input size) go through the real
export pipeline: the INT8 TFLite bundle the daemon ships by default and an fp32 ONNX one. The gate runs on
a small validation subset with ``max_drop`` wide open: these bundles test the device side, not accuracy
(the export tests check the gate). Needs the workstation install and the mirror (EDGESIGHT_MIRROR).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from models import create_model
from models.checkpoint import save_checkpoint
from toolkit.export import export

#: Bundle folder name -> (architecture, format, precision).
TEST_BUNDLES = {
    "yolox-nano-tflite-int8": ("yolox-nano", "tflite", "int8"),
    "yolox-nano-onnx-fp32": ("yolox-nano", "onnx", "fp32"),
}


def main(out: Path) -> None:
    mirror = os.environ.get("EDGESIGHT_MIRROR")
    if not mirror:
        sys.exit("set EDGESIGHT_MIRROR to the mirror (../shared)")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (arch, fmt, precision) in TEST_BUNDLES.items():
            if (out / name / "manifest.json").is_file():
                continue
            checkpoint = Path(tmp) / f"{arch}-zeroshot.pt"
            if not checkpoint.is_file():
                save_checkpoint(checkpoint, create_model(arch, num_classes=2, pretrained=True, mirror=mirror), arch)
            export(checkpoint, out / name, fmt, precision, max_drop=100.0, calibration_count=100, allow_few=True,
                   mirror=mirror, val_limit=40, max_noise_to_signal=None, latency_runs=5)
            print(f"wrote {out / name}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/test-bundles"))
