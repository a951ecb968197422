"""A JSON Lines file: one event per line, fsynced, rotated by size.

The file is rotated as ``logging.handlers.RotatingFileHandler`` does (``events.jsonl`` -> ``events.jsonl.1``
-> ... -> ``events.jsonl.<backups>``, the oldest deleted), between events, so every line of every file is a
whole event. Events are acknowledged in the spool once their lines are fsynced.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from devices.daemon.config import JsonlConfig
from devices.daemon.sinks import BatchSink, SinkDown
from devices.daemon.spool import Spooled


class JsonlSink(BatchSink):
    """Appends each spooled event to ``cfg.path``.

    Args:
        cfg: The ``sinks.jsonl`` section.
    """

    def __init__(self, cfg: JsonlConfig) -> None:
        super().__init__(
            "jsonl",
            f"the file {cfg.path}",
            f"free disk space or make {Path(cfg.path).parent} writable",
            backoff_initial=1.0,
            backoff_max=30.0,
        )
        self.path = Path(cfg.path)
        self.max_bytes = int(cfg.max_mb * 1024 * 1024)
        self.backups = cfg.backups
        self.rotations = 0

    def send(self, records: Sequence[Spooled]) -> None:
        synced = 0  # records whose lines are fsynced
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while synced < len(records):
                with open(self.path, "ab") as file:
                    size = file.tell()
                    taken = 0
                    for record in records[synced:]:
                        line = record.payload.encode() + b"\n"
                        if size and size + len(line) > self.max_bytes:
                            break
                        file.write(line)
                        size += len(line)
                        taken += 1
                    file.flush()
                    os.fsync(file.fileno())
                synced += taken
                if synced < len(records):
                    self._rotate()
        except OSError as exc:
            # Lines written since the last fsync may or may not be on disk: they are not acknowledged and are
            # written again (a duplicate line is better than a lost event).
            raise SinkDown(f"{exc.strerror or exc}", delivered=synced) from exc

    def _rotate(self) -> None:
        """events.jsonl -> .1 -> .2 ...; the file beyond ``backups`` is deleted (no backups: truncated)."""
        self.rotations += 1
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
            return
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
