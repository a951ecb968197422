"""The device install on a Raspberry Pi's userspace: Debian bookworm arm64 under qemu-aarch64 (binfmt_misc).

The root filesystem comes from Debian's packages (``tests/rootfs.py``, cached by ``make rootfs``); the venvs
are installed in it from the aarch64 wheelhouses alone (``--no-index``), and the INT8 TFLite bundle runs
on frames of vtest.avi through ai-edge-litert and through tflite-runtime 2.14, with the emulated CPU set to
a Pi 4's Cortex-A72 and a Pi 5's Cortex-A76. Their detections must equal this x86 machine's.

Emulation runs the real aarch64 binaries (the runtimes' NEON / dotprod kernels included), instruction by
instruction; its speed says nothing about a Pi's, so the seconds per frame printed here are functional only.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests import rootfs
from tests.conftest import REPO, TEST_WHEELHOUSES
from toolkit.deploy.wheelhouse import Wheelhouse, project_wheel

log = logging.getLogger(__name__)
pytestmark = pytest.mark.slow

BUNDLE = "yolox-nano-tflite-int8"
#: Ten frames spread over the video's 795 (pedestrians enter, cross and leave).
FRAME_INDICES = list(range(0, 795, 80))
#: INT8 kernels differ by instruction set (XNNPACK requantizes with fixed-point rounding on ARM, in fp32 on
#: x86), and the rounding differences add up over YOLOX-Nano's layers. Measured on these frames: detections
#: scoring 0.5 or more match across machines within IoU 0.83, 5.1 px and 0.13 in score, with both runtimes
#: and both CPUs; below 0.5 they drift further (one tflite-runtime detection at 0.46 on arm64 scores 0.05 on
#: x86), and near the 0.25 deployment threshold a detection may appear on one side only. So the check is
#: that the same objects are found: every detection scoring CONFIDENT or more on one side has one of the same
#: class on the other, overlapping by MIN_IOU, its corners within BOX_TOLERANCE_PX (1 % of the 768 px frame)
#: and its score within SCORE_TOLERANCE.
CONFIDENT = 0.5
MIN_IOU = 0.75
BOX_TOLERANCE_PX = 8.0
SCORE_TOLERANCE = 0.15
TFLITE_VENV_PYTHON = REPO / ".venv-tflite" / "bin" / "python"
#: Runtime -> (wheelhouse folder, venv in the rootfs).
RUNTIMES = {"ai_edge_litert": ("rpi", "venv-litert"), "tflite_runtime": ("rpi-tflite-runtime", "venv-tflite")}


@pytest.fixture(scope="module")
def arm64_root() -> Path:
    root = rootfs.cached(rootfs.ARM64)
    if root is None:
        pytest.skip(f"arm64 root filesystem not built in {rootfs.CACHE}: run `make rootfs`")
    return root


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, test_bundles: Path, mirror: Path, arm64_root: Path) -> Path:
    """/mnt inside the rootfs: the bundle, the frames, the video, the script, the wheels and the venvs."""
    work = tmp_path_factory.mktemp("arm64")
    shutil.copytree(test_bundles / BUNDLE, work / BUNDLE)
    shutil.copy(mirror / "videos" / "vtest.avi", work / "vtest.avi")
    shutil.copy(REPO / "tests" / "detect_frames.py", work / "detect_frames.py")
    capture = cv2.VideoCapture(str(work / "vtest.avi"))
    frames = []
    for index in range(FRAME_INDICES[-1] + 1):
        ok, frame = capture.read()
        assert ok, f"vtest.avi ended at frame {index}"
        if index in FRAME_INDICES:
            frames.append(frame)
    np.savez(work / "frames.npz", frames=np.stack(frames), indices=np.array(FRAME_INDICES))
    shutil.copy(project_wheel(), work)
    for runtime, (house_name, _) in RUNTIMES.items():
        folder = TEST_WHEELHOUSES / house_name
        if not (folder / "wheelhouse.json").is_file():
            pytest.skip(f"wheelhouse {folder} missing: run `make wheelhouses`")
        house = Wheelhouse.load(folder)
        assert house.runtime == runtime and house.platform.arch == "aarch64"
        shutil.copytree(folder, work / f"wheels-{runtime}")
    return work


@pytest.fixture(scope="module")
def arm64_venvs(work: Path, arm64_root: Path) -> dict[str, float]:
    """Both device installs, from the wheelhouses alone; seconds each took under emulation."""
    wheel = next(work.glob("edgesight-*.whl")).name
    seconds = {}
    for runtime, (_, venv) in RUNTIMES.items():
        house = Wheelhouse.load(work / f"wheels-{runtime}")
        extras = house.requirements[0].split("[", 1)[1]
        wanted = shlex.join([f"/mnt/{wheel}[{extras}", *house.requirements[1:]])
        started = time.monotonic()
        proc = rootfs.chroot_run(arm64_root, ["sh", "-c", (
            f"python3 -m venv /mnt/{venv} && /mnt/{venv}/bin/pip install --quiet --isolated --no-index "
            f"--find-links /mnt/wheels-{runtime} {wanted}")], work)
        seconds[runtime] = time.monotonic() - started
        assert proc.returncode == 0, f"device install ({runtime}) failed on arm64: {proc.stderr[-3000:]}"
        log.info("arm64 device install with %s: %.0f s under emulation", runtime, seconds[runtime])
    return seconds


def _detect_arm64(root: Path, work: Path, runtime: str, cpu: str, video: bool = False) -> dict:
    venv = RUNTIMES[runtime][1]
    argv = [f"/mnt/{venv}/bin/python", "/mnt/detect_frames.py", f"/mnt/{BUNDLE}", "/mnt/frames.npz", runtime,
            "--threshold", "0.01"]
    proc = rootfs.chroot_run(root, argv + (["--video", "/mnt/vtest.avi"] if video else []), work,
                             env={"QEMU_CPU": cpu})
    assert proc.returncode == 0, f"detection on arm64 ({runtime}, {cpu}) failed: {proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _detect_x86(work: Path, runtime: str) -> dict:
    python = Path(sys.executable) if runtime == "ai_edge_litert" else TFLITE_VENV_PYTHON
    if not python.is_file():
        pytest.skip(f"{python} missing: run `make tflite-runtime`")
    proc = subprocess.run([str(python), str(work / "detect_frames.py"), str(work / BUNDLE), str(work / "frames.npz"),
                           runtime, "--threshold", "0.01"], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, f"x86 detection ({runtime}) failed: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def assert_same_detections(arm: list[dict], x86: list[dict], what: str) -> dict[str, float]:
    """Every confident detection of either side is found on the other (same class, overlapping, near-equal).

    Returns:
        The worst IoU, corner difference (px) and score difference over the matched pairs, and their count.
    """
    worst = {"iou": 1.0, "box_px": 0.0, "score": 0.0, "pairs": 0}
    for index, (a, b) in zip(FRAME_INDICES, zip(arm, x86, strict=True), strict=True):
        for mine, other, mine_name, other_name in ((a, b, "arm64", "x86"), (b, a, "x86", "arm64")):
            boxes = np.array(other["boxes"], np.float64).reshape(-1, 4)
            for box, score, cls in zip(mine["boxes"], mine["scores"], mine["class_ids"], strict=True):
                if score < CONFIDENT:
                    continue
                same = np.array(other["class_ids"]) == cls
                overlap = np.where(same, _iou(np.array(box), boxes), 0.0) if len(boxes) else np.zeros(0)
                assert len(overlap) and overlap.max() >= MIN_IOU, (
                    f"{what}: frame {index}: {mine_name}'s class-{cls} box {box} ({score:.3f}) has no match on "
                    f"{other_name} (best IoU {overlap.max() if len(overlap) else 0:.2f})")
                k = int(overlap.argmax())
                worst["iou"] = min(worst["iou"], float(overlap[k]))
                worst["box_px"] = max(worst["box_px"], float(np.abs(boxes[k] - box).max()))
                worst["score"] = max(worst["score"], abs(other["scores"][k] - score))
                worst["pairs"] += 1
    assert worst["box_px"] <= BOX_TOLERANCE_PX, f"{what}: boxes differ by up to {worst['box_px']:.2f} px"
    assert worst["score"] <= SCORE_TOLERANCE, f"{what}: scores differ by up to {worst['score']:.3f}"
    return worst


def test_device_install_from_wheelhouse_alone(arm64_root: Path, work: Path, arm64_venvs: dict[str, float]) -> None:
    """Installed with --no-index from the wheels; aarch64 binaries; no torch; the CLI starts."""
    check = "import platform, importlib.util as u; print(platform.machine(), u.find_spec('torch') is None)"
    proc = rootfs.chroot_run(arm64_root, ["sh", "-c", (
        f"uname -m && /mnt/venv-litert/bin/python -c {shlex.quote(check)} && /mnt/venv-litert/bin/edgesight --help")],
        work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "aarch64" and lines[1] == "aarch64 True", lines[:2]
    assert "deploy" in proc.stdout and "wheelhouse" in proc.stdout


@pytest.mark.parametrize("cpu", ["cortex-a72", "cortex-a76"])
@pytest.mark.parametrize("runtime", list(RUNTIMES))
def test_arm64_detections_equal_x86(arm64_root: Path, work: Path, arm64_venvs: dict[str, float], runtime: str,
                                    cpu: str) -> None:
    """The INT8 bundle on a Pi 4 / Pi 5 CPU gives this machine's detections on the same frames."""
    arm = _detect_arm64(arm64_root, work, runtime, cpu)
    x86 = _detect_x86(work, runtime)
    assert arm["machine"] == "aarch64" and arm["runtime"].split()[0] == runtime
    worst = assert_same_detections(arm["frames"], x86["frames"], f"{runtime} on {cpu}")
    assert worst["pairs"] >= 40, "the frames should hold pedestrians"
    log.info("%s on %s: %d confident pairs, worst IoU %.3f, corners %.2f px, score %.3f; %.2f s per frame emulated "
             "(functional only), x86 %.3f s", runtime, cpu, worst["pairs"], worst["iou"], worst["box_px"],
             worst["score"], arm["seconds_per_frame"], x86["seconds_per_frame"])


