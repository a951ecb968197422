"""Bundles on the device side: hashes checked before anything runs, a manifest that round-trips, and
``BundleDetector`` giving exactly what the runtime and the shared processing give by hand.

The bundle here wraps the FastestDet authors' own ONNX export from the mirror (80 COCO classes), so
these tests need no conversion and no torch.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from devices.backends.onnxrt import OnnxRuntimeBackend
from devices.bundle import (
    MANIFEST_FILE,
    Accuracy,
    ClassAccuracy,
    Manifest,
    load_bundle,
    read_manifest,
    write_labels,
    write_manifest,
)
from devices.errors import ModelFileError
from devices.processing import postprocess, preprocess
from devices.runner import BundleDetector
from devices.types import DecodeSpec, InputSpec

#: The authors' preprocessing for FastestDet.onnx: 352x352 stretched, BGR, /255.
AUTHORS_INPUT = InputSpec(width=352, height=352, resize="stretch", channel_order="BGR", scale=1 / 255)


def make_bundle(mirror: Path, folder: Path) -> Manifest:
    """A bundle around the authors' FastestDet.onnx, written with the device-side writers."""
    folder.mkdir(parents=True)
    shutil.copyfile(mirror / "weights/fastestdet/FastestDet.onnx", folder / "fastestdet_fp32.onnx")
    shutil.copyfile(mirror / "weights/fastestdet/LICENSE.md", folder / "LICENSE.md")
    labels = tuple(
        line.strip() for line in (mirror / "weights/fastestdet/coco.names").read_text().splitlines() if line.strip()
    )
    write_labels(folder, labels)
    (folder / "REPORT.md").write_text("# FastestDet (authors' export)\n")
    manifest = Manifest(
        format="onnx",
        precision="fp32",
        model_file="fastestdet_fp32.onnx",
        files={},
        input=AUTHORS_INPUT,
        decode=DecodeSpec(kind="fastestdet", strides=(16,), num_classes=len(labels), score_threshold=0.3),
        labels=labels,
        arch="fastestdet",
        accuracy=Accuracy(
            map=0.5,
            map50=0.7,
            classes=(ClassAccuracy("person", 0.4, 0.6, 19), ClassAccuracy("stop sign", 0.6, 0.8, 8)),
            dataset="test",
            dataset_sha256="0" * 64,
            num_images=12,
            runtime="onnxruntime",
            score_threshold=0.01,
        ),
        calibration={"count": 3, "images_per_class": {"person": 2}},
        notes=("written by a test",),
    )
    return write_manifest(folder, manifest)


@pytest.fixture
def bundle(mirror: Path, tmp_path: Path) -> tuple[Path, Manifest]:
    folder = tmp_path / "fastestdet-onnx-fp32"
    return folder, make_bundle(mirror, folder)


@pytest.fixture(scope="module")
def photos(mirror: Path) -> list[np.ndarray]:
    paths = sorted((mirror / "datasets/coco128/images/val2017").glob("*.jpg"))[:2]
    paths += sorted((mirror / "datasets/roboflow_stop_signs/valid/images").glob("*.jpg"))[:1]
    return [cv2.imread(str(p)) for p in paths]


def test_manifest_round_trips_through_json(bundle) -> None:
    folder, written = bundle
    loaded = load_bundle(folder)
    assert loaded.manifest == written
    assert loaded.model_path == folder / "fastestdet_fp32.onnx"
    assert loaded.manifest.accuracy.ap_of("stop sign") == 0.6
    # Every file but the manifest is covered by a hash.
    assert sorted(loaded.manifest.files) == ["LICENSE.md", "REPORT.md", "fastestdet_fp32.onnx", "labels.txt"]
    data = json.loads((folder / MANIFEST_FILE).read_text())
    assert data["schema_version"] == 1 and data["input"]["layout"] == "NCHW"


