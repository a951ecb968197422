"""Model bundles: a folder holding one exported model and everything needed to run and trust it.

A bundle is what ships to the device::

    bundle/
        model.onnx | model.tflite   the exported network (raw-output contract)
        labels.txt                  one class name per line, in class-id order
        LICENSE.md | LICENSE        the upstream weights' licence
        REPORT.md                   short human-readable report (accuracy, latency, calibration)
        manifest.json               this module's ``Manifest``: hashes, specs, measured accuracy

``load_bundle`` checks the sha256 of every listed file before it reads anything else from the bundle,
so a half-copied or edited model never reaches a runtime. Reading needs only the standard library and
``devices.types``: the device reads bundles without torch or the toolkit, which writes them
(``toolkit.export``).

About 400 lines, half of them the manifest's dataclasses: the bundle format is defined, read and verified in
one file so that a change to it is made in one place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from devices.errors import ModelFileError
from devices.types import DecodeSpec, InputSpec, ModelSpec

log = logging.getLogger(__name__)

#: Version of the manifest layout; a reader refuses newer manifests instead of misreading them.
SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
LABELS_FILE = "labels.txt"
REPORT_FILE = "REPORT.md"

FORMATS: tuple[str, ...] = ("tflite", "onnx")
PRECISIONS: tuple[str, ...] = ("fp32", "int8")
_SUFFIX = {"tflite": ".tflite", "onnx": ".onnx"}

_RECOPY_FIX = (
    "copy the whole bundle folder again from the machine that exported it (and compare sha256sum of its "
    "files with manifest.json), or re-run `edgesight export`"
)


@dataclass(frozen=True)
class ClassAccuracy:
    """AP of one class of the bundled file.

    Attributes:
        name: The bundle's label.
        ap: AP@[.5:.95], or None when the evaluation set has no box of this class.
        ap50: AP@0.5, or None likewise.
        num_gt: Ground-truth boxes of the class in the evaluation set.
    """

    name: str
    ap: float | None
    ap50: float | None
    num_gt: int


@dataclass(frozen=True)
class Accuracy:
    """Accuracy measured on the bundled file itself, through the device runtime.

    Attributes:
        map: Mean AP@[.5:.95] over classes with ground truth.
        map50: Mean AP@0.5 likewise.
        classes: Per-class results, in label order.
        dataset: Which evaluation set (name and how it was drawn).
        dataset_sha256: Hash of the evaluation set (image contents and boxes).
        num_images: Images evaluated.
        runtime: The runtime that produced the detections (e.g. ``onnxruntime 1.32.0``).
        score_threshold: Detection threshold during evaluation (AP needs ~0.01).
    """

    map: float | None
    map50: float | None
    classes: tuple[ClassAccuracy, ...]
    dataset: str
    dataset_sha256: str
    num_images: int
    runtime: str
    score_threshold: float

    def ap_of(self, name: str) -> float | None:
        """AP@[.5:.95] of the class ``name`` (None when it had no ground truth or is unknown)."""
        return next((c.ap for c in self.classes if c.name == name), None)


@dataclass(frozen=True)
class Manifest:
    """Everything a device needs besides the model file, and the evidence that the file is good.

    Attributes:
        schema_version: ``SCHEMA_VERSION`` of the writer.
        format: ``tflite`` or ``onnx``.
        precision: ``fp32`` or ``int8``.
        model_file: File name of the model inside the bundle.
        files: File name -> sha256 of every file in the bundle except ``manifest.json``.
        input: How frames become the model's input (TFLite: NHWC; INT8: the input's scale/zero point).
        decode: How the raw output becomes detections; ``score_threshold`` is the deployment default.
        labels: Class names in class-id order (also in ``labels.txt``).
        arch: Architecture name (``yolox-nano``, ``fastestdet``).
        source_checkpoint_sha256: Hash of the PyTorch checkpoint the file was exported from.
        toolkit_version: ``edgesight`` version that wrote the bundle.
        created_utc: ISO-8601 time of writing.
        accuracy: AP of this very file on ``accuracy.dataset``.
        reference_accuracy: For INT8: AP of the fp32 file of the same format, same set.
        gate: For INT8: the accuracy gate's rule and per-class drops in AP points.
        parity: Largest raw-output difference of the fp32 file against PyTorch on real images.
        calibration: For INT8: what the model was calibrated on (``calibration.report``).
        quantization: For INT8: the quantization recipe.
        latency: Measured median latencies and the recommendation derived from them.
        training: How the checkpoint was trained and at which input size it runs: the size chosen after
            training, the candidates' accuracy and cost, and the gains per class against the zero-shot model.
        license: SPDX identifier, licence file name and upstream source of the weights.
        notes: Human-readable remarks (also in ``REPORT.md``).
    """

    format: Literal["tflite", "onnx"]
    precision: Literal["fp32", "int8"]
    model_file: str
    files: Mapping[str, str]
    input: InputSpec
    decode: DecodeSpec
    labels: tuple[str, ...]
    arch: str = ""
    source_checkpoint_sha256: str = ""
    toolkit_version: str = ""
    created_utc: str = ""
    accuracy: Accuracy | None = None
    reference_accuracy: Accuracy | None = None
    gate: Mapping[str, Any] | None = None
    parity: Mapping[str, Any] | None = None
    calibration: Mapping[str, Any] | None = None
    quantization: Mapping[str, Any] | None = None
    latency: Mapping[str, Any] | None = None
    training: Mapping[str, Any] | None = None
    license: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION

    @property
    def spec(self) -> ModelSpec:
        """The device-side model contract."""
        return ModelSpec(self.input, self.decode, self.labels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        data = dataclasses.asdict(self)
        data["files"] = dict(sorted(self.files.items()))
        return {"schema_version": data.pop("schema_version"), **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = MANIFEST_FILE) -> Manifest:
        """Rebuild a manifest from ``to_dict`` output.

        Raises:
            ModelFileError: A field is missing or malformed; names ``where`` and the field.
        """
        try:
            version = int(data.get("schema_version", 0))
            if version > SCHEMA_VERSION:
                raise ModelFileError(
                    f"{where} has schema_version {version}; this edgesight reads up to {SCHEMA_VERSION}",
                    "upgrade edgesight on the device (pip install -U edgesight)",
                )
            fmt, precision = data["format"], data["precision"]
            if fmt not in FORMATS or precision not in PRECISIONS:
                raise ModelFileError(
                    f"{where}: format {fmt!r} / precision {precision!r} is not one of {FORMATS} / {PRECISIONS}",
                    "re-export the bundle with `edgesight export`",
                )
            return cls(
                schema_version=version,
                format=fmt,
                precision=precision,
                model_file=str(data["model_file"]),
                files={str(k): str(v) for k, v in data["files"].items()},
                input=_input_spec(data["input"]),
                decode=_decode_spec(data["decode"]),
                labels=tuple(str(x) for x in data["labels"]),
                arch=str(data.get("arch", "")),
                source_checkpoint_sha256=str(data.get("source_checkpoint_sha256", "")),
                toolkit_version=str(data.get("toolkit_version", "")),
                created_utc=str(data.get("created_utc", "")),
                accuracy=_accuracy(data.get("accuracy")),
                reference_accuracy=_accuracy(data.get("reference_accuracy")),
                gate=data.get("gate"),
                parity=data.get("parity"),
                calibration=data.get("calibration"),
                quantization=data.get("quantization"),
                latency=data.get("latency"),
                training=data.get("training"),
                license=data.get("license"),
                notes=tuple(str(n) for n in data.get("notes", ())),
            )
        except ModelFileError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelFileError(
                f"{where} is malformed ({type(exc).__name__}: {exc})", "re-export the bundle with `edgesight export`"
            ) from exc


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk.

    Attributes:
        path: The bundle folder.
        manifest: Its manifest; every file it lists had the recorded sha256 when loaded.
    """

    path: Path
    manifest: Manifest = field(repr=False)

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.model_file

    @property
    def spec(self) -> ModelSpec:
        return self.manifest.spec

    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.labels


