"""Where events go: MQTT, an HTTP webhook, a JSON Lines file.

Each sink runs in its own thread and moves its backlog out of the spool in ``seq`` order, acknowledging
each event in the spool only once the destination has it (MQTT: the broker's PUBACK; webhook: a 2xx
answer; JSONL: the line written and fsynced). A destination that is down is logged once per outage, with
where it is and what to do, and retried with backoff; its events wait in the spool meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from devices.daemon.spool import Spool, Spooled

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StateTopic:
    """What one dashboard state topic holds (``Publisher.submit`` keeps the numbers).

    Attributes:
        kind: ``count`` (objects in view now) or ``crossings`` (line crossings since the daemon started).
        label: The class counted.
        where: The zone, or ``<line> <direction>``, or None for the whole picture.
    """

    kind: Literal["count", "crossings"]
    label: str
    where: str | None = None


class SinkDown(Exception):
    """The destination cannot take events now (they stay spooled and are tried again).

    Args:
        reason: What failed, for the log.
        delivered: How many events from the front of the batch it did take before failing.
    """

    def __init__(self, reason: str, delivered: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delivered = delivered


class Sink(ABC):
    """A destination with its own thread. Subclasses say where it is, how to fix an outage, and implement
    ``_run`` (the delivery loop).

    Args:
        name: Its name in the spool and in stats (``mqtt``, ``webhook``, ``jsonl``).
        where: The destination, for messages (``host:port``, the URL, the file).
        fix: What a user does when it is down.
    """

    def __init__(self, name: str, where: str, fix: str) -> None:
        self.name = name
        self.where = where
        self.fix = fix
        self.sent = 0
        self.failed = 0  # attempts that failed (retried later)
        self.rejected = 0  # events the destination refused for good (not retried)
        self.connected = False
        self.spool: Spool | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._deadline: float | None = None  # set by close(): flush until then
        self._down_since: float | None = None
        self._thread: threading.Thread | None = None

    def start(self, spool: Spool) -> None:
        """Start delivering from ``spool``."""
        self.spool = spool
        self._thread = threading.Thread(target=self._guarded_run, name=f"sink-{self.name}", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """New events are in the spool."""
        self._wake.set()

    def set_state(self, state: Mapping[str, int]) -> None:  # noqa: B027 (optional hook, most sinks ignore it)
        """Counts for dashboards, by topic (``Publisher``: objects in view, line crossings); only MQTT sends them."""

    def finish_by(self, deadline: float) -> None:
        """Start closing: deliver what the destination takes until ``deadline`` (``time.monotonic()``)."""
        self._deadline = deadline
        self._wake.set()

    def close(self, deadline: float) -> None:
        """Close by ``deadline`` (see ``finish_by``) and wait for the thread."""
        self.finish_by(deadline)
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(2.0)

    def stats(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "failed": self.failed,
            "rejected": self.rejected,
            "connected": self.connected,
            "pending": self.spool.depth_of(self.name) if self.spool is not None else 0,
            "down_for": round(time.monotonic() - self._down_since, 1) if self._down_since is not None else 0.0,
        }

    # --- for subclasses ------------------------------------------------------------------------------------

    @abstractmethod
    def _run(self) -> None:
        """Deliver until ``_stopping()``."""

    def _stopping(self, flushed: bool) -> bool:
        """True once the sink should return: stopped, or closing and either flushed or past the deadline."""
        if self._stop.is_set():
            return True
        return self._deadline is not None and (flushed or time.monotonic() >= self._deadline)

    def _wait(self, seconds: float) -> None:
        """Sleep until woken (new events, a callback, close) or ``seconds`` pass."""
        if self._deadline is not None:
            seconds = min(seconds, max(0.0, self._deadline - time.monotonic()))
        self._wake.wait(seconds)
        self._wake.clear()

    def _down(self, reason: str) -> None:
        """Record a failure; the first of an outage is logged (with where, the backlog and the fix)."""
        self.connected = False
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "%s sink: %s is unreachable (%s); events wait in the spool %s and go out, in order, when it is "
                "back (logged once per outage). fix: %s",
                self.name, self.where, reason, self.spool.path if self.spool else "", self.fix,
            )

    def _up(self) -> None:
        self.connected = True
        if self._down_since is not None:
            log.info(
                "%s sink: %s is back after %.1f s; %d spooled events go out first",
                self.name, self.where, time.monotonic() - self._down_since,
                self.spool.depth_of(self.name) if self.spool else 0,
            )
            self._down_since = None

    def _guarded_run(self) -> None:
        try:
            self._run()
        except Exception:
            # A bug here must not take the daemon down silently: the events stay spooled, the log says why.
            log.exception("%s sink stopped by an unexpected error; its events stay in the spool", self.name)
            self.connected = False


class BatchSink(Sink):
    """A sink that delivers synchronously (``send`` returns once the destination has the events), with
    retries: doubling waits from ``backoff_initial`` to ``backoff_max``, forever (the spool holds the events).
    """

    batch_size = 50

    def __init__(self, name: str, where: str, fix: str, backoff_initial: float, backoff_max: float) -> None:
        super().__init__(name, where, fix)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max

    @abstractmethod
    def send(self, records: Sequence[Spooled]) -> None:
        """Deliver ``records`` in order; raise ``SinkDown`` (saying how many got through) when it cannot."""

    def _run(self) -> None:
        assert self.spool is not None
        cursor = 0
        backoff = self.backoff_initial
        while True:
            batch = self.spool.pending(self.name, after=cursor, limit=self.batch_size)
            if self._stopping(flushed=not batch):
                return
            if not batch:
                self._wait(1.0)
                continue
            rejected_before = self.rejected
            try:
                self.send(batch)
                done = len(batch)
            except SinkDown as exc:
                done = exc.delivered
                self.failed += 1
                self._down(exc.reason)
            except Exception as exc:
                # Not a known outage (a bug, or an error the sink does not expect): the same treatment, so the
                # thread survives and the events stay spooled; the traceback goes to the log once per outage.
                done = 0
                self.failed += 1
                if self._down_since is None:
                    log.exception("%s sink: unexpected error", self.name)
                self._down(f"unexpected {type(exc).__name__}: {exc}")
            if done:
                self.spool.ack(self.name, [r.seq for r in batch[:done]])
                self.sent += done - (self.rejected - rejected_before)
                cursor = batch[done - 1].seq
            if done == len(batch):
                self._up()
                backoff = self.backoff_initial
            else:
                self._wait(backoff)
                backoff = min(backoff * 2, self.backoff_max)
