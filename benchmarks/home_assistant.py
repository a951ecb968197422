"""The daemon against a real Home Assistant: ``python benchmarks/home_assistant.py --hass PATH/TO/hass``.

Not run in CI: Home Assistant is not a Debian package and pulls in some 150 Python packages. This script uses
the standard library only; Home Assistant runs from its own virtual environment (docs/events.md says how to
make one). It starts, each on its own port:

1. a Debian mosquitto;
2. Home Assistant on a fresh configuration folder, onboarded through its REST API (a user, a token), with its
   MQTT integration added through the same config flow as the UI's "Add integration";
3. ``edgesight run`` on vtest.avi looped and paced like a camera, with a zone and a counting line and the MQTT
   sink, for ``--seconds``;

then prints what Home Assistant made of it: the device, every entity with its state, name and classes, each
snapshot camera's image as Home Assistant serves it, and the entities' state after the daemon's SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAMERA = "gate"


class HomeAssistant:
    """Home Assistant's REST API, after onboarding a user."""

    def __init__(self, url: str) -> None:
        self.url, self.token = url, ""

    def call(self, method: str, path: str, body: dict | None = None, form: bool = False) -> bytes:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        data = None
        if body is not None:
            data = urllib.parse.urlencode(body).encode() if form else json.dumps(body).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded" if form else "application/json"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def json(self, method: str, path: str, body: dict | None = None, form: bool = False):
        return json.loads(self.call(method, path, body, form))

    def wait_up(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/api/onboarding", timeout=2)
                return
            except (urllib.error.URLError, OSError):
                time.sleep(1)
        raise SystemExit(f"Home Assistant did not answer on {self.url} within {seconds:.0f} s (see hass.log)")

    def onboard(self) -> None:
        client = self.url + "/"
        code = self.json("POST", "/api/onboarding/users", {
            "client_id": client, "name": "check", "username": "check", "password": "check-pass-1234",
            "language": "en"})["auth_code"]
        self.token = self.json("POST", "/auth/token", {
            "grant_type": "authorization_code", "code": code, "client_id": client}, form=True)["access_token"]

    def add_mqtt(self, port: int) -> str:
        """The MQTT integration, through the config flow the UI uses; returns the flow's result type."""
        flow = self.json("POST", "/api/config/config_entries/flow", {"handler": "mqtt"})
        done = self.json("POST", f"/api/config/config_entries/flow/{flow['flow_id']}",
                         {"broker": "127.0.0.1", "port": port})
        return done["type"]

    def entities(self) -> list[dict]:
        return sorted((s for s in self.json("GET", "/api/states") if f"edgesight_{CAMERA}" in s["entity_id"]),
                      key=lambda s: s["entity_id"])


def camera_config(work: Path, args: argparse.Namespace, port: int) -> Path:
    config = work / "camera.yaml"
    config.write_text(
        f"camera: {CAMERA}\nbundle: {args.bundle.resolve()}\nhttp: null\n"
        f"source: {{uri: {args.video.resolve()}, loop: true, realtime: true}}\n"
        "zones:\n  - {name: path, points: [[0, 0.4], [1, 0.4], [1, 1], [0, 1]], normalized: true, "
        "labels: [pedestrian]}\n"
        "line: {name: crossing, a: [0, 0.6], b: [1, 0.6], normalized: true}\n"
        f"events: {{spool: {work}/spool.sqlite, snapshots: {work}/snapshots}}\n"
        f"sinks: {{mqtt: {{host: 127.0.0.1, port: {port}}}}}\n")
    return config


def report(ha: HomeAssistant, work: Path) -> None:
    """The device, the entities and the snapshot cameras' images, as Home Assistant shows them."""
    entities = ha.entities()
    first = entities[0]["entity_id"] if entities else None
    if first:
        device = ha.call("POST", "/api/template", {"template": (
            f"{{{{ device_attr(device_id('{first}'), 'name') }}}}, "
            f"{{{{ device_attr(device_id('{first}'), 'model') }}}} {{{{ device_attr(device_id('{first}'), "
            "'sw_version') }}")}).decode()
        print(f"Device: **{device}**, {len(entities)} entities.\n")
    print("| entity | state | name | device class | state class |\n|---|---|---|---|---|")
    for state in entities:
        attributes = state["attributes"]
        print(f"| `{state['entity_id']}` | {state['state']} | {attributes.get('friendly_name')} | "
              f"{attributes.get('device_class', '')} | {attributes.get('state_class', '')} |")
    print()
    for state in (s for s in entities if s["entity_id"].startswith("camera.")):
        try:
            image = ha.call("GET", f"/api/camera_proxy/{state['entity_id']}")
        except urllib.error.HTTPError as exc:
            print(f"- `{state['entity_id']}`: HTTP {exc.code} (no snapshot of this class yet)")
            continue
        path = work / f"{state['entity_id']}.jpg"
        path.write_bytes(image)
        print(f"- `{state['entity_id']}`: a {len(image)}-byte JPEG ({path})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hass", type=Path, required=True, help="Home Assistant's `hass` in its own venv.")
    parser.add_argument("--edgesight", type=Path, default=REPO / ".venv-device/bin/edgesight")
    parser.add_argument("--bundle", type=Path, default=REPO / "runs/test-bundles/yolox-nano-tflite-int8")
    parser.add_argument("--video", type=Path, default=REPO.parent / "shared/videos/vtest.avi")
    parser.add_argument("--seconds", type=float, default=30.0, help="How long the daemon runs before the check.")
    parser.add_argument("--mqtt-port", type=int, default=18830)
    parser.add_argument("--ha-port", type=int, default=18123)
    parser.add_argument("--out", type=Path, default=None, help="Keep the logs and images here (default: a tmp dir).")
    args = parser.parse_args()
    work = (args.out or Path(tempfile.mkdtemp(prefix="ha-check-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen] = []

    def start(command: list[str], log: str) -> subprocess.Popen:
        processes.append(subprocess.Popen(command, stdout=(work / log).open("w"), stderr=subprocess.STDOUT,
                                          start_new_session=True))
        return processes[-1]

    try:
        # The broker and Home Assistant, each on its own port and folder.
        (work / "mosquitto.conf").write_text(f"listener {args.mqtt_port} 127.0.0.1\nallow_anonymous true\n")
        start(["/usr/sbin/mosquitto", "-c", str(work / "mosquitto.conf")], "mosquitto.log")
        config = work / "hass"  # fresh each time: onboarding works once per configuration
        shutil.rmtree(config, ignore_errors=True)
        config.mkdir()
        (config / "configuration.yaml").write_text(
            "homeassistant:\n  name: edgesight check\n  unit_system: metric\n  time_zone: UTC\n"
            f"http:\n  server_host: 127.0.0.1\n  server_port: {args.ha_port}\n"
            "api:\nonboarding:\nconfig:\nlogger:\n  default: warning\n")
        start([str(args.hass), "-c", str(config), "--skip-pip"], "hass.log")
        ha = HomeAssistant(f"http://127.0.0.1:{args.ha_port}")
        ha.wait_up(300)
        ha.onboard()
        print(f"# edgesight and Home Assistant (MQTT integration: {ha.add_mqtt(args.mqtt_port)})\n", flush=True)
        # The daemon, as a camera, until Home Assistant has seen a few people come and go.
        daemon = start([str(args.edgesight), "run", "--config", str(camera_config(work, args, args.mqtt_port))],
                       "daemon.log")
        time.sleep(args.seconds)
        if daemon.poll() is not None:
            raise SystemExit(f"edgesight run exited with {daemon.returncode} (see {work}/daemon.log)")
        print(f"While `edgesight run` ran ({args.seconds:.0f} s):\n")
        report(ha, work)
        # A clean stop: the daemon says offline, and every entity goes unavailable.
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
        time.sleep(2)
        after = sorted({s["state"] for s in ha.entities()})
        print(f"\nAfter the daemon's SIGTERM (exit {daemon.returncode}), the entities' states: {', '.join(after)}")
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(30)
    print(f"\nLogs: {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
