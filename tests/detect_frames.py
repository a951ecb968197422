"""Run a bundle on saved frames and print the detections as JSON: the same script on x86 and on arm64.

``python detect_frames.py BUNDLE FRAMES.npz RUNTIME [--threshold T] [--video VIDEO]`` prints one JSON object:
per frame the boxes, scores and class ids, the runtime and its version, the machine and the seconds per
frame. With --video it also decodes the frames' indices from the video on this machine, so that decoding
is compared apart from inference. Needs only numpy, OpenCV and the installed ``devices`` package: it runs
in the device install, without the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import cv2
import numpy as np

from devices.runner import BundleDetector


def detections(detector: BundleDetector, frames: np.ndarray) -> tuple[list[dict], float]:
    out, started = [], time.perf_counter()
    for frame in frames:
        found = detector(frame)
        out.append({"boxes": found.boxes.round(3).tolist(), "scores": found.scores.round(5).tolist(),
                    "class_ids": found.class_ids.tolist()})
    return out, (time.perf_counter() - started) / len(frames)


def decode(video: str, indices: list[int]) -> np.ndarray:
    capture = cv2.VideoCapture(video)
    frames, index = [], 0
    while len(frames) < len(indices):
        ok, frame = capture.read()
        if not ok:
            raise SystemExit(f"{video} ended at frame {index}")
        if index in indices:
            frames.append(frame)
        index += 1
    return np.stack(frames)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle")
    parser.add_argument("frames")
    parser.add_argument("runtime")
    parser.add_argument("--threshold", type=float, help="score threshold (default: the bundle's)")
    parser.add_argument("--video", help="also decode the frames from this video and detect on them")
    args = parser.parse_args()
    saved = np.load(args.frames)
    frames, indices = saved["frames"], saved["indices"].tolist()
    with BundleDetector(args.bundle, threads=2, runtime=args.runtime, score_threshold=args.threshold) as detector:
        result, seconds = detections(detector, frames)
        answer = {"machine": platform.machine(), "runtime": detector.runtime, "numpy": np.__version__,
                  "opencv": cv2.__version__, "seconds_per_frame": seconds, "frames": result}
        if args.video:
            decoded = decode(args.video, indices)
            answer["decode_max_abs_diff"] = int(np.abs(decoded.astype(np.int16) - frames.astype(np.int16)).max())
            answer["frames_own_decode"] = detections(detector, decoded)[0]
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