# --- hashing --------------------------------------------------------------------------------------------


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(folder: str | os.PathLike) -> dict[str, str]:
    """sha256 of every regular file directly in ``folder`` except ``manifest.json``, by name."""
    folder = Path(folder)
    return {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}


# --- reading ----------------------------------------------------------------------------------------------


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Parse ``<bundle>/manifest.json`` without verifying the files (``load_bundle`` verifies).

    Raises:
        ModelFileError: The folder or its manifest is missing or unreadable.
    """
    folder = Path(path)
    manifest_path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise ModelFileError(f"bundle folder not found: {folder}", "pass the folder `edgesight export` wrote")
    if not manifest_path.is_file():
        raise ModelFileError(
            f"{folder} is not a bundle: it has no {MANIFEST_FILE}",
            "pass the folder `edgesight export` wrote (it holds manifest.json beside the model file)",
        )
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"cannot read {manifest_path}: {exc}", _RECOPY_FIX) from exc
    if not isinstance(data, dict):
        raise ModelFileError(f"{manifest_path} does not hold a JSON object", _RECOPY_FIX)
    return Manifest.from_dict(data, str(manifest_path))


def verify_files(folder: str | os.PathLike, files: Mapping[str, str]) -> None:
    """Check that each listed file exists with its recorded sha256.

    Raises:
        ModelFileError: Naming the first missing or altered file, its size, both hashes and the fix.
    """
    folder = Path(folder)
    for name, expected in sorted(files.items()):
        path = folder / name
        if Path(name).name != name:
            raise ModelFileError(
                f"{folder / MANIFEST_FILE} lists {name!r}, which is not a plain file name", _RECOPY_FIX
            )
        if not path.is_file():
            raise ModelFileError(f"bundle file missing: {path} (listed in {MANIFEST_FILE})", _RECOPY_FIX)
        actual = file_sha256(path)
        if actual != expected:
            raise ModelFileError(
                f"bundle file {path} ({path.stat().st_size} bytes) has sha256 {actual}, but {MANIFEST_FILE} "
                f"records {expected}: the file is truncated, corrupt or was changed after export",
                _RECOPY_FIX,
            )


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read a bundle, verifying the sha256 of every listed file before using any of them.

    Args:
        path: The bundle folder.

    Returns:
        The verified bundle.

    Raises:
        ModelFileError: No manifest, a malformed one, a listed file missing, truncated or altered, the
            model file or ``labels.txt`` not covered by the hashes, or labels that disagree.
    """
    folder = Path(path)
    manifest = read_manifest(folder)
    # Every listed hash first: nothing else in the bundle is read until its bytes are the exported ones.
    verify_files(folder, manifest.files)
    for required in (manifest.model_file, LABELS_FILE):
        if required not in manifest.files:
            raise ModelFileError(
                f"{folder / MANIFEST_FILE} records no sha256 for {required}, so it cannot be verified",
                "re-export the bundle with `edgesight export`",
            )
    if Path(manifest.model_file).suffix != _SUFFIX[manifest.format]:
        raise ModelFileError(
            f"{folder}: model file {manifest.model_file} does not match format {manifest.format}",
            "re-export the bundle with `edgesight export`",
        )
    labels = tuple(
        line.strip() for line in (folder / LABELS_FILE).read_text(encoding="utf-8").splitlines() if line.strip()
    )
    if labels != manifest.labels:
        raise ModelFileError(
            f"{folder / LABELS_FILE} lists {list(labels)} but {MANIFEST_FILE} has {list(manifest.labels)}",
            "re-export the bundle with `edgesight export`",
        )
    unlisted = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in manifest.files)
    unlisted = [n for n in unlisted if n != MANIFEST_FILE]
    if unlisted:
        log.warning("%s: files not covered by the manifest are ignored: %s", folder, ", ".join(unlisted))
    log.info("bundle %s verified (%s %s, %d files)", folder, manifest.format, manifest.precision, len(manifest.files))
    return Bundle(folder, manifest)


