"""Source URIs as jetson-utils spells them, parsed once into what to open and how.

============================  ===========  ====================================================
URI                           kind         opened with
============================  ===========  ====================================================
``video.mp4``, ``file://...`` file         OpenCV (FFmpeg); ends at the last frame unless looped
``photos/``, ``img/*.jpg``    images       ``cv2.imread``, file by file in name order
``v4l2:///dev/video0``, ``0`` v4l2         OpenCV (V4L2): USB cameras
``rtsp://``, ``rtsps://``     rtsp         OpenCV (FFmpeg), TCP unless ``source.rtsp_transport``
``http://``, ``https://``     http         OpenCV (FFmpeg): MJPEG, MPEG-TS, HLS streams
``csi://0``                   csi          picamera2 on a Raspberry Pi; on a Jetson the
                                           ``nvarguscamerasrc`` GStreamer pipeline
``... ! appsink``             gstreamer    OpenCV built with GStreamer (JetPack's OpenCV)
============================  ===========  ====================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from devices.errors import SourceError

Kind = Literal["file", "images", "v4l2", "rtsp", "http", "csi", "gstreamer"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_STREAM_SCHEMES: dict[str, Kind] = {"rtsp": "rtsp", "rtsps": "rtsp", "http": "http", "https": "http"}
_URI_FIX = (
    "use a video file, an image folder, v4l2:///dev/video0 (or a camera index such as 0), rtsp://..., "
    "http(s)://..., csi://0, or a GStreamer pipeline ending in 'appsink'"
)


@dataclass(frozen=True)
class SourceURI:
    """A parsed source.

    Attributes:
        kind: How it is opened (see the module docstring).
        target: What the opener takes: a path, URL, pipeline, or a camera index as text.
        display: The URI with any password replaced by ``***``, for logs and ``/api/status``.
    """

    kind: Kind
    target: str
    display: str

    @property
    def live(self) -> bool:
        """A camera or stream: latest-frame delivery, reopened when it goes quiet; never 'ends'."""
        return self.kind not in ("file", "images")


def parse_uri(uri: str) -> SourceURI:
    """Classify a source URI.

    Raises:
        SourceError: An empty URI, an unknown scheme, or a pipeline without an ``appsink``.
    """
    text = uri.strip()
    if not text:
        raise SourceError("the source URI is empty", _URI_FIX)
    if "!" in text:
        if not re.search(r"!\s*appsink\b[^!]*$", text):
            raise SourceError(
                f"GStreamer pipeline {text!r} does not end in 'appsink'", "end the pipeline with '! appsink'"
            )
        return SourceURI("gstreamer", text, text)
    if text.isdigit():
        return SourceURI("v4l2", text, f"v4l2 camera {text}")
    scheme = urlsplit(text).scheme.lower() if "://" in text else ""
    if scheme in _STREAM_SCHEMES:
        return SourceURI(_STREAM_SCHEMES[scheme], text, mask_password(text))
    if scheme == "v4l2":
        device = text.split("://", 1)[1]
        return SourceURI("v4l2", device, text)
    if scheme == "csi":
        index = text.split("://", 1)[1]
        if not index.isdigit():
            raise SourceError(f"CSI camera {text!r} needs a sensor number", "use csi://0 (or csi://1 for the second)")
        return SourceURI("csi", index, text)
    if scheme == "file":
        text = text.split("://", 1)[1]
    elif scheme:
        raise SourceError(f"source {text!r} has the unsupported scheme {scheme!r}", _URI_FIX)
    return _path_uri(text)


def _path_uri(text: str) -> SourceURI:
    path = Path(text).expanduser()
    if any(c in text for c in "*?["):
        return SourceURI("images", str(path), text)
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        return SourceURI("images", str(path), text)
    if path.as_posix().startswith("/dev/video"):
        return SourceURI("v4l2", str(path), text)
    return SourceURI("file", str(path), text)


def mask_password(url: str) -> str:
    """``rtsp://user:secret@cam/stream`` -> ``rtsp://user:***@cam/stream`` (logs must not leak it)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
