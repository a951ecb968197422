"""MQTT with paho-mqtt 2.x (callback API version 2): events, retained counts, availability.

Topics (``<prefix>/<camera>/...``):

- ``events``: each event's JSON, QoS 1 (or 2), not retained. An event leaves the spool when the broker's
  PUBACK arrives (paho's ``on_publish``). Delivery is at-least-once: an event whose PUBACK was lost in a
  disconnect or a crash is sent again, so consumers de-duplicate by ``seq``.
- ``counts/<label>``: objects of that label in view now, an integer, retained (Home Assistant sensors read
  it as is); ``counts/<zone>/<label>`` the same within each zone; ``crossings/<line>/<in|out>/<label>``: line
  crossings since the daemon started. Published on change and all again on every (re)connect; state, not
  history, so not spooled.
- ``snapshot/<label>``: the JPEG of the last event of that label that has a snapshot (its best one so far),
  retained, QoS 0: state for a dashboard, not spooled. Sent once the sink has caught up with the spool (of a
  backlog only the latest matters); a snapshot already deleted by the disk budget is skipped.
- ``availability``: ``online`` on connect, ``offline`` on a clean close; the broker publishes ``offline``
  itself (the last will) when the daemon vanishes. Retained.

Home Assistant MQTT discovery (``discovery_prefix``, on by default): on every connect, retained config
messages for a count sensor (``<discovery>/sensor/edgesight_<camera>/<label>_count/config``) and an occupancy
binary sensor (``.../binary_sensor/...``, on while the count is above 0) per class, read from
``counts/<label>``, the same pair per zone and class, a ``total_increasing`` sensor per line direction and
class, and with snapshots a camera per class (``.../camera/...``) showing ``snapshot/<label>``. All are
unavailable with the ``availability`` topic and grouped as one device per camera.

At most ``max_inflight`` events are unacknowledged at once. While the broker is away nothing new is handed to
paho (its own queue lives in memory); paho re-sends what was in flight when it reconnects, and the spool
holds the rest, so a long outage costs disk, not memory.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devices.daemon.config import MqttConfig
from devices.daemon.sinks import Sink, StateTopic
from devices.daemon.spool import Spool
from devices.errors import ConfigError, require
from devices.host import package_version

log = logging.getLogger(__name__)

_STATE_QOS = 1
_OFFLINE_WAIT = 1.0  # seconds a clean close waits for the broker to take 'offline'


class MqttSink(Sink):
    """Publishes spooled events to an MQTT broker.

    Args:
        cfg: The ``sinks.mqtt`` section.
        camera: The camera's name (in the topics and the default client id).
        state: Every state topic (``publisher.dashboard_state``), published as 0 until counted, so that a stale
            retained value is overwritten.
        snapshots: Publish each event's snapshot on ``snapshot/<label>`` (events have snapshots and
            ``cfg.snapshots`` is on).
    """

    def __init__(
        self,
        cfg: MqttConfig,
        camera: str,
        state: Mapping[str, StateTopic] | None = None,
        snapshots: bool = False,
    ) -> None:
        super().__init__(
            "mqtt",
            f"the MQTT broker {cfg.host}:{cfg.port}",
            f"start the broker (systemctl start mosquitto) or correct sinks.mqtt.host/port ({cfg.host}:{cfg.port})",
        )
        mqtt = require("paho.mqtt.client", "device", "The MQTT sink")
        self.cfg = cfg
        base = f"{cfg.topic_prefix.rstrip('/')}/{camera}"
        self.events_topic = f"{base}/events"
        self.base = base
        self.availability_topic = f"{base}/availability"
        self.snapshot_topic = f"{base}/snapshot" if snapshots else None
        state = state or {}
        self.discovery = (
            discovery_messages(cfg.discovery_prefix, base, camera, state, snapshots) if cfg.discovery_prefix else []
        )
        self._state: dict[str, int] = dict.fromkeys(state, 0)
        self._state_dirty = False
        self._state_sent: dict[str, int] = {}  # what the broker holds (emptied on connect: all go again)
        self._acks: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self._refused_logged = False

        protocol = mqtt.MQTTv5 if cfg.protocol == "5" else mqtt.MQTTv311
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"edgesight-{camera}",
            protocol=protocol,
        )
        if cfg.username is not None:
            self.client.username_pw_set(cfg.username, _read_password(cfg.password_file))
        if cfg.tls:
            self.client.tls_set()
        self.client.will_set(self.availability_topic, "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=cfg.reconnect_max)
        self.client.max_inflight_messages_set(cfg.max_inflight)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

    def set_state(self, state: Mapping[str, int]) -> None:
        changed = {topic: n for topic, n in state.items() if self._state.get(topic) != n}
        if changed:
            # A new dict, swapped in whole: the sink's thread may be iterating over the old one.
            self._state = {**self._state, **changed}
            self._state_dirty = True
            self._wake.set()

    # --- paho callbacks (paho's network thread: only record and wake the sink's thread) ----------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.connected = False
            if not self._refused_logged:
                log.error(
                    "mqtt sink: %s refused the connection: %s. fix: check sinks.mqtt.username/password_file and "
                    "the broker's ACL; events wait in the spool meanwhile",
                    self.where, reason_code.getName(),
                )
                self._refused_logged = True
            return
        self._refused_logged = False
        for topic, payload in self.discovery:
            client.publish(topic, payload, qos=1, retain=True)
        client.publish(self.availability_topic, "online", qos=1, retain=True)
        self._state_sent = {}  # a broker that restarted without persistence holds none of them
        self._state_dirty = True
        self._up()
        self._wake.set()

    def _on_connect_fail(self, client, userdata) -> None:
        self._down(_probe(self.cfg.host, self.cfg.port) if not self._down_since else "")
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._deadline is None:  # not our own disconnect at close
            self._down(f"connection lost: {reason_code.getName()}")
        self.connected = False
        self._wake.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acks.put((mid, reason_code))
        self._wake.set()

    # --- the sink's thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        assert self.spool is not None
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self.client.loop_start()
        inflight: dict[int, int] = {}  # paho message id -> seq
        snapshots: dict[str, str] = {}  # label -> snapshot path of its latest event sent
        cursor = 0
        while True:
            self._take_acks(self.spool, inflight)
            if self.connected and self._state_dirty:
                self._publish_state()
            batch = []
            if self.connected and len(inflight) < self.cfg.max_inflight:
                room = self.cfg.max_inflight - len(inflight)
                batch = self.spool.pending(self.name, after=cursor, limit=room)
                for record in batch:
                    info = self.client.publish(self.events_topic, record.payload, qos=self.cfg.qos)
                    inflight[info.mid] = record.seq
                    cursor = record.seq
                    if self.snapshot_topic:
                        event = json.loads(record.payload)
                        if event.get("snapshot"):
                            snapshots[event["label"]] = event["snapshot"]
                if snapshots and len(batch) < room:  # caught up: of a backlog, only the latest snapshot matters
                    self._publish_snapshots(snapshots)
                    snapshots = {}
            # Flushed (only asked while closing: it counts rows): nothing in flight and nothing left for us.
            if self._stopping(flushed=self._deadline is not None and self.spool.depth_of(self.name) == 0):
                break
            if not batch:
                self._wait(1.0)
        self._disconnect()

    def _take_acks(self, spool: Spool, inflight: dict[int, int]) -> None:
        """Acknowledge in the spool the events whose PUBACK (PUBCOMP for QoS 2) arrived."""
        acked = []
        while True:
            try:
                mid, reason_code = self._acks.get_nowait()
            except queue.Empty:
                break
            seq = inflight.pop(mid, None)
            if seq is None:
                continue  # a counts or availability message
            if reason_code.is_failure:
                # MQTT 5: the broker took the message and refused it (ACL, quota); sending again cannot help.
                self.rejected += 1
                log.error("mqtt sink: the broker refused event seq %d: %s", seq, reason_code.getName())
            else:
                self.sent += 1
            acked.append(seq)
        spool.ack(self.name, acked)

    def _publish_state(self) -> None:
        self._state_dirty = False
        for topic, n in self._state.items():  # the current dict; set_state swaps in a new one
            if self._state_sent.get(topic) != n:
                self.client.publish(f"{self.base}/{topic}", str(n), qos=_STATE_QOS, retain=True)
                self._state_sent[topic] = n

    def _publish_snapshots(self, snapshots: Mapping[str, str]) -> None:
        """Each label's latest snapshot file as it is now (its object's best so far) on ``snapshot/<label>``."""
        for label, path in snapshots.items():
            try:
                image = Path(path).read_bytes()
            except OSError as exc:  # deleted by the snapshots' disk budget since: its event went out all the same
                log.debug("mqtt sink: snapshot %s not published: %s", path, exc)
                continue
            self.client.publish(f"{self.snapshot_topic}/{label}", image, qos=0, retain=True)

    def _disconnect(self) -> None:
        """Say 'offline' (a clean close is not a will case) and stop paho's thread."""
        if self.connected:
            info = self.client.publish(self.availability_topic, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(_OFFLINE_WAIT)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()
        self.connected = False


def discovery_messages(
    prefix: str, base: str, camera: str, state: Mapping[str, StateTopic], snapshots: bool = False
) -> list[tuple[str, str]]:
    """Home Assistant's MQTT discovery config messages for this camera: (topic, JSON payload) pairs.

    Args:
        prefix: Home Assistant's discovery prefix (``homeassistant`` unless changed there).
        base: This camera's topic root, ``<topic_prefix>/<camera>``.
        camera: The camera's name.
        state: The state topics under ``base`` (``publisher.dashboard_state``).
        snapshots: Whether ``snapshot/<label>`` is published (then a camera entity per class shows it).
    """
    node = _discovery_id(f"edgesight_{camera}")
    device = {
        "identifiers": [node],
        "name": f"edgesight {camera}",
        "manufacturer": "edgesight",
        "model": "camera daemon",
        "sw_version": package_version("edgesight"),
    }
    entity = {"availability_topic": f"{base}/availability", "device": device, "origin": {"name": "edgesight"}}
    root = prefix.rstrip("/")
    messages = []
    for topic, what in state.items():
        name = " ".join(filter(None, (what.where, what.label.replace("_", " "))))
        key = _discovery_id(name.replace(" ", "_"))
        reads = {**entity, "state_topic": f"{base}/{topic}"}
        if what.kind == "crossings":  # since the daemon started: Home Assistant takes a drop to 0 as a restart
            sensor = {**reads, "name": f"{name} crossings", "unique_id": f"{node}_{key}_crossings",
                      "state_class": "total_increasing", "icon": "mdi:transfer"}
            messages.append((f"{root}/sensor/{node}/{key}_crossings/config", json.dumps(sensor)))
            continue
        sensor = {**reads, "name": f"{name} count", "unique_id": f"{node}_{key}_count",
                  "state_class": "measurement", "icon": "mdi:counter"}
        occupancy = {**reads, "name": f"{name} detected", "unique_id": f"{node}_{key}_occupancy",
                     "device_class": "occupancy", "value_template": "{{ 'ON' if value | int > 0 else 'OFF' }}"}
        messages.append((f"{root}/sensor/{node}/{key}_count/config", json.dumps(sensor)))
        messages.append((f"{root}/binary_sensor/{node}/{key}_occupancy/config", json.dumps(occupancy)))
    for label in sorted({what.label for what in state.values()}) if snapshots else ():
        image = {**entity, "topic": f"{base}/snapshot/{label}", "name": f"{label.replace('_', ' ')} snapshot",
                 "unique_id": f"{node}_{_discovery_id(label)}_snapshot"}
        messages.append((f"{root}/camera/{node}/{_discovery_id(label)}_snapshot/config", json.dumps(image)))
    return messages


def _discovery_id(name: str) -> str:
    """``name`` as Home Assistant accepts it in a discovery topic and a unique id: [a-zA-Z0-9_-] only."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def _probe(host: str, port: int) -> str:
    """Why a connection fails, in the words of the OS (paho's on_connect_fail does not say)."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        return f"cannot connect: {exc.strerror or exc}"
    return "the connection failed (the port answers: is it an MQTT broker, and TLS as configured?)"


def _read_password(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"sinks.mqtt.password_file {path} cannot be read: {exc.strerror}",
            "create the file with the broker password (chmod 600), or remove password_file",
        ) from exc
