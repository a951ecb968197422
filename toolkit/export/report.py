"""What an export produced (``ExportReport``) and each bundle's ``REPORT.md``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devices.bundle import (
    Accuracy,
    Manifest,
    file_sha256,
)
from toolkit.evaluate.results import fmt_ap
from toolkit.export.gate import GateResult


@dataclass(frozen=True)
class BundleResult:
    """One exported file and what was measured on it.

    Attributes:
        name: Bundle folder name, e.g. ``fastestdet-tflite-int8``.
        format: ``tflite`` or ``onnx``.
        precision: ``fp32`` or ``int8``.
        path: Where the bundle was written; None when it was not (gate failed, or fp32 reference only).
        size_bytes: Model file size.
        sha256: Model file hash.
        accuracy: AP of the file through the device runtime.
        latency: ``model_ms``/``frame_ms`` medians and p90 at one thread.
        manifest: The final manifest (None when not written).
    """

    name: str
    format: str
    precision: str
    path: Path | None
    size_bytes: int
    sha256: str
    accuracy: Accuracy
    latency: dict[str, float] = field(default_factory=dict)
    manifest: Manifest | None = field(default=None, repr=False)


def why_not_written(bundle: BundleResult, gates: Sequence[GateResult]) -> str:
    failed = any(g.format == bundle.format and not g.passed for g in gates)
    return "not written (gate failed)" if bundle.precision == "int8" and failed else "not written (fp32 reference)"


@dataclass(frozen=True)
class ExportReport:
    """What an export run produced: the files, their accuracy and speed, the gates, the timings."""

    checkpoint: Path
    arch: str
    bundles: tuple[BundleResult, ...]
    gates: tuple[GateResult, ...]
    timings_s: dict[str, float]
    notes: tuple[str, ...] = ()

    @property
    def written(self) -> tuple[BundleResult, ...]:
        return tuple(b for b in self.bundles if b.path is not None)

    def table(self) -> str:
        """Markdown: one row per file (written or reference), then each gate's table and the notes."""
        labels = [c.name for c in self.bundles[0].accuracy.classes] if self.bundles else []
        head = [
            "file",
            "size KB",
            *(f"{n} AP" for n in labels),
            "mean AP",
            "mean AP50",
            "model ms (1 thr)",
            "frame ms (1 thr)",
            "bundle",
        ]
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for b in self.bundles:
            cells = [
                f"{b.format} {b.precision}",
                f"{b.size_bytes / 1024:.0f}",
                *(fmt_ap(b.accuracy.ap_of(n)) for n in labels),
                fmt_ap(b.accuracy.map),
                fmt_ap(b.accuracy.map50),
                fmt_ms(b.latency.get("model_ms")),
                fmt_ms(b.latency.get("frame_ms")),
                str(b.path) if b.path else why_not_written(b, self.gates),
            ]
            rows.append("| " + " | ".join(cells) + " |")
        parts = ["\n".join(rows)]
        parts += [g.table() + f"\n\ngate {g.format}: {'passed' if g.passed else 'FAILED'}" for g in self.gates]
        if self.notes:
            parts.append("\n".join(f"- {n}" for n in self.notes))
        timing = ", ".join(f"{k} {v:.1f} s" for k, v in self.timings_s.items())
        parts.append(f"timings: {timing}")
        return "\n\n".join(parts) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint),
            "arch": self.arch,
            "bundles": [
                {
                    "name": b.name,
                    "format": b.format,
                    "precision": b.precision,
                    "path": str(b.path) if b.path else None,
                    "size_bytes": b.size_bytes,
                    "sha256": b.sha256,
                    "accuracy": dataclasses.asdict(b.accuracy),
                    "latency": b.latency,
                }
                for b in self.bundles
            ],
            "gates": [g.to_dict() for g in self.gates],
            "timings_s": self.timings_s,
            "notes": list(self.notes),
        }


def render_report(manifest: Manifest, model_path: Path) -> str:
    """REPORT.md of a bundle: what the file is, how accurate and fast it measured, what it was calibrated on."""
    sections = [
        _report_header(manifest, model_path),
        _report_accuracy(manifest),
        _report_latency(manifest),
        _report_training(manifest),
        _report_calibration(manifest),
        ["## Notes", "", *(f"- {n}" for n in manifest.notes)] if manifest.notes else [],
        _report_use(manifest),
    ]
    return "\n\n".join("\n".join(lines) for lines in sections if lines) + "\n"


def _report_header(m: Manifest, model_path: Path) -> list[str]:
    quant = ""
    if m.input.quant_scale is not None:
        quant = f" (scale {m.input.quant_scale:g}, zero point {m.input.quant_zero_point})"
    size_kb = model_path.stat().st_size / 1024
    return [
        f"# {m.arch} — {m.format.upper()} {m.precision.upper()}",
        "",
        f"- model file: `{m.model_file}` ({size_kb:.0f} KB, sha256 `{file_sha256(model_path)}`)",
        (
            f"- input: {m.input.width}x{m.input.height} {m.input.resize} {m.input.channel_order} {m.input.layout} "
            f"{m.input.dtype}{quant}"
        ),
        f"- labels: {', '.join(m.labels)}; deployment score threshold {m.decode.score_threshold:g}",
        (
            f"- exported from checkpoint sha256 `{m.source_checkpoint_sha256}` by edgesight {m.toolkit_version}, "
            f"{m.created_utc}"
        ),
    ]


