"""Stock COCO detectors as peer baselines: frame in, two-class detections out.

The benchmark compares our fine-tuned models with three off-the-shelf COCO detectors that run as
shipped by their authors, read from a folder laid out like ``<mirror>/weights/peers``:

- ``yolox-nano-onnx/yolox_nano.onnx`` -- YOLOX-Nano 416 (Megvii), decoded by ``devices.processing``.
- ``nanodet-m-onnx/nanodet-m_320.onnx`` -- NanoDet-m 320 (RangiLyu), a GFL head decoded here.
- ``ssd-mobilenetv2-fpnlite-320-coco-tflite/ssd_mobilenet_v2_fpnlite_320_coco.tflite`` -- TF2 zoo SSD
  with TFLite's built-in post-processing (at most 10 detections per frame).

Each peer is a ``Detector`` (BGR uint8 frame -> ``devices.types.Detections``, boxes xyxy in original
pixels) with our labels ``("pedestrian", "stop_sign")``: COCO ``person`` becomes class 0, ``stop sign``
class 1, every other COCO class is dropped. Every file is checked against the sha256 recorded here
(copied from the folder's ``SOURCE.txt``) before it is opened.

Over 400 lines: each peer's record (file, hash, preprocessing) sits beside the decoder of its output
format, one section per peer, so that what is compared can be read in one place.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from devices.backends import Backend, create_backend, runtime_label
from devices.errors import ConfigError, ModelFileError
from devices.processing import Placement, nms, postprocess, preprocess
from devices.resource import Openable
from devices.types import DecodeSpec, Detections, InputSpec
from models.base import COCO80, TARGET_CLASSES
from models.hub import RemoteFile, verify
from toolkit.evaluate.coco import EVAL_SCORE_THRESHOLD

log = logging.getLogger(__name__)

#: COCO-80 rows of our two classes, in our class order (person -> 0, stop sign -> 1).
COCO80_ROWS: tuple[int, ...] = (COCO80.index("person"), COCO80.index("stop sign"))


@dataclass(frozen=True)
class PeerRecord:
    """One peer model file and how to feed it.

    Attributes:
        name: Short name used in reports, e.g. ``nanodet-m``.
        folder: Its folder under the peers directory.
        file: Upstream location, sha256 and mirror path of the model file.
        runtime: ``onnx`` (ONNX Runtime) or ``tflite`` (LiteRT).
        num_outputs: How many output tensors the model has (one runs through ``devices.backends``).
        input: Preprocessing the model was trained with.
        source_note: Where the file comes from and its licence, as recorded in ``SOURCE.txt``.
    """

    name: str
    folder: str
    file: RemoteFile
    runtime: Literal["onnx", "tflite"]
    num_outputs: int
    input: InputSpec
    source_note: str

    @property
    def filename(self) -> str:
        return Path(self.file.mirror_path).name


YOLOX_NANO = PeerRecord(
    name="yolox-nano",
    folder="yolox-nano-onnx",
    file=RemoteFile(
        url=(
            "https://raw.githubusercontent.com/Bigisland1729/object-detection-models/"
            "7f3f2fa34b351e3d2af150893458106ad3f3a84f/yolox_nano.onnx"
        ),
        sha256="e8af074932d4ed7e232278e3055cefcdea3edf178874a3694ae292649fb464dd",
        mirror_path="weights/peers/yolox-nano-onnx/yolox_nano.onnx",
    ),
    runtime="onnx",
    num_outputs=1,
    # Same file and preprocessing as models.yolox.YOLOX_NANO_COCO (a test keeps them equal); restated
    # here so that the peers need no torch.
    input=InputSpec(width=416, height=416, resize="letterbox", pad_value=114, channel_order="BGR", scale=1.0),
    source_note="Megvii YOLOX-Nano COCO-80 ONNX (Apache-2.0 upstream; copy from a repository without a licence file)",
)

NANODET_M = PeerRecord(
    name="nanodet-m",
    folder="nanodet-m-onnx",
    file=RemoteFile(
        url=(
            "https://raw.githubusercontent.com/hpc203/nanodet-opncv-dnn-cpp-python/"
            "15dd99c651d53c824f51d1eb5faddbd4f3d69bbc/nanodet.onnx"
        ),
        sha256="c59b6c947ce475d27023327808aed655fa000981fe144c4fd2026828999e19f8",
        mirror_path="weights/peers/nanodet-m-onnx/nanodet-m_320.onnx",
    ),
    runtime="onnx",
    num_outputs=6,
    # NanoDet's own mean/std in BGR order; aspect-keeping resize with black borders (see NanoDetPeer).
    input=InputSpec(
        width=320,
        height=320,
        resize="letterbox",
        pad_value=0,
        channel_order="BGR",
        mean=(103.53, 116.28, 123.675),
        std=(57.375, 57.12, 58.395),
    ),
    source_note="RangiLyu NanoDet-m COCO-80 ONNX (Apache-2.0 upstream; copy from a repository without a licence file)",
)

SSD_MOBILENETV2_FPNLITE = PeerRecord(
    name="ssd-mobilenetv2-fpnlite",
    folder="ssd-mobilenetv2-fpnlite-320-coco-tflite",
    file=RemoteFile(
        url=(
            "https://raw.githubusercontent.com/armaanpriyadarshan/TensorFlow-2-Lite-Object-Detection-on-the-"
            "Raspberry-Pi/58b0e16e4b6cf432781876bdc1bc22e4576815ca/models/model.tflite"
        ),
        sha256="a77e10a0aac819e507f0d43ec40c77807e78ddc5d9296f3ff9a60f4e55fabd02",
        mirror_path="weights/peers/ssd-mobilenetv2-fpnlite-320-coco-tflite/ssd_mobilenet_v2_fpnlite_320_coco.tflite",
    ),
    runtime="tflite",
    num_outputs=4,
    # TF Object Detection API resizers stretch to the fixed 320x320 input; pixels map to [-1, 1].
    input=InputSpec(
        width=320,
        height=320,
        resize="stretch",
        channel_order="RGB",
        scale=1.0,
        mean=(127.5, 127.5, 127.5),
        std=(127.5, 127.5, 127.5),
        layout="NHWC",
    ),
    source_note="TF2 zoo SSD MobileNetV2 FPNLite 320 COCO as float TFLite (Apache-2.0 upstream; copy from a "
    "repository without a licence file)",
)

PEERS: tuple[PeerRecord, ...] = (YOLOX_NANO, NANODET_M, SSD_MOBILENETV2_FPNLITE)


def _open_backend(record: PeerRecord, path: Path, threads: int | None) -> Backend:
    """The same device backend that runs our own bundles, so the comparison goes through one path."""
    backend = create_backend(path, record.runtime, threads=threads)
    backend.open()
    return backend


class Peer(Openable):
    """A stock COCO detector as a frame-in, detections-out callable with our two labels.

    Open once (it verifies and loads the file), then call it on frames; ``close`` (or ``with``) frees
    the runtime. ``prepare`` and ``run_model`` split a call into its preprocessing and the model call
    alone, for latency measurements.

    Args:
        record: Which model and how to feed it.
        path: The model file; its sha256 must match ``record.file.sha256``.
        threads: Runtime threads (1 for latency benchmarks); None lets the runtime choose.
        score_threshold: Detections below this score are dropped (evaluation uses 0.01).

    Raises:
        ModelFileError: The file is missing or its sha256 differs from the record's.
    """

    labels: tuple[str, ...] = TARGET_CLASSES

    def __init__(
        self,
        record: PeerRecord,
        path: Path,
        threads: int | None = None,
        score_threshold: float = EVAL_SCORE_THRESHOLD,
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ConfigError(f"score_threshold {score_threshold} is outside [0, 1]", "pass 0.01 to evaluate")
        self.record = record
        self.name = record.name
        self.path = verify(Path(path), record.file.sha256, f"{record.name} peer model")
        self.sha256 = record.file.sha256
        self.threads = threads
        self.score_threshold = score_threshold
        self.input = record.input
        self._runner: Backend | None = _open_backend(record, self.path, threads)
        self.runtime = runtime_label(self._runner)
        log.info("peer %s: %s (%s threads)", self.name, self.path, threads or "default")

    def prepare(self, frame: np.ndarray) -> tuple[np.ndarray, Placement]:
        """BGR uint8 frame -> (input tensor, placement of the frame in it)."""
        return preprocess(frame, self.input)

    def run_model(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run the model on one input tensor; its outputs in the model's order."""
        if self._runner is None:
            raise RuntimeError(f"peer {self.name} was closed; open a new one with load_peers or open_peer")
        return self._runner.run_all(tensor)

    def decode(self, outputs: list[np.ndarray], placement: Placement, frame_shape: tuple[int, ...]) -> Detections:
        """The model's outputs -> our two-class detections in original-frame pixels."""
        raise NotImplementedError

    def __call__(self, frame: np.ndarray) -> Detections:
        tensor, placement = self.prepare(frame)
        return self.decode(self.run_model(tensor), placement, frame.shape)

    def open(self) -> None:
        """Load the model file again after ``close`` (a no-op while open)."""
        if self._runner is None:
            self._runner = _open_backend(self.record, self.path, self.threads)

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {str(self.path)!r}, threads={self.threads})"


