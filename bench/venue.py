"""The paper venue's speed: the matching core alone, and the process on real PostgreSQL.

core     20 symbols, 500 open positions (25 each, stops and take profits 5 to 40 pips away)
         and 100 pending limit and stop orders, a random walk of 8-point steps, each symbol
         ticking in turn; every position or order that closes or fills is replaced, so the
         book stays that size. Ticks per second (per batch of 1,000 ticks: median and p99 of
         the slowest), time per tick, time per tick that stopped a position out (the core's
         tick-to-stop decision), and a mark of the whole book (equity, margin: 500 positions).
process  the same 500 positions in PostgreSQL and the venue's loop (engine/venue/process.py)
         with its Redis publisher: each round all 20 symbols tick once and one of them
         crosses a fresh position's stop; tick read to the stop-out's commit, and the step.

    python -m bench.venue [--ticks 200000] [--rounds 300] [--only core|process]
                          [--redis-url URL --database-url URL]

Without URLs the process phase starts its own Redis and PostgreSQL (bench/cluster.py).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from bench.cluster import BenchError, Servers, log
from bench.stats import nearest_rank
from db.session import SessionLimits, connect
from db.urls import libpq_url
from engine.market.base import Bars, MarketSpec, Tick, Ticks, Timeframe, TradeMode
from engine.model import Side
from engine.venue.matching import OPEN, Book, Permissions
from engine.venue.model import Action, Kind, Order, Position, Quote
from engine.venue.pnl import Contract, mark
from engine.venue.process import Venue, VenueConfig
from engine.venue.settings import VenueSettings
from engine.venue.streams import Publisher

D = Decimal
SYMBOLS = [f"SYM{i:02d}" for i in range(20)]
POSITIONS = 500
ORDERS = 100
MID = 110_000  # points: 1.10000
SPREAD = 8


def spec(symbol: str) -> MarketSpec:
    """EURUSD-like: 5 digits, 100,000 a lot."""
    return MarketSpec(
        symbol, 5, D("0.00001"), D(100000), D("0.00001"), D(1), D("0.01"), D(100), D("0.01"), 0, 0, TradeMode.FULL
    )


def px(points: int) -> Decimal:
    return D(points).scaleb(-5)


def fmt(values: list[float], unit: str = "ms", scale: float = 1.0) -> str:
    return (
        f"median {nearest_rank(values, 50) * scale:.3f} {unit}, p99 {nearest_rank(values, 99) * scale:.3f} {unit}"
        f" (n={len(values):,})"
    )


# ---- the core ----------------------------------------------------------------------------


class Maker:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.ticket = 0

    def position(self, symbol: str, mid: int, t: int) -> Position:
        self.ticket += 1
        side = self.rng.choice((Side.BUY, Side.SELL))
        sign = 1 if side is Side.BUY else -1
        entry = mid + sign * SPREAD // 2
        sl, tp = self.rng.randint(50, 400), self.rng.randint(50, 400)
        return Position(
            self.ticket, symbol, side, D("0.10"), px(entry), px(entry - sign * sl), px(entry + sign * tp), t
        )

    def order(self, symbol: str, mid: int, t: int) -> Order:
        self.ticket += 1
        side = self.rng.choice((Side.BUY, Side.SELL))
        kind = self.rng.choice((Kind.LIMIT, Kind.STOP))
        below = (side is Side.BUY) == (kind is Kind.LIMIT)
        level = mid + (-1 if below else 1) * self.rng.randint(20, 300)
        sign = 1 if side is Side.BUY else -1
        return Order(self.ticket, symbol, side, kind, D("0.10"), px(level), px(level - sign * 300), None, t)


@dataclass
class CoreResult:
    ticks: int
    overall_ticks_per_s: float
    batch_ticks_per_s: list[float]
    per_tick_s: list[float]
    stop_tick_s: list[float]
    mark_s: list[float]
    matches: dict[str, int]
    book: tuple[int, int]


@dataclass
class ProcessResult:
    fill_ms: list[float]
    step_s: list[float]


def bench_core(ticks: int, seed: int) -> CoreResult:
    rng = random.Random(seed)
    contracts = {s: Contract.of(spec(s)) for s in SYMBOLS}
    maker = Maker(rng)
    book = Book()
    mids = dict.fromkeys(SYMBOLS, MID)
    for i in range(POSITIONS):
        book.put_position(maker.position(SYMBOLS[i % len(SYMBOLS)], MID, 0))
    for i in range(ORDERS):
        book.put_order(maker.order(SYMBOLS[i % len(SYMBOLS)], MID, 0))
    # the quotes, made before the clock starts: the walk is not what is measured
    path = []
    for n in range(ticks):
        s = SYMBOLS[n % len(SYMBOLS)]
        mids[s] += int(rng.gauss(0, 8))
        path.append(Quote(s, 250 * (n // len(SYMBOLS) + 1), px(mids[s] - SPREAD // 2), px(mids[s] + SPREAD // 2)))
    per_tick: list[float] = []
    stop_ticks: list[float] = []
    counts: dict[str, int] = {}
    allow: Permissions = OPEN
    perf = time.perf_counter
    start = perf()
    for quote in path:
        t0 = perf()
        matches = book.on_quote(quote, contracts[quote.symbol], allow)
        for m in matches:
            book.apply(m)
        t1 = perf()
        per_tick.append(t1 - t0)
        for m in matches:  # keep the book at 500 positions and 100 orders (not timed)
            counts[m.action.value] = counts.get(m.action.value, 0) + 1
            mid = round(quote.bid.scaleb(5)) + SPREAD // 2
            if m.action is Action.FILL:
                book.drop_position(m.ticket)
                book.put_order(maker.order(quote.symbol, mid, quote.time_ms))
            else:
                book.put_position(maker.position(quote.symbol, mid, quote.time_ms))
        if any(m.action is Action.STOP_LOSS for m in matches):
            stop_ticks.append(t1 - t0)
    total = perf() - start
    batches = [1000 / sum(per_tick[i : i + 1000]) for i in range(0, len(per_tick) - 999, 1000)]
    marks = []
    quotes = {s: book.quotes[s] for s in SYMBOLS}
    for _ in range(200):
        t0 = perf()
        mark(D("100000"), book.positions(), quotes, contracts, 100)
        marks.append(perf() - t0)
    book_size = (book.position_count, book.order_count)
    return CoreResult(ticks, ticks / total, batches, per_tick, stop_ticks, marks, counts, book_size)


# ---- the process on PostgreSQL -------------------------------------------------------------


class BenchSource:
    """A live source over ticks the bench appends, on the bench's clock."""

    name = "bench"
    live = True

    def __init__(self, now_ms: int) -> None:
        self.now = now_ms
        self.rows: dict[str, list[tuple[int, int, int]]] = {s: [] for s in SYMBOLS}

    def now_ms(self) -> int:
        return self.now

    def symbols(self) -> list[str]:
        return list(SYMBOLS)

    def spec(self, symbol: str) -> MarketSpec:
        return spec(symbol)

    def ticks(self, symbol: str, after_ms: int, until_ms: int, limit: int) -> Ticks:
        rows = [r for r in self.rows[symbol][-50:] if after_ms < r[0] <= until_ms][:limit]
        cols = [np.array([r[k] for r in rows], dtype=np.int64) for k in range(3)]
        return Ticks(symbol, 5, cols[0], cols[1], cols[2], np.full(len(rows), -1, dtype=np.int64))

    def tick(self, symbol: str) -> Tick:
        t, bid, ask = self.rows[symbol][-1]
        return Tick(symbol, t, px(bid), px(ask), None, self.now - t)

    def closed_bars(self, symbol: str, timeframe: Timeframe, count: int, after_ms: int | None = None) -> Bars:
        return Bars.empty(symbol, timeframe, 5)

    def forming_bar(self, symbol: str, timeframe: Timeframe) -> Bars:
        return Bars.empty(symbol, timeframe, 5)


