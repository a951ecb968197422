"""The live page: the daemon's own frames, annotated, streamed to a browser, with its state beside them.

``LiveView`` plugs into a running daemon, never beside it: it is a frame observer of the daemon's loop (so
the picture is the frames the detector and tracker actually processed, at the rate they were processed) and
it adds routes to the daemon's HTTP server:

    /                 the page (``web/index.html``, ``live.js``, ``live.css``: plain files, no build, no CDN)
    /stream.mjpg      the annotated frames as MJPEG (``?boxes=0``: without the overlay)
    /frame.jpg        the newest annotated frame (the paused view)
    /api/live         what the page shows beside the picture (counts, stage rates, source state, model)
    /api/events       the last events (``?after=N``: newer than the page's N), with the URL of each snapshot
                      (the daemon itself serves ``/snapshots/...``)

Drawing and JPEG encoding happen in the HTTP threads, once per frame and variant however many pages watch,
and not at all when nobody does: the observer only keeps a reference to the newest frame.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import cv2

from devices.bundle import read_manifest
from devices.daemon.config import DaemonConfig
from devices.daemon.http import Request, Response
from devices.daemon.loop import RateMeter
from devices.daemon.overlay import Overlay
from devices.draw import class_colour
from devices.host import machine
from devices.sidecar import read_about
from devices.types import Detections, Frame

#: Events the page lists.
RECENT_EVENTS = 20
#: The page calls the picture frozen after this long without a new frame (or the source's own stale_after,
#: if shorter): long enough for a busy Pi's detector, far shorter than the daemon's reconnect.
FROZEN_AFTER = 2.0
#: Frames wider than this are scaled down for the stream (bandwidth; the page scales the picture anyway).
MAX_STREAM_WIDTH = 1280
JPEG_QUALITY = 80
_WEB = "web"
_STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
           "/live.js": ("live.js", "text/javascript; charset=utf-8"),
           "/live.css": ("live.css", "text/css; charset=utf-8")}


@dataclass(frozen=True)
class _Shown:
    """The newest processed frame and what the tracker knew about it."""

    seq: int
    frame: Frame
    tracks: tuple
    received_mono: float


class LiveView:
    """A daemon's live page. Attach it once the daemon has built its loop and HTTP server.

    Args:
        cfg: The daemon's config (zones, line, snapshot folder, stale limit).
        labels: The bundle's class names, in class-id order.
    """

    def __init__(self, cfg: DaemonConfig, labels: Sequence[str]) -> None:
        self.cfg = cfg
        self.labels = tuple(labels)
        self.overlay = Overlay(self.labels, cfg.zones, cfg.line)
        self.frozen_after = min(FROZEN_AFTER, cfg.source.stale_after)
        self.started = time.time()
        self.rate = RateMeter()
        self._daemon: Any = None
        self._shown: _Shown | None = None
        self._cond = threading.Condition()
        self._encoded: dict[bool, tuple[int, bytes, int]] = {}
        self._encode_locks = {True: threading.Lock(), False: threading.Lock()}
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_EVENTS)
        self._event_count = 0
        self._manifests: dict[str, dict[str, Any]] = {}
        self._about = read_about(cfg.source.uri)
        self._closed = threading.Event()

    # --- wiring ------------------------------------------------------------------------------------------

    def attach(self, daemon: Any) -> None:
        """Register the observer on the daemon's loop and the page's routes on its HTTP server."""
        self._daemon = daemon
        daemon.loop.add_observer(self.observe)
        daemon.add_event_listener(self.add_events)
        http = daemon.http
        if http is None:
            return
        for path in _STATIC:
            http.route("GET", path, self._static)
        http.route("GET", "/stream.mjpg", self._stream)
        http.route("GET", "/frame.jpg", self._frame)
        http.route("GET", "/api/live", lambda _: Response.json(self.state()))
        http.route("GET", "/api/events", self._events_page)

    def close(self) -> None:
        """End the open streams (the daemon is stopping)."""
        self._closed.set()
        with self._cond:
            self._cond.notify_all()

    # --- the loop's side ---------------------------------------------------------------------------------

    def observe(self, frame: Frame, detections: Detections | None, tracks: list) -> None:
        """Frame observer: keep the newest frame and its tracks (cheap; drawing waits for a viewer)."""
        now = time.monotonic()
        self.rate.tick(now)
        with self._cond:
            seq = self._shown.seq + 1 if self._shown else 0
            self._shown = _Shown(seq, frame, tuple(tracks), now)
            self._cond.notify_all()

    def add_events(self, events: Sequence[Any], frame: Frame | None = None) -> None:
        """Event listener: keep the last ``RECENT_EVENTS`` events for the page."""
        with self._cond:
            for event in events:
                self._event_count += 1
                record = event.to_dict()
                record["n"] = self._event_count
                record["snapshot_url"] = self._daemon.snapshot_url(record.get("snapshot")) if self._daemon else None
                self._events.append(record)

    # --- pictures ----------------------------------------------------------------------------------------

    def jpeg(self, boxes: bool = True) -> tuple[int, bytes, int] | None:
        """``(seq, JPEG, source frame index)`` of the newest frame, drawn and encoded once per frame and variant."""
        shown = self._shown
        if shown is None:
            return None
        with self._encode_locks[boxes]:
            cached = self._encoded.get(boxes)
            if cached is not None and cached[0] == shown.seq:
                return cached
            image = self.overlay.draw(shown.frame.image, shown.tracks, boxes=boxes)
            if image.shape[1] > MAX_STREAM_WIDTH:
                scale = MAX_STREAM_WIDTH / image.shape[1]
                size = (MAX_STREAM_WIDTH, round(image.shape[0] * scale))
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise RuntimeError("OpenCV could not encode a JPEG")
            self._encoded[boxes] = cached = (shown.seq, data.tobytes(), shown.frame.index)
            return cached

    def _wait_newer(self, seq: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: self._closed.is_set() or (self._shown is not None and self._shown.seq > seq), timeout
            ) and not self._closed.is_set()

    def _stream(self, request: Request) -> None:
        boxes = _flag(request, "boxes")
        handler = request.handler
        handler.close_connection = True
        handler.send_response(200)
        handler.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        handler.send_header("Cache-Control", "no-store")
        handler.send_header("Connection", "close")
        handler.end_headers()
        seq = -1
        try:
            while not self._closed.is_set():
                if not self._wait_newer(seq, timeout=1.0):
                    continue  # nothing new: the page's banner says the picture is frozen, the stream stays open
                shot = self.jpeg(boxes)
                assert shot is not None  # _wait_newer saw a frame, and a shown frame is never taken back
                seq, data, index = shot
                head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\nX-Frame-Index: %d\r\n\r\n"
                handler.wfile.write(head % (len(data), index))
                handler.wfile.write(data + b"\r\n")
                handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the page went away or switched streams
        return None

    def _frame(self, request: Request) -> Response:
        shown = self.jpeg(_flag(request, "boxes"))
        if shown is None:
            return Response.text("no frame yet", 503)
        return Response(200, shown[1], "image/jpeg")

    # --- state ---------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What the page shows beside the picture (``/api/live``)."""
        status = self._daemon.status()
        shown = self._shown
        now = time.monotonic()
        frame_age = None if shown is None else now - shown.frame.mono
        source = status["source"]
        loop = status["loop"]
        tracks = status.get("tracks") or {}
        now_counts, totals = tracks.get("objects", {}), tracks.get("objects_total", {})
        return {
            "started": self.started,
            "camera": status["camera"],
            "host": {"cpu": machine()},
            "bundle": self._bundle(status["bundle"]),
            "source": {
                "uri": source["uri"],
                "kind": source["kind"],
                "state": _source_state(source["state"], frame_age, self.frozen_after),
                "detail": source["state"],
                "frame_age": frame_age,
                "frozen_after": self.frozen_after,
                "about": self._about,
            },
            "frame": None if shown is None else {"index": shown.frame.index, "width": shown.frame.image.shape[1],
                                                 "height": shown.frame.image.shape[0]},
            "stages": {
                "capture_fps": source["fps"],
                "detect_fps": loop["detect_fps"],
                "events_fps": loop["process_fps"],
                "view_fps": self.rate.rate(),
                "detect_ms": status.get("latency", {}).get("detect", {}).get("p50_ms"),
            },
            "motion": (status.get("motion") or {}).get("state", "off"),
            "dropped": source["dropped"] + loop["observer_dropped"],
            "classes": [{"label": label, "colour": class_colour(i), "now": now_counts.get(label, 0),
                         "total": totals.get(label, 0)} for i, label in enumerate(self.labels)],
            "line": _line_counts(tracks.get("line")),
            "health": status["health"],
            "last_event": self._event_count,
        }

    def _bundle(self, info: dict[str, Any]) -> dict[str, Any]:
        # The manifest is read again only when the daemon swapped bundles (a reload changes the sha256).
        cached = self._manifests.get(info["sha256"])
        if cached is None:
            manifest = read_manifest(info["path"])
            spec = manifest.input
            cached = {
                "name": info["name"], "format": manifest.format, "precision": manifest.precision,
                "arch": manifest.arch, "input": f"{spec.width}x{spec.height}",
                "size_bytes": (Path(info["path"]) / manifest.model_file).stat().st_size,
                "sha256": info["sha256"],
                "accuracy": None if manifest.accuracy is None else {
                    "map": manifest.accuracy.map, "map50": manifest.accuracy.map50,
                    "classes": [{"name": c.name, "ap": c.ap} for c in manifest.accuracy.classes],
                    "runtime": manifest.accuracy.runtime, "num_images": manifest.accuracy.num_images,
                    "dataset": manifest.accuracy.dataset,
                },
            }
            self._manifests[info["sha256"]] = cached
        return cached

    def _events_page(self, request: Request) -> Response:
        try:
            after = int(request.query.get("after", ["0"])[0])
        except ValueError:
            return Response.json({"error": "after must be a whole number"}, 400)
        with self._cond:
            return Response.json([e for e in self._events if e["n"] > after])

    # --- files -------------------------------------------------------------------------------------------

    def _static(self, request: Request) -> Response:
        name, content_type = _STATIC[request.path]
        return Response(200, resources.files(__package__).joinpath(_WEB, name).read_bytes(), content_type)


def _flag(request: Request, name: str) -> bool:
    return request.query.get(name, ["1"])[0] not in ("0", "false", "no")


def _source_state(state: str, frame_age: float | None, frozen_after: float) -> str:
    """``live``, ``frozen`` (no new frame for ``frozen_after``), ``lost`` (reconnecting), ``ended`` or ``starting``."""
    if state == "ended":
        return "ended"
    if state in ("reconnecting", "closed"):
        return "lost"
    if frame_age is None:
        return "starting"
    return "frozen" if frame_age > frozen_after else "live"


def _line_counts(line: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{"name", "counts": {"in": n, "out": n}}`` summed over labels, from the pipeline's line stats."""
    if not line:
        return None
    counts = {direction: int(sum(per_label.values())) for direction, per_label in line.items()
              if direction != "name" and isinstance(per_label, dict)}
    return {"name": line.get("name", "line"), "counts": counts or {"in": 0, "out": 0}}

