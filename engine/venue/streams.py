"""The feed on Redis Streams: the venue publishes every tick it matched and every bar close,
replicas read them.

Keys (the trading side's, so here and not in coordinator/keys.py, which knows only the
protocol): `haexec:{cluster}:ticks:{symbol}` and `haexec:{cluster}:bars:{symbol}`, each
trimmed with `XADD ... MAXLEN ~ N` (bounded, trimmed in whole macro nodes, so cheaply).

Entry ids are the market's time, not Redis's: a tick's id is `<tick ms>-0`, a bar's
`<close ms>-<timeframe index>` (M1 0 .. D1 6, so the bars closing at one moment go in
order of length). Redis refuses an id not above the stream's last, so a venue that
restarts and publishes a tick again adds nothing (counted as a duplicate), and a reader
can ask for "everything after 12:00:00.250" with XRANGE by time. Fields are strings:
`bid`, `ask` and `last` (when there is one) as decimal text, digit for digit; bars carry
`tf`, `open`, `high`, `low`, `close` (decimal text), `tick_volume` and `spread` (points).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis

from engine.market.base import Bars, Tick, Timeframe, price

TIMEFRAMES = tuple(Timeframe)


def ticks_key(cluster: str, symbol: str) -> str:
    return f"haexec:{cluster}:ticks:{symbol}"


def bars_key(cluster: str, symbol: str) -> str:
    return f"haexec:{cluster}:bars:{symbol}"


def tick_id(tick: Tick) -> str:
    return f"{tick.time_ms}-0"


def tick_fields(tick: Tick) -> dict[str, str]:
    fields = {"bid": str(tick.bid), "ask": str(tick.ask)}
    if tick.last is not None:
        fields["last"] = str(tick.last)
    return fields


def decode_tick(symbol: str, entry_id: str, fields: dict[str, str], now_ms: int) -> Tick:
    time_ms = int(entry_id.split("-", 1)[0])
    last = fields.get("last")
    return Tick(
        symbol=symbol,
        time_ms=time_ms,
        bid=Decimal(fields["bid"]),
        ask=Decimal(fields["ask"]),
        last=Decimal(last) if last is not None else None,
        age_ms=max(0, now_ms - time_ms),
    )


@dataclass(frozen=True)
class BarClose:
    """One closed bar as the stream carries it (prices in Decimal)."""

    symbol: str
    timeframe: Timeframe
    time_ms: int  # its open
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    tick_volume: int
    spread: int

    @property
    def close_ms(self) -> int:
        return self.time_ms + self.timeframe.ms

    @property
    def entry_id(self) -> str:
        return f"{self.close_ms}-{TIMEFRAMES.index(self.timeframe)}"

    @classmethod
    def of(cls, bars: Bars, i: int = 0) -> BarClose:
        d = bars.digits
        return cls(
            bars.symbol,
            bars.timeframe,
            int(bars.time_ms[i]),
            price(int(bars.open[i]), d),
            price(int(bars.high[i]), d),
            price(int(bars.low[i]), d),
            price(int(bars.close[i]), d),
            int(bars.tick_volume[i]),
            int(bars.spread[i]),
        )

    def fields(self) -> dict[str, str]:
        return {
            "tf": self.timeframe.name,
            "open": str(self.open),
            "high": str(self.high),
            "low": str(self.low),
            "close": str(self.close),
            "tick_volume": str(self.tick_volume),
            "spread": str(self.spread),
        }

    @classmethod
    def decode(cls, symbol: str, entry_id: str, fields: dict[str, str]) -> BarClose:
        close_ms = int(entry_id.split("-", 1)[0])
        tf = Timeframe[fields["tf"]]
        return cls(
            symbol,
            tf,
            close_ms - tf.ms,
            Decimal(fields["open"]),
            Decimal(fields["high"]),
            Decimal(fields["low"]),
            Decimal(fields["close"]),
            int(fields["tick_volume"]),
            int(fields["spread"]),
        )


@dataclass(frozen=True)
class Published:
    added: int
    duplicates: int  # already in the stream (a restart publishing again): nothing added


def _is_duplicate(result: Any) -> bool:
    return isinstance(result, redis.ResponseError) and "equal or smaller" in str(result)


class Publisher:
    """Publishes a batch of ticks and bar closes in one pipelined round trip."""

    def __init__(self, client: redis.Redis, cluster: str, maxlen: int) -> None:
        self._r = client
        self.cluster = cluster
        self.maxlen = maxlen

    def publish(self, ticks: Sequence[Tick], bars: Sequence[BarClose] = ()) -> Published:
        if not ticks and not bars:
            return Published(0, 0)
        pipe = self._r.pipeline(transaction=False)
        for t in ticks:
            fields: dict[Any, Any] = tick_fields(t)
            pipe.xadd(ticks_key(self.cluster, t.symbol), fields, id=tick_id(t), maxlen=self.maxlen, approximate=True)
        for b in sorted(bars, key=lambda b: (b.symbol, b.close_ms, TIMEFRAMES.index(b.timeframe))):
            bar_fields: dict[Any, Any] = b.fields()
            pipe.xadd(bars_key(self.cluster, b.symbol), bar_fields, id=b.entry_id, maxlen=self.maxlen, approximate=True)
        results = pipe.execute(raise_on_error=False)
        duplicates = sum(1 for r in results if _is_duplicate(r))
        for r in results:
            if isinstance(r, Exception) and not _is_duplicate(r):
                raise r
        return Published(len(results) - duplicates, duplicates)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(raw: Any) -> list[tuple[str, dict[str, str]]]:
    """XRANGE's answer as text, whether the client decodes responses or not."""
    return [(_text(i), {_text(k): _text(v) for k, v in (f or {}).items()}) for i, f in (raw or [])]


def latest_tick(client: redis.Redis, cluster: str, symbol: str, now_ms: int) -> Tick | None:
    """The newest tick on the stream (its age from `now_ms`), or None for an empty stream."""
    entries = _entries(client.xrevrange(ticks_key(cluster, symbol), count=1))
    if not entries:
        return None
    entry_id, fields = entries[0]
    return decode_tick(symbol, entry_id, fields, now_ms)


def ticks_after(
    client: redis.Redis, cluster: str, symbol: str, after_ms: int, now_ms: int, count: int = 1000
) -> list[Tick]:
    """Ticks later than `after_ms`, oldest first, at most `count` (exclusive XRANGE by time)."""
    entries = _entries(client.xrange(ticks_key(cluster, symbol), min=f"({after_ms}-0", max="+", count=count))
    return [decode_tick(symbol, entry_id, fields, now_ms) for entry_id, fields in entries]


def bars_after(
    client: redis.Redis, cluster: str, symbol: str, after_close_ms: int, count: int = 1000
) -> list[BarClose]:
    """Bars that closed later than `after_close_ms`, oldest first."""
    first = f"({after_close_ms}-{len(TIMEFRAMES)}"
    entries = _entries(client.xrange(bars_key(cluster, symbol), min=first, max="+", count=count))
    return [BarClose.decode(symbol, entry_id, fields) for entry_id, fields in entries]
