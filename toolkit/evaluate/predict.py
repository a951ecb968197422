"""``edgesight predict``: run a detector on photos and write them with labelled boxes drawn."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2

from devices.draw import draw_detections
from devices.types import Detections
from toolkit.evaluate.coco import load_image
from toolkit.evaluate.detector import load_detector

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def _expand(inputs: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(item)
    return files


def predict_images(model_ref: str, inputs: Sequence[Path], out_dir: Path, min_score: float = 0.3,
                   mirror: str | None = None) -> Iterator[tuple[Path, Detections]]:
    """Detect on every image under ``inputs`` and write annotated copies to ``out_dir``.

    Yields each written file with its detections.
    """
    detector = load_detector(model_ref, score_threshold=min_score, mirror=mirror)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in _expand(inputs):
        image = load_image(path)
        dets = detector(image)
        target = out_dir / f"{path.stem}.jpg"
        cv2.imwrite(str(target), draw_detections(image, dets, detector.labels, min_score=min_score))
        yield target, dets
