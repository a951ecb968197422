"""Shared fixtures. The mirrored weights and data come from EDGESIGHT_MIRROR (``../shared`` in CI)."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

MIRROR_REASON = "EDGESIGHT_MIRROR is not set (point it at ../shared to run tests on real weights and data)"
REPO = Path(__file__).resolve().parents[1]
#: Built by `make test-bundles` (tests/make_test_bundles.py); EDGESIGHT_TEST_BUNDLES overrides the folder.
TEST_BUNDLES = Path(os.environ.get("EDGESIGHT_TEST_BUNDLES", REPO / "runs" / "test-bundles"))
#: Wheelhouses of the device install (`make wheelhouses`): rpi and rpi-tflite-runtime (aarch64), rpi-x86_64.
TEST_WHEELHOUSES = Path(os.environ.get("EDGESIGHT_TEST_WHEELHOUSES", REPO / "runs" / "wheelhouse"))
#: The device install without torch (`make device-venv`); daemon tests run `edgesight` from it.
DEVICE_VENV = REPO / ".venv-device"


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box in ``a`` (N, 4) with every one in ``b`` (M, 4): an (N, M) array.

    The tests' own, written apart from the product's NMS and tracker so that they check them, not copy them.
    """
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clip(0).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Mosquitto:
    """A real mosquitto broker (Debian package) on its own port, config and persistence folder.

    ``stop()`` and ``start()`` again keep the port and the persisted sessions (a broker restart, as a user's
    broker does): subscribers with ``clean_session=False`` get what was queued for them meanwhile. With
    ``users`` ({name: password}) anonymous clients are refused.
    """

    def __init__(self, folder: Path, users: dict[str, str] | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "mosquitto.conf"
        auth = "allow_anonymous true\n"
        if users:
            passwords = folder / "passwords"
            passwords.write_text("")
            for name, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwords), name, password], check=True)
            auth = f"allow_anonymous false\npassword_file {passwords}\n"
        self.config.write_text(
            f"listener {self.port} {self.host}\n{auth}"
            f"persistence true\npersistence_location {folder}/\nuser {getpass.getuser()}\n"
            f"log_dest file {folder}/mosquitto.log\n"
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([_mosquitto_bin(), "-c", str(self.config)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.process.stderr.read().decode()}") from None
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


def _mosquitto_bin() -> str | None:
    # Debian installs it in /usr/sbin, which is not on a normal user's PATH.
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")


@pytest.fixture
def mosquitto(tmp_path: Path):
    """A running mosquitto on a free port; stopped at the end of the test."""
    if _mosquitto_bin() is None:
        pytest.skip("mosquitto is not installed: run `make services` (Debian package mosquitto)")
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


def _in_ci() -> bool:
    """Whether this is CI (.ci/run sets CI=true), where every skip is a failure."""
    return bool(os.environ.get("CI"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """In CI every skip is a failure: .ci/run installs every runtime and points the mirror at ../shared,
    so a skip there means a missing install step, not a missing optional extra."""
    outcome = yield
    report = outcome.get_result()
    if _in_ci() and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where the mirror and every runtime must be present: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """In CI a module skipped at collection (a module-level ``pytest.importorskip``) fails too, naming the module
    and the reason: those skips never reach pytest_runtest_makereport, and they hide a whole file's tests."""
    outcome = yield
    report = outcome.get_result()
    if _in_ci() and report.skipped:
        # A skip's longrepr is (path, line, "Skipped: <reason>").
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = (f"{collector.nodeid} was skipped at collection in CI, where the mirror and every runtime "
                           f"must be present: {reason}")


@pytest.fixture(scope="session")
def clip(mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 60 frames of vtest.avi (768x576, 10 fps), re-encoded to H.264 by ffmpeg: a short real video."""
    import subprocess

    out = tmp_path_factory.mktemp("clip") / "clip.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(mirror / "videos" / "vtest.avi"),
                    "-frames:v", "60", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(out)], check=True)
    return out


# --- a real camera stream: Debian's ffmpeg serving MJPEG over HTTP ------------------------------------------

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
