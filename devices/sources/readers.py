"""The blocking readers behind a ``Source``: open a device, read one image, close.

A reader knows nothing about threads, timeouts or reconnection; ``devices.sources.capture.Source``
runs it in a capture thread that a watchdog can abandon. ``read`` follows OpenCV's convention:
``(False, None)`` is the end of a file or a lost stream, ``(True, image)`` a frame that the source
still validates (a reader may hand back ``None`` or a malformed array, which is counted and skipped).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import socket
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from devices.daemon.config import SourceConfig
from devices.errors import SourceError
from devices.sources.uri import IMAGE_SUFFIXES, SourceURI

log = logging.getLogger(__name__)

#: OPENCV_FFMPEG_CAPTURE_OPTIONS is process-wide and read by OpenCV at open time: one open at a time.
_ENV_LOCK = threading.Lock()
_FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
#: Ports of URLs that name none, to say which port a stream that did not open was tried on.
_DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
#: Longest wait of that check, after OpenCV's own open_timeout.
PROBE_TIMEOUT = 2.0
JETSON_RELEASE_FILE = Path("/etc/nv_tegra_release")


class SourceUnavailable(SourceError):
    """The source cannot be reached now (a stream down, a camera unplugged); worth retrying."""


class Reader(Protocol):
    """What a ``Source`` drives from its capture thread."""

    # Read-only to the Source, so a reader that always knows them may declare them narrower (float, int).
    @property
    def fps(self) -> float | None:
        """Nominal frame rate (files: the container's; pacing in realtime mode), None when unknown."""

    @property
    def expected_frames(self) -> int | None:
        """Frames a file declares (to tell a truncated file from a complete one), None for cameras."""

    def check(self) -> None:
        """Raise ``SourceError`` for problems no retry can fix (a missing package, a missing file)."""

    def open(self) -> None:
        """Connect; ``SourceUnavailable`` when it may work later, ``SourceError`` when it never will."""

    def read(self) -> tuple[bool, Any]:
        """Block for the next image: ``(True, image)``, or ``(False, None)`` at the end / on loss."""

    def close(self) -> None:
        """Release the device; safe to call twice."""


class MemoryReader:
    """Frames already decoded, as fast as they are taken, like a file read at full speed (benchmarks, tests:
    ``Source(cfg, reader_factory=lambda: MemoryReader(frames))``)."""

    def __init__(self, frames: list[np.ndarray], fps: float = 10.0) -> None:
        self.frames, self.fps, self.expected_frames = frames, fps, len(frames)
        self._next = 0

    def check(self) -> None:
        pass

    def open(self) -> None:
        self._next = 0

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self._next >= len(self.frames):
            return False, None
        self._next += 1
        return True, self.frames[self._next - 1]

    def close(self) -> None:
        pass


def make_reader(uri: SourceURI, cfg: SourceConfig) -> Reader:
    """The reader for a parsed URI."""
    if uri.kind == "images":
        return ImageFolderReader(uri.target, cfg.fps)
    if uri.kind == "csi":
        if JETSON_RELEASE_FILE.exists():
            return OpenCvReader(SourceURI("gstreamer", jetson_csi_pipeline(int(uri.target), cfg), uri.display), cfg)
        return Picamera2Reader(int(uri.target), cfg)
    return OpenCvReader(uri, cfg)


# --- OpenCV: files, V4L2, network streams, GStreamer ------------------------------------------------------


class OpenCvReader:
    """``cv2.VideoCapture`` with the timeouts passed at open time (they are ignored when set later).

    Args:
        uri: A ``file``, ``v4l2``, ``rtsp``, ``http`` or ``gstreamer`` URI.
        cfg: Timeouts, RTSP transport and the requested camera mode.
    """

    def __init__(self, uri: SourceURI, cfg: SourceConfig) -> None:
        self.uri = uri
        self.cfg = cfg
        self.fps: float | None = None
        self.expected_frames: int | None = None
        self._cap: Any = None

    def check(self) -> None:
        import cv2

        quiet_opencv_warnings(cv2)
        if self.uri.kind == "file":
            path = Path(self.uri.target)
            if not path.is_file():
                raise SourceError(
                    f"video file {path} does not exist" + ("" if path.is_absolute() else f" (in {Path.cwd()})"),
                    "check the path; for a camera use v4l2:///dev/video0, rtsp://... or csi://0",
                )
        if self.uri.kind == "gstreamer" and not opencv_has_gstreamer(cv2):
            raise SourceError(
                "this OpenCV build has no GStreamer support (the pip wheels never do), so it cannot run "
                f"the pipeline {self.uri.target!r}",
                "on a Jetson use JetPack's OpenCV: create the venv with --system-site-packages and do not "
                "pip-install opencv into it",
            )

    def open(self) -> None:
        import cv2

        api, target, params = self._open_args(cv2)
        with _ENV_LOCK:
            saved = os.environ.get(_FFMPEG_OPTIONS_ENV)
            if self.uri.kind == "rtsp":
                # Setting any FFmpeg option through this variable drops OpenCV's built-in RTSP-over-TCP
                # default, so the transport always goes in explicitly.
                os.environ[_FFMPEG_OPTIONS_ENV] = ffmpeg_capture_options(saved, self.cfg.rtsp_transport)
            try:
                cap = cv2.VideoCapture(target, api, params)
            finally:
                if self.uri.kind == "rtsp":
                    _restore_env(_FFMPEG_OPTIONS_ENV, saved)
        if not cap.isOpened():
            cap.release()
            raise self._open_error()
        self._configure(cv2, cap)
        self._cap = cap

    def read(self) -> tuple[bool, Any]:
        ok, image = self._cap.read()
        return bool(ok), image if ok else None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _open_args(self, cv2: Any) -> tuple[int, str | int, list[int]]:
        timeouts = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.cfg.open_timeout * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.cfg.read_timeout * 1000),
        ]
        kind, target = self.uri.kind, self.uri.target
        if kind == "v4l2":
            return cv2.CAP_V4L2, int(target) if target.isdigit() else target, []
        if kind == "gstreamer":
            return cv2.CAP_GSTREAMER, gstreamer_pipeline(target), []
        if kind == "file":
            return cv2.CAP_FFMPEG, target, []
        return cv2.CAP_FFMPEG, target, timeouts

    def _configure(self, cv2: Any, cap: Any) -> None:
        if self.uri.kind == "v4l2":
            requested = ((cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width), (cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height),
                         (cv2.CAP_PROP_FPS, self.cfg.fps))
            for prop, value in requested:
                if value is not None and not cap.set(prop, value):
                    log.warning("%s: the camera refused %s=%s", self.uri.display, prop, value)
            # The driver queues 4 frames by default: a reader that falls behind would see old ones.
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None
        if self.uri.kind == "file":
            count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            self.expected_frames = int(count) if count and 0 < count < 1e12 else None

    def _open_error(self) -> SourceError:
        kind, shown = self.uri.kind, self.uri.display
        if kind == "file":
            return SourceError(
                f"OpenCV (FFmpeg) cannot decode the video file {shown}",
                f"check that it plays (ffprobe {shown}); re-encode it with: ffmpeg -i {shown} -c:v libx264 out.mp4",
            )
        if kind == "v4l2":
            node = Path(f"/dev/video{self.uri.target}" if self.uri.target.isdigit() else self.uri.target)
            if not node.exists():
                present = sorted(str(p) for p in Path("/dev").glob("video*"))
                return SourceUnavailable(
                    f"no camera at {node}: the device does not exist (cameras here: {', '.join(present) or 'none'})",
                    "plug the camera in (it is opened as soon as it appears) or pass one that exists; "
                    "v4l2-ctl --list-devices names them",
                )
            return SourceUnavailable(
                f"cannot open the V4L2 camera {shown}",
                "check that no other program holds it (fuser " + str(node) + ") and that this user is in the "
                "'video' group",
            )
        if kind == "gstreamer":
            return SourceUnavailable(
                f"GStreamer could not start the pipeline {shown!r}",
                "run it with gst-launch-1.0 (replacing appsink by fakesink) to see which element fails",
            )
        problem, fix = network_problem(self.uri.target, min(self.cfg.open_timeout, PROBE_TIMEOUT))
        return SourceUnavailable(f"cannot open the stream {shown}: {problem}", fix)