# --- writing --------------------------------------------------------------------------------------------


def write_manifest(folder: str | os.PathLike, manifest: Manifest) -> Manifest:
    """Hash every file in ``folder`` into ``manifest.files`` and write ``manifest.json``.

    Returns:
        The manifest as written (with the fresh hashes).

    Raises:
        ModelFileError: The model file is not in the folder.
    """
    folder = Path(folder)
    if not (folder / manifest.model_file).is_file():
        raise ModelFileError(f"{folder} has no model file {manifest.model_file}", "write the model file first")
    manifest = dataclasses.replace(manifest, files=hash_files(folder))
    tmp = folder / (MANIFEST_FILE + ".tmp")
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    tmp.replace(folder / MANIFEST_FILE)
    return manifest


def write_labels(folder: str | os.PathLike, labels: tuple[str, ...]) -> Path:
    """Write ``labels.txt``: one label per line, in class-id order."""
    path = Path(folder) / LABELS_FILE
    path.write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    return path


# --- parsing helpers ------------------------------------------------------------------------------------


def _input_spec(data: Mapping[str, Any]) -> InputSpec:
    values = dict(data)
    for key in ("mean", "std"):
        if key in values:
            values[key] = tuple(float(v) for v in values[key])
    return InputSpec(**values)


def _decode_spec(data: Mapping[str, Any]) -> DecodeSpec:
    values = dict(data)
    values["strides"] = tuple(int(s) for s in values["strides"])
    return DecodeSpec(**values)


def _accuracy(data: Mapping[str, Any] | None) -> Accuracy | None:
    if data is None:
        return None
    values = dict(data)
    values["classes"] = tuple(ClassAccuracy(**c) for c in values["classes"])
    return Accuracy(**values)
