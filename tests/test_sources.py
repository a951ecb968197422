"""Frame sources on real files, folders and a real HTTP camera stream served by ffmpeg.

Each known capture trap has a test: a read that blocks on a frozen stream (abandoned by the watchdog),
the read timeout passed at open time, the RTSP transport kept when FFmpeg options are set, the
GStreamer appsink told to drop, a stream killed and restarted, a truncated file.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from devices.daemon.config import SourceConfig
from devices.errors import SourceError
from devices.sources import Source, SourceEnded, image_problem, parse_uri
from devices.sources.readers import (
    OpenCvReader,
    ffmpeg_capture_options,
    gstreamer_pipeline,
    network_problem,
    opencv_has_gstreamer,
)


def _drain(source: Source, limit: float = 60.0) -> tuple[list, SourceEnded]:
    frames = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            frame = source.read(timeout=1.0)
        except SourceEnded as end:
            return frames, end
        if frame is not None:
            frames.append(frame)
    raise AssertionError("the source neither ended nor stopped delivering")


# --- URIs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("uri", "kind", "target"), [
    ("0", "v4l2", "0"),
    ("v4l2:///dev/video2", "v4l2", "/dev/video2"),
    ("/dev/video1", "v4l2", "/dev/video1"),
    ("rtsp://cam.local:8554/live", "rtsp", "rtsp://cam.local:8554/live"),
    ("https://cam/stream.mjpg", "http", "https://cam/stream.mjpg"),
    ("csi://1", "csi", "1"),
    ("file:///videos/a.mp4", "file", "/videos/a.mp4"),
    ("clip.avi", "file", "clip.avi"),
    ("shots/*.jpg", "images", "shots/*.jpg"),
    ("photo.PNG", "images", "photo.PNG"),
    ("videotestsrc ! videoconvert ! appsink", "gstreamer", "videotestsrc ! videoconvert ! appsink"),
])
def test_uri_kinds(uri: str, kind: str, target: str) -> None:
    parsed = parse_uri(uri)
    assert (parsed.kind, parsed.target) == (kind, target)
    assert parsed.live == (kind not in ("file", "images"))


def test_uri_password_never_shown() -> None:
    parsed = parse_uri("rtsp://admin:s3cret@10.0.0.7:554/stream1")
    assert parsed.target == "rtsp://admin:s3cret@10.0.0.7:554/stream1"
    assert parsed.display == "rtsp://admin:***@10.0.0.7:554/stream1"


@pytest.mark.parametrize(("uri", "words"), [
    ("", "empty"),
    ("ftp://host/a.mp4", "unsupported scheme 'ftp'"),
    ("csi://front", "csi://0"),
    ("videotestsrc ! fakesink", "appsink"),
])
def test_bad_uris_say_what_to_write(uri: str, words: str) -> None:
    with pytest.raises(SourceError, match=words) as info:
        parse_uri(uri)
    assert info.value.fix


# --- traps: GStreamer appsink, FFmpeg options -------------------------------------------------------------


def test_appsink_is_told_to_drop_old_buffers() -> None:
    pipeline = gstreamer_pipeline("v4l2src ! videoconvert ! video/x-raw,format=BGR ! appsink")
    assert pipeline.endswith("! appsink drop=true max-buffers=1 sync=false")
    kept = gstreamer_pipeline("videotestsrc ! appsink max-buffers=2 name=sink")
    assert "max-buffers=2" in kept and "drop=true" in kept and "name=sink" in kept


def test_ffmpeg_options_keep_the_rtsp_transport() -> None:
    assert ffmpeg_capture_options(None, "tcp") == "rtsp_transport;tcp"
    assert ffmpeg_capture_options("max_delay;500000", "tcp") == "max_delay;500000|rtsp_transport;tcp"
    assert ffmpeg_capture_options("rtsp_transport;udp|max_delay;1", "tcp") == "rtsp_transport;udp|max_delay;1"


class _RtspProbe:
    """A minimal RTSP server that answers OPTIONS and DESCRIBE and records the client's SETUP transport."""

    SDP = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=probe\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
           "m=video 0 RTP/AVP 26\r\na=control:trackID=0\r\n")

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.transports: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.server.settimeout(10)
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            buffer = b""
            while True:
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                while b"\r\n\r\n" in buffer:
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    if not self._answer(conn, head.decode(errors="replace")):
                        return

    def _answer(self, conn: socket.socket, request: str) -> bool:
        lines = request.split("\r\n")
        method = lines[0].split()[0]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        cseq = headers.get("cseq", "0")
        if method == "SETUP":
            self.transports.append(headers.get("transport", ""))
            conn.sendall(f"RTSP/1.0 461 Unsupported Transport\r\nCSeq: {cseq}\r\n\r\n".encode())
            return False
        if method == "DESCRIBE":
            body = self.SDP.encode()
            conn.sendall(f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nContent-Type: application/sdp\r\n"
                         f"Content-Base: rtsp://127.0.0.1:{self.port}/cam/\r\nContent-Length: {len(body)}\r\n\r\n"
                         .encode() + body)
            return True
        conn.sendall(f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nPublic: OPTIONS, DESCRIBE, SETUP, PLAY\r\n\r\n".encode())
        return True


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_rtsp_asks_for_the_configured_transport_even_with_ffmpeg_options_set(
        transport: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The user's own FFmpeg option would make OpenCV drop its TCP default; the reader must still ask for TCP.
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "max_delay;500000")
    probe = _RtspProbe()
    cfg = SourceConfig(uri=f"rtsp://127.0.0.1:{probe.port}/cam", open_timeout=3, rtsp_transport=transport)
    reader = OpenCvReader(parse_uri(cfg.uri), cfg)
    with pytest.raises(SourceError):
        reader.open()  # the probe refuses SETUP: the point is what the client asked for
    assert probe.transports, "OpenCV never sent SETUP"
    wanted = "RTP/AVP/TCP" if transport == "tcp" else "client_port="
    assert wanted in probe.transports[0], probe.transports
    assert os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] == "max_delay;500000"  # the user's variable is restored


