"""Frame sources: files, image folders, V4L2 and CSI cameras, RTSP/HTTP streams, GStreamer pipelines.

``Source(cfg)`` is the one entry point (a context manager yielding ``devices.types.Frame``); the URI
grammar is in ``devices.sources.uri`` and the device readers in ``devices.sources.readers``.
"""

from devices.sources.capture import Source, SourceEnded, SourceStats, image_problem
from devices.sources.uri import SourceURI, parse_uri

__all__ = ["Source", "SourceEnded", "SourceStats", "SourceURI", "image_problem", "parse_uri"]