class YoloxNanoPeer(Peer):
    """YOLOX-Nano, decoded by ``devices.processing`` exactly as our own YOLOX models are.

    Only the person and stop-sign columns are kept before decoding, so that the 100-detection cap and
    the class-aware NMS act on our two classes only, as they do for the fine-tuned model.
    """

    def __init__(
        self,
        record: PeerRecord,
        path: Path,
        threads: int | None = None,
        score_threshold: float = EVAL_SCORE_THRESHOLD,
    ) -> None:
        super().__init__(record, path, threads, score_threshold)
        self._decode = DecodeSpec(
            kind="yolox", strides=(8, 16, 32), num_classes=len(COCO80_ROWS), score_threshold=score_threshold
        )
        self._columns = np.array([0, 1, 2, 3, 4, *(5 + r for r in COCO80_ROWS)])

    def decode(self, outputs: list[np.ndarray], placement: Placement, frame_shape: tuple[int, ...]) -> Detections:
        raw = outputs[0][0]
        if raw.ndim != 2 or raw.shape[1] != 5 + len(COCO80):
            raise ModelFileError(
                f"{self.path}: YOLOX output is {raw.shape}, expected (anchors, {5 + len(COCO80)})",
                "use the 80-class COCO yolox_nano.onnx",
            )
        return postprocess(raw[:, self._columns], self._decode, self.input, placement, frame_shape)


