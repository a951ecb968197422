"""Open once, use, close: the lifecycle every runtime resource on the device shares, written once.

Backends, bundle detectors and peers hold an interpreter or a session: building one costs a model load and
a warm-up, so it is opened once, used for every frame, and released by ``close`` (or by leaving a ``with``
block). ``open`` on an open resource and ``close`` on a closed one do nothing.
"""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

_R = TypeVar("_R", bound="Openable")


class Openable:
    """Mixin: ``open``/``close`` plus the context manager around them; subclasses write ``open`` and ``close``."""

    def open(self) -> None:
        """Acquire the resource (a no-op when it is open)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the resource (a no-op when it is closed); ``open`` acquires it again."""
        raise NotImplementedError

    def __enter__(self: _R) -> _R:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
