"""Export: a checkpoint to verified TFLite / ONNX bundles, fp32 or INT8 behind an accuracy gate.

Entry points: ``export(checkpoint, out, fmt, precision)`` and ``export_all(checkpoint, out_root)``
(``edgesight export``), both returning an ``ExportReport``.

- ``pipeline``: the order of the work, the staging folder, publishing the bundle;
- ``stages``: one file through fp32 export, parity, INT8 tries, evaluation and timing;
- ``onnx``, ``onnx_int8``, ``onnx_ranges``: the ONNX fp32 file, its INT8 QDQ quantization and activation ranges;
- ``tflite``, ``tflite_int8``, ``tflite_compact``: the TFLite fp32 file, its INT8 quantization, the compaction;
- ``gate``: INT8 against fp32, per class and in the mean;
- ``report``: the export report and each bundle's REPORT.md;
- ``licence``: the upstream weights' licence in every bundle.
"""

from toolkit.export.gate import GateResult
from toolkit.export.pipeline import export, export_all
from toolkit.export.report import BundleResult, ExportReport

__all__ = ["BundleResult", "ExportReport", "GateResult", "export", "export_all"]
