"""Events through faults: ``python benchmarks/daemon_faults.py [--outage 60]`` (device venv, Debian mosquitto).

A real mosquitto on its own port and a subscriber as Home Assistant has one (persistent session, QoS 1); the
daemon runs ``edgesight run`` on vtest.avi looped and paced like a camera (10 fps, motion gate on) with the
MQTT sink. The timeline:

1. ``--phase`` seconds of normal running;
2. the broker is stopped for ``--outage`` seconds (60) while the daemon goes on, then started again;
3. ``--phase`` seconds to deliver the backlog and carry on;
4. the broker is stopped again for ``--phase / 2`` seconds, and the daemon is SIGKILLed with its backlog
   in the spool; the broker comes back and a new daemon starts on the same spool for ``--phase`` seconds,
   then SIGTERM.

Counted at the end: every event the spool ever numbered (its ``next_seq``) against what the subscriber got
(lost, duplicates, order by first arrival), how long each backlog took to drain, and the objects whose
``end`` never came because the process holding them was killed.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devices.host import machine

REPO = Path(__file__).resolve().parents[1]


class Broker:
    """mosquitto with persistence in ``folder``, restartable on the same port."""

    def __init__(self, folder: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.config = folder / "mosquitto.conf"
        # `user`: started as root, mosquitto would switch to the user 'mosquitto', which cannot write the
        # persistence folder; the subscriber's session (and what is queued for it) would not survive a restart.
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                               f"persistence_location {folder}/\nlog_dest file {folder}/mosquitto.log\n"
                               f"user {getpass.getuser()}\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        exe = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
        self.proc = subprocess.Popen([exe, "-c", str(self.config)])
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("mosquitto did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Subscriber:
    def __init__(self, port: int) -> None:
        self.received: list[dict] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="faults-bench", clean_session=False)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("edgesight/+/events", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        event = json.loads(message.payload)
        with self.lock:
            self.received.append({"seq": event["seq"], "type": event["type"], "id": event["id"], "t": time.monotonic()})


class Daemon:
    def __init__(self, exe: Path, config: Path, work: Path, name: str) -> None:
        self.log_path = work / f"{name}.log"
        self.proc = subprocess.Popen([str(exe), "run", "--config", str(config)], cwd=work,
                                     stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT)
        for _ in range(600):
            match = re.search(r"http: serving on (http://\S+)", self.log_path.read_text(errors="replace"))
            if match:
                self.url = match.group(1)
                return
            time.sleep(0.1)
        raise SystemExit(f"{name} did not start:\n{self.log_path.read_text()}")

    def status(self) -> dict:
        return json.loads(urllib.request.urlopen(self.url + "/api/status", timeout=5).read())


def watch(daemon: Daemon, seconds: float, peaks: dict) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        depth = daemon.status()["publisher"]["spool_depth"]
        peaks["spool"] = max(peaks.get("spool", 0), depth)
        time.sleep(0.5)


def drain_time(daemon: Daemon, limit: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if daemon.status()["publisher"]["spool_depth"] == 0:
            return time.monotonic() - start
        time.sleep(0.2)
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "runs/test-bundles/yolox-nano-tflite-int8")
    parser.add_argument("--video", type=Path,
                        default=Path(os.environ.get("EDGESIGHT_MIRROR", REPO.parent / "shared")) / "videos/vtest.avi")
    parser.add_argument("--outage", type=float, default=60.0)
    parser.add_argument("--phase", type=float, default=30.0)
    parser.add_argument("--edgesight", type=Path, default=Path(sys.executable).with_name("edgesight"))
    args = parser.parse_args()
    # The daemon reads its config from a temporary folder, where a relative path would mean something else.
    args.bundle, args.video = args.bundle.resolve(), args.video.resolve()
    work = Path(tempfile.mkdtemp(prefix="faults-"))
    broker = Broker(work)
    broker.start()
    subscriber = Subscriber(broker.port)
    config = work / "camera.yaml"
    config.write_text(f"camera: gate\nbundle: {args.bundle}\nthreads: 2\n"
                      f"source: {{uri: {args.video}, loop: true, realtime: true}}\n"
                      f"sinks: {{mqtt: {{host: 127.0.0.1, port: {broker.port}, reconnect_max: 2}}}}\n"
                      "http: {host: 127.0.0.1, port: 0}\nwatch_bundle: false\n")
    peaks: dict = {}

    first = Daemon(args.edgesight, config, work, "first")
    watch(first, args.phase, peaks)
    broker.stop()
    watch(first, args.outage, peaks)
    outage_peak = peaks["spool"]
    broker.start()
    drained_after_outage = drain_time(first, 120)
    watch(first, args.phase, peaks)
    broker.stop()
    watch(first, args.phase / 2, peaks)
    backlog_at_kill = first.status()["publisher"]["spool_depth"]
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    broker.start()
    second = Daemon(args.edgesight, config, work, "second")
    drained_after_kill = drain_time(second, 120)
    watch(second, args.phase, peaks)
    second.proc.send_signal(signal.SIGTERM)
    exit_code = second.proc.wait(30)
    time.sleep(2.0)  # the last PUBACKed events reach the subscriber
    subscriber.client.loop_stop()
    broker.stop()

    with sqlite3.connect(work / "spool" / "events.sqlite") as db:
        numbered = db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0] - 1
        left = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        dropped = db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()[0]
    seen: dict[int, dict] = {}
    for message in subscriber.received:
        seen.setdefault(message["seq"], message)
    firsts = list(seen)
    lost = sorted(set(range(1, numbered + 1)) - set(seen))
    ends = {m["id"] for m in seen.values() if m["type"] == "end"}
    never_ended = [m["id"] for m in seen.values() if m["type"] == "new" and m["id"] not in ends]

    print(f"# daemon faults: {args.bundle.name}, {args.video.name} looped at 10 fps (realtime), motion gate on, "
          f"MQTT QoS 1 to a local mosquitto; {machine()}")
    print(f"# timeline: {args.phase:g} s running; broker down {args.outage:g} s; {args.phase:g} s; broker down "
          f"{args.phase / 2:g} s then SIGKILL; restart on the same spool for {args.phase:g} s; SIGTERM (exit "
          f"{exit_code}); work folder {work}")
    print("\n| figure | value |\n|---|---:|")
    rows = [
        ("events numbered by the spool (both runs)", numbered),
        ("events received (distinct seq)", len(seen)),
        ("**events lost**", len(lost)),
        ("duplicates (QoS 1 re-sends after reconnects)", len(subscriber.received) - len(seen)),
        ("**order kept** (first arrivals in seq order)", firsts == sorted(firsts)),
        ("spool depth at the end of the 60 s outage", outage_peak),
        ("seconds to deliver that backlog once the broker was back", f"{drained_after_outage:.1f}"),
        ("backlog in the spool at SIGKILL", backlog_at_kill),
        ("seconds for the restarted daemon to deliver it", f"{drained_after_kill:.1f}"),
        ("events left in the spool after SIGTERM / dropped by a full spool", f"{left} / {dropped}"),
        ("objects whose `end` never came (held by the killed process)", len(never_ended)),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")
    if lost:
        print(f"\nlost seqs: {lost[:50]}")


if __name__ == "__main__":
    main()