def quiet_opencv_warnings(cv2: Any) -> None:
    """OpenCV's own log at errors only, unless the user set ``OPENCV_LOG_LEVEL``.

    On a failed open OpenCV warns "backend is generally available but can't be used to capture by name" (or
    "can't open camera by index"), which points at the backend when the cause is the camera or the network;
    the reader's own error says which, and how to fix it. FFmpeg's lines ("Connection refused", decoding
    errors) are left as they are: they are facts about the stream.
    """
    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def network_problem(url: str, timeout: float) -> tuple[str, str]:
    """Why a stream did not open, found by connecting to its host and port: (problem, fix).

    OpenCV only says that it failed; a refused connection, an unknown host name and a host that does not answer
    each have their own fix.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower(), 80)
    except ValueError:
        return f"the port in {parts.netloc.rpartition('@')[2]!r} is not a number", "write the URL as rtsp://host:port/path"
    where = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.gaierror:
        return f"the host name {host!r} is not known here", "check the host name, or use the camera's IP address"
    except ConnectionRefusedError:
        return (f"nothing listens on {where} (connection refused)",
                "start the camera or its streaming server, or check the port in the URL")
    except TimeoutError:
        return (f"no answer from {where} within {timeout:g} s",
                "check that the camera is on and reachable from here (ping, firewall, VPN)")
    except OSError as exc:
        return f"cannot connect to {where} ({exc.strerror or exc})", "check the network between here and the camera"
    return (f"{where} accepts connections but the stream did not open",
            "check the path and the credentials in the URL with: ffprobe URL")


def opencv_has_gstreamer(cv2: Any) -> bool:
    """Whether this OpenCV build can open GStreamer pipelines."""
    match = re.search(r"GStreamer:\s*(\w+)", cv2.getBuildInformation())
    return bool(match and match.group(1).upper() == "YES")


def ffmpeg_capture_options(existing: str | None, transport: str) -> str:
    """The value for OPENCV_FFMPEG_CAPTURE_OPTIONS (``key;value|key;value``) with the RTSP transport set.

    An ``rtsp_transport`` the user already put in the environment wins; their other options are kept.
    """
    options = [item for item in (existing or "").split("|") if item]
    if not any(item.split(";", 1)[0] == "rtsp_transport" for item in options):
        options.append(f"rtsp_transport;{transport}")
    return "|".join(options)


def gstreamer_pipeline(description: str) -> str:
    """The pipeline with its final appsink made to keep only the newest buffer.

    An appsink queues every buffer it is given unless told ``drop=true max-buffers=1``: a model slower
    than the camera would grow memory and latency without bound. Properties the user set are kept
    (with a warning when they allow a backlog).
    """
    head, _, sink = description.rpartition("!")
    fields = sink.split()
    props = dict(item.split("=", 1) for item in fields[1:] if "=" in item)
    defaults = {"drop": "true", "max-buffers": "1", "sync": "false"}
    if props.get("drop", "true").lower() in ("false", "0") or props.get("max-buffers", "1") == "0":
        log.warning("the pipeline's appsink (%s) may queue frames without bound: use drop=true max-buffers=1",
                    sink.strip())
    props = {**defaults, **props}
    sink_text = " ".join([fields[0], *(f"{k}={v}" for k, v in props.items())])
    return f"{head.rstrip()} ! {sink_text}"


def jetson_csi_pipeline(sensor: int, cfg: SourceConfig) -> str:
    """``csi://N`` on a Jetson: the Argus camera through nvvidconv into BGR (jetson-utils does the same)."""
    width, height, fps = cfg.width or 1280, cfg.height or 720, round(cfg.fps or 30)
    return (
        f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),width={width},height={height},"
        f"framerate={fps}/1 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink"
    )


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