def test_arm64_decodes_the_video_as_x86(arm64_root: Path, work: Path, arm64_venvs: dict[str, float]) -> None:
    """OpenCV's aarch64 wheel decodes vtest.avi (MPEG-4 part 2, whose IDCT may round differently per instruction
    set) to pixels within a few grey levels of x86's, and the detections on its own decode are the same."""
    arm = _detect_arm64(arm64_root, work, "ai_edge_litert", "cortex-a76", video=True)
    assert arm["decode_max_abs_diff"] <= 4, f"aarch64 decoding differs by {arm['decode_max_abs_diff']} grey levels"
    worst = assert_same_detections(arm["frames_own_decode"], arm["frames"], "arm64's own decode")
    assert worst["pairs"] >= 40, "the frames should hold pedestrians"
    log.info("aarch64 decode: pixels within %d grey levels of x86's; detections on it: worst IoU %.3f, %.2f px, "
             "score %.3f", arm["decode_max_abs_diff"], worst["iou"], worst["box_px"], worst["score"])


#: Frames of the clip `edgesight run` gets on arm64 (emulated seconds per frame make 60 too long).
RUN_FRAMES = 20


def _new_objects(path: Path) -> list[dict]:
    """The 'new' events (an object confirmed by the tracker) of a JSONL file, schema checked."""
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(e["schema"] == "edgesight.event/1" for e in events)
    return [e for e in events if e["type"] == "new"]