def _report_accuracy(m: Manifest) -> list[str]:
    a, ref = m.accuracy, m.reference_accuracy
    if a is None:
        return []
    lines = [
        "## Accuracy of this file",
        "",
        (
            f"Measured through {a.runtime} on {a.dataset}: {a.num_images} images, set sha256 "
            f"`{a.dataset_sha256[:16]}`, score threshold {a.score_threshold:g}."
        ),
        "",
        "| class | AP@[.5:.95] | AP@0.5 | GT boxes |" + (" fp32 AP@[.5:.95] | drop (AP points) |" if ref else ""),
        "|---|---:|---:|---:|" + ("---:|---:|" if ref else ""),
    ]
    for c in a.classes:
        extra = f" {fmt_ap(ref.ap_of(c.name))} | {fmt_drop(ref.ap_of(c.name), c.ap)} |" if ref else ""
        lines.append(f"| {c.name} | {fmt_ap(c.ap)} | {fmt_ap(c.ap50)} | {c.num_gt} |{extra}")
    extra = f" {fmt_ap(ref.map)} | {fmt_drop(ref.map, a.map)} |" if ref else ""
    lines.append(f"| **mean** | {fmt_ap(a.map)} | {fmt_ap(a.map50)} | |{extra}")
    if m.gate:
        verdict = "passed" if m.gate["passed"] else "FAILED"
        lines += [
            "",
            (
                f"Accuracy gate: INT8 may lose at most {m.gate['max_drop_points']:g} AP points (0.01 AP each) "
                f"against fp32, per class and in the mean: **{verdict}**."
            ),
        ]
    if m.parity:
        lines += [
            "",
            (
                f"fp32 parity with PyTorch: max |difference| {m.parity['max_abs_diff']:.2g} on the raw output "
                f"over {m.parity['images']} validation photos (tolerance {m.parity['tolerance']:g})."
            ),
        ]
    return lines


def _report_latency(m: Manifest) -> list[str]:
    lat = m.latency
    if not lat:
        return []
    lines = [
        "## Latency (1 thread, median / p90)",
        "",
        f"Measured on {lat.get('machine', '?')}.",
        "",
        "| file | model call ms | whole frame ms |",
        "|---|---:|---:|",
        (
            f"| {m.model_file} | {fmt_ms(lat.get('model_ms'))} / {fmt_ms(lat.get('model_ms_p90'))} | "
            f"{fmt_ms(lat.get('frame_ms'))} / {fmt_ms(lat.get('frame_ms_p90'))} |"
        ),
    ]
    if "fp32_model_ms" in lat:
        lines.append(
            f"| {lat['fp32_model_file']} (fp32, not in this bundle) | {fmt_ms(lat['fp32_model_ms'])} | "
            f"{fmt_ms(lat['fp32_frame_ms'])} |"
        )
    return lines


def _report_training(m: Manifest) -> list[str]:
    """The input size the training run chose, what each candidate measured, and which model to deploy."""
    t = m.training
    if not t or "input_size" not in t:
        return []
    size = t["input_size"]
    native, chosen = size["native"], f"{size['weights']}@{size['size']}"
    candidates = size.get("candidates", {})
    ms_native = (candidates.get(f"zero-shot@{native}") or {}).get("median_ms")
    lines = ["## Input size and training", "",
             (f"`edgesight train` chose **{size['size']}x{size['size']}** with the {size['weights']} weights: among "
             "the candidates below, the one with the highest mean AP@[.5:.95] of those that lose no class on any "
             f"validation source against the zero-shot model at its pretrained {native}, and a larger size only when "
             "it gains beyond the noise of those photos (ms: PyTorch, per photo, on the training machine)."), "",
             "| candidate | mean AP over sources and classes | ms | time against the stock size | holds every class |",
             "|---|---:|---:|---:|---|"]
    for name, row in candidates.items():
        ratio = f"{row['median_ms'] / ms_native:.2f}x" if ms_native else "n/a"
        mark = "**" if name == chosen else ""
        lines.append(f"| {mark}{name}{mark} | {row['mean_ap']:.3f} | {row['median_ms']:.1f} | {ratio} | "
                     f"{'yes' if row.get('holds', True) else 'no'} |")
    if size.get("note"):
        lines += ["", f"{size['note']}."]
    yours, bundled = t.get("your_photos") or {}, t.get("bundled") or {}
    gains = yours or bundled
    where = "your validation photos" if yours else "the bundled validation photos"
    if gains:
        lines += ["", (f"Gain of the checkpoint against the zero-shot model at {native} on {where} (AP@[.5:.95], "
                  "± the bootstrap noise of that many photos):"), ""]
        lines += [f"- {source} {cls}: {r['ap']:.3f} against {r['zero_shot']:.3f}, {r['gain']:+.3f} ± {r['noise']:.3f}"
                  for source, per in gains.items() for cls, r in per.items()]
    lines += ["", f"**Which to deploy.** {_deploy_advice(size, gains, ms_native, candidates)}"]
    return lines