class NanoDetPeer(Peer):
    """NanoDet-m 320: GFL head (Li et al., NeurIPS 2020) with sigmoid class scores built into the export.

    Each stride-s cell (8, 16, 32) predicts the four distances left, top, right, bottom from its centre
    ``((i + 0.5) s, (j + 0.5) s)`` as a distribution over 0..reg_max (7) bins: distance = expected bin
    * s. The score is the class probability (quality-aware, no objectness). Post-processing follows
    upstream ``GFLHead.get_bboxes``: class-aware NMS at IoU 0.6, at most 100 detections.

    Preprocessing: upstream (``keep_ratio: True``) and the hpc203 demo the file comes from resize
    keeping the aspect ratio, centred, with black (0) borders. ``devices.processing``'s letterbox puts
    the image at the top-left instead; with pad 0 it scored as the centred resize did and above a plain
    stretch, measured with this file: AP@[.5:.95] stop sign 0.846 / 0.845 / 0.835 (roadsign_kaggle_stop,
    91 boxes) and person 0.335 / 0.348 / 0.321 (coco128 train half, 254 boxes), letterbox / centred /
    stretch.
    """

    STRIDES: tuple[int, ...] = (8, 16, 32)
    REG_MAX = 7
    NMS_IOU = 0.6
    MAX_DETECTIONS = 100

    def decode(self, outputs: list[np.ndarray], placement: Placement, frame_shape: tuple[int, ...]) -> Detections:
        boxes, scores = self._boxes_scores(outputs)
        # Clip to the input before NMS, as upstream's distance2bbox(max_shape=...) does.
        boxes = boxes.clip(0, [self.input.width, self.input.height] * 2)
        ours = scores[:, list(COCO80_ROWS)]
        return _select(boxes, ours, self.score_threshold, self.NMS_IOU, self.MAX_DETECTIONS, placement, frame_shape)

    def _levels(self, outputs: list[np.ndarray]) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Pair each stride with its class and box outputs, by shape.

        The export's output names do not follow its outputs (``bbox_pred0`` holds stride-16 class
        scores), so outputs are matched on (cells, 80) for classes and (cells, 32) for boxes.
        """
        by_shape = {tuple(o.reshape(-1, o.shape[-1]).shape): o.reshape(-1, o.shape[-1]) for o in outputs}
        levels = []
        for s in self.STRIDES:
            cells = (self.input.height // s) * (self.input.width // s)
            cls, reg = by_shape.get((cells, len(COCO80))), by_shape.get((cells, 4 * (self.REG_MAX + 1)))
            if cls is None or reg is None:
                raise ModelFileError(
                    f"{self.path}: no ({cells}, 80) and ({cells}, 32) outputs for stride {s} among "
                    f"{[o.shape for o in outputs]}",
                    "use the NanoDet-m 320 export recorded in toolkit.evaluate.peers.NANODET_M",
                )
            levels.append((s, cls, reg))
        return levels

    def _boxes_scores(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """All cells of all strides -> boxes xyxy in input pixels (N, 4), class scores (N, 80)."""
        bins = np.arange(self.REG_MAX + 1, dtype=np.float32)
        all_boxes, all_scores = [], []
        for s, cls, reg in self._levels(outputs):
            # Expected distance under the softmax over each side's bins, in pixels.
            logits = reg.reshape(-1, 4, self.REG_MAX + 1).astype(np.float32)
            prob = np.exp(logits - logits.max(-1, keepdims=True))
            dist = (prob / prob.sum(-1, keepdims=True)) @ bins * s
            gy, gx = np.meshgrid(np.arange(self.input.height // s), np.arange(self.input.width // s), indexing="ij")
            cx, cy = (gx.reshape(-1) + 0.5) * s, (gy.reshape(-1) + 0.5) * s
            all_boxes.append(np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], 1))
            all_scores.append(cls)
        return np.concatenate(all_boxes).astype(np.float32), np.concatenate(all_scores).astype(np.float32)


class SsdMobileNetV2Peer(Peer):
    """SSD MobileNetV2 FPNLite 320 with TFLite's built-in ``TFLite_Detection_PostProcess``.

    The op returns normalised ``[ymin, xmin, ymax, xmax]`` boxes of the stretched input, 0-based
    COCO-90 class indices (0 = person, 12 = stop sign: the label map's ids 1 and 13 minus one, as
    ``labels.txt`` lists them with ``???`` for the unused ids), scores, and a count.

    Its post-processing keeps at most **10 detections per frame** (all classes together, fixed in the
    converted graph), so on crowded frames recall, and therefore AP, is capped: its AP is a lower
    bound of what the network itself would reach, not a like-for-like comparison with 100-detection
    peers.
    """

    #: labels.txt row (the op's class output) -> our class id.
    CLASS_MAP: ClassVar[dict[int, int]] = {0: 0, 12: 1}

    def decode(self, outputs: list[np.ndarray], placement: Placement, frame_shape: tuple[int, ...]) -> Detections:
        boxes, classes, scores, count = self._outputs(outputs)
        n = int(count.reshape(-1)[0])
        boxes, classes, scores = boxes.reshape(-1, 4)[:n], classes.reshape(-1)[:n], scores.reshape(-1)[:n]
        ours = np.array([self.CLASS_MAP.get(c, -1) for c in classes.round().astype(np.int64).tolist()], np.int64)
        keep = (ours >= 0) & (scores >= self.score_threshold)
        if not keep.any():
            return Detections.empty()
        # Normalised y/x of the input -> x/y input pixels -> original pixels.
        yxyx = boxes[keep] * np.array([self.input.height, self.input.width] * 2, np.float32)
        xyxy = yxyx[:, [1, 0, 3, 2]]
        out = placement.to_original(xyxy, frame_shape[1], frame_shape[0])
        return Detections(out, scores[keep].astype(np.float32), ours[keep])

    def _outputs(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        """(boxes, classes, scores, count), the op's output order; checked because the two (1, 10)
        outputs are otherwise indistinguishable."""
        if len(outputs) != 4 or outputs[0].shape[-1] != 4 or outputs[3].size != 1:
            raise ModelFileError(
                f"{self.path}: outputs {[o.shape for o in outputs]} are not TFLite_Detection_PostProcess's "
                "boxes (1, N, 4), classes (1, N), scores (1, N), count (1,)",
                "use the SSD export recorded in toolkit.evaluate.peers.SSD_MOBILENETV2_FPNLITE",
            )
        return tuple(outputs)


def _select(
    boxes: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    iou: float,
    max_detections: int,
    placement: Placement,
    frame_shape: tuple[int, ...],
) -> Detections:
    """Boxes in input pixels with per-class scores (N, C) -> thresholded, class-aware NMS'd detections."""
    anchor, cls = np.nonzero(scores >= threshold)
    if anchor.size == 0:
        return Detections.empty()
    boxes, scores = boxes[anchor], scores[anchor, cls]
    # Offsetting each class's boxes far apart makes one NMS pass class-aware.
    shifted = boxes + cls[:, None].astype(np.float32) * (2.0 * float(np.abs(boxes).max()) + 1.0)
    # Whether a box survives greedy NMS depends only on higher-scored boxes, so NMS over the n best
    # candidates gives exactly the full result's first kept boxes; at 0.01 NanoDet has ~1000
    # candidates and ~500 survivors, and NMS over all of them took 50-100 ms for 100 kept.
    order = np.argsort(-scores, kind="stable")
    n = 4 * max_detections
    while True:
        top = order[:n]
        keep = top[nms(shifted[top], scores[top], iou)]
        if keep.size >= max_detections or n >= order.size:
            break
        n *= 4
    keep = keep[:max_detections]
    out = placement.to_original(boxes[keep], frame_shape[1], frame_shape[0])
    return Detections(out, scores[keep].astype(np.float32), cls[keep].astype(np.int64))


