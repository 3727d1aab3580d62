"""Market hours: when the venue trades a symbol, as weekly sessions in UTC.

The sim feed runs around the clock (weekends too), so hours are the venue's setting, not
the feed's: `HAEXEC_VENUE_HOURS`. `always` (the default) opens every symbol all week.
Otherwise `;`-separated entries `SYMBOL=SESSIONS` (`*` for every symbol not named), each
SESSIONS `always`, `never`, or comma-separated `DAY[-DAY] HH:MM-HH:MM` (Mon..Sun, 24:00
allowed as an end), e.g. forex from Sunday 22:00 to Friday 22:00 and bitcoin all week:

    *=Sun 22:00-24:00,Mon-Thu 00:00-24:00,Fri 00:00-22:00;BTCUSD=always

A symbol neither named nor covered by `*` is open all week. A closed market rejects every
request and triggers nothing; when it opens, its first tick is where gaps are filled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from common.errors import ConfigError

SETTING = "HAEXEC_VENUE_HOURS"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEK_MIN = 7 * 1440
DAY_MS = 86_400_000
_SESSION = re.compile(r"(?P<d0>[a-z]{3})(?:-(?P<d1>[a-z]{3}))?\s+(?P<t0>\d{2}:\d{2})-(?P<t1>\d{2}:\d{2})")


def minute_of_week(time_ms: int) -> int:
    """Minutes since Monday 00:00 UTC. 1970-01-01 was a Thursday (day 3 from Monday)."""
    days, in_day = divmod(time_ms, DAY_MS)
    return ((days + 3) % 7) * 1440 + in_day // 60_000


@dataclass(frozen=True)
class Sessions:
    """Half-open [start, end) minute-of-week intervals; `None` is always open."""

    intervals: tuple[tuple[int, int], ...] | None = None

    def is_open(self, time_ms: int) -> bool:
        if self.intervals is None:
            return True
        m = minute_of_week(time_ms)
        return any(start <= m < end for start, end in self.intervals)


ALWAYS = Sessions()
NEVER = Sessions(())


@dataclass(frozen=True)
class TradingHours:
    by_symbol: Mapping[str, Sessions] = field(default_factory=dict)
    default: Sessions = ALWAYS
    text: str = "always"

    def sessions(self, symbol: str) -> Sessions:
        return self.by_symbol.get(symbol, self.default)

    def is_open(self, symbol: str, time_ms: int) -> bool:
        return self.sessions(symbol).is_open(time_ms)


def _minute(text: str, raw: str) -> int:
    hh, mm = int(text[:2]), int(text[3:])
    if hh > 24 or mm > 59 or (hh == 24 and mm):
        raise ConfigError(SETTING, f"{text} is not a time of day 00:00..24:00 (in {raw!r})")
    return hh * 60 + mm


def _day(text: str, raw: str) -> int:
    if text not in DAYS:
        raise ConfigError(SETTING, f"{text!r} is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun) (in {raw!r})")
    return DAYS.index(text)


def parse_sessions(text: str, raw: str) -> Sessions:
    spec = text.strip().lower()
    if spec == "always":
        return ALWAYS
    if spec == "never":
        return NEVER
    intervals: list[tuple[int, int]] = []
    for part in spec.split(","):
        part = part.strip()
        m = _SESSION.fullmatch(part)
        if m is None:
            raise ConfigError(SETTING, f"{part!r} is not `DAY[-DAY] HH:MM-HH:MM`, always or never (in {raw!r})")
        d0 = _day(m["d0"], raw)
        d1 = _day(m["d1"], raw) if m["d1"] else d0
        if d1 < d0:
            raise ConfigError(SETTING, f"{part!r}: days run Mon..Sun, so {m['d0']}-{m['d1']} goes backwards")
        t0, t1 = _minute(m["t0"], raw), _minute(m["t1"], raw)
        if t1 <= t0:
            raise ConfigError(SETTING, f"{part!r}: a session ends after it starts (split one across midnight in two)")
        intervals.extend((d * 1440 + t0, d * 1440 + t1) for d in range(d0, d1 + 1))
    return Sessions(tuple(sorted(intervals)))


def parse_hours(raw: str | None) -> TradingHours:
    """HAEXEC_VENUE_HOURS; ConfigError (one line naming it) for anything it cannot read."""
    if raw is None or raw.strip() == "" or raw.strip().lower() == "always":
        return TradingHours()
    by_symbol: dict[str, Sessions] = {}
    default = ALWAYS
    seen: set[str] = set()
    for entry in raw.split(";"):
        if not entry.strip():
            continue
        name, eq, sessions = entry.partition("=")
        name = name.strip()
        if not eq or not name:
            raise ConfigError(SETTING, f"{entry.strip()!r} is not SYMBOL=SESSIONS (or *=SESSIONS)")
        if name in seen:
            raise ConfigError(SETTING, f"{name} is given more than once")
        seen.add(name)
        parsed = parse_sessions(sessions, raw)
        if name == "*":
            default = parsed
        else:
            by_symbol[name] = parsed
    return TradingHours(by_symbol, default, raw.strip())