INSERT_SQL = """
WITH o AS (
    INSERT INTO paper_orders (cluster, tag, symbol, side, type, volume, price, sl, tp, epoch, instance_id, state)
    SELECT %(c)s, 'B' || md5(random()::text), s, side, 'market', 0.10, price, sl, tp, 0, 'bench', 'filled'
    FROM unnest(%(symbols)s::text[], %(sides)s::text[], %(prices)s::numeric[], %(sls)s::numeric[],
                %(tps)s::numeric[]) AS u(s, side, price, sl, tp)
    RETURNING ticket, symbol, side, volume, price, sl, tp, tag
)
INSERT INTO paper_positions (ticket, cluster, symbol, side, volume, price, sl, tp, tag)
SELECT ticket, %(c)s, symbol, side, volume, price, sl, tp, tag FROM o
RETURNING ticket
"""


def insert_positions(database_url: str, cluster: str, positions: list[Position]) -> list[int]:
    import psycopg

    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        rows = conn.execute(
            INSERT_SQL,
            {
                "c": cluster,
                "symbols": [p.symbol for p in positions],
                "sides": [p.side.value for p in positions],
                "prices": [p.price for p in positions],
                "sls": [p.sl for p in positions],
                "tps": [p.tp for p in positions],
            },
        ).fetchall()
    return [int(r[0]) for r in rows]


