"""The durable spool: every event is on disk before any sink sees it, and leaves only when every sink has it.

One SQLite file in WAL mode with ``synchronous=FULL`` (each commit is fsynced, so an event that ``put``
returned survives a power cut, a SIGKILL or a crash). Each event row carries a bit per configured sink that
still owes it an acknowledgement; a sink's acknowledgement clears its bit and a row with no bits left is
deleted. Sinks read their backlog in ``seq`` order, so after a broker outage or a restart the oldest events
go out first.

``seq`` is global and increasing across restarts (a counter in the same file, never reused even when rows
are deleted). The spool is bounded: beyond ``max_events`` the oldest rows are deleted, and the number
dropped is counted in the file (it survives restarts) and reported.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from devices.daemon.events import Event
from devices.errors import ConfigError

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, payload TEXT NOT NULL, pending INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sinks (name TEXT PRIMARY KEY, bit INTEGER NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('next_seq', 1), ('dropped', 0);
"""
_MAX_SINKS = 62  # bits of a SQLite integer, with room for the sign


@dataclass(frozen=True)
class Spooled:
    """An event as stored: its sequence number and its JSON text (``seq`` included)."""

    seq: int
    payload: str


class Spool:
    """A bounded, durable, ordered queue of event JSON with per-sink acknowledgements.

    Thread-safe: ``put`` runs on the loop's thread, ``pending``/``ack`` on each sink's thread.

    Args:
        path: The SQLite file (created with its folder).
        sinks: Names of the configured sinks. Events spooled for a sink no longer configured are released
            (logged), so that they do not wait forever.
        max_events: Most events kept; beyond it the oldest are dropped and counted.

    Raises:
        ConfigError: The file cannot be opened, is not a spool, or another process uses it.
    """

    def __init__(self, path: str | Path, sinks: Sequence[str], max_events: int) -> None:
        self.path = Path(path)
        self.max_events = max_events
        self._lock = threading.Lock()
        self._full_logged = False
        self._owner = self._claim()
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), one per call.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._bits = self._register(sinks)
            # Counters kept in memory (this process is the spool's only writer), so stats cost no query.
            self._depth = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            self._sink_depth = {
                name: self._db.execute("SELECT COUNT(*) FROM events WHERE pending & ?", (bit,)).fetchone()[0]
                for name, bit in self._bits.items()
            }
            self._next_seq, self._dropped = (
                self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0]
                for key in ("next_seq", "dropped")
            )
        except (sqlite3.Error, OSError) as exc:
            os.close(self._owner)
            raise ConfigError(
                f"the event spool {self.path} cannot be opened: {exc}",
                "point events.spool at a writable file (a corrupt spool can be moved aside; its events are lost)",
            ) from exc
        if self._depth:
            log.info("spool %s holds %d events from before; they go out first", self.path, self._depth)

    # --- writing -------------------------------------------------------------------------------------------

    def put(self, events: Sequence[Event]) -> list[Event]:
        """Store events durably (fsynced when this returns), numbering them; returns them with ``seq`` set."""
        if not events:
            return []
        all_bits = sum(self._bits.values())
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                first = self._next_seq
                numbered = [dataclasses.replace(e, seq=first + i) for i, e in enumerate(events)]
                self._db.executemany(
                    "INSERT INTO events VALUES (?, ?, ?)",
                    [(e.seq, json.dumps(e.to_dict(), separators=(",", ":")), all_bits) for e in numbered],
                )
                self._db.execute("UPDATE meta SET value=? WHERE key='next_seq'", (first + len(events),))
                dropped, dropped_per_sink = self._trim(len(events))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._next_seq = first + len(events)
            self._depth += len(events) - dropped
            self._dropped += dropped
            for name in self._sink_depth:
                self._sink_depth[name] += len(events) - dropped_per_sink[name]
        if dropped:
            if not self._full_logged:
                log.warning(
                    "the event spool %s is full (%d events): the oldest are being dropped (%d so far, counted in "
                    "stats); the sinks have been unreachable for too long. fix: bring the sinks back, or raise "
                    "events.spool_max_events",
                    self.path, self.max_events, self.dropped,
                )
                self._full_logged = True
        elif self._full_logged and self._depth < self.max_events // 2:
            self._full_logged = False
        return numbered

    def _trim(self, added: int) -> tuple[int, dict[str, int]]:
        """Delete the oldest rows beyond ``max_events`` (inside put's transaction).

        Returns:
            How many rows, and how many of them each sink was still owed.
        """
        per_sink = dict.fromkeys(self._bits, 0)
        excess = self._depth + added - self.max_events
        if excess <= 0:
            return 0, per_sink
        oldest = self._db.execute("SELECT seq, pending FROM events ORDER BY seq LIMIT ?", (excess,)).fetchall()
        for _, pending in oldest:
            for name, bit in self._bits.items():
                per_sink[name] += bool(pending & bit)
        self._db.executemany("DELETE FROM events WHERE seq = ?", [(seq,) for seq, _ in oldest])
        self._db.execute("UPDATE meta SET value = value + ? WHERE key='dropped'", (excess,))
        return excess, per_sink

    # --- reading and acknowledging -------------------------------------------------------------------------

    def pending(self, sink: str, after: int = 0, limit: int = 100) -> list[Spooled]:
        """The oldest events ``sink`` has not acknowledged, with ``seq > after``, in order."""
        bit = self._bits[sink]
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, payload FROM events WHERE seq > ? AND pending & ? ORDER BY seq LIMIT ?",
                (after, bit, limit),
            ).fetchall()
        return [Spooled(seq, payload) for seq, payload in rows]

    def ack(self, sink: str, seqs: Iterable[int]) -> None:
        """Record that ``sink`` has these events; rows no sink still needs are deleted."""
        seqs = list(seqs)
        if not seqs:
            return
        bit = self._bits[sink]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cleared = self._db.executemany(
                    "UPDATE events SET pending = pending & ? WHERE seq = ? AND pending & ?",
                    [(~bit, s, bit) for s in seqs],
                ).rowcount
                deleted = self._db.executemany(
                    "DELETE FROM events WHERE seq = ? AND pending = 0", [(s,) for s in seqs]
                ).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._depth -= max(deleted, 0)
            self._sink_depth[sink] -= max(cleared, 0)

    # --- state ---------------------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Events waiting for at least one sink."""
        return self._depth

    def depth_of(self, sink: str) -> int:
        """Events waiting for ``sink``."""
        return self._sink_depth[sink]

    @property
    def dropped(self) -> int:
        """Events dropped by a full spool, over the life of this spool file."""
        return self._dropped

    @property
    def next_seq(self) -> int:
        """The ``seq`` the next event gets."""
        return self._next_seq

    def close(self) -> None:
        with self._lock:
            self._db.close()
            os.close(self._owner)  # releases the lock

    def _claim(self) -> int:
        """Lock ``<spool>.lock`` for this process: two daemons on one spool would send each other's events."""
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(
                f"the event spool {self.path} cannot be opened: {exc.strerror or exc}",
                "point events.spool at a file in a writable folder",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(
                f"the event spool {self.path} is in use by another edgesight process (pid {holder})",
                "stop that daemon, or give this one its own events.spool (one spool per camera)",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    def _register(self, sinks: Sequence[str]) -> dict[str, int]:
        """Give each sink its bit (kept across restarts), and release events of sinks no longer configured."""
        if len(sinks) > _MAX_SINKS:
            raise ConfigError(f"{len(sinks)} sinks configured", f"use at most {_MAX_SINKS}")
        known = dict(self._db.execute("SELECT name, bit FROM sinks").fetchall())
        self._db.execute("BEGIN IMMEDIATE")
        for name in set(known) - set(sinks):
            released = self._db.execute(
                "UPDATE events SET pending = pending & ? WHERE pending & ?", (~known[name], known[name])
            ).rowcount
            if released:
                log.warning("%d spooled events were waiting for the sink '%s', which is no longer configured; "
                            "they are released", released, name)
            self._db.execute("DELETE FROM sinks WHERE name = ?", (name,))
            del known[name]
        for name in sinks:
            if name not in known:
                bit = next(1 << i for i in range(_MAX_SINKS) if (1 << i) not in known.values())
                self._db.execute("INSERT INTO sinks VALUES (?, ?)", (name, bit))
                known[name] = bit
        self._db.execute("DELETE FROM events WHERE pending = 0")
        self._db.execute("COMMIT")
        return {name: known[name] for name in sinks}