def test_gstreamer_without_support_is_a_clear_error() -> None:
    source = Source(SourceConfig(uri="videotestsrc num-buffers=5 ! videoconvert ! appsink"))
    if opencv_has_gstreamer(cv2):
        with source:
            assert source.read(timeout=10) is not None
        return
    with pytest.raises(SourceError, match="no GStreamer support") as info:
        source.open()
    assert "JetPack" in info.value.fix


def test_csi_without_picamera2_names_the_package() -> None:
    try:
        import picamera2  # noqa: F401
    except ImportError:
        with pytest.raises(SourceError, match="picamera2") as info:
            Source(SourceConfig(uri="csi://0")).open()
        assert "apt install python3-picamera2" in info.value.fix
    else:
        pytest.fail("picamera2 is installed here; this test expects a machine without a CSI camera stack")


# --- files and folders ------------------------------------------------------------------------------------


def test_file_delivers_every_frame_in_order_then_says_it_ended(clip: Path) -> None:
    with Source(SourceConfig(uri=str(clip))) as source:
        frames, end = _drain(source)
        stats = source.stats()
    assert [f.index for f in frames] == list(range(60))
    assert all(f.image.shape == (576, 768, 3) and f.image.dtype == np.uint8 for f in frames)
    assert all(a.mono <= b.mono for a, b in itertools.pairwise(frames))
    assert end.complete and end.frames == 60 and "end of file after 60 frames" in end.reason
    assert (stats.state, stats.dropped, stats.bad) == ("ended", 0, 0)


