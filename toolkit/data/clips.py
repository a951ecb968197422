"""Compose the stop-sign demo clip: a slow pan and zoom over real stop-sign photos.

No real video with a stop sign exists in the mirror (its videos are pedestrians and cars), so the demo's
stop-sign footage is *composed*: each photo of the validation split of the two bundled stop-sign sets
(never trained on) is shown for a few seconds while a virtual camera zooms towards its sign or away from
it. The photos are real; the camera motion is not. The clip is written with a sidecar
``<name>.about.json`` that says so, names every photo with its set and licence, and is what the live
page shows beside a composed source (``devices.daemon.live``).

The clip is deterministic: the photos are chosen by name and the motion is a function of the frame
number only, so two runs with the same OpenCV write the same frames.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from devices.errors import DataError
from devices.sidecar import SIDECAR_SUFFIX
from models.base import TARGET_CLASSES
from toolkit.data.images import load_image
from toolkit.data.sample import Sample
from toolkit.data.sets import default_splits, get_record

log = logging.getLogger(__name__)

#: The sets whose validation photos are used, taken alternately.
STOP_SIGN_SETS: tuple[str, ...] = ("roadsign_kaggle_stop", "roboflow_stop_signs")
#: A sign smaller than this share of its photo is too small to read after the zoom-out.
_MIN_SIGN_AREA = 0.005
#: The tightest view is never narrower than this many source pixels (at most 4x upscaling of a 640 px frame).
_MIN_VIEW_WIDTH = 160.0


@dataclass(frozen=True)
class ClipPhoto:
    """One photo of the clip and where it comes from."""

    file: str
    dataset: str
    license: str
    first_frame: int
    frames: int


@dataclass(frozen=True)
class Clip:
    """A composed clip on disk.

    Attributes:
        video: The MP4 file.
        about: The sidecar JSON that says the clip is composed and lists its photos.
        fps: Frames per second.
        frames: Frames written.
        photos: The photos in order of appearance.
    """

    video: Path
    about: Path
    fps: float
    frames: int
    photos: tuple[ClipPhoto, ...]


def stop_sign_photos(val: Sequence[Sample], count: int) -> list[Sample]:
    """``count`` validation photos with a readable stop sign, alternating between the two stop-sign sets.

    One file per original photo (the Roboflow set ships three augmented copies of each), chosen by name,
    so that the selection does not depend on the order the readers return files in.
    """
    stop = TARGET_CLASSES.index("stop_sign")
    per_set: dict[str, list[Sample]] = {name: [] for name in STOP_SIGN_SETS}
    seen: set[str] = set()
    for sample in sorted(val, key=lambda s: (s.source, s.group, s.image_path.name)):
        if sample.source not in per_set or sample.group in seen:
            continue
        pixels = sample.width * sample.height
        areas = [_area(b) / pixels for b, c in zip(sample.boxes, sample.labels, strict=True) if c == stop]
        if areas and max(areas) >= _MIN_SIGN_AREA:
            seen.add(sample.group)
            per_set[sample.source].append(sample)
    chosen = [s for group in _interleave(*per_set.values()) for s in group][:count]
    if len(chosen) < count:
        raise DataError(
            f"only {len(chosen)} validation photos with a stop sign of at least {_MIN_SIGN_AREA:.1%} of the photo, "
            f"{count} asked for",
            f"ask for at most {len(chosen)} photos",
        )
    return chosen


def compose_stop_sign_clip(
    out: str | os.PathLike,
    mirror: str | os.PathLike | None = None,
    photos: int = 10,
    seconds: float = 3.0,
    fps: float = 15.0,
    size: tuple[int, int] = (640, 480),
) -> Clip:
    """Write the composed stop-sign clip to ``out`` (MP4) and its ``.about.json`` beside it.

    Args:
        out: The MP4 file to write (its folder is created).
        mirror: Mirror root of the bundled datasets (default: ``EDGESIGHT_MIRROR``).
        photos: How many photos, each shown for ``seconds``.
        seconds: Time on each photo.
        fps: Frame rate of the clip.
        size: ``(width, height)`` of the clip.

    Raises:
        DataError: Too few usable photos, or the video cannot be written.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _, val = default_splits(mirror=mirror)
    chosen = stop_sign_photos(val, photos)
    per_photo = max(2, round(seconds * fps))
    width, height = size
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise DataError(f"OpenCV cannot write an MP4 to {out}", "check the folder is writable and OpenCV has FFmpeg")
    records = []
    try:
        for i, sample in enumerate(chosen):
            for frame in _pan_and_zoom(load_image(sample.image_path), _sign_box(sample), per_photo,
                                       (width, height), zoom_in=i % 2 == 0):
                writer.write(frame)
            records.append(ClipPhoto(_mirror_relative(sample.image_path), sample.source,
                                     get_record(sample.source).license, i * per_photo, per_photo))
    finally:
        writer.release()
    total = per_photo * len(chosen)
    about = out.with_name(out.stem + SIDECAR_SUFFIX)
    about.write_text(json.dumps({
        "composed": True,
        # The virtual camera moves, which frame differencing reads as "still" (slow zooms change few pixels
        # by much): `edgesight demo` runs the detector on every frame of such a clip.
        "camera_moves": True,
        "description": f"Composed clip, not real video: a pan and zoom over {len(chosen)} real stop-sign photos "
                       f"({seconds:g} s each) from the validation split of the bundled sets, never trained on.",
        "fps": fps,
        "frames": total,
        "size": [width, height],
        "photos": [asdict(r) for r in records],
    }, indent=2) + "\n")
    log.info("composed %s: %d photos, %d frames at %g fps", out, len(chosen), total, fps)
    return Clip(out, about, fps, total, tuple(records))


