"""``edgesight predict``: run a detector on photos and write them with labelled boxes drawn.

An image that cannot be read is reported and skipped; the others are still written, so that one broken
file in a folder of hundreds costs only itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2

from devices.draw import draw_detections
from devices.errors import DataError
from devices.types import Detections
from toolkit.evaluate.coco import load_image
from toolkit.evaluate.detector import load_detector

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Prediction:
    """One input image: the annotated copy written and its detections, or why it was skipped.

    Attributes:
        source: The input image.
        written: The annotated copy in the output folder; None when skipped.
        detections: What the detector found; None when skipped.
        error: Why the image was skipped (unreadable); None when written.
    """

    source: Path
    written: Path | None
    detections: Detections | None
    error: str | None = None


def _expand(inputs: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(item)
    return files


def predict_images(model_ref: str, inputs: Sequence[Path], out_dir: Path, min_score: float = 0.3,
                   mirror: str | None = None) -> Iterator[Prediction]:
    """Detect on every image under ``inputs`` and write annotated copies to ``out_dir``.

    Yields one ``Prediction`` per image, in order; an unreadable image is yielded with its error and the
    rest go on.
    """
    detector = load_detector(model_ref, score_threshold=min_score, mirror=mirror)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        for path in _expand(inputs):
            try:
                image = load_image(path)
            except DataError as exc:
                log.warning("skipping %s: %s", path, exc.problem)
                yield Prediction(path, None, None, exc.problem)
                continue
            dets = detector(image)
            target = out_dir / f"{path.stem}.jpg"
            cv2.imwrite(str(target), draw_detections(image, dets, detector.labels, min_score=min_score))
            yield Prediction(path, target, dets)
    finally:
        detector.close()
