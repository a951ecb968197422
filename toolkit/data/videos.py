"""Real video footage as unlabelled training frames: the teacher labels the people in them.

Frames of street and indoor video teach the pedestrian class what deployment looks like (fixed
cameras, motion blur, small distant people) without anyone drawing a box: the COCO teacher's confident
detections become pseudo-labels and its outputs are distilled on every anchor (toolkit/train/).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from devices.errors import DataError
from models.hub import RemoteFile, cache_dir, resolve
from toolkit.data.sample import Sample

log = logging.getLogger(__name__)

VIDEOS: dict[str, RemoteFile] = {
    # Outdoor pedestrians, 768x576, 10 fps (OpenCV sample data; Apache-2.0 AND BSD-3-Clause).
    "vtest": RemoteFile(
        "https://raw.githubusercontent.com/opencv/opencv/4.x/samples/data/vtest.avi",
        "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
        "videos/vtest.avi",
    ),
    # Indoor, one person at a time (Intel IoT devkit sample videos; CC BY 4.0).
    "one-by-one-person": RemoteFile(
        "https://github.com/intel-iot-devkit/sample-videos/raw/master/one-by-one-person-detection.mp4",
        "a5964aa259099a482a8b360ffc2c57b5a30f84d5919236a4dad01f8e929ac07c",
        "videos/one-by-one-person-detection.mp4",
    ),
}


def video_frames(name: str, count: int, mirror: str | None = None) -> list[Sample]:
    """``count`` frames spread evenly over a registered video, as unlabelled samples.

    Frames are decoded once into the cache (JPEG, quality 95) so that training reads them like photos.
    """
    if name not in VIDEOS:
        raise DataError(f"unknown video '{name}'", f"choose one of: {', '.join(VIDEOS)}")
    remote = VIDEOS[name]
    path = resolve(remote, f"video {name}", mirror)
    out_dir = cache_dir() / "frames" / f"{name}-{remote.sha256[:12]}"
    out_dir.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(path))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if not cap.isOpened() or total <= 0:
        raise DataError(f"cannot read video {path}", "check the file (sha256 verified) and OpenCV's video support")
    wanted = sorted({int(i) for i in np.linspace(0, total - 1, count)})
    samples = []
    for index in wanted:
        frame_path = out_dir / f"frame_{index:06d}.jpg"
        if not frame_path.is_file():
            cap.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = cap.read()
            if not ok:
                log.warning("%s: frame %d unreadable, skipped", path.name, index)
                continue
            cv2.imwrite(str(frame_path), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
        image = cv2.imread(str(frame_path))
        if image is None:  # a write that failed (a full disk) or a frame file damaged since
            raise DataError(f"cannot read the extracted frame {frame_path}", "delete it: the next run extracts it")
        h, w = image.shape[:2]
        samples.append(Sample(frame_path, w, h, np.zeros((0, 4)), np.zeros((0,)), f"video:{name}",
                              f"video:{name}:{index}", labels_people=False, subset="train"))
    cap.release()
    log.info("video %s: %d frames for distillation", name, len(samples))
    return samples
