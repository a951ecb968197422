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
#: Largest box-corner difference allowed between arm64 and x86, in pixels of the 768x576 frame, and of scores.
BOX_TOLERANCE_PX = 1.0
SCORE_TOLERANCE = 0.01
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
    argv = [f"/mnt/{venv}/bin/python", "/mnt/detect_frames.py", f"/mnt/{BUNDLE}", "/mnt/frames.npz", runtime]
    proc = rootfs.chroot_run(root, argv + (["/mnt/vtest.avi"] if video else []), work, env={"QEMU_CPU": cpu})
    assert proc.returncode == 0, f"detection on arm64 ({runtime}, {cpu}) failed: {proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _detect_x86(work: Path, runtime: str) -> dict:
    python = Path(sys.executable) if runtime == "ai_edge_litert" else TFLITE_VENV_PYTHON
    if not python.is_file():
        pytest.skip(f"{python} missing: run `make tflite-runtime`")
    proc = subprocess.run([str(python), str(work / "detect_frames.py"), str(work / BUNDLE), str(work / "frames.npz"),
                           runtime], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, f"x86 detection ({runtime}) failed: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_same_detections(arm: list[dict], x86: list[dict], what: str) -> tuple[float, float]:
    """Same number of detections and classes per frame; boxes and scores within the tolerances."""
    worst_box = worst_score = 0.0
    for index, (a, b) in zip(FRAME_INDICES, zip(arm, x86, strict=True), strict=True):
        assert len(a["class_ids"]) == len(b["class_ids"]), (
            f"{what}: frame {index} has {len(a['class_ids'])} detections on arm64, {len(b['class_ids'])} on x86")
        if not b["class_ids"]:
            continue
        # Match by order of score (both sides sort by score); equal classes, near-equal boxes.
        assert a["class_ids"] == b["class_ids"], f"{what}: frame {index} classes differ"
        worst_box = max(worst_box, float(np.abs(np.array(a["boxes"]) - np.array(b["boxes"])).max()))
        worst_score = max(worst_score, float(np.abs(np.array(a["scores"]) - np.array(b["scores"])).max()))
    assert worst_box <= BOX_TOLERANCE_PX, f"{what}: boxes differ by up to {worst_box:.3f} px"
    assert worst_score <= SCORE_TOLERANCE, f"{what}: scores differ by up to {worst_score:.4f}"
    return worst_box, worst_score


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
    assert sum(len(f["class_ids"]) for f in x86["frames"]) >= 10, "the frames should hold pedestrians"
    box, score = assert_same_detections(arm["frames"], x86["frames"], f"{runtime} on {cpu}")
    log.info("%s on %s: %d detections, largest box difference %.3f px, score %.5f; %.2f s per frame emulated "
             "(functional only), x86 %.3f s", runtime, cpu, sum(len(f["class_ids"]) for f in arm["frames"]), box,
             score, arm["seconds_per_frame"], x86["seconds_per_frame"])


def test_arm64_decodes_the_video_as_x86(arm64_root: Path, work: Path, arm64_venvs: dict[str, float]) -> None:
    """OpenCV's aarch64 wheel decodes vtest.avi to the same pixels, so the whole path matches."""
    arm = _detect_arm64(arm64_root, work, "ai_edge_litert", "cortex-a76", video=True)
    assert arm["decode_max_abs_diff"] <= 2, f"aarch64 decoding differs by {arm['decode_max_abs_diff']} grey levels"
    assert_same_detections(arm["frames_own_decode"], arm["frames"], "own decode")


#: Frames of the clip `edgesight run` gets on arm64 (emulated seconds per frame make 60 too long).
RUN_FRAMES = 20


def _events(path: Path) -> list[tuple]:
    """(type, label, frame index, box) of each event, in order: what must match across machines."""
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [(e["type"], e["label"], e["frame_index"], e["box"]) for e in events]


def test_edgesight_run_on_arm64_gives_the_x86_events(arm64_root: Path, work: Path, arm64_venvs: dict[str, float],
                                                     mirror: Path) -> None:
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
    proc = subprocess.run([sys.executable, "-m", "toolkit", *args], cwd=x86_dir, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    arm, x86 = _events(work / "run-arm" / "events.jsonl"), _events(x86_dir / "events.jsonl")
    assert x86, "the clip should produce events"
    assert [e[:3] for e in arm] == [e[:3] for e in x86]
    worst = max(float(np.abs(np.array(a[3]) - np.array(b[3])).max()) for a, b in zip(arm, x86, strict=True))
    assert worst <= BOX_TOLERANCE_PX, f"event boxes differ by up to {worst:.2f} px"
    log.info("edgesight run on arm64 (cortex-a76): %d events equal to x86's (boxes within %.2f px); %d frames in "
             "%.0f s emulated (functional only)", len(arm), worst, RUN_FRAMES, arm_seconds)
