"""What the leader's executor last saw of the database, for /health on another thread."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DbHealth:
    """A snapshot, replaced whole by the executor's thread and read as one by any other."""

    ok_at: float  # time.monotonic() when a sweep last got through
    error: str | None = None  # the last database error since then; None: none since

    def failed(self, error: str) -> DbHealth:
        return DbHealth(self.ok_at, error)
