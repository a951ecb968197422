"""``edgesight demo --window`` under a real X server (Debian's Xvfb), screenshot with xwd.

The window needs an OpenCV built with a GUI, which the device install (headless wheel) is not: the window
venv (``make window-venv``) is the device install with ``opencv-contrib-python`` swapped in, as the docs
tell a user to do. The device venv itself must refuse ``--window`` with the fix.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from devices.draw import class_colour
from tests.conftest import REPO, free_port

WINDOW_VENV = REPO / ".venv-window"


@pytest.fixture
def xvfb():
    if shutil.which("Xvfb") is None or shutil.which("xwd") is None:
        pytest.skip("Xvfb and xwd are not installed (make services: xvfb, x11-apps)")
    read, write = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with open(read) as pipe:
        display = f":{pipe.readline().strip()}"
    yield display
    proc.terminate()
    proc.wait(timeout=10)


def screenshot(display: str, folder: Path, name: str) -> np.ndarray:
    """The whole X screen (xwd), as BGR pixels (ffmpeg reads the XWD format)."""
    xwd, png = folder / f"{name}.xwd", folder / f"{name}.png"
    subprocess.run(["xwd", "-root", "-silent", "-display", display, "-out", str(xwd)], check=True)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(xwd), str(png)], check=True)
    return cv2.imread(str(png))


@pytest.mark.slow
def test_window_shows_the_annotated_frames(xvfb, test_bundles, mirror, tmp_path):
    if not (WINDOW_VENV / "bin" / "edgesight").is_file():
        pytest.skip(f"window venv missing at {WINDOW_VENV}: run `make window-venv`")
    env = {**os.environ, "DISPLAY": xvfb}
    demo = subprocess.Popen(
        [str(WINDOW_VENV / "bin" / "edgesight"), "demo", "--window", "--bundle",
         str(test_bundles / "yolox-nano-tflite-int8"), "--source", str(mirror / "videos" / "vtest.avi"),
         "--http", f"127.0.0.1:{free_port()}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # A real top-level window with the demo's title appears on the X server.
        deadline = time.monotonic() + 60
        tree = ""
        while "edgesight: vtest.avi" not in tree:
            assert demo.poll() is None, demo.stdout.read().decode()
            assert time.monotonic() < deadline, f"no window appeared: {tree}"
            time.sleep(0.5)
            tree = subprocess.run(["xwininfo", "-root", "-tree", "-display", xvfb], capture_output=True,
                                  text=True).stdout
        time.sleep(4.0)  # the first tracks are confirmed after a few frames
        first = screenshot(xvfb, tmp_path, "first")
        time.sleep(1.0)
        second = screenshot(xvfb, tmp_path, "second")
        print(f"\nscreenshot of the window: {tmp_path / 'second.png'}")
        # It plays (the picture changes) and it is annotated (pixels of the pedestrian box colour).
        assert np.abs(first.astype(np.int16) - second.astype(np.int16)).mean() > 0.5
        green = np.all(np.abs(second.astype(np.int16) - class_colour(0)) <= 8, axis=2)
        assert green.sum() > 200, "no pedestrian box drawn in the window"
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=20) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()


def test_window_without_gui_support_says_how_to_get_it(device_bin, test_bundles, mirror, tmp_path):
    result = subprocess.run(
        [str(device_bin / "edgesight"), "demo", "--window", "--bundle", str(test_bundles / "yolox-nano-tflite-int8"),
         "--source", str(mirror / "videos" / "vtest.avi")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "no window support" in result.stderr and "pip install opencv-contrib-python" in result.stderr
