"""Shared fixtures. The mirrored weights and data come from EDGESIGHT_MIRROR (``../shared`` in CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MIRROR_REASON = "EDGESIGHT_MIRROR is not set (point it at ../shared to run tests on real weights and data)"
REPO = Path(__file__).resolve().parents[1]
#: Built by `make test-bundles` (tests/make_test_bundles.py); EDGESIGHT_TEST_BUNDLES overrides the folder.
TEST_BUNDLES = Path(os.environ.get("EDGESIGHT_TEST_BUNDLES", REPO / "runs" / "test-bundles"))
#: Wheelhouses of the device install (`make wheelhouses`): rpi and rpi-tflite-runtime (aarch64), rpi-x86_64.
TEST_WHEELHOUSES = Path(os.environ.get("EDGESIGHT_TEST_WHEELHOUSES", REPO / "runs" / "wheelhouse"))
#: The device install without torch (`make device-venv`); daemon tests run `edgesight` from it.
DEVICE_VENV = REPO / ".venv-device"


def _mirror() -> Path | None:
    root = os.environ.get("EDGESIGHT_MIRROR")
    return Path(root) if root and Path(root).is_dir() else None


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The mirror root; skips (outside CI) with a clear reason when it is not configured."""
    root = _mirror()
    if root is None:
        pytest.skip(MIRROR_REASON)
    return root


@pytest.fixture(scope="session")
def test_bundles() -> Path:
    """Folder of real exported bundles (``yolox-nano-tflite-int8``, ``yolox-nano-onnx-fp32``)."""
    if not (TEST_BUNDLES / "yolox-nano-tflite-int8" / "manifest.json").is_file():
        pytest.skip(f"test bundles missing in {TEST_BUNDLES}: run `make test-bundles`")
    return TEST_BUNDLES


@pytest.fixture(scope="session")
def device_bin() -> Path:
    """``bin/`` of the torch-free device venv (its ``python`` and ``edgesight``)."""
    if not (DEVICE_VENV / "bin" / "edgesight").is_file():
        pytest.skip(f"device venv missing at {DEVICE_VENV}: run `make device-venv`")
    return DEVICE_VENV / "bin"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """In CI every skip is a failure: .ci/run installs every runtime and points the mirror at ../shared,
    so a skip there means a missing install step, not a missing optional extra."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where the mirror and every runtime must be present: {report.longrepr}"


@pytest.fixture(scope="session")
def clip(mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 60 frames of vtest.avi (768x576, 10 fps), re-encoded to H.264 by ffmpeg: a short real video."""
    import subprocess

    out = tmp_path_factory.mktemp("clip") / "clip.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(mirror / "videos" / "vtest.avi"),
                    "-frames:v", "60", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(out)], check=True)
    return out


# --- a real camera stream: Debian's ffmpeg serving MJPEG over HTTP ------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MjpegStream:
    """``ffmpeg -re ... -f mpjpeg -listen 1 http://127.0.0.1:PORT/cam.mjpg``: a live camera at the video's
    own rate, looping. One client at a time, as a cheap IP camera; ``kill`` and ``start`` again to restart
    it on the same port, ``freeze``/``thaw`` (SIGSTOP/SIGCONT) to make it hang with the socket open."""

    def __init__(self, video: Path, port: int) -> None:
        self.video = video
        self.port = port
        self.url = f"http://127.0.0.1:{port}/cam.mjpg"
        self.proc = None

    def start(self) -> MjpegStream:
        import shutil
        import subprocess

        if shutil.which("ffmpeg") is None:
            pytest.skip("ffmpeg is not installed (make services)")
        self.proc = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(self.video),
             "-an", "-c:v", "mjpeg", "-q:v", "6", "-f", "mpjpeg", "-listen", "1", self.url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        return self

    def freeze(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def mjpeg_stream(mirror: Path):
    """Start with ``mjpeg_stream()``; every stream started is killed at the end of the test."""
    streams: list[MjpegStream] = []

    def start(port: int | None = None) -> MjpegStream:
        stream = MjpegStream(mirror / "videos" / "vtest.avi", port or free_port()).start()
        streams.append(stream)
        return stream

    yield start
    for stream in streams:
        stream.kill()