_PEER_CLASSES: dict[str, type[Peer]] = {
    YOLOX_NANO.name: YoloxNanoPeer,
    NANODET_M.name: NanoDetPeer,
    SSD_MOBILENETV2_FPNLITE.name: SsdMobileNetV2Peer,
}


def open_peer(
    record: PeerRecord, path: Path, threads: int | None = None, score_threshold: float = EVAL_SCORE_THRESHOLD
) -> Peer:
    """Verify and open one peer model file (see ``Peer`` for the arguments)."""
    return _PEER_CLASSES[record.name](record, path, threads, score_threshold)


def load_peers(
    peers_dir: Path, threads: int | None = None, score_threshold: float = EVAL_SCORE_THRESHOLD
) -> list[Peer]:
    """Open every known peer found in ``peers_dir`` (laid out like ``<mirror>/weights/peers``).

    Args:
        peers_dir: Folder holding ``yolox-nano-onnx/``, ``nanodet-m-onnx/``,
            ``ssd-mobilenetv2-fpnlite-320-coco-tflite/`` (any subset); unknown folders are skipped.
        threads: Runtime threads per peer (1 for latency benchmarks); None lets the runtime choose.
        score_threshold: Detections below this score are dropped (0.01 for evaluation).

    Returns:
        The peers in ``PEERS`` order; close them (or use ``with``) when done.

    Raises:
        ConfigError: ``peers_dir`` is not a folder.
        ModelFileError: A known folder lacks its model file or the file's sha256 differs.
    """
    peers_dir = Path(peers_dir)
    if not peers_dir.is_dir():
        raise ConfigError(f"peers folder {peers_dir} does not exist", "pass <mirror>/weights/peers")
    known = {r.folder: r for r in PEERS}
    for folder in sorted(p.name for p in peers_dir.iterdir() if p.is_dir() and p.name not in known):
        log.info("skipping %s: not a known peer (known: %s)", peers_dir / folder, ", ".join(known))
    peers: list[Peer] = []
    try:
        for record in PEERS:
            if (peers_dir / record.folder).is_dir():
                peers.append(open_peer(record, peers_dir / record.folder / record.filename, threads, score_threshold))
    except Exception:
        for peer in peers:
            peer.close()
        raise
    if not peers:
        log.warning("no known peer folder in %s (expected any of %s)", peers_dir, ", ".join(known))
    return peers


def describe(peer: Peer) -> dict[str, Any]:
    """What the benchmark report records about a peer: name, file, hash, runtime, source."""
    return {
        "name": peer.name,
        "path": str(peer.path),
        "sha256": peer.sha256,
        "runtime": peer.record.runtime,
        "url": peer.record.file.url,
        "input": dataclasses.asdict(peer.input),
        "source": peer.record.source_note,
    }
