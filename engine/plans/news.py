"""Scheduled news events from a file, for the news filter (`haexec news import FILE`).

CSV, a header line naming at least `time,currency,impact,title` (and optionally `source`):
ISO 8601 times with an offset (`2026-12-04T13:30:00Z`), a three-letter currency, impact
`high`, `medium` or `low` (any case).

iCalendar (`.ics`, parsed by the icalendar package): each VEVENT's DTSTART (a date-time;
a floating one is taken as UTC) and SUMMARY; the currency is `X-CURRENCY`, else the
SUMMARY's leading three capitals (`USD: Non-Farm Payrolls`, `[USD] CPI`); the impact is
`X-IMPACT`, else PRIORITY (1-4 high, 5 medium, 6-9 low), else high.

A file with any bad row is refused whole, naming the file and its line (or event).
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime
from pathlib import Path

NewsRow = tuple[datetime, str, str, str, str]  # at, currency, impact, title, source

IMPACTS = ("high", "medium", "low")
CURRENCY_RE = re.compile(r"[A-Z]{3}")
LEADING_CURRENCY = re.compile(r"^\[?([A-Z]{3})\]?[\s:-]")
MAX_TITLE = 200


class NewsFileError(ValueError):
    """One line naming the file, the place in it and what is wrong."""


def load(path: Path) -> list[NewsRow]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise NewsFileError(f"{path}: {exc.strerror or exc}") from None
    if path.suffix.lower() in (".ics", ".ical", ".icalendar") or raw.lstrip().startswith(b"BEGIN:VCALENDAR"):
        return parse_ics(raw, str(path))
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise NewsFileError(f"{path}: not UTF-8 text") from None
    return parse_csv(text, str(path))


def parse_csv(text: str, name: str) -> list[NewsRow]:
    reader = csv.DictReader(io.StringIO(text))
    missing = {"time", "currency", "impact", "title"} - set(reader.fieldnames or ())
    if missing:
        raise NewsFileError(f"{name}: line 1: the header needs {', '.join(sorted(missing))}")
    rows: list[NewsRow] = []
    for row in reader:
        where = f"{name}: line {reader.line_num}"
        at = _time(row.get("time") or "", where)
        rows.append(
            (
                at,
                _currency(row.get("currency") or "", where),
                _impact(row.get("impact") or "", where),
                _title(row.get("title") or "", where),
                (row.get("source") or "").strip() or name,
            )
        )
    return rows


def parse_ics(raw: bytes, name: str) -> list[NewsRow]:
    import icalendar

    try:
        calendar = icalendar.Calendar.from_ical(raw)
    except ValueError as exc:
        raise NewsFileError(f"{name}: not an iCalendar file: {exc}") from None
    rows: list[NewsRow] = []
    for i, event in enumerate(calendar.walk("VEVENT"), start=1):
        summary = str(event.get("SUMMARY") or "").strip()
        where = f"{name}: event {i} ({summary[:40] or 'no summary'})"
        start = event.get("DTSTART")
        moment = start.dt if start is not None else None
        if not isinstance(moment, datetime):
            kind = "a date without a time" if isinstance(moment, date) else "missing"
            raise NewsFileError(f"{where}: DTSTART must be a date-time ({kind})")
        at = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        currency = str(event.get("X-CURRENCY") or "").strip()
        if not currency:
            found = LEADING_CURRENCY.match(summary)
            currency = found[1] if found else ""
        impact = str(event.get("X-IMPACT") or "").strip()
        if not impact:
            priority = event.get("PRIORITY")
            level = int(priority) if priority is not None else 1
            impact = "high" if 1 <= level <= 4 else "medium" if level == 5 else "low" if level else "high"
        rows.append((at, _currency(currency, where), _impact(impact, where), _title(summary, where), name))
    return rows


def _time(value: str, where: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise NewsFileError(f"{where}: time {value!r:.40} is not ISO 8601") from None
    if parsed.tzinfo is None:
        raise NewsFileError(f"{where}: time {value!r:.40} has no offset (add Z for UTC)")
    return parsed.astimezone(UTC)


def _currency(value: str, where: str) -> str:
    text = value.strip().upper()
    if not CURRENCY_RE.fullmatch(text):
        raise NewsFileError(f"{where}: currency {value!r:.20} is not three letters")
    return text


def _impact(value: str, where: str) -> str:
    text = value.strip().lower()
    if text not in IMPACTS:
        raise NewsFileError(f"{where}: impact {value!r:.20} is not one of {', '.join(IMPACTS)}")
    return text


def _title(value: str, where: str) -> str:
    text = value.strip()
    if not text or len(text) > MAX_TITLE or not text.isprintable():
        raise NewsFileError(f"{where}: title must be 1..{MAX_TITLE} printable characters")
    return text
