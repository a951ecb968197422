"""One seam on the device side: every detector is a ``Detector``, every runtime a registered ``Backend``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from devices.backends import RUNTIMES, Backend, create_backend
from devices.detector import Detector, TimedDetector
from devices.errors import ConfigError, FrameError
from devices.runner import BundleDetector

PHOTO = "datasets/coco128/images/val2017/000000000139.jpg"


@pytest.fixture(scope="module")
def detectors(mirror: Path, test_bundles: Path) -> Iterator[dict[str, Detector]]:
    """One detector of each kind: a bundle per format, a peer, HOG, and the PyTorch model."""
    from models import create_model
    from toolkit.evaluate.hog import HogPeopleDetector
    from toolkit.evaluate.peers import load_peers
    from toolkit.evaluate.torch_detector import TorchDetector

    opened: dict[str, Detector] = {
        "tflite bundle": BundleDetector(test_bundles / "yolox-nano-tflite-int8", threads=1),
        "onnx bundle": BundleDetector(test_bundles / "yolox-nano-onnx-fp32", threads=1),
        "hog": HogPeopleDetector(),
        "torch": TorchDetector(create_model("yolox-nano", num_classes=2, pretrained=True, mirror=str(mirror))),
    }
    opened |= {f"peer {p.name}": p for p in load_peers(mirror / "weights" / "peers", threads=1)}
    yield opened
    for detector in opened.values():
        detector.close()


def test_every_detector_takes_a_frame_and_gives_labelled_detections(detectors, mirror: Path) -> None:
    photo = cv2.imread(str(mirror / PHOTO))
    for name, detector in detectors.items():
        assert isinstance(detector, Detector), name
        dets = detector(photo)
        assert dets.boxes.shape == (len(dets), 4) and dets.boxes.dtype == np.float32, name
        assert len(dets) == 0 or int(dets.class_ids.max()) < len(detector.labels), name
    # Those that run a model file split the call into stages a benchmark can time.
    timed = {n for n, d in detectors.items() if isinstance(d, TimedDetector)}
    assert {"tflite bundle", "onnx bundle"} <= timed and any(n.startswith("peer ") for n in timed)


def test_a_bad_frame_is_a_clear_error_in_every_detector(detectors, tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    unreadable = cv2.imread(str(tmp_path / "broken.jpg"))  # None, as for any file OpenCV cannot read
    for detector in detectors.values():
        with pytest.raises(FrameError, match=r"got None \(cv2\.imread returns None"):
            detector(unreadable)
        with pytest.raises(FrameError, match=r"got uint8 \(8, 8\)"):
            detector(np.zeros((8, 8), np.uint8))  # grey: a frame with no colour axis
        with pytest.raises(ValueError):  # FrameError stays a ValueError for callers that caught that
            detector(np.zeros((8, 8, 3), np.float32))


def test_runtimes_are_chosen_from_the_registry(test_bundles: Path) -> None:
    tflite = test_bundles / "yolox-nano-tflite-int8"
    model = next(tflite.glob("*.tflite"))
    with create_backend(model, "tflite", "ai_edge_litert", threads=1) as backend:
        assert isinstance(backend, Backend) and backend.runtime == "ai_edge_litert"
        assert backend.input_details.dtype == np.int8 and backend.input_details.scale is not None
    assert {r.format for r in RUNTIMES.values()} == {"onnx", "tflite"}
    with pytest.raises(ConfigError, match="runtime 'onnxruntime' cannot run the TFLite model"):
        create_backend(model, "tflite", "onnxruntime")
    with pytest.raises(ConfigError, match="no runtime runs 'tensorrt'"):
        create_backend(model, "tensorrt")
    with pytest.raises(ConfigError, match="cannot run the TFLite model"):
        BundleDetector(tflite, runtime="onnxruntime")


def test_open_close_and_with_behave_alike_everywhere(test_bundles: Path, mirror: Path) -> None:
    from toolkit.evaluate.peers import load_peers

    photo = cv2.imread(str(mirror / PHOTO))
    bundle = BundleDetector(test_bundles / "yolox-nano-onnx-fp32", threads=1)
    peer = load_peers(mirror / "weights" / "peers", threads=1)[0]
    for detector in (bundle, peer):
        expected = detector(photo)
        detector.close()
        detector.close()  # closing twice is harmless
        with pytest.raises(RuntimeError, match="closed"):
            detector(photo)
        with detector as reopened:  # a with block opens it again, and closes it at the end
            np.testing.assert_array_equal(reopened(photo).boxes, expected.boxes)
        with pytest.raises(RuntimeError, match="closed"):
            detector(photo)