def bench_process(rounds: int, redis_url: str | None, database_url: str | None, seed: int) -> ProcessResult:
    import psycopg

    from coordinator.lease import redis_client

    rng = random.Random(seed)
    with Servers(redis_url, database_url, keep=False) as servers:
        if servers.pg_server is not None:
            # bench/cluster logs every write for the failover bench's counts; here it would be
            # measured as the venue's own cost
            with psycopg.connect(libpq_url(servers.pg_server.url()), autocommit=True) as admin:
                admin.execute("ALTER SYSTEM SET log_statement = 'none'")
                admin.execute("SELECT pg_reload_conf()")
        cluster = f"bench-venue-{uuid.uuid4().hex[:8]}"
        now = time.time_ns() // 1_000_000 + 1000
        now -= now % 250
        maker = Maker(rng)
        book = [maker.position(SYMBOLS[i % len(SYMBOLS)], MID, 0) for i in range(POSITIONS)]
        insert_positions(servers.database_url, cluster, book)
        source = BenchSource(now)
        client = redis_client(servers.redis_url, 2.0)
        venue = Venue(
            VenueConfig(cluster, "bench", VenueSettings()),
            source,
            lambda: connect(servers.database_url, SessionLimits(2000, "haexec-bench-venue")),
            Publisher(client, cluster, maxlen=1000),
        )
        try:
            if not venue.open():
                raise BenchError("the venue lock is held by another venue")
            log(f"process: {venue.book.position_count} positions in PostgreSQL; {rounds} rounds")
            steps: list[float] = []
            for r in range(rounds + 10):  # the first 10 warm up
                symbol = SYMBOLS[r % len(SYMBOLS)]
                # a fresh position whose stop the next tick of its symbol crosses
                victim = Position(0, symbol, Side.BUY, D("0.10"), px(MID), px(MID - 20), None)
                [ticket] = insert_positions(servers.database_url, cluster, [victim])
                source.now += 250
                for s in SYMBOLS:
                    bid = MID - SPREAD // 2 - (40 if s == symbol else 0)
                    source.rows[s].append((source.now, bid, bid + SPREAD))
                deadline = time.monotonic() + 5
                while venue.book.position(ticket) is None:  # the booking reaches the venue before the tick
                    if time.monotonic() > deadline:
                        raise BenchError(f"position {ticket} never reached the venue's book")
                    venue._drain_notifications()
                if r == 10:
                    venue.stats.fill_ms.clear()
                t0 = time.perf_counter()
                report = venue.step()
                if r >= 10:
                    steps.append(time.perf_counter() - t0)
                stopped = [m for m in report.applied if m.action is Action.STOP_LOSS]
                if len(stopped) != 1:
                    raise BenchError(f"round {r}: expected one stop-out, got {report.applied}")
            fills = list(venue.stats.fill_ms)
        finally:
            venue.close()
            client.delete(*[f"haexec:{cluster}:ticks:{s}" for s in SYMBOLS])
            client.close()
            with psycopg.connect(libpq_url(servers.database_url), autocommit=True) as conn:
                for table in ("paper_deals", "paper_positions", "paper_orders", "paper_marks", "paper_venue_cursor"):
                    conn.execute(f"DELETE FROM {table} WHERE cluster = %s", (cluster,))
                conn.execute("DELETE FROM paper_accounts WHERE cluster = %s", (cluster,))
    return ProcessResult(fills, steps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.venue", description=__doc__.split("\n\n")[0])
    p.add_argument("--ticks", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--only", choices=("core", "process"))
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--redis-url")
    p.add_argument("--database-url")
    a = p.parse_args(argv)
    if a.ticks < 1000 or a.rounds < 1:
        p.error("--ticks must be >= 1000 and --rounds >= 1")
    if a.only in (None, "core"):
        c = bench_core(a.ticks, a.seed)
        batches = c.batch_ticks_per_s
        print(f"core: {len(SYMBOLS)} symbols, book {c.book[0]} positions + {c.book[1]} orders, {a.ticks:,} ticks")
        print(f"  matches: {c.matches}")
        print(
            f"  ticks/s: {c.overall_ticks_per_s:,.0f} overall; per 1,000-tick batch median "
            f"{nearest_rank(batches, 50):,.0f}, p99 (slowest 1 %) {nearest_rank(batches, 1):,.0f}"
        )
        print(f"  per tick:              {fmt(c.per_tick_s, 'us', 1e6)}")
        print(f"  tick that stops out:   {fmt(c.stop_tick_s, 'us', 1e6)}")
        print(f"  mark of 500 positions: {fmt(c.mark_s, 'ms', 1e3)}")
    if a.only in (None, "process"):
        try:
            r = bench_process(a.rounds, a.redis_url, a.database_url, a.seed)
        except BenchError as e:
            log(f"error: {e}")
            return 1
        print(f"process: PostgreSQL + Redis, {POSITIONS} positions, {len(SYMBOLS)} ticks a round")
        print(f"  tick read -> stop-out committed: {fmt(r.fill_ms)}")
        print(f"  whole step (20 ticks, 1 stop-out, publish, mark): {fmt(r.step_s, 'ms', 1e3)}")
    print(f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
