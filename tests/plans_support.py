"""What the plan tests share: hand-made bars, a snapshot over them, and a fencing of a fixed
epoch checked against the real leader_record (coordinator/fencing.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
import psycopg

from coordinator.elector import Fence
from coordinator.fencing import fenced
from engine.market.base import Bars, MarketDataError, Tick, Timeframe
from engine.plans.conditions.base import BookLevel, NewsEvent

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def make_bars(symbol: str, tf: Timeframe, closes: Sequence[str], digits: int = 2, start_ms: int = T0) -> Bars:
    """Closed bars whose open, high and low equal their close (what the price rules read)."""
    pts = np.array([int(Decimal(c).scaleb(digits)) for c in closes], dtype=np.int64)
    times = np.array([start_ms + i * tf.ms for i in range(len(closes))], dtype=np.int64)
    zeros = np.zeros(len(closes), dtype=np.int64)
    return Bars.of_columns(symbol, tf, digits, [times, pts, pts, pts, pts, zeros, zeros])


@dataclass
class FakeSnapshot:
    now_ms: int = T0
    series: dict[tuple[str, Timeframe], Bars] = field(default_factory=dict)
    ticks: dict[str, Tick] = field(default_factory=dict)
    age_ms: int = 0
    events: list[NewsEvent] = field(default_factory=list)

    def bars(self, symbol: str, timeframe: Timeframe, count: int) -> Bars:
        got = self.series.get((symbol, timeframe))
        if got is None:
            raise MarketDataError(f"no {symbol} {timeframe.name} bars")
        return got.tail(count).aged(self.now_ms, self.age_ms)

    def tick(self, symbol: str) -> Tick:
        got = self.ticks.get(symbol)
        if got is None:
            raise MarketDataError(f"no {symbol} tick")
        return got

    def book(self, symbol: str) -> list[BookLevel] | None:
        return None

    def news(self, from_ms: int, to_ms: int) -> list[NewsEvent]:
        return [e for e in self.events if from_ms <= e.at_ms <= to_ms]


def tick(symbol: str, bid: str, ask: str, age_ms: int = 0) -> Tick:
    return Tick(symbol, T0, Decimal(bid), Decimal(ask), None, age_ms)


class StaticFencing:
    """The executor's Fencing protocol under a fixed epoch: the real epoch check, without an
    election (a test moves leader_record itself to stage a failover)."""

    def __init__(self, cluster: str, epoch: int) -> None:
        self.cluster = cluster
        self.epoch = epoch

    def fence(self, min_remaining_ms: float = 0.0) -> Fence:
        return Fence(self.epoch, 10_000.0)

    @contextmanager
    def fenced(self, conn: psycopg.Connection) -> Iterator[tuple[psycopg.Cursor, Fence]]:
        with fenced(conn, self.cluster, self.epoch) as cur:
            yield cur, self.fence()


def set_leader(conn: psycopg.Connection, cluster: str, epoch: int, instance: str = "leader") -> None:
    conn.execute(
        "INSERT INTO leader_record (cluster, epoch, instance_id, acquired_at, heartbeat_at) "
        "VALUES (%s, %s, %s, now(), now()) ON CONFLICT (cluster) DO UPDATE SET epoch = EXCLUDED.epoch, "
        "instance_id = EXCLUDED.instance_id, released_at = NULL",
        (cluster, epoch, instance),
    )