def test_a_changed_byte_in_the_model_is_refused(bundle) -> None:
    folder, _ = bundle
    model = folder / "fastestdet_fp32.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"fastestdet_fp32\.onnx") as err:
        BundleDetector(folder)
    assert "sha256" in str(err.value) and "copy the whole bundle folder again" in err.value.fix


def test_a_truncated_model_is_refused_before_any_runtime_reads_it(bundle) -> None:
    folder, _ = bundle
    model = folder / "fastestdet_fp32.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match=r"1000 bytes\) has sha256") as err:
        BundleDetector(folder)
    # The hash check speaks, not ONNX Runtime's protobuf parser.
    assert "ONNX Runtime" not in str(err.value)


def test_edited_labels_missing_files_and_foreign_folders_are_refused(bundle, tmp_path: Path) -> None:
    folder, _ = bundle
    (folder / "labels.txt").write_text("pedestrian\nstop_sign\n")
    with pytest.raises(ModelFileError, match=r"labels\.txt"):
        load_bundle(folder)
    (folder / "labels.txt").unlink()
    with pytest.raises(ModelFileError, match=r"bundle file missing: .*labels\.txt"):
        load_bundle(folder)
    with pytest.raises(ModelFileError, match=r"has no manifest\.json"):
        load_bundle(tmp_path)
    with pytest.raises(ModelFileError, match="not found"):
        load_bundle(tmp_path / "nowhere")


def test_a_newer_or_malformed_manifest_is_refused(bundle) -> None:
    folder, _ = bundle
    data = json.loads((folder / MANIFEST_FILE).read_text())
    (folder / MANIFEST_FILE).write_text(json.dumps({**data, "schema_version": 99}))
    with pytest.raises(ModelFileError, match="schema_version 99") as err:
        read_manifest(folder)
    assert "upgrade edgesight" in err.value.fix
    del data["decode"]
    (folder / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="malformed"):
        read_manifest(folder)
    (folder / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ModelFileError, match="cannot read"):
        read_manifest(folder)


def test_detector_equals_the_runtime_and_shared_processing_by_hand(bundle, photos) -> None:
    folder, manifest = bundle
    with BundleDetector(folder, threads=1, score_threshold=0.05) as detector:
        assert detector.labels[0] == "person" and detector.runtime.startswith("onnxruntime ")
        results = [detector(frame) for frame in photos]
    decode = dataclasses.replace(manifest.decode, score_threshold=0.05)
    with OnnxRuntimeBackend(folder / manifest.model_file, threads=1) as backend:
        for frame, got in zip(photos, results, strict=True):
            tensor, placement = preprocess(frame, manifest.input)
            want = postprocess(backend.run(tensor)[0], decode, manifest.input, placement, frame.shape)
            np.testing.assert_array_equal(got.boxes, want.boxes)
            np.testing.assert_array_equal(got.class_ids, want.class_ids)
    # The photos hold people and a stop sign, and the detector finds both.
    found = {int(c) for d in results for c in d.class_ids}
    assert {0, 11} <= found


def test_detector_refuses_a_manifest_written_for_another_input(bundle) -> None:
    folder, manifest = bundle
    wrong = dataclasses.replace(manifest, input=dataclasses.replace(manifest.input, width=416, height=416))
    write_manifest(folder, wrong)
    with pytest.raises(ModelFileError, match=r"does not match its manifest: input shape \(1, 3, 352, 352\)"):
        BundleDetector(folder)


def test_closed_detector_says_how_to_use_it(bundle, photos) -> None:
    folder, _ = bundle
    detector = BundleDetector(folder, threads=1)
    before = detector(photos[0])
    detector.close()
    with pytest.raises(RuntimeError, match="closed"):
        detector(photos[0])
    detector.open()
    after = detector(photos[0])  # reopened, the same file gives the same answer
    np.testing.assert_array_equal(after.boxes, before.boxes)
    np.testing.assert_array_equal(after.class_ids, before.class_ids)
    assert len(after) > 0
    detector.close()
