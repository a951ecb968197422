"""`edgesight run` with its events and sinks, end to end, from the torch-free device venv: a real
mosquitto stopped and restarted under a running daemon, a daemon SIGKILLed and started again on its spool,
SIGTERM and end of file flushing the JSONL sink."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import time
from pathlib import Path

from tests.test_daemon import INT8, DaemonProcess, daemon  # noqa: F401 (the fixture)
from tests.test_sinks import Subscriber, subscriber  # noqa: F401 (the fixture)

SCHEMA_KEYS = {"schema", "id", "seq", "type", "camera", "label", "score", "top_score", "box", "box_norm",
               "frame_time", "frame_time_unix", "frame_index", "zones", "line_crossing", "bundle", "snapshot"}


def _contiguous(seqs: list[int]) -> bool:
    return seqs == list(range(1, len(seqs) + 1))


def _spool_rows(path: Path) -> tuple[str, int, int]:
    """(integrity check, rows still pending, next seq) of a spool file, read with sqlite3 itself."""
    with sqlite3.connect(path) as db:
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        pending = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        next_seq = db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0]
    return check, pending, next_seq


def _start(daemon, test_bundles: Path, clip: Path, *extra: str) -> DaemonProcess:  # noqa: F811
    process = daemon("--bundle", test_bundles / INT8, "--source", clip, "--http", "127.0.0.1:0",
                     "--camera", "gate", *extra)
    process.wait_http()
    return process


def test_broker_stopped_and_restarted_every_event_arrives_in_order(daemon, test_bundles: Path, clip: Path,  # noqa: F811
                                                                   mosquitto, subscriber: Subscriber) -> None:  # noqa: F811
    process = _start(daemon, test_bundles, clip, "--loop", "--mqtt", f"{mosquitto.host}:{mosquitto.port}")
    deadline = time.monotonic() + 30
    while len(subscriber.seqs()) < 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(subscriber.seqs()) >= 5, process.log
    first = subscriber.events()[0]
    assert SCHEMA_KEYS <= set(first) and first["schema"] == "edgesight.event/1" and first["camera"] == "gate"
    assert first["bundle"]["sha256"] == process.status()["bundle"]["sha256"]

    mosquitto.stop()
    backlog = process.until(lambda s: s["publisher"]["spool_depth"] >= 10, 30, "events spooling while down")
    assert backlog["health"]["ok"]  # the camera side does not care that the broker is away
    mosquitto.start()
    process.until(lambda s: s["publisher"]["spool_depth"] == 0 and s["publisher"]["sinks"]["mqtt"]["connected"],
                  30, "backlog delivered")
    code, elapsed = process.stop()
    assert code == 0 and elapsed < 2.0, (code, elapsed)

    check, pending, next_seq = _spool_rows(process.log_path.parent / "spool" / "events.sqlite")
    received = subscriber.seqs()
    assert _contiguous(received), received  # every event, in order, nothing twice in first-arrival order
    assert (check, pending) == ("ok", 0) and received[-1] == next_seq - 1  # the ends of SIGTERM too
    ends = {e["id"] for e in subscriber.events() if e["type"] == "end"}
    assert {e["id"] for e in subscriber.events() if e["type"] == "new"} <= ends


def test_sigkill_mid_run_spool_is_intact_and_delivers_on_restart(daemon, test_bundles: Path, clip: Path,  # noqa: F811
                                                                  mosquitto, subscriber: Subscriber) -> None:  # noqa: F811
    broker = f"{mosquitto.host}:{mosquitto.port}"
    first = _start(daemon, test_bundles, clip, "--loop", "--mqtt", broker)
    first.until(lambda s: s["publisher"]["submitted"] >= 5, 30, "events")
    mosquitto.stop()
    piled = first.until(lambda s: s["publisher"]["spool_depth"] >= 10, 30, "events spooling while down")
    first.proc.send_signal(signal.SIGKILL)
    first.wait(10)
    spool = first.log_path.parent / "spool" / "events.sqlite"
    check, pending, next_seq = _spool_rows(spool)
    assert check == "ok" and pending >= piled["publisher"]["spool_depth"]
    spooled_before = next_seq - 1

    mosquitto.start()
    second = _start(daemon, test_bundles, clip, "--mqtt", broker)  # same working folder: same spool
    assert second.wait(60) == 0, second.log  # the clip ends; the backlog went out before the exit
    received = subscriber.seqs()
    assert _contiguous(received), received
    assert received[-1] > spooled_before  # the second run's own events came after the backlog
    check, pending, _ = _spool_rows(spool)
    assert (check, pending) == ("ok", 0)


def test_end_of_file_flushes_the_jsonl_sink(daemon, test_bundles: Path, clip: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "events.jsonl"
    process = daemon("--bundle", test_bundles / INT8, "--source", clip, "--jsonl", out, "--http", "127.0.0.1:0")
    assert process.wait(60) == 0, process.log
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert events and _contiguous([e["seq"] for e in events])
    assert {e["id"] for e in events if e["type"] == "new"} == {e["id"] for e in events if e["type"] == "end"}
    assert all(e["schema"] == "edgesight.event/1" and e["label"] in ("pedestrian", "stop_sign") for e in events)
    assert _spool_rows(tmp_path / "spool" / "events.sqlite")[1] == 0
    assert "stopped (exit 0, OK): 60 frames" in process.log


def test_sigterm_flushes_the_jsonl_sink(daemon, test_bundles: Path, clip: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "events.jsonl"
    process = _start(daemon, test_bundles, clip, "--loop", "--jsonl", out)
    process.until(lambda s: s["publisher"]["submitted"] >= 10, 30, "events")
    code, elapsed = process.stop()
    assert code == 0 and elapsed < 2.0, (code, elapsed)
    events = [json.loads(line) for line in out.read_text().splitlines()]
    _, pending, next_seq = _spool_rows(tmp_path / "spool" / "events.sqlite")
    assert pending == 0 and [e["seq"] for e in events] == list(range(1, next_seq))
    open_ids = {e["id"] for e in events if e["type"] == "new"} - {e["id"] for e in events if e["type"] == "end"}
    assert not open_ids  # SIGTERM ended every open track and the sink got those ends


def test_sigterm_with_sinks_down_or_hung_exits_in_time_and_keeps_the_backlog(daemon, test_bundles: Path,  # noqa: F811
                                                                              clip: Path, tmp_path: Path,
                                                                              mosquitto) -> None:
    # A webhook that accepts the connection and never answers (each POST hangs for its 5 s timeout) and an
    # MQTT broker that is down: SIGTERM must still end the process within 2 s, and nothing may be lost.
    hung = socket.create_server(("127.0.0.1", 0))
    mosquitto.stop()
    config = tmp_path / "c.yaml"
    config.write_text(f"bundle: {test_bundles / INT8}\nsource: {{uri: {clip}, loop: true}}\nhttp: {{port: 0}}\n"
                      f"sinks:\n  mqtt: {{host: 127.0.0.1, port: {mosquitto.port}}}\n"
                      f"  webhook: {{url: 'http://127.0.0.1:{hung.getsockname()[1]}/hook', timeout: 5}}\n")
    process = daemon("--config", config)
    process.wait_http()
    process.until(lambda s: s["publisher"]["spool_depth"] >= 5, 30, "events spooling")
    code, elapsed = process.stop()
    hung.close()
    assert code == 0 and elapsed < 2.0, (code, elapsed, process.log[-3000:])
    check, pending, next_seq = _spool_rows(tmp_path / "spool" / "events.sqlite")
    assert check == "ok" and pending == next_seq - 1 >= 5  # every event still waits for its sinks