def _assert_same_objects(mine: list[dict], other: list[dict], what: str) -> None:
    """Each confident object of ``mine`` is confirmed on the other side too: same label, within 3 frames,
    overlapping by half (tracks confirm a frame earlier or later when a score sits near a threshold)."""
    for event in mine:
        if event["score"] < CONFIDENT:
            continue
        near = [o for o in other if o["label"] == event["label"] and abs(o["frame_index"] - event["frame_index"]) <= 3]
        best = max((float(_iou(np.array(event["box"]), np.array([o["box"]]))[0]) for o in near), default=0.0)
        assert best >= 0.5, f"{what}: {event['label']} confirmed at frame {event['frame_index']} has no match"


def test_edgesight_run_on_arm64_gives_the_x86_events(arm64_root: Path, work: Path, arm64_venvs: dict[str, float],
                                                     mirror: Path, device_bin: Path) -> None:
    """The daemon itself (`edgesight run`, as the service runs it) on a Pi 5 CPU: the same events as on x86."""
    clip = work / "clip.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(mirror / "videos" / "vtest.avi"),
                    "-frames:v", str(RUN_FRAMES), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(clip)], check=True)
    args = ["run", "--bundle", BUNDLE, "--source", "clip.mp4", "--jsonl", "events.jsonl", "--http", "127.0.0.1:0",
            "--threads", "2", "--camera", "arm"]
    (work / "run-arm").mkdir()
    for name in (BUNDLE, "clip.mp4"):
        (work / "run-arm" / name).symlink_to(f"../{name}")
    started = time.monotonic()
    proc = rootfs.chroot_run(arm64_root, ["sh", "-c", "cd /mnt/run-arm && /mnt/venv-litert/bin/edgesight "
                                          + shlex.join(args)], work, env={"QEMU_CPU": "cortex-a76"})
    arm_seconds = time.monotonic() - started
    assert proc.returncode == 0, f"edgesight run failed on arm64 ({proc.returncode}): {proc.stderr[-3000:]}"
    x86_dir = work / "run-x86"
    x86_dir.mkdir()
    for name in (BUNDLE, "clip.mp4"):
        (x86_dir / name).symlink_to(work / name)
    # x86's side runs in the device install too (the workstation venv has no prometheus-client).
    proc = subprocess.run([str(device_bin / "python"), "-m", "toolkit", *args], cwd=x86_dir, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    arm, x86 = _new_objects(work / "run-arm" / "events.jsonl"), _new_objects(x86_dir / "events.jsonl")
    assert len(x86) >= 3, "the clip should confirm several pedestrians"
    # The comparison checks confident objects only: at least one, or it checks nothing.
    assert max(e["score"] for e in x86) >= CONFIDENT, [e["score"] for e in x86]
    _assert_same_objects(arm, x86, "arm64 objects on x86")
    _assert_same_objects(x86, arm, "x86 objects on arm64")
    log.info("edgesight run on arm64 (cortex-a76): %d objects confirmed (x86: %d), each found on both; %d frames in "
             "%.0f s emulated (functional only)", len(arm), len(x86), RUN_FRAMES, arm_seconds)