def _pan_and_zoom(image: np.ndarray, box: np.ndarray, frames: int, size: tuple[int, int],
                  zoom_in: bool) -> Iterator[np.ndarray]:
    """Frames of a virtual camera moving between the whole photo and a close view of ``box``."""
    width, height = size
    aspect = width / height
    wide = _view(image.shape, box, None, aspect)
    # The close view holds the sign at about half its width; a sign that already fills the photo still
    # gets a 0.6x zoom, so that every photo moves.
    sign = max(box[2] - box[0], (box[3] - box[1]) * aspect)
    close = _view(image.shape, box, min(max(_MIN_VIEW_WIDTH, 1.8 * sign), 0.6 * wide[2]), aspect)
    start, end = (wide, close) if zoom_in else (close, wide)
    for k in range(frames):
        t = k / (frames - 1)
        t = t * t * (3 - 2 * t)  # smoothstep: the camera eases in and out instead of jerking at each cut
        cx, cy, w = (1 - t) * start + t * end
        scale = width / w
        # Affine map from the view rectangle to the output frame; sub-pixel, so slow motion stays smooth.
        matrix = np.array([[scale, 0, width / 2 - scale * cx], [0, scale, height / 2 - scale * cy]])
        yield cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT)


def _view(shape: tuple[int, ...], box: np.ndarray, width: float | None, aspect: float) -> np.ndarray:
    """``(cx, cy, w)`` of a view of the given aspect inside the photo, centred as near ``box`` as it can be.

    ``width`` None is the widest view that fits; a requested width is capped at that.
    """
    img_h, img_w = shape[:2]
    widest = min(img_w, img_h * aspect)
    w = widest if width is None else min(width, widest)
    h = w / aspect
    cx = np.clip((box[0] + box[2]) / 2, w / 2, img_w - w / 2)
    cy = np.clip((box[1] + box[3]) / 2, h / 2, img_h - h / 2)
    return np.array([cx, cy, w], np.float64)


def _sign_box(sample: Sample) -> np.ndarray:
    """The largest stop-sign box of the photo."""
    stop = TARGET_CLASSES.index("stop_sign")
    boxes = [b for b, c in zip(sample.boxes, sample.labels, strict=True) if c == stop]
    return max(boxes, key=_area).astype(np.float64)


def _area(box: np.ndarray) -> float:
    return float((box[2] - box[0]) * (box[3] - box[1]))


def _interleave(*lists: list[Sample]) -> Iterator[list[Sample]]:
    """Round-robin rows: [a0, b0], [a1, b1], ... while either list has items."""
    for k in range(max(map(len, lists), default=0)):
        yield [lst[k] for lst in lists if k < len(lst)]


def _mirror_relative(path: Path) -> str:
    """The photo's path under ``datasets/`` (the mirror's layout), or its name."""
    parts = path.parts
    return "/".join(parts[parts.index("datasets"):]) if "datasets" in parts else path.name
