"""What the motion gate saves, and what it costs in tracks: gate on against gate off, on real footage.

For each video, one pass over its frames runs two daemons side by side on every decoded frame: one with the
gate off (the detector on every frame) and one with the gate on (``MotionConfig`` defaults, or the flags),
each with its own detector call and its own ``EventPipeline``. The video's timeline is its frame times
(frame index / fps), so the run is deterministic and not paced in real time. Per video it prints detector
calls and CPU seconds (process time of gate + detector + tracker, decoding excluded) per minute of video,
and the share of the gate-off tracks that the gate-on run also reports: a gate-off object is kept when a
gate-on object of its label overlaps it (IoU >= 0.5) on at least one frame, pairs taken one-to-one, most
overlapping frames first; "coverage" is the share of its frames on which it is overlapped.

``--sweep`` first replays the gate-off detections through gate settings on a grid (the detector is
deterministic, so a gate-on run would see the same detections on the frames it runs on) to choose defaults.

    python benchmarks/motion_gate.py                       # both videos, MotionConfig defaults
    python benchmarks/motion_gate.py --sweep               # + the grid the defaults were chosen from
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from devices.daemon.config import DaemonConfig, MotionConfig
from devices.daemon.events import EventPipeline
from devices.daemon.motion import MotionGate
from devices.daemon.tracker import iou_matrix
from devices.host import machine
from devices.runner import BundleDetector
from devices.types import Detections, Frame

MIRROR = Path(os.environ.get("EDGESIGHT_MIRROR", "../shared"))
VIDEOS = ("videos/vtest.avi", "videos/one-by-one-person-detection.mp4")
BUNDLE = Path(os.environ.get("EDGESIGHT_TEST_BUNDLES", "runs/test-bundles")) / "yolox-nano-tflite-int8"
T0 = 1_700_000_000.0
# The grids --sweep replays: the sensitivity (each with the other fields at their defaults), then max_idle and
# min_interval around the chosen sensitivity.
SWEEPS = (
    {"pixel_delta": (15, 25, 30, 40, 60), "min_area": (0.001, 0.002, 0.003, 0.005, 0.01)},
    {"alpha": (0.1, 0.5)},
    {"max_idle": (2.0, 10.0)},
    {"min_interval": (0.15, 0.3)},
)


@dataclass
class Run:
    """One daemon over one video: its gate (None: off), pipeline, counters and the objects it reported."""

    name: str
    gate: MotionGate | None
    pipeline: EventPipeline
    calls: int = 0
    cpu: float = 0.0
    tracks: dict[str, tuple[str, dict[int, np.ndarray]]] = field(default_factory=dict)  # uid -> label, boxes

    def step(self, frame: Frame, detect) -> None:
        """Gate, detector (``detect(frame)``) and pipeline on one frame; records confirmed objects' boxes."""
        start = time.process_time()
        detections = None
        if self.gate is None or self.gate.check(frame):
            detections = detect(frame)
            self.calls += 1
        self.pipeline.update(frame, detections)
        self.cpu += time.process_time() - start
        for view in self.pipeline.tracks():
            if view.confirmed:
                self.tracks.setdefault(view.id, (view.label, {}))[1][frame.index] = np.asarray(view.box)


def frames(path: Path) -> Iterator[Frame]:
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
    index = 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        yield Frame(image, index, T0 + index / fps, index / fps)
        index += 1
    capture.release()


def video_info(path: Path) -> tuple[int, float]:
    capture = cv2.VideoCapture(str(path))
    count, fps = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), capture.get(cv2.CAP_PROP_FPS) or 10.0
    capture.release()
    return count, fps


def kept(off: Run, on: Run) -> tuple[float, float, int, int]:
    """Share of ``off``'s objects that ``on`` also reports, their mean coverage, and both object counts."""
    overlaps = []
    for uid_off, (label_off, boxes_off) in off.tracks.items():
        for uid_on, (label_on, boxes_on) in on.tracks.items():
            common = sorted(set(boxes_off) & set(boxes_on))
            if label_off != label_on or not common:
                continue
            a = np.stack([boxes_off[f] for f in common])
            b = np.stack([boxes_on[f] for f in common])
            hits = int((np.diag(iou_matrix(a, b)) >= 0.5).sum())
            if hits:
                overlaps.append((hits, uid_off, uid_on))
    matched: dict[str, int] = {}
    used: set[str] = set()
    for hits, uid_off, uid_on in sorted(overlaps, reverse=True):
        if uid_off not in matched and uid_on not in used:
            matched[uid_off] = hits
            used.add(uid_on)
    total = len(off.tracks)
    if not total:
        return 1.0, 1.0, 0, len(on.tracks)
    coverage = np.mean([matched.get(uid, 0) / len(boxes) for uid, (_, boxes) in off.tracks.items()])
    return len(matched) / total, float(coverage), total, len(on.tracks)