# --- image folders -----------------------------------------------------------------------------------------


class ImageFolderReader:
    """The images of a folder (or a glob pattern, or one image file), in name order.

    Args:
        pattern: A folder, a glob such as ``shots/*.jpg``, or one image file.
        fps: Pace in realtime mode (default 1 image per second).
    """

    def __init__(self, pattern: str, fps: float | None = None) -> None:
        self.pattern = pattern
        self.fps = fps or 1.0
        self.files: list[Path] = []
        self.expected_frames: int | None = None
        self._next = 0

    def check(self) -> None:
        path = Path(self.pattern)
        if path.is_dir():
            files = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.is_file():
            files = [path]
        else:
            files = [Path(p) for p in glob.glob(self.pattern) if Path(p).suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise SourceError(
                f"no images ({', '.join(IMAGE_SUFFIXES)}) at {self.pattern}",
                "point --source at a folder of photos, a pattern such as 'shots/*.jpg', or a video file",
            )
        self.files = sorted(files)
        self.expected_frames = len(self.files)

    def open(self) -> None:
        if not self.files:
            self.check()
        self._next = 0

    def read(self) -> tuple[bool, Any]:
        import cv2

        if self._next >= len(self.files):
            return False, None
        path = self.files[self._next]
        self._next += 1
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            log.warning("cannot decode the image %s", path)
        return True, image

    def close(self) -> None:
        self._next = len(self.files)


# --- Raspberry Pi camera -----------------------------------------------------------------------------------


class Picamera2Reader:
    """A Raspberry Pi CSI camera through picamera2 (imported only here, where it is needed).

    picamera2's ``RGB888`` format is B, G, R bytes per pixel, i.e. already OpenCV's order.
    """

    def __init__(self, sensor: int, cfg: SourceConfig) -> None:
        self.sensor = sensor
        self.cfg = cfg
        self.fps: float | None = cfg.fps
        self.expected_frames: int | None = None
        self._camera: Any = None

    def check(self) -> None:
        _import_picamera2()

    def open(self) -> None:
        picamera2 = _import_picamera2()
        try:
            camera = picamera2.Picamera2(self.sensor)
        except (IndexError, RuntimeError) as exc:
            raise SourceUnavailable(
                f"no CSI camera {self.sensor} ({exc})",
                "check the ribbon cable and that `rpicam-hello --list-cameras` lists it",
            ) from exc
        main = {"size": (self.cfg.width or 1280, self.cfg.height or 720), "format": "RGB888"}
        controls = {"FrameRate": self.cfg.fps} if self.cfg.fps else {}
        camera.configure(camera.create_video_configuration(main=main, controls=controls))
        camera.start()
        self._camera = camera

    def read(self) -> tuple[bool, Any]:
        image = self._camera.capture_array("main")
        return True, np.ascontiguousarray(image[..., :3]) if image is not None else None

    def close(self) -> None:
        if self._camera is not None:
            self._camera.close()
            self._camera = None


def _import_picamera2() -> Any:
    try:
        import picamera2
    except ImportError as exc:
        raise SourceError(
            "csi:// cameras need the package 'picamera2', which is not installed",
            "on Raspberry Pi OS: sudo apt install python3-picamera2, and create the venv with "
            "--system-site-packages so that it sees it (on a Jetson csi:// uses nvarguscamerasrc instead)",
        ) from exc
    return picamera2
