"""The publisher: events into the durable spool, and out to every configured sink.

``submit`` returns once the events are fsynced in the spool; the sinks, each on its own thread, send them
on in order and acknowledge them separately, and an event leaves the spool when every sink has it. A sink
that is down never blocks ``submit``: its events wait on disk (bounded by ``events.spool_max_events``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from devices.daemon.config import DaemonConfig
from devices.daemon.events import Event
from devices.daemon.sinks import Sink, StateTopic
from devices.daemon.spool import Spool

log = logging.getLogger(__name__)


class Publisher:
    """Spool plus sinks. Build it with ``build_publisher``; ``start`` it; ``close`` it at shutdown.

    Args:
        spool: The durable queue (None when no sink is configured: events then go nowhere).
        sinks: The configured sinks, not yet started.
    """

    def __init__(self, spool: Spool | None, sinks: Sequence[Sink]) -> None:
        self.spool = spool
        self.sinks = list(sinks)
        self.submitted = 0
        # State for dashboards, by MQTT topic under <prefix>/<camera>: objects in view ("counts/<label>" and
        # "counts/<zone>/<label>") and line crossings since the start ("crossings/<line>/<direction>/<label>").
        self._state: Counter[str] = Counter()
        self._counted: dict[str, tuple[str, ...]] = {}  # object id -> the counts it is in now
        self._started = False

    def start(self) -> Publisher:
        """Start every sink's thread (the spool's backlog goes out first)."""
        if not self._started and self.spool is not None:
            for sink in self.sinks:
                sink.start(self.spool)
            self._started = True
        return self

    def submit(self, events: Sequence[Event]) -> list[Event]:
        """Spool ``events`` durably (returns once they are fsynced) and wake the sinks.

        Returns:
            The events with their ``seq`` (unnumbered when no sink is configured).
        """
        if not events:
            return []
        self.submitted += len(events)
        state_changed = False
        for event in events:
            label = event.label
            now = () if event.type == "end" else (f"counts/{label}", *(f"counts/{z}/{label}" for z in event.zones))
            before = self._counted.pop(event.id, ())
            if now:
                self._counted[event.id] = now
            if now != before:
                self._state.subtract(before)
                self._state.update(now)
                state_changed = True
            if event.line_crossing:
                line, direction = event.line_crossing
                self._state[f"crossings/{line}/{direction}/{label}"] += 1
                state_changed = True
        if self.spool is None:
            return list(events)
        numbered = self.spool.put(events)
        for sink in self.sinks:
            if state_changed:
                sink.set_state(dict(self._state))
            sink.wake()
        return numbered

    def stats(self) -> dict[str, Any]:
        """Spool depth, events dropped by a full spool, and per sink: sent, failed, rejected, connected."""
        return {
            "submitted": self.submitted,
            "spool_depth": self.spool.depth if self.spool else 0,
            "spool_dropped": self.spool.dropped if self.spool else 0,
            "next_seq": self.spool.next_seq if self.spool else None,
            "sinks": {sink.name: sink.stats() for sink in self.sinks},
        }

    def close(self, timeout: float = 2.0) -> None:
        """Send what the sinks acknowledge within ``timeout`` seconds; the rest stays spooled for next time."""
        deadline = time.monotonic() + timeout
        for sink in self.sinks:
            sink.finish_by(deadline)  # all sinks flush at once, then each is joined
        for sink in self.sinks:
            sink.close(deadline)
        if self.spool is not None:
            left = self.spool.depth
            if left:
                log.info("%d events stay in the spool %s for the next run", left, self.spool.path)
            self.spool.close()

    def __enter__(self) -> Publisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def dashboard_state(cfg: DaemonConfig) -> dict[str, StateTopic]:
    """Every state topic the publisher keeps for ``cfg`` (0 at the start), by topic under ``<prefix>/<camera>``."""
    labels = tuple(cfg.classes)
    topics = {f"counts/{label}": StateTopic("count", label) for label in labels}
    for zone in cfg.zones:
        for label in labels:
            if not zone.labels or label in zone.labels:
                topics[f"counts/{zone.name}/{label}"] = StateTopic("count", label, zone.name)
    if cfg.line is not None:
        for direction in ("in", "out"):
            for label in labels:
                if not cfg.line.labels or label in cfg.line.labels:
                    topics[f"crossings/{cfg.line.name}/{direction}/{label}"] = StateTopic(
                        "crossings", label, f"{cfg.line.name} {direction}")
    return topics


def build_publisher(cfg: DaemonConfig, camera: str | None = None) -> Publisher:
    """The publisher for ``cfg.sinks`` (not started), its spool at ``cfg.events.spool``.

    Args:
        cfg: The daemon config.
        camera: The camera's name in topics and events (None: ``cfg.camera``).

    Raises:
        ConfigError: The spool cannot be opened, or a sink's settings are unusable (e.g. its password file).
    """
    camera = camera or cfg.camera
    sinks: list[Sink] = []
    if cfg.sinks.mqtt is not None:
        from devices.daemon.sinks.mqtt import MqttSink

        snapshots = cfg.sinks.mqtt.snapshots and cfg.events.snapshots is not None
        sinks.append(MqttSink(cfg.sinks.mqtt, camera, dashboard_state(cfg), snapshots))
    if cfg.sinks.webhook is not None:
        from devices.daemon.sinks.webhook import WebhookSink

        sinks.append(WebhookSink(cfg.sinks.webhook))
    if cfg.sinks.jsonl is not None:
        from devices.daemon.sinks.jsonl import JsonlSink

        sinks.append(JsonlSink(cfg.sinks.jsonl))
    if not sinks:
        log.info("no sinks configured (sinks.mqtt, sinks.webhook, sinks.jsonl): events are not sent anywhere")
        return Publisher(None, [])
    spool = Spool(cfg.events.spool, [s.name for s in sinks], cfg.events.spool_max_events)
    return Publisher(spool, sinks)