def make_pipeline(cfg: DaemonConfig, labels: tuple[str, ...]) -> EventPipeline:
    return EventPipeline(cfg, labels, "bench", "-")


def measure(path: Path, detector: BundleDetector, cfg: DaemonConfig, motion: MotionConfig) -> dict:
    """Gate off and gate on over one video, interleaved frame by frame, each calling the detector itself."""
    off = Run("off", None, make_pipeline(cfg, detector.labels))
    on = Run("on", MotionGate(motion), make_pipeline(cfg, detector.labels))
    cache: list[Detections] = []  # the gate-off detections, for --sweep

    def detect_and_keep(frame: Frame) -> Detections:
        cache.append(detector(frame.image))
        return cache[-1]

    count = 0
    for frame in frames(path):
        off.step(frame, detect_and_keep)
        on.step(frame, lambda f: detector(f.image))
        count += 1
    # The gate's own cost, once more on its own (it is cheap: well under the noise of the detector's).
    start = time.process_time()
    probe = MotionGate(motion)
    for frame in frames(path):
        probe.check(frame)
    gate_cpu = time.process_time() - start
    _, fps = video_info(path)
    minutes = count / fps / 60
    share, coverage, n_off, n_on = kept(off, on)
    return {
        "video": path.name, "frames": count, "minutes": minutes, "off": off, "on": on, "cache": cache,
        "kept": share, "coverage": coverage, "tracks_off": n_off, "tracks_on": n_on,
        "gate_ms": 1000 * gate_cpu / count,
    }


def sweep(
    path: Path, cache: list[Detections], off: Run, cfg: DaemonConfig, motion: MotionConfig, labels: tuple[str, ...]
) -> list[tuple[MotionConfig, int, float, float]]:
    """Replays the gate-off detections through every gate setting of ``SWEEPS`` in one decode of the video.

    Returns:
        Per setting: the settings, detector calls, share of gate-off objects kept, coverage.
    """
    grid = [
        motion.model_copy(update=dict(zip(axes, values, strict=True)))
        for axes in SWEEPS
        for values in itertools.product(*axes.values())
    ]
    runs = [Run(str(g), MotionGate(g), make_pipeline(cfg, labels)) for g in grid]
    for frame in frames(path):
        for run in runs:
            run.step(frame, lambda f: cache[f.index])
    return [(g, run.calls, *kept(off, run)[:2]) for g, run in zip(grid, runs, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=BUNDLE)
    parser.add_argument("--videos", type=Path, nargs="+", default=[MIRROR / v for v in VIDEOS])
    parser.add_argument("--threads", type=int, default=1, help="Runtime threads (1: CPU time is one core's).")
    parser.add_argument("--sweep", action="store_true", help="Also replay the grid of gate settings.")
    for name, info in MotionConfig.model_fields.items():
        if name != "enabled":
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(info.default), default=info.default)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    motion = MotionConfig(**{k: getattr(args, k) for k in MotionConfig.model_fields if k != "enabled"})
    cfg = DaemonConfig(bundle=args.bundle, source={"uri": "bench"}, events={"snapshots": None})

    print(f"CPU: {machine()}; runtime threads: {args.threads}; bundle: {args.bundle.name}")
    print(f"gate: {motion.model_dump()}; tracker: {cfg.tracker.model_dump()}")
    rows = []
    with BundleDetector(args.bundle, threads=args.threads) as detector:
        detector(next(frames(args.videos[0])).image)  # warm-up
        for path in args.videos:
            result = measure(path, detector, cfg, motion)
            rows.append(result)
            if args.sweep:
                print(f"\nsweep on {path.name} (gate-off detections replayed; {result['frames']} frames)")
                print("| pixel_delta | min_area | alpha | max_idle | min_interval | detector calls | cut "
                      "| objects kept | coverage |")
                print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
                swept = sweep(path, result["cache"], result["off"], cfg, motion, detector.labels)
                for g, calls, share, coverage in swept:
                    print(f"| {g.pixel_delta} | {g.min_area:g} | {g.alpha:g} | {g.max_idle:g} | {g.min_interval:g} "
                          f"| {calls} | {1 - calls / result['frames']:.1%} | {share:.1%} | {coverage:.1%} |")

    print("\n| video | minutes | detector calls/min off -> on | cut | CPU s/min off -> on | gate ms/frame "
          "| objects off / on | kept | coverage |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        off, on, minutes = r["off"], r["on"], r["minutes"]
        print(
            f"| {r['video']} | {minutes:.2f} | {off.calls / minutes:.0f} -> {on.calls / minutes:.0f} "
            f"| {1 - on.calls / off.calls:.1%} | {off.cpu / minutes:.1f} -> {on.cpu / minutes:.1f} "
            f"| {r['gate_ms']:.2f} | {r['tracks_off']} / {r['tracks_on']} | {r['kept']:.1%} | {r['coverage']:.1%} |"
        )


if __name__ == "__main__":
    main()
