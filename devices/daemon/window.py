"""``edgesight demo --window``: the daemon's annotated frames in an OpenCV window instead of a browser.

GUI toolkits want their window on the main thread, so here the daemon runs in a worker thread and the main
thread shows the frames (the daemon's own signal handling needs the main thread: this module turns SIGINT,
SIGTERM, ``q``/Esc and closing the window into ``Daemon.request_stop``). Keys: ``b`` boxes on/off, space
pauses the picture (not the daemon), ``q`` or Esc quits.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from typing import Any

import cv2
import numpy as np

from devices.daemon.live import FROZEN_AFTER
from devices.daemon.overlay import Overlay
from devices.daemon.service import Daemon, ExitCode
from devices.errors import ConfigError
from devices.types import Detections, Frame

#: How long the GUI waits for a key between frames; the window refreshes at most this often.
_KEY_WAIT_MS = 15
_BANNER = (40, 40, 220)


def check_window_support() -> None:
    """Raise a ``ConfigError`` naming the fix when this OpenCV or this session cannot open a window."""
    match = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    if match is None or match.group(1).upper() == "NONE":
        raise ConfigError(
            f"this OpenCV ({cv2.__version__}) has no window support: it is a headless build",
            "use the page instead (drop --window), or install an OpenCV with a GUI: `pip uninstall "
            "opencv-contrib-python-headless && pip install opencv-contrib-python` (or Debian's python3-opencv)",
        )
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise ConfigError(
            "no display to open a window on (DISPLAY and WAYLAND_DISPLAY are not set)",
            "run it in a desktop session or over `ssh -X`, or use the page instead (drop --window)",
        )


class Window:
    """An OpenCV window showing the frames the daemon processed, drawn by ``overlay``.

    Args:
        overlay: The drawing shared with the live page and the recorder.
        title: The window's title.

    Raises:
        ConfigError: No GUI support or no display (``check_window_support``).
    """

    def __init__(self, overlay: Overlay, title: str = "edgesight") -> None:
        check_window_support()
        self.overlay = overlay
        self.title = title
        self.boxes = True
        self.paused = False
        self._latest: tuple[int, Frame, tuple] | None = None
        self._lock = threading.Lock()

    def observe(self, frame: Frame, detections: Detections | None, tracks: list) -> None:
        with self._lock:
            seq = self._latest[0] + 1 if self._latest else 0
            self._latest = (seq, frame, tuple(tracks))

    def run(self, daemon: Daemon) -> ExitCode:
        """Run ``daemon`` in a worker thread and the window here until either ends."""
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["code"] = daemon.run()
            except BaseException as exc:  # handed to the main thread, raised there
                outcome["error"] = exc

        worker = threading.Thread(target=work, name="daemon", daemon=True)
        previous = signal.signal(signal.SIGTERM, lambda *_: daemon.request_stop("SIGTERM"))
        worker.start()
        try:
            self._show(daemon, worker)
        except KeyboardInterrupt:
            daemon.request_stop("SIGINT")
        finally:
            worker.join()
            signal.signal(signal.SIGTERM, previous)
            cv2.destroyAllWindows()
            cv2.waitKey(1)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["code"]

    def _show(self, daemon: Daemon, worker: threading.Thread) -> None:
        shown_seq, drawn_at, opened, redraw = -1, 0.0, False, False
        while worker.is_alive():
            with self._lock:
                latest = self._latest
            now = time.monotonic()
            if latest is not None:
                seq, frame, tracks = latest
                age = now - frame.mono
                # A new frame, or once a second while frozen (the banner counts up), or after a key press.
                due = not opened or redraw or (not self.paused and (
                    seq != shown_seq or (age > FROZEN_AFTER and now - drawn_at > 1.0)))
                if due:
                    image = self.overlay.draw(frame.image, tracks, boxes=self.boxes)
                    if age > FROZEN_AFTER:
                        _banner(image, f"NO NEW FRAME FOR {age:.0f} s: the picture is not live")
                    elif self.paused:
                        _banner(image, "PAUSED (the daemon keeps running)")
                    cv2.imshow(self.title, image)
                    shown_seq, drawn_at, opened, redraw = seq, now, True, False
            key = cv2.waitKey(_KEY_WAIT_MS) & 0xFF
            if key in (ord("q"), 27):
                daemon.request_stop("window: quit")
                return
            if key in (ord("b"), ord(" ")):
                if key == ord("b"):
                    self.boxes = not self.boxes
                else:
                    self.paused = not self.paused
                redraw = True
            if opened and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
                daemon.request_stop("window closed")
                return


def _banner(image: np.ndarray, text: str) -> None:
    height = max(24, image.shape[0] // 18)
    cv2.rectangle(image, (0, 0), (image.shape[1], height), _BANNER, cv2.FILLED)
    scale = height / 40
    cv2.putText(image, text, (8, int(height * 0.72)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                max(1, round(scale * 2)), cv2.LINE_AA)
