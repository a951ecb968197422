"""The durable spool: order, numbering across restarts, per-sink acknowledgements, bounds, and a SIGKILL."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from devices.daemon.events import Event
from devices.daemon.spool import Spool

REPO = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000.0


def make_events(n: int, start: int = 0) -> list[Event]:
    """``n`` distinct events (ids obj-<start>..), as the pipeline makes them."""
    return [
        Event(
            type="new", id=f"obj-{i}", camera="gate", label="pedestrian", score=0.9, top_score=0.9,
            box=(10.0, 20.0, 50.0, 120.0), box_norm=(0.01, 0.03, 0.06, 0.2), frame_time=T0 + i, frame_index=i,
            start_time=T0 + i, last_seen=T0 + i, zones=(), line_crossing=None, bundle_name="b",
            bundle_sha256="ab" * 32, snapshot=None,
        )
        for i in range(start, start + n)
    ]


def seqs(records) -> list[int]:
    return [r.seq for r in records]


def test_put_numbers_durably_and_keeps_numbering_across_restarts(tmp_path):
    spool = Spool(tmp_path / "s.sqlite", ["mqtt"], max_events=100)
    numbered = spool.put(make_events(3))
    assert [e.seq for e in numbered] == [1, 2, 3]
    assert [json.loads(r.payload)["seq"] for r in spool.pending("mqtt")] == [1, 2, 3]
    spool.ack("mqtt", [1, 2, 3])
    assert spool.depth == 0
    spool.close()
    # A restart: rows were deleted, numbering goes on (seq is never reused).
    spool = Spool(tmp_path / "s.sqlite", ["mqtt"], max_events=100)
    assert [e.seq for e in spool.put(make_events(2, 3))] == [4, 5]
    assert spool.next_seq == 6
    journal = sqlite3.connect(tmp_path / "s.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert journal == "wal"


def test_pending_in_order_after_a_cursor(tmp_path):
    spool = Spool(tmp_path / "s.sqlite", ["mqtt"], max_events=100)
    spool.put(make_events(10))
    assert seqs(spool.pending("mqtt", after=0, limit=4)) == [1, 2, 3, 4]
    assert seqs(spool.pending("mqtt", after=4, limit=4)) == [5, 6, 7, 8]
    spool.ack("mqtt", [2, 5])  # acknowledgements may come out of order
    assert seqs(spool.pending("mqtt", after=0, limit=100)) == [1, 3, 4, 6, 7, 8, 9, 10]
    assert spool.depth == spool.depth_of("mqtt") == 8


def test_each_sink_acknowledges_separately(tmp_path):
    spool = Spool(tmp_path / "s.sqlite", ["mqtt", "webhook"], max_events=100)
    spool.put(make_events(4))
    spool.ack("mqtt", [1, 2, 3, 4])
    assert spool.pending("mqtt") == [] and seqs(spool.pending("webhook")) == [1, 2, 3, 4]
    assert spool.depth == 4 and spool.depth_of("mqtt") == 0 and spool.depth_of("webhook") == 4
    spool.ack("webhook", [1, 2])
    assert spool.depth == 2
    spool.ack("mqtt", [3])  # a repeated acknowledgement changes nothing
    assert spool.depth == 2 and spool.depth_of("webhook") == 2
    spool.close()
    # Reopened with only mqtt configured: the events owed to the removed webhook are released, not kept forever.
    spool = Spool(tmp_path / "s.sqlite", ["mqtt"], max_events=100)
    assert spool.depth == 0


def test_full_spool_drops_the_oldest_and_counts(tmp_path, caplog):
    spool = Spool(tmp_path / "s.sqlite", ["mqtt", "jsonl"], max_events=10)
    with caplog.at_level(logging.WARNING, logger="devices.daemon.spool"):
        for i in range(25):
            spool.put(make_events(1, i))
    assert spool.depth == 10 and spool.dropped == 15
    assert seqs(spool.pending("mqtt")) == list(range(16, 26))  # the newest are kept
    assert spool.depth_of("mqtt") == spool.depth_of("jsonl") == 10
    full = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(full) == 1 and "spool_max_events" in full[0].getMessage()  # logged once, with the fix
    spool.close()
    assert Spool(tmp_path / "s.sqlite", ["mqtt", "jsonl"], max_events=10).dropped == 15  # survives restarts


def test_unwritable_spool_is_a_clear_error(tmp_path):
    from devices.errors import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"events\.spool"):
        Spool(blocker / "s.sqlite", ["mqtt"], max_events=10)


CHILD = textwrap.dedent(
    """
    import sys
    from devices.daemon.spool import Spool
    from tests.test_spool import make_events

    spool = Spool(sys.argv[1], ["mqtt", "webhook"], max_events=100_000)
    i = 0
    while True:
        batch = spool.put(make_events(3, i))
        i += 3
        print(batch[-1].seq, flush=True)  # only once put() returned: these are durable
        if i % 30 == 0:
            spool.ack("mqtt", range(batch[-1].seq - 29, batch[-1].seq + 1))
    """
)


def test_sigkill_mid_write_leaves_an_intact_spool(tmp_path):
    path = tmp_path / "s.sqlite"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    confirmed = 0
    for line in child.stdout:
        confirmed = int(line)
        if confirmed >= 600:
            break
    child.send_signal(signal.SIGKILL)  # while it is writing: it never stops between two puts
    child.wait()
    assert child.returncode == -signal.SIGKILL

    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    spool = Spool(path, ["mqtt", "webhook"], max_events=100_000)
    rows = spool.pending("webhook", limit=100_000)
    # Every event put() confirmed is there, in order, with nothing missing or half-written after it (the
    # child may have confirmed a few more batches before the signal landed).
    assert len(rows) >= confirmed and seqs(rows) == list(range(1, len(rows) + 1))
    assert [json.loads(r.payload)["seq"] for r in rows] == seqs(rows)
    assert [json.loads(r.payload)["id"] for r in rows[:3]] == ["obj-0", "obj-1", "obj-2"]
    assert spool.next_seq == len(rows) + 1


def test_a_second_process_on_the_same_spool_is_refused(tmp_path):
    from devices.errors import ConfigError

    path = tmp_path / "s.sqlite"
    hold = "import sys, time\nfrom devices.daemon.spool import Spool\nSpool(sys.argv[1], ['mqtt'], 10)\n"
    hold += "print('open', flush=True)\ntime.sleep(60)"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(path)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(ConfigError, match=rf"in use by another edgesight process \(pid {holder.pid}\)"):
            Spool(path, ["mqtt"], 10)
    finally:
        holder.kill()
        holder.wait()
    Spool(path, ["mqtt"], 10).close()  # free again once that process is gone
