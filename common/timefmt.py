"""One form for every timestamp haexec prints or serves: ISO 8601 in UTC, milliseconds, `Z`
(`2026-12-04T01:31:02.123Z`), whatever the session's time zone."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_utc(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("a naive datetime has no place on the timeline; give it a time zone")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso() -> str:
    return iso_utc(datetime.now(UTC))