def test_truncated_file_ends_early_and_says_so(mirror: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "cut.avi"
    truncated.write_bytes((mirror / "videos" / "vtest.avi").read_bytes()[:3_000_000])
    with Source(SourceConfig(uri=str(truncated))) as source:
        frames, end = _drain(source)
    assert 0 < len(frames) < 795
    assert not end.complete
    assert f"ended after {len(frames)} of the 795 frames" in end.reason and "truncated" in end.reason


def test_missing_and_undecodable_files_fail_at_open(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        Source(SourceConfig(uri=str(tmp_path / "nope.mp4"))).open()
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(SourceError, match="cannot decode") as info:
        Source(SourceConfig(uri=str(junk))).open()
    assert "ffprobe" in info.value.fix


def test_loop_starts_the_file_again(clip: Path) -> None:
    with Source(SourceConfig(uri=str(clip), loop=True)) as source:
        frames = [source.read(timeout=5.0) for _ in range(130)]
    assert [f.index for f in frames] == list(range(130))
    assert np.array_equal(frames[0].image, frames[60].image)  # frame 60 is the first frame again


def test_an_unpaced_file_runs_on_its_own_timeline(clip: Path) -> None:
    # Tracking runs on Frame.clock: for a file read as fast as possible that is the video's time (10 fps here),
    # across a loop restart, so its events do not depend on how fast this machine is.
    with Source(SourceConfig(uri=str(clip), loop=True)) as source:
        frames = [source.read(timeout=5.0) for _ in range(70)]
    assert [f.clock for f in frames] == pytest.approx([i / 10 for i in range(70)])
    with Source(SourceConfig(uri=str(clip), realtime=True)) as source:
        frame = source.read(timeout=5.0)
    assert frame.stream_time is None and frame.clock == frame.mono


def test_realtime_file_keeps_only_the_newest_frame(clip: Path) -> None:
    # A consumer at ~3 fps against a 10 fps file: frames are dropped (counted), never queued up.
    with Source(SourceConfig(uri=str(clip), realtime=True)) as source:
        ages, indices = [], []
        started = time.monotonic()
        while time.monotonic() - started < 2.5:
            frame = source.read(timeout=1.0)
            if frame is not None:
                ages.append(time.monotonic() - frame.mono)
                indices.append(frame.index)
            time.sleep(0.3)
        stats = source.stats()
    assert stats.dropped >= 10
    assert max(ages) < 0.2, ages  # the newest frame, not one from the backlog
    assert 8 <= stats.frames <= 40  # paced at about 10 fps, not read as fast as possible
    steps = np.diff(indices)
    assert steps.min() >= 1, indices  # every read is a newer frame
    assert steps.max() > 1, indices  # and frames were really skipped between reads, not queued up


def test_image_folder_skips_an_unreadable_image(mirror: Path, tmp_path: Path) -> None:
    cap = cv2.VideoCapture(str(mirror / "videos" / "vtest.avi"))
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i:03d}.jpg"), cap.read()[1])
    cap.release()
    (tmp_path / "001b.jpg").write_bytes(b"not a jpeg")
    with Source(SourceConfig(uri=str(tmp_path))) as source:
        frames, end = _drain(source)
        stats = source.stats()
    assert len(frames) == 3 and stats.bad == 1 and stats.frames == 4
    assert [f.index for f in frames] == [0, 1, 3]  # the bad one keeps its number; nothing stands in for it
    assert end.complete


@pytest.mark.parametrize(("image", "words"), [
    (None, "None"),
    (np.zeros((4, 4, 3), np.float32), "dtype float32"),
    (np.zeros((4, 4), np.uint8), "shape (4, 4)"),
    (np.zeros((4, 4, 4), np.uint8), "shape (4, 4, 4)"),
    ("frame", "str"),
])
def test_malformed_images_are_named(image: object, words: str) -> None:
    assert words in image_problem(image)
    assert image_problem(np.zeros((4, 4, 3), np.uint8)) is None


# --- a live stream: ffmpeg serving MJPEG over HTTP ---------------------------------------------------------


def _first_frame_after(source: Source, after: float, limit: float) -> float:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        frame = source.read(timeout=0.5)
        if frame is not None and frame.mono > after:
            return frame.mono
    raise AssertionError(f"no frame within {limit} s; source {source.stats()}")


def test_stream_killed_and_restarted_reconnects_within_5_s(mjpeg_stream) -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg missing")
    stream = mjpeg_stream()
    cfg = SourceConfig(uri=stream.url, open_timeout=3, read_timeout=2)  # backoff: the defaults, 1 s doubling
    with Source(cfg) as source:
        _first_frame_after(source, 0.0, 15)
        stream.kill()
        killed = time.monotonic()
        time.sleep(3.5)
        assert source.stats().state in ("reconnecting", "opening")
        stream.start()
        back = time.monotonic()
        first = _first_frame_after(source, back, 15)
        stats = source.stats()
    assert first - back < 5.0, f"reconnected {first - back:.1f} s after the stream came back"
    assert stats.reconnects == 1 and stats.open_failures >= 1
    assert back - killed > 3


def test_frozen_stream_is_abandoned_not_waited_for(mjpeg_stream) -> None:
    # SIGSTOP keeps the socket open with no data: with a long read timeout OpenCV's read() blocks. The
    # watchdog must notice after stale_after, leave that thread behind, and the consumer must never hang.
    stream = mjpeg_stream()
    cfg = SourceConfig(uri=stream.url, open_timeout=3, read_timeout=60, stale_after=2)
    with Source(cfg) as source:
        _first_frame_after(source, 0.0, 15)
        stream.freeze()
        frozen = time.monotonic()
        waits = []
        while source.stats().stalls == 0 and time.monotonic() - frozen < 10:
            t = time.monotonic()
            source.read(timeout=0.5)
            waits.append(time.monotonic() - t)
        detected = time.monotonic() - frozen
        stats = source.stats()
        assert stats.stalls == 1 and stats.state in ("reconnecting", "opening"), stats
        assert 2.0 <= detected < 4.0, f"stall detected after {detected:.1f} s"
        assert max(waits) < 1.0  # read(timeout) kept its promise while the capture thread hung
        stream.kill()
        stream.start()
        back = time.monotonic()
        first = _first_frame_after(source, back, 15)
        assert first - back < 5.0
        assert source.stats().reconnects == 1


def test_read_timeout_given_at_open_applies(mjpeg_stream) -> None:
    # The read timeout only works when passed to VideoCapture's constructor; here it is 1 s and the
    # watchdog is far away (30 s), so the loss must come from OpenCV's own timeout.
    stream = mjpeg_stream()
    cfg = SourceConfig(uri=stream.url, open_timeout=3, read_timeout=1, stale_after=30)
    with Source(cfg) as source:
        _first_frame_after(source, 0.0, 15)
        stream.freeze()
        frozen = time.monotonic()
        while source.stats().state == "streaming" and time.monotonic() - frozen < 20:
            source.read(timeout=0.2)
        lost_after = time.monotonic() - frozen
        stats = source.stats()
    assert stats.state in ("reconnecting", "opening") and stats.stalls == 0
    assert lost_after < 4.0, f"the read returned only after {lost_after:.1f} s"


def test_stream_down_at_start_is_waited_for(mjpeg_stream) -> None:
    # A camera that boots after the daemon: no error, retries with backoff, frames once it is up.
    from conftest import free_port

    port = free_port()
    with Source(SourceConfig(uri=f"http://127.0.0.1:{port}/cam.mjpg", open_timeout=2)) as source:
        assert source.read(timeout=2.5) is None
        assert source.stats().open_failures >= 1 and source.stats().state in ("reconnecting", "opening")
        mjpeg_stream(port)
        _first_frame_after(source, 0.0, 15)
        assert source.stats().reconnects == 0  # a first connection is not a reconnect


def test_missing_camera_node_is_named_with_its_fix_once(caplog: pytest.LogCaptureFixture) -> None:
    # No /dev/video99 on any machine this runs on: the log says the device does not exist and how to fix it
    # on the first failure, then only the problem at each retry; the daemon keeps waiting for it (hot-plug).
    assert not Path("/dev/video99").exists()
    caplog.set_level("WARNING", logger="devices.sources.capture")
    with Source(SourceConfig(uri="/dev/video99", reconnect_initial=0.2, reconnect_max=0.4)) as source:
        deadline = time.monotonic() + 5
        while source.stats().open_failures < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert source.read(timeout=0.1) is None
    lines = [r.getMessage() for r in caplog.records if "/dev/video99" in r.getMessage()]
    assert len(lines) >= 2, lines
    assert "no camera at /dev/video99: the device does not exist" in lines[0]
    assert "fix: plug the camera in" in lines[0]
    assert all("fix:" not in line for line in lines[1:]), lines


def test_a_stream_that_does_not_open_gets_no_misleading_opencv_warning(capfd: pytest.CaptureFixture) -> None:
    # OpenCV warns "backend is generally available but can't be used to capture by name" on a refused
    # connection; the reader's own error names the cause. FFmpeg's line about the connection stays.
    from conftest import free_port

    reader = OpenCvReader(parse_uri(f"rtsp://127.0.0.1:{free_port()}/cam"), SourceConfig(uri="x", open_timeout=2))
    reader.check()
    with pytest.raises(SourceError, match="nothing listens on"):
        reader.open()
    err = capfd.readouterr().err
    assert "Connection refused" in err  # FFmpeg's own line: the capture really ran
    assert "[ WARN" not in err and "can't be used to capture by name" not in err, err


def test_a_stream_that_does_not_open_says_why() -> None:
    # Real sockets on this machine: a port nobody listens on, one that accepts, an unknown host, a bad port.
    from conftest import free_port

    port = free_port()
    problem, fix = network_problem(f"rtsp://127.0.0.1:{port}/cam", 2.0)
    assert problem == f"nothing listens on 127.0.0.1:{port} (connection refused)" and "start the camera" in fix
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        problem, fix = network_problem(f"http://user:pw@127.0.0.1:{server.getsockname()[1]}/x.mjpg", 2.0)
    assert problem.endswith("accepts connections but the stream did not open") and "ffprobe" in fix
    problem, _ = network_problem("rtsp://camera.invalid/live", 2.0)
    assert problem == "the host name 'camera.invalid' is not known here"
    problem, _ = network_problem("rtsp://cam:80a/live", 2.0)
    assert "is not a number" in problem
    with Source(SourceConfig(uri=f"rtsp://127.0.0.1:{port}/cam", open_timeout=2)) as source:
        deadline = time.monotonic() + 10
        while source.stats().open_failures < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "nothing listens on" in (source.stats().last_error or ""), source.stats()