def _deploy_advice(size: dict, gains: dict, ms_native: float | None, candidates: dict) -> str:
    """This bundle, or the stock model it came from: the stock model unless this one is measurably better."""
    native = size["native"]
    ms = (candidates.get(f"{size['weights']}@{size['size']}") or {}).get("median_ms")
    cost = f" at {ms / ms_native:.2f}x its time" if ms and ms_native else ""
    better = [f"{cls} {r['gain']:+.3f}" for per in gains.values() for cls, r in per.items()
              if r["noise"] is not None and r["gain"] > r["noise"]]
    if size["weights"] == "zero-shot" and size["size"] == native:
        return (f"This bundle is the stock COCO model at its own {native}x{native}, quantized: fine-tuning found "
                "nothing that held on every validation source and class. Deploy it in place of the stock model "
                "(same accuracy, and the INT8 file's latency above); label photos of your camera and train with "
                "`--data` to gain on them.")
    if not better:
        return (f"No class gained beyond the noise of the validation photos against the stock model{cost}; none "
                "lost either. The stock model is as good: deploy this bundle only if its INT8 latency above is "
                "lower than the stock model's on your device (`edgesight bench`).")
    return (f"Deploy this bundle: it gains {', '.join(better)} AP beyond the noise of the validation photos against "
            f"the stock model{cost}, and loses no class on any validation source.")


def _report_calibration(m: Manifest) -> list[str]:
    c = m.calibration
    if not c:
        return []
    per_class = ", ".join(f"{k} {v}" for k, v in dict(c.get("images_per_class", {})).items())
    return [
        "## Calibration",
        "",
        (
            f"{c.get('count')} training images ({per_class}; {c.get('negatives')} without objects), "
            f"sources {dict(c.get('sources', {}))}, set sha256 `{str(c.get('sha256', ''))[:16]}`, "
            f"method {c.get('method')}, {c.get('converter')} {c.get('converter_version')}."
        ),
        *_report_float_activations(m),
    ]


def _report_float_activations(m: Manifest) -> list[str]:
    noisy = (m.quantization or {}).get("float_activations") or []
    if not noisy:
        return []
    tried = []
    for key, what in (
        ("full_integer_gate", "The full-integer file"),
        ("eight_bit_weights_gate", "The file with the noisy activations float and 8-bit weights"),
    ):
        gate = (m.quantization or {}).get(key) or {}
        failed = [c for c in gate.get("checks", []) if not c.get("passed", True)]
        if failed:
            losses = ", ".join(f"{c['name']} -{c['drop_points']:.2f}" for c in failed)
            tried += ["", f"{what} failed the gate ({losses} AP points), so the export quantized again."]
    if (m.quantization or {}).get("eight_bit_weights_gate"):
        tried += [
            "",
            (
                "The weights now use 7 bits: ONNX Runtime's U8S8 kernels on x86 CPUs without VNNI add pairs of "
                "8-bit products in 16 bits and can saturate; 7-bit weights cannot. ARM CPUs and TensorRT do not "
                "saturate, so on them an 8-bit file would do as well."
            ),
        ]
    return [
        *tried,
        "",
        (
            f"{len(noisy)} activations stay float: on them 8-bit rounding noise exceeds 1/1000 of the variance of "
            "their channels (batch-norm folding leaves channels 100x smaller than their neighbours'), so the "
            "operations that produce and read them compute in float. The list is in `manifest.json` "
            "(`quantization.float_activations`)."
        ),
    ]


def _report_use(m: Manifest) -> list[str]:
    lic = m.license or {}
    return [
        "## Use",
        "",
        "```",
        "edgesight eval <this folder> --coco annotations.json --images images/",
        "edgesight bench <this folder> --threads 1,2,4",
        "```",
        "",
        "```python",
        "from devices.runner import BundleDetector",
        "",
        "with BundleDetector('<this folder>', threads=4) as detector:  # verifies every sha256 first",
        "    detections = detector(frame)  # frame: BGR uint8 (H, W, 3), e.g. from cv2.VideoCapture",
        "```",
        "",
        f"Licence of the upstream weights: {lic.get('spdx', '?')} (`{lic.get('file', '?')}`, {lic.get('source', '')}).",
    ]


def fmt_ms(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.1f}"


def fmt_drop(ref: float | None, got: float | None) -> str:
    return "n/a" if ref is None or got is None else f"{(ref - got) * 100:+.2f}"
