"""The publisher's sinks against real services: a mosquitto broker, an HTTP server, files on disk.

Delivery is at-least-once (QoS 1), so checks de-duplicate by ``seq`` as a consumer does, then require
exactly the events submitted, in order.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from devices.daemon.config import DaemonConfig
from devices.daemon.publisher import Publisher, build_publisher
from tests.test_spool import make_events

mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is in the device extra: pip install -e '.[device]'")

REPO = Path(__file__).resolve().parents[1]
WAIT = 20.0  # seconds any delivery may take in these tests


def wait_until(condition, timeout: float = WAIT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def make_config(tmp_path: Path, **sinks) -> DaemonConfig:
    return DaemonConfig(
        camera="gate", bundle=str(tmp_path / "bundle"), source={"uri": "x"},
        events={"spool": str(tmp_path / "spool.sqlite"), "snapshots": None, "spool_max_events": 1000},
        sinks=sinks,
    )


def mqtt_sink(broker, **kw) -> dict:
    return {"host": broker.host, "port": broker.port, "reconnect_max": 1, **kw}


class Subscriber:
    """A real paho client, as a Home Assistant or Node-RED consumer is: persistent session, QoS 1 (or ``qos``)."""

    def __init__(self, broker, client_id: str = "test-subscriber", topic: str = "edgesight/#",
                 raw: bool = False, qos: int = 1) -> None:
        self.messages: list[tuple[str, str | bytes, bool]] = []
        #: (topic, QoS) of every message as the broker delivered it: min(the publisher's, this subscription's).
        self.qos: list[tuple[str, int]] = []
        self._raw = raw
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=qos)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "subscriber did not subscribe"

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            payload = message.payload if self._raw else message.payload.decode(errors="replace")  # JPEGs too
            self.messages.append((message.topic, payload, bool(message.retain)))
            self.qos.append((message.topic, message.qos))

    def events(self) -> list[dict]:
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith("/events")]

    def seqs(self) -> list[int]:
        """Sequence numbers in order of first arrival (QoS 1 may repeat one after a reconnect)."""
        seen: dict[int, None] = {}
        for event in self.events():
            seen.setdefault(event["seq"], None)
        return list(seen)

    def last(self, topic: str) -> str | None:
        with self._lock:
            values = [p for t, p, _ in self.messages if t == topic]
        return values[-1] if values else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(mosquitto):
    sub = Subscriber(mosquitto)
    yield sub
    sub.close()


# --- MQTT ------------------------------------------------------------------------------------------------


def test_mqtt_events_counts_and_availability(tmp_path, mosquitto, subscriber):
    publisher = build_publisher(make_config(tmp_path, mqtt=mqtt_sink(mosquitto))).start()
    wait_until(lambda: subscriber.last("edgesight/gate/availability") == "online", what="online")
    events = make_events(5)
    ends = [dataclasses.replace(e, type="end") for e in events[:2]]
    publisher.submit(events)
    publisher.submit(ends)
    wait_until(lambda: len(subscriber.seqs()) == 7, what="7 events")
    received = subscriber.events()
    assert subscriber.seqs() == list(range(1, 8))
    first = received[0]
    assert first["schema"] == "edgesight.event/1" and first["camera"] == "gate" and first["id"] == "obj-0"
    assert first["seq"] == 1 and first["type"] == "new" and first["box"] == [10.0, 20.0, 50.0, 120.0]
    # Counts: objects now per label, retained; 5 new, 2 ended.
    wait_until(lambda: subscriber.last("edgesight/gate/counts/pedestrian") == "3", what="count 3")
    assert subscriber.last("edgesight/gate/counts/stop_sign") == "0"  # every configured class, 0 when empty
    wait_until(lambda: publisher.stats()["spool_depth"] == 0, what="empty spool")
    stats = publisher.stats()
    assert stats["sinks"]["mqtt"]["sent"] == 7 and stats["sinks"]["mqtt"]["connected"] is True
    publisher.close(timeout=2)
    wait_until(lambda: subscriber.last("edgesight/gate/availability") == "offline", what="offline")
    # A consumer that connects later gets the retained state.
    late = Subscriber(mosquitto, client_id="late")
    wait_until(lambda: late.last("edgesight/gate/counts/pedestrian") == "3", what="retained count")
    assert late.last("edgesight/gate/availability") == "offline" and late.events() == []
    late.close()


def test_home_assistant_discovers_counts_occupancy_and_snapshots_per_class(tmp_path, mosquitto, subscriber):
    jinja2 = pytest.importorskip("jinja2", reason="Home Assistant renders templates with Jinja2 (torch needs it too)")
    cfg = make_config(tmp_path, mqtt=mqtt_sink(mosquitto))
    crosswalk = {"name": "crosswalk", "points": [[0, 0], [100, 0], [100, 100]], "labels": ["pedestrian"]}
    kerb = {"name": "kerb", "a": [0, 50], "b": [100, 50]}  # counts pedestrians crossing it
    cfg = DaemonConfig.model_validate({**cfg.model_dump(), "zones": [crosswalk], "line": kerb,
                                       "events": {**cfg.events.model_dump(), "snapshots": tmp_path / "snapshots"}})
    frames = [np.full((48, 64, 3), value, np.uint8) for value in (40, 120, 200)]
    events = make_events(3)  # 3 pedestrians in view; the second one's snapshot already deleted by the disk budget
    for i, frame in enumerate(frames):
        events[i] = dataclasses.replace(events[i], snapshot=str(tmp_path / f"obj-{i}.jpg"))
        if i != 1:
            cv2.imwrite(events[i].snapshot, frame)
    # In the crosswalk: obj-0 from the start, obj-1 from an update on; obj-0 then leaves the picture.
    events[0] = dataclasses.replace(events[0], zones=("crosswalk",))
    moved = dataclasses.replace(events[1], type="update", zones=("crosswalk",))
    left = dataclasses.replace(events[0], type="end")
    crossed = dataclasses.replace(events[2], type="update", line_crossing=("kerb", "in"))
    dashboard = Subscriber(mosquitto, client_id="dashboard", topic="edgesight/gate/snapshot/#", raw=True)
    publisher = build_publisher(cfg).start()
    publisher.submit(events)
    wait_until(lambda: subscriber.last("edgesight/gate/counts/crosswalk/pedestrian") == "1", what="1 in the zone")
    publisher.submit([moved])
    wait_until(lambda: subscriber.last("edgesight/gate/counts/crosswalk/pedestrian") == "2", what="2 in the zone")
    publisher.submit([left])
    wait_until(lambda: len(subscriber.seqs()) == 5, what="every event, the one without its snapshot file too")
    publisher.submit([crossed])
    wait_until(lambda: len(subscriber.seqs()) == 6, what="the crossing")
    assert subscriber.last("edgesight/gate/counts/pedestrian") == "2"
    publisher.close(timeout=2)
    assert subscriber.last("edgesight/gate/counts/crosswalk/pedestrian") == "1"
    assert subscriber.last("edgesight/gate/counts/crosswalk/stop_sign") is None  # the zone counts people only
    assert subscriber.last("edgesight/gate/crossings/kerb/in/pedestrian") == "1"
    assert subscriber.last("edgesight/gate/crossings/kerb/out/pedestrian") == "0"
    assert subscriber.last("edgesight/gate/crossings/kerb/in/stop_sign") is None  # the line counts people only
    dashboard.close()
    # Snapshots: obj-2's (the latest of the first three), none for obj-1's update (its file is gone), obj-0's end,
    # obj-2's crossing.
    shown = [cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).mean() for _, jpeg, _ in dashboard.messages]
    assert [round(v) for v in shown] == [200, 40, 200]
    # Home Assistant subscribes when it starts, maybe long after the daemon: everything it needs is retained.
    home_assistant = Subscriber(mosquitto, client_id="home-assistant", topic="homeassistant/#")
    wait_until(lambda: len(home_assistant.messages) == 10, what="10 discovery configs")
    home_assistant.close()
    configs = {topic: json.loads(payload) for topic, payload, retained in home_assistant.messages if retained}
    late = Subscriber(mosquitto, client_id="dashboard", topic="edgesight/gate/#", raw=True)
    wait_until(lambda: late.last("edgesight/gate/snapshot/pedestrian") is not None, what="the retained snapshot")
    late.close()
    # Every entity, the topic it reads (all really published and retained) and what Home Assistant shows now.
    expected = {
        "sensor/edgesight_gate/pedestrian_count": ("counts/pedestrian", "2"),
        "sensor/edgesight_gate/stop_sign_count": ("counts/stop_sign", "0"),
        "sensor/edgesight_gate/crosswalk_pedestrian_count": ("counts/crosswalk/pedestrian", "1"),
        "binary_sensor/edgesight_gate/pedestrian_occupancy": ("counts/pedestrian", "ON"),
        "binary_sensor/edgesight_gate/stop_sign_occupancy": ("counts/stop_sign", "OFF"),
        "binary_sensor/edgesight_gate/crosswalk_pedestrian_occupancy": ("counts/crosswalk/pedestrian", "ON"),
        "sensor/edgesight_gate/kerb_in_pedestrian_crossings": ("crossings/kerb/in/pedestrian", "1"),
        "sensor/edgesight_gate/kerb_out_pedestrian_crossings": ("crossings/kerb/out/pedestrian", "0"),
        "camera/edgesight_gate/pedestrian_snapshot": ("snapshot/pedestrian", 200),  # obj-2's, the latest
        "camera/edgesight_gate/stop_sign_snapshot": ("snapshot/stop_sign", None),  # no stop sign seen yet
    }
    assert sorted(configs) == sorted(f"homeassistant/{entity}/config" for entity in expected)
    assert len({c["unique_id"] for c in configs.values()}) == len(expected)
    assert {c["device"]["identifiers"][0] for c in configs.values()} == {"edgesight_gate"}  # one device
    for entity, (topic, shown) in expected.items():
        config = configs[f"homeassistant/{entity}/config"]
        assert config["availability_topic"] == "edgesight/gate/availability"  # unavailable with the daemon
        value = late.last(f"edgesight/gate/{topic}")
        if entity.startswith("camera/"):
            assert config["topic"] == f"edgesight/gate/{topic}"
            assert value is None if shown is None else round(
                cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_COLOR).mean()) == shown
            continue
        assert config["state_topic"] == f"edgesight/gate/{topic}"
        if entity.startswith("binary_sensor/"):  # on while the count is above 0, as Home Assistant renders it
            assert config["device_class"] == "occupancy"
            assert jinja2.Template(config["value_template"]).render(value=value.decode()) == shown
        else:
            assert value.decode() == shown
            assert config["state_class"] == ("total_increasing" if "crossings" in topic else "measurement")
    assert subscriber.last("edgesight/gate/availability") == "offline"


def test_mqtt_a_backlog_sends_only_its_latest_snapshot(tmp_path, mosquitto):
    cfg = make_config(tmp_path, mqtt=mqtt_sink(mosquitto, max_inflight=1))  # 10 events go out one by one
    cfg = cfg.model_copy(update={"events": cfg.events.model_copy(update={"snapshots": tmp_path / "snapshots"})})
    dashboard = Subscriber(mosquitto, client_id="dashboard", topic="edgesight/gate/snapshot/#", raw=True)
    events = make_events(10)
    for i, event in enumerate(events):
        events[i] = dataclasses.replace(event, snapshot=str(tmp_path / f"obj-{i}.jpg"))
        cv2.imwrite(events[i].snapshot, np.full((48, 64, 3), 20 * i, np.uint8))
    publisher = build_publisher(cfg).start()
    publisher.submit(events)
    wait_until(lambda: publisher.stats()["spool_depth"] == 0, what="empty spool")
    wait_until(lambda: dashboard.messages, what="a snapshot")
    publisher.close(timeout=2)
    dashboard.close()
    assert [topic for topic, _, _ in dashboard.messages] == ["edgesight/gate/snapshot/pedestrian"]  # one, not 10
    image = cv2.imdecode(np.frombuffer(dashboard.messages[0][1], np.uint8), cv2.IMREAD_COLOR)
    assert abs(float(image.mean()) - 180) < 2  # the last event's


def test_mqtt_state_goes_again_to_a_broker_that_lost_it(tmp_path, mosquitto):
    publisher = build_publisher(make_config(tmp_path, mqtt=mqtt_sink(mosquitto))).start()
    publisher.submit(make_events(2))
    wait_until(lambda: publisher.stats()["spool_depth"] == 0, what="empty spool")
    mosquitto.stop()
    for db in mosquitto.folder.glob("*.db"):  # a broker without persistence: its retained messages are gone
        db.unlink()
    mosquitto.start()
    wait_until(lambda: publisher.stats()["sinks"]["mqtt"]["connected"], what="reconnected")
    late = Subscriber(mosquitto, client_id="late", topic="#")
    wait_until(lambda: late.last("edgesight/gate/counts/pedestrian") == "2", what="the counts sent again")
    wait_until(lambda: late.last("homeassistant/sensor/edgesight_gate/pedestrian_count/config"), what="discovery")
    assert late.last("edgesight/gate/counts/stop_sign") == "0"
    assert late.last("edgesight/gate/availability") == "online"
    late.close()
    publisher.close(timeout=2)


def test_home_assistant_discovery_can_be_turned_off(tmp_path, mosquitto):
    home_assistant = Subscriber(mosquitto, client_id="home-assistant", topic="homeassistant/#")
    publisher = build_publisher(make_config(tmp_path, mqtt=mqtt_sink(mosquitto, discovery_prefix=None))).start()
    wait_until(lambda: publisher.stats()["sinks"]["mqtt"]["connected"], what="connected")
    publisher.submit(make_events(2))
    wait_until(lambda: publisher.stats()["spool_depth"] == 0, what="empty spool")
    publisher.close(timeout=2)
    home_assistant.close()
    assert home_assistant.messages == []


def test_mqtt_broker_outage_loses_nothing_and_keeps_order(tmp_path, mosquitto, subscriber, caplog):
    publisher = build_publisher(make_config(tmp_path, mqtt=mqtt_sink(mosquitto))).start()
    publisher.submit(make_events(20))
    wait_until(lambda: len(subscriber.seqs()) == 20, what="the first 20 events")

    mosquitto.stop()
    wait_until(lambda: not publisher.stats()["sinks"]["mqtt"]["connected"], what="the sink to notice")
    with caplog.at_level(logging.WARNING, logger="devices.daemon.sinks"):
        slowest = 0.0
        for i in range(20, 50):
            start = time.monotonic()
            publisher.submit(make_events(1, i))  # the broker is down: only the disk write
            slowest = max(slowest, time.monotonic() - start)
            time.sleep(0.05)  # 1.5 s of outage, during which paho retries
        assert publisher.stats()["spool_depth"] >= 30
        # The backlog is on disk: paho's in-memory queue holds no more than the in-flight window (+ the
        # availability and counts messages), however long the outage.
        assert len(publisher.sinks[0].client._out_messages) <= 20 + 3
        mosquitto.start()
        wait_until(lambda: len(subscriber.seqs()) == 50, what="all 50 events after the restart")
    assert slowest < 1.0, f"submit blocked for {slowest:.2f} s while the broker was down"
    assert subscriber.seqs() == list(range(1, 51))  # every event, in order, none extra
    assert [e["id"] for e in subscriber.events() if e["seq"] > 20][:1] == ["obj-20"]
    outage = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outage) == 1, [r.getMessage() for r in outage]  # once per outage, not per event
    message = outage[0].getMessage()
    assert f"{mosquitto.host}:{mosquitto.port}" in message and "fix:" in message
    wait_until(lambda: publisher.stats()["spool_depth"] == 0, what="empty spool")
    publisher.close(timeout=2)


def test_mqtt_broker_down_at_start_then_up(tmp_path, mosquitto, subscriber):
    mosquitto.stop()
    publisher = build_publisher(make_config(tmp_path, mqtt=mqtt_sink(mosquitto))).start()
    publisher.submit(make_events(10))
    time.sleep(0.5)
    assert publisher.stats()["spool_depth"] == 10
    mosquitto.start()
    wait_until(lambda: len(subscriber.seqs()) == 10, what="10 events")
    assert subscriber.seqs() == list(range(1, 11))
    publisher.close(timeout=2)


def test_mqtt5_and_qos2(tmp_path, mosquitto):
    # A subscriber at QoS 2 gets each message at the QoS it was published with (the broker sends the lower one).
    subscriber = Subscriber(mosquitto, client_id="qos2-subscriber", qos=2)
    publisher = build_publisher(make_config(tmp_path, mqtt=mqtt_sink(mosquitto, protocol="5", qos=2))).start()
    publisher.submit(make_events(5))
    wait_until(lambda: len(subscriber.seqs()) == 5, what="5 events")
    wait_until(lambda: publisher.stats()["spool_depth"] == 0, what="empty spool")
    publisher.close(timeout=2)
    subscriber.close()
    assert subscriber.seqs() == list(range(1, 6))
    events_qos = [qos for topic, qos in subscriber.qos if topic == "edgesight/gate/events"]
    assert events_qos == [2] * 5, subscriber.qos
    # The broker's own log: the sink connected with MQTT 5 (mosquitto writes p5; 3.1.1 shows as p2).
    log = (mosquitto.folder / "mosquitto.log").read_text()
    connects = [line for line in log.splitlines() if "New client connected" in line and " as edgesight-gate " in line]
    assert connects and all("(p5," in line for line in connects), log


CHILD = textwrap.dedent(
    """
    import sys, time
    from devices.daemon.config import DaemonConfig
    from devices.daemon.publisher import build_publisher
    from tests.test_spool import make_events

    cfg = DaemonConfig.model_validate_json(sys.argv[1])
    publisher = build_publisher(cfg).start()
    i = 0
    while True:
        batch = publisher.submit(make_events(1, i))
        print(batch[-1].seq, flush=True)  # durable once submit returned
        i += 1
        time.sleep(0.01)
    """
)


def test_sigkill_mid_run_backlog_goes_out_first_in_order(tmp_path, mosquitto, subscriber):
    cfg = make_config(tmp_path, mqtt=mqtt_sink(mosquitto))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, cfg.model_dump_json()], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    confirmed: list[int] = []
    try:
        wait_until(lambda: subscriber.last("edgesight/gate/availability") == "online", what="child online")
        for line in child.stdout:  # delivered live first
            confirmed.append(int(line))
            if len(subscriber.seqs()) >= 20:
                break
        mosquitto.stop()  # then the broker goes away and the child's events pile up in its spool
        for line in child.stdout:
            confirmed.append(int(line))
            if len(confirmed) >= len(subscriber.seqs()) + 40:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    delivered_before = len(subscriber.seqs())

    mosquitto.start()
    publisher: Publisher = build_publisher(cfg).start()  # a new daemon on the same spool
    new = publisher.submit(make_events(5, 10_000))
    wait_until(lambda: new[-1].seq in subscriber.seqs(), what="the new events")
    publisher.close(timeout=2)

    received = subscriber.seqs()
    assert set(confirmed) <= set(received)  # nothing the dead process had confirmed is lost
    assert received == list(range(1, received[-1] + 1))  # no gap, in order
    backlog = [s for s in received if s not in [e.seq for e in new]]
    assert len(backlog) - delivered_before >= 40
    assert received[-5:] == [e.seq for e in new]  # the backlog went out before the new events


def test_last_will_says_offline_when_the_process_dies(tmp_path, mosquitto, subscriber):
    cfg = make_config(tmp_path, mqtt=mqtt_sink(mosquitto))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, cfg.model_dump_json()], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        wait_until(lambda: subscriber.last("edgesight/gate/availability") == "online", what="online")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    wait_until(lambda: subscriber.last("edgesight/gate/availability") == "offline", what="the last will")


def test_full_spool_while_the_broker_is_away_counts_drops(tmp_path, mosquitto, caplog):
    mosquitto.stop()
    cfg = make_config(tmp_path, mqtt=mqtt_sink(mosquitto))
    cfg = cfg.model_copy(update={"events": cfg.events.model_copy(update={"spool_max_events": 10})})
    with caplog.at_level(logging.WARNING):
        publisher = build_publisher(cfg).start()
        for i in range(25):
            publisher.submit(make_events(1, i))
    stats = publisher.stats()
    assert stats["spool_depth"] == 10 and stats["spool_dropped"] == 15
    assert sum("is full" in r.getMessage() for r in caplog.records) == 1
    mosquitto.start()
    sub = Subscriber(mosquitto, client_id="after")
    wait_until(lambda: len(sub.seqs()) == 10, what="the 10 kept events")
    assert sub.seqs() == list(range(16, 26))  # the newest were kept
    publisher.close(timeout=2)
    sub.close()


# --- webhook ---------------------------------------------------------------------------------------------


class Endpoint:
    """A real HTTP server that answers the first ``fail_first`` POSTs with 503 (or, with ``torn``, with a 200
    whose body is cut short by a hang-up), and 400 to event ids in ``refuse``."""

    def __init__(self, fail_first: int = 0, refuse: tuple[str, ...] = (), torn: bool = False) -> None:
        self.bodies: list[dict] = []
        self.attempts = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.attempts += 1
                if endpoint.attempts <= fail_first and torn:
                    self.send_response(200)
                    self.send_header("Content-Length", "100")
                    self.end_headers()
                    self.wfile.write(b"{")
                    self.close_connection = True
                    return
                if endpoint.attempts <= fail_first:
                    status = 503
                elif body["id"] in refuse:
                    status = 400
                else:
                    status = 200
                    endpoint.bodies.append(body)
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_retries_with_backoff_then_delivers_in_order(tmp_path, caplog):
    endpoint = Endpoint(fail_first=3, refuse=("obj-6",))
    webhook = {"url": endpoint.url, "backoff_initial": 0.05, "backoff_max": 0.2}
    with caplog.at_level(logging.WARNING):
        publisher = build_publisher(make_config(tmp_path, webhook=webhook)).start()
        publisher.submit(make_events(10))
        wait_until(lambda: len(endpoint.bodies) == 9, what="9 accepted POSTs")
    assert [b["seq"] for b in endpoint.bodies] == [1, 2, 3, 4, 5, 6, 8, 9, 10]  # in order, each once
    wait_until(lambda: publisher.stats()["spool_depth"] == 0, what="empty spool")
    stats = publisher.stats()["sinks"]["webhook"]
    assert stats["failed"] == 3 and stats["rejected"] == 1 and stats["sent"] == 9
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1
    assert any("refused event seq 7 with HTTP 400" in r.getMessage() for r in caplog.records)
    publisher.close(timeout=2)
    endpoint.close()


def test_webhook_answer_cut_short_is_retried(tmp_path):
    endpoint = Endpoint(fail_first=2, torn=True)
    webhook = {"url": endpoint.url, "backoff_initial": 0.05, "backoff_max": 0.1}
    publisher = build_publisher(make_config(tmp_path, webhook=webhook)).start()
    publisher.submit(make_events(4))
    wait_until(lambda: publisher.stats()["spool_depth"] == 0, what="empty spool")
    assert [b["seq"] for b in endpoint.bodies] == [1, 2, 3, 4]
    assert publisher.stats()["sinks"]["webhook"]["failed"] == 2
    publisher.close(timeout=1)
    endpoint.close()


# --- JSONL -----------------------------------------------------------------------------------------------


def test_jsonl_rotates_and_keeps_whole_lines(tmp_path):
    path = tmp_path / "out" / "events.jsonl"
    publisher = build_publisher(make_config(tmp_path, jsonl={"path": str(path), "max_mb": 0.002, "backups": 2}))
    publisher.start()
    for i in range(30):
        publisher.submit(make_events(1, i))
    wait_until(lambda: publisher.stats()["spool_depth"] == 0, what="empty spool")
    publisher.close(timeout=2)
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    assert all(p.stat().st_size <= 0.002 * 1024 * 1024 for p in path.parent.iterdir())
    lines = [json.loads(line) for name in ("events.jsonl.2", "events.jsonl.1", "events.jsonl")
             for line in (path.parent / name).read_text().splitlines()]
    kept = [e["seq"] for e in lines]
    assert kept == list(range(31 - len(kept), 31))  # the newest, oldest file first, nothing torn
    assert 6 <= len(kept) < 30


# --- several sinks ---------------------------------------------------------------------------------------


def test_each_sink_acknowledges_separately(tmp_path, mosquitto, subscriber):
    path = tmp_path / "events.jsonl"
    endpoint_down = "http://127.0.0.1:9/hook"  # the discard port: nothing listens
    cfg = make_config(
        tmp_path, mqtt=mqtt_sink(mosquitto), jsonl={"path": str(path)},
        webhook={"url": endpoint_down, "backoff_initial": 0.05, "backoff_max": 0.1},
    )
    publisher = build_publisher(cfg).start()
    publisher.submit(make_events(8))
    wait_until(lambda: len(subscriber.seqs()) == 8, what="mqtt")
    # MQTT (once its PUBACKs are in) and the file have them; the webhook does not: they stay for it alone.
    sinks = lambda: publisher.stats()["sinks"]  # noqa: E731
    wait_until(lambda: sinks()["mqtt"]["pending"] == 0 and sinks()["jsonl"]["pending"] == 0, what="acks")
    assert len(path.read_text().splitlines()) == 8
    assert publisher.stats()["spool_depth"] == 8 and sinks()["webhook"]["pending"] == 8
    publisher.close(timeout=0.5)

    endpoint = Endpoint()
    cfg = cfg.model_copy(update={"sinks": cfg.sinks.model_copy(update={
        "webhook": cfg.sinks.webhook.model_copy(update={"url": endpoint.url})})})
    publisher = build_publisher(cfg).start()  # restarted with the webhook back
    wait_until(lambda: len(endpoint.bodies) == 8, what="webhook backlog")
    assert [b["seq"] for b in endpoint.bodies] == list(range(1, 9))
    wait_until(lambda: publisher.stats()["spool_depth"] == 0, what="empty spool")
    assert len(subscriber.seqs()) == 8 and len(path.read_text().splitlines()) == 8  # not sent twice
    publisher.close(timeout=1)
    endpoint.close()


def test_mqtt_credentials_from_a_password_file(tmp_path, caplog):
    from tests.conftest import Mosquitto

    broker = Mosquitto(tmp_path / "auth-broker", users={"camera": "s3cret-pass"})
    broker.start()
    try:
        wrong = tmp_path / "wrong"
        wrong.write_text("not-it\n")
        with caplog.at_level(logging.ERROR, logger="devices.daemon.sinks"):
            publisher = build_publisher(make_config(
                tmp_path, mqtt=mqtt_sink(broker, username="camera", password_file=str(wrong)))).start()
            publisher.submit(make_events(3))
            wait_until(lambda: any("refused the connection" in r.getMessage() for r in caplog.records),
                       what="the refusal")
            time.sleep(2.5)  # paho retries meanwhile
            publisher.close(timeout=0.5)
        refused = [r.getMessage() for r in caplog.records if "refused the connection" in r.getMessage()]
        assert len(refused) == 1 and "password_file" in refused[0]  # once, with the fix
        assert publisher.stats()["spool_depth"] == 3  # kept for when the credentials are right

        right = tmp_path / "right"
        right.write_text("s3cret-pass\n")
        publisher = build_publisher(make_config(
            tmp_path, mqtt=mqtt_sink(broker, username="camera", password_file=str(right)))).start()
        wait_until(lambda: publisher.stats()["spool_depth"] == 0, what="the backlog sent")
        assert publisher.stats()["sinks"]["mqtt"]["sent"] == 3
        publisher.close(timeout=1)
    finally:
        broker.stop()


def test_missing_password_file_is_a_clear_error(tmp_path, mosquitto):
    from devices.errors import ConfigError

    cfg = make_config(tmp_path, mqtt=mqtt_sink(mosquitto, username="u", password_file=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="password_file") as error:
        build_publisher(cfg)
    assert "chmod 600" in error.value.fix
