"""`edgesight run` as a user runs it: a subprocess of the torch-free device venv on real bundles,
real video files and a real HTTP camera stream (ffmpeg), with its HTTP API, signals and sd_notify."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

INT8 = "yolox-nano-tflite-int8"
FP32 = "yolox-nano-onnx-fp32"


class DaemonProcess:
    """``edgesight run ...`` in the background, logging to a file; its HTTP port is read from the log."""

    def __init__(self, device_bin: Path, args: list[str], tmp: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = tmp / f"daemon-{time.monotonic_ns()}.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_"))}
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([str(device_bin / "edgesight"), "run", *args], cwd=tmp,
                                     stdout=self._log, stderr=subprocess.STDOUT, env={**clean, **(env or {})})
        self.url: str | None = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_http(self, limit: float = 30) -> str:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            match = re.search(r"http: serving on (http://\S+)", self.log)
            if match:
                self.url = match.group(1)
                return self.url
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no HTTP server in the log:\n{self.log}")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def post(self, path: str, token: str | None = None) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(self.url + path, data=b"", method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def status(self) -> dict:
        code, body = self.get("/api/status")
        assert code == 200, body
        return json.loads(body)

    def until(self, predicate, limit: float, what: str) -> dict:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.2)
        raise AssertionError(f"{what}: not within {limit} s; last status {json.dumps(self.status())[:2000]}")

    def stop(self, sig: int = signal.SIGTERM, limit: float = 10) -> tuple[int, float]:
        sent = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=limit)
        return code, time.monotonic() - sent

    def wait(self, limit: float = 60) -> int:
        return self.proc.wait(timeout=limit)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def daemon(device_bin: Path, tmp_path: Path):
    started: list[DaemonProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> DaemonProcess:
        process = DaemonProcess(device_bin, [str(a) for a in args], tmp_path, env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


def _copy_bundle(test_bundles: Path, name: str, dest: Path) -> Path:
    return Path(shutil.copytree(test_bundles / name, dest))


def _tamper(model: Path) -> None:
    """Change one byte of the model and swap it in atomically (as rsync does: the old inode stays valid)."""
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tmp = model.with_suffix(".part")
    tmp.write_bytes(bytes(data))
    os.replace(tmp, model)


# --- files ------------------------------------------------------------------------------------------------


def test_run_a_file_to_its_last_frame(daemon, test_bundles: Path, clip: Path) -> None:
    process = daemon("--bundle", test_bundles / INT8, "--source", clip, "--http", "127.0.0.1:0")
    assert process.wait() == 0, process.log
    log = process.log
    assert "end of file after 60 frames" in log
    assert "stopped (exit 0, OK): 60 frames, 60 detected" in log
    assert "Traceback" not in log


def test_truncated_file_exits_3_and_says_why(daemon, test_bundles: Path, mirror: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.avi"
    cut.write_bytes((mirror / "videos" / "vtest.avi").read_bytes()[:2_000_000])
    process = daemon("--bundle", test_bundles / INT8, "--source", cut, "--http", "127.0.0.1:0")
    assert process.wait() == 3, process.log
    assert re.search(r"ended after \d+ of the 795 frames it declares: the file is truncated", process.log)
    assert "stopped (exit 3, SOURCE_ENDED_EARLY)" in process.log


def test_missing_source_and_tampered_bundle_are_refused_at_start(daemon, test_bundles: Path, clip: Path,
                                                                  tmp_path: Path) -> None:
    missing = daemon("--bundle", test_bundles / INT8, "--source", tmp_path / "nope.mp4", "--http", "127.0.0.1:0")
    assert missing.wait() == 2
    assert "nope.mp4 does not exist" in missing.log and "fix:" in missing.log and "Traceback" not in missing.log

    bundle = _copy_bundle(test_bundles, INT8, tmp_path / "tampered")
    _tamper(bundle / "yolox_nano_int8.tflite")
    tampered = daemon("--bundle", bundle, "--source", clip, "--http", "127.0.0.1:0")
    assert tampered.wait() == 2
    log = tampered.log
    assert "yolox_nano_int8.tflite" in log and "changed after export" in log and "fix:" in log
    assert "Traceback" not in log and "running" not in log


# --- a running daemon: HTTP, reload, SIGTERM ---------------------------------------------------------------


def test_http_api_and_reload_refuses_a_tampered_bundle_and_keeps_running(
        daemon, test_bundles: Path, clip: Path, tmp_path: Path) -> None:
    int8 = _copy_bundle(test_bundles, INT8, tmp_path / "int8")
    fp32 = _copy_bundle(test_bundles, FP32, tmp_path / "fp32")
    current = tmp_path / "current"
    current.symlink_to(int8)
    token = tmp_path / "token"
    token.write_text("s3cret-token-123\n")
    config = tmp_path / "camera.yaml"
    config.write_text(f"camera: gate-1\nbundle: {current}\nsource: {{uri: {clip}, loop: true}}\n"
                      f"http: {{host: 127.0.0.1, port: 0, token_file: {token}}}\nmotion: {{enabled: false}}\n")
    process = daemon("--config", config)
    process.wait_http()
    first = process.until(lambda s: s["loop"]["detected"] > 20 and s["health"]["ok"], 30, "frames flowing")
    original = first["bundle"]["sha256"]
    assert first["camera"] == "gate-1" and first["bundle"]["format"] == "tflite"
    assert (first["bundle"]["workers"], first["bundle"]["threads"]) == (1, None) and first["bundle"]["runtime"]
    assert first["source"]["kind"] == "file" and first["source"]["state"] == "streaming"
    assert process.get("/healthz")[0] == 200

    # /metrics: the figures the issue names, in Prometheus' text format.
    code, metrics = process.get("/metrics")
    assert code == 200
    for name in ("edgesight_frames_captured_total", "edgesight_frames_dropped_total", "edgesight_detect_fps",
                 "edgesight_capture_fps", "edgesight_publish_fps", "edgesight_inference_seconds_bucket",
                 "edgesight_frame_age_seconds_bucket", "edgesight_source_reconnects_total",
                 "edgesight_source_stalls_total", "edgesight_frames_motion_skipped_total", "edgesight_queue_depth",
                 "process_resident_memory_bytes"):
        assert name in metrics, name
    assert f'sha256="{original}"' in metrics

    # A tampered model lands on disk: refused, the old one keeps running.
    _tamper(int8 / "yolox_nano_int8.tflite")
    refused = process.until(lambda s: s["reloads"]["refused"] >= 1, 15, "the watcher refusing the bundle")
    assert "changed after export" in refused["reloads"]["last"]["error"]
    assert refused["bundle"]["sha256"] == original
    before = refused["loop"]["detected"]
    process.until(lambda s: s["loop"]["detected"] > before + 10 and s["health"]["ok"], 15, "old bundle running")

    # POST /api/reload needs the token; with it, the tampered bundle is refused again (409).
    assert process.post("/api/reload")[0] == 401
    assert process.post("/api/reload", token="wrong-token-000")[0] == 401
    code, answer = process.post("/api/reload", token="s3cret-token-123")
    assert code == 409 and "changed after export" in answer["error"] and answer["running"]["sha256"] == original

    # A good bundle (switched in atomically by a symlink) is verified and swapped in without a restart.
    fresh = tmp_path / "current.new"
    fresh.symlink_to(fp32)
    os.replace(fresh, current)
    swapped = process.until(lambda s: s["bundle"]["format"] == "onnx", 15, "the new bundle swapped in")
    assert swapped["reloads"]["ok"] == 1 and swapped["bundle"]["sha256"] != original
    after = swapped["loop"]["detected"]
    process.until(lambda s: s["loop"]["detected"] > after + 10, 15, "frames through the new bundle")

    # SIGHUP reloads too.
    process.proc.send_signal(signal.SIGHUP)
    process.until(lambda s: s["reloads"]["ok"] == 2, 15, "SIGHUP reload")
    code, elapsed = process.stop()
    assert code == 0 and elapsed < 2.0, (code, elapsed)
    assert "Traceback" not in process.log


def test_snapshots_are_served_over_http(daemon, test_bundles: Path, clip: Path, tmp_path: Path) -> None:
    # A consumer on another machine (Node-RED, a webhook) gets an event's snapshot from the daemon, nothing else.
    process = daemon("--bundle", test_bundles / INT8, "--source", clip, "--loop", "--http", "127.0.0.1:0",
                     "--camera", "gate")
    process.wait_http()
    folder = tmp_path / "snapshots" / "gate"  # the default `events.snapshots`, under the daemon's directory
    process.until(lambda s: any(folder.glob("*.jpg")), 60, "a snapshot on disk")
    snapshot = sorted(folder.glob("*.jpg"))[0]
    with urllib.request.urlopen(f"{process.url}/snapshots/gate/{snapshot.name}", timeout=5) as response:
        assert response.headers["Content-Type"] == "image/jpeg"
        image = cv2.imdecode(np.frombuffer(response.read(), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (576, 768, 3)
    (tmp_path / "secret.jpg").write_bytes(b"not for the network")
    for path in ("/snapshots/gate/../../secret.jpg", "/snapshots/gate/nothing.jpg", "/snapshots/gate"):
        code, body = process.get(path)
        assert code == 404 and "no such snapshot" in body, (path, code, body)
    process.stop()


def test_sigterm_stops_within_2_s(daemon, test_bundles: Path, clip: Path) -> None:
    process = daemon("--bundle", test_bundles / INT8, "--source", clip, "--loop", "--http", "127.0.0.1:0")
    process.wait_http()
    process.until(lambda s: s["loop"]["processed"] > 30, 30, "frames flowing")
    code, elapsed = process.stop(signal.SIGTERM)
    assert code == 0 and elapsed < 2.0, (code, elapsed, process.log)
    assert "stopping: SIGTERM" in process.log and "stopped (exit 0, OK)" in process.log


# --- config -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "words"), [
    ("bundle: b\nsource: {uri: x.mp4, stale_after: -1}\n",
     ["source.stale_after", "(got -1)", "use a value above 0"]),
    ("bundle: b\nsource: {uri: x.mp4, loopp: true}\n", ["source.loopp", "did you mean `loop`?"]),
    ("bundle: b\nsource: {uri: x.mp4}\nruntime: tflite\n", ["runtime", "'tflite'", "'ai_edge_litert'"]),
    ("source: {uri: x.mp4}\n", ["bundle: Field required", "add `bundle`"]),
    ("bundle: b\nsource: {uri: x.mp4}\nhttp: {port: http}\n", ["http.port", "'http'", "whole number"]),
    ("bundle: b\nsource:\n  uri: x.mp4\n loop: true\n", ["not valid YAML at line", "fix:"]),
    ("- bundle\n", ["not a mapping"]),
    ("bundle: b\nsource: {uri: x.mp4}\nworkers: 0\n", ["workers", "(got 0)", "use a value at least 1"]),
    ("bundle: b\nsource: {uri: x.mp4}\nzones: [{name: a/b, points: [[0, 0], [1, 0], [1, 1]]}]\n",
     ["zones.0.name", "'a/b'", "MQTT topics", "no '/'"]),
    ("bundle: b\nsource: {uri: x.mp4}\nzones: [{name: a, points: [[0, 0], [1, 0], [1, 1]], labelz: [x]}]\n",
     ["zones.0.labelz", "did you mean `labels`?"]),
])
def test_bad_configs_name_the_field_value_and_fix(device_bin: Path, tmp_path: Path, text: str,
                                                  words: list[str]) -> None:
    config = tmp_path / "camera.yaml"
    config.write_text(text)
    for command in (["config", "check", str(config)], ["run", "--config", str(config)]):
        result = subprocess.run([str(device_bin / "edgesight"), *command], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 2, result
        for word in words:
            assert word in result.stderr, (word, result.stderr)
        assert "Traceback" not in result.stderr


def test_a_camera_index_may_be_written_as_a_number(tmp_path: Path) -> None:
    # YAML reads `uri: 0` as the number 0: it is the camera index the docs show, not an error.
    from devices.daemon.config import load_config
    from devices.errors import ConfigError

    config = tmp_path / "camera.yaml"
    config.write_text("bundle: b\nsource: {uri: 0}\n")
    assert load_config(config).source.uri == "0"
    config.write_text("bundle: b\nsource: {uri: true}\n")
    with pytest.raises(ConfigError, match=r"source\.uri"):
        load_config(config)


def test_config_check_schema_and_flags_over_file(device_bin: Path, tmp_path: Path) -> None:
    config = tmp_path / "camera.yaml"
    config.write_text("camera: door\nbundle: b\nsource: {uri: rtsp://cam/1}\nsinks: {mqtt: {host: broker}}\n")
    check = subprocess.run([str(device_bin / "edgesight"), "config", "check", str(config)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "valid" in check.stdout
    schema = subprocess.run([str(device_bin / "edgesight"), "config", "schema"], capture_output=True, text=True,
                            timeout=60)
    parsed = json.loads(schema.stdout)
    assert {"bundle", "source", "motion", "sinks", "http"} <= set(parsed["properties"])
    assert parsed["additionalProperties"] is False

    code = ("import sys; from devices.daemon.config import load_config; from toolkit.cli.daemon import run_overrides;"
            f"c = load_config({str(config)!r}, run_overrides(source='0', mqtt='10.0.0.2:1884', loop=True));"
            "print(c.source.uri, c.source.loop, c.sinks.mqtt.host, c.sinks.mqtt.port, c.camera)")
    merged = subprocess.run([str(device_bin / "python"), "-c", code], capture_output=True, text=True, timeout=60)
    assert merged.stdout.split() == ["0", "True", "10.0.0.2", "1884", "door"], merged


# --- no torch ---------------------------------------------------------------------------------------------


def test_run_imports_no_torch(test_bundles: Path, clip: Path, tmp_path: Path) -> None:
    # In the workstation venv torch *is* installed, so an import of it would succeed silently: check sys.modules
    # after a whole `edgesight run` there (the device venv has no torch at all and runs every other test).
    config = tmp_path / "c.yaml"
    config.write_text(f"bundle: {test_bundles / INT8}\nsource: {{uri: {clip}}}\nhttp: null\n")
    # `run` ends with os._exit once everything is flushed: look at sys.modules right there.
    code = ("import os, sys\nfrom toolkit.cli import main\nsys.argv = ['edgesight', 'run', '--config', sys.argv[1]]\n"
            "real_exit = os._exit\n"
            "def report(rc):\n"
            "    heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'PIL'))\n"
            "    print('EXIT', rc, 'HEAVY', heavy, flush=True)\n    real_exit(rc)\n"
            "os._exit = report\nmain()\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True,
                            timeout=120, env=env, cwd=tmp_path)
    assert "EXIT 0 HEAVY []" in result.stdout, (result.stdout, result.stderr[-3000:])


# --- systemd ----------------------------------------------------------------------------------------------


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def collect(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                pass

    def lines(self) -> list[str]:
        return [line for _, message in self.messages for line in message.splitlines()]


def test_sd_notify_ready_watchdog_stopping(daemon, test_bundles: Path, clip: Path, tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    process = daemon("--bundle", test_bundles / INT8, "--source", clip, "--loop", "--http", "127.0.0.1:0",
                     env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"})
    notify.collect(6.0)
    process.proc.send_signal(signal.SIGTERM)
    notify.collect(2.0)
    assert process.wait(10) == 0
    lines = notify.lines()
    assert lines.count("READY=1") == 1 and lines.count("STOPPING=1") == 1
    assert lines.index("READY=1") < lines.index("WATCHDOG=1") < lines.index("STOPPING=1")
    assert lines.count("WATCHDOG=1") >= 5  # every ~0.2 s while frames flow
    assert any(line.startswith("STATUS=") for line in lines)


def test_frozen_stream_is_unhealthy_stops_the_watchdog_and_recovers(daemon, test_bundles: Path, mjpeg_stream,
                                                                    tmp_path: Path) -> None:
    stream = mjpeg_stream()
    notify = NotifySocket(tmp_path / "notify.sock")
    config = tmp_path / "c.yaml"
    config.write_text(f"bundle: {test_bundles / INT8}\nsource: {{uri: '{stream.url}', stale_after: 2, "
                      "read_timeout: 60, open_timeout: 3}\nhttp: {port: 0}\n")
    process = daemon("--config", config, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"})
    process.wait_http()
    process.until(lambda s: s["health"]["ok"], 30, "healthy on the stream")
    notify.collect(1.0)
    assert "WATCHDOG=1" in notify.lines()

    stream.freeze()
    stalled = process.until(lambda s: s["source"]["stalls"] == 1, 10, "the stall noticed")
    code, body = process.get("/healthz")
    assert code == 503 and "no frame for" in body and "last error: " in body
    assert stalled["source"]["state"] in ("reconnecting", "opening")
    # The stall, or a reopen already tried on the frozen server (its kernel still accepts connections).
    last_error = stalled["source"]["last_error"]
    assert "read blocked for" in last_error or "accepts connections but the stream did not open" in last_error
    # No frame for stale_after (2 s) now: pings sent before are still queued in the socket; drop them, listen on.
    notify.collect(0.3)
    notify.messages.clear()
    notify.collect(2.0)
    assert "WATCHDOG=1" not in notify.lines(), "WATCHDOG=1 was sent while no frame made progress"

    stream.kill()
    stream.start()
    back = time.monotonic()
    recovered = process.until(lambda s: s["source"]["reconnects"] == 1 and s["health"]["ok"], 15, "reconnected")
    assert time.monotonic() - back < 6.0
    assert recovered["source"]["stalls"] == 1
    notify.messages.clear()
    notify.collect(1.0)
    assert "WATCHDOG=1" in notify.lines()
    code, _ = process.stop()
    assert code == 0


def test_docs_config_reference_is_current(device_bin: Path) -> None:
    generated = subprocess.run([str(device_bin / "edgesight"), "config", "schema", "--markdown"], capture_output=True,
                               text=True, timeout=60, check=True).stdout
    doc = (Path(__file__).resolve().parents[1] / "docs" / "daemon.md").read_text()
    section = doc.split("<!-- config-reference:start -->\n")[1].split("<!-- config-reference:end -->")[0]
    assert section == generated, ("docs/daemon.md's config reference is stale: replace the lines between its "
                                  "config-reference markers by `edgesight config schema --markdown`")
