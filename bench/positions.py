"""The position manager's speed on the paper venue (real PostgreSQL), with the real rules.

loop      one manager loop (the book, the venue's positions, a tick per symbol, decide, send
          the differences, verify, persist) with 50 and with 500 open positions on 10
          symbols, every symbol's price stepping each loop so stops trail; goal p99 < 100 ms.
fill      a signal's order booked without its stop (a market-execution venue dropped it),
          beside the smallest size's book, the manager's own thread running (woken by the
          booking's notification, as a replica wires it): from the booking's
          commit to the stop verified in plan_execution_state; goal p99 < 200 ms.
lock      a position registered with a profit lock at +1 R: from the tick that crosses it
          (the tick wakes the manager, as the market subscription does) to the locked stop
          at the venue; goal p99 < 100 ms.
trailing  one position trailing 150 points behind the best bid, a tick every 250 ms (the
          sim's rate) for `--ticks` ticks, one loop per tick: how many ticks the venue's
          stop is behind a reference computed from the same ticks; goal at most one.

    python -m bench.positions [--loops 200] [--rounds 100] [--ticks 400] [--sizes 50,500]
                              [--redis-url URL --database-url URL]

Without URLs it starts its own PostgreSQL (and Redis) (bench/cluster.py). The database must
be at this release's schema head.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from functools import partial

import psycopg
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from bench.cluster import BenchError, Servers, log
from bench.stats import nearest_rank
from common.clock import FakeClock
from coordinator.elector import Fence
from coordinator.epoch import EpochStore
from coordinator.fencing import fenced
from db.session import SessionLimits, make_pool
from engine import intake
from engine.brokers.base import OrderRequest, Outcome
from engine.brokers.paper import PaperBroker
from engine.market.base import Bars, MarketSpec, Tick, Timeframe, TradeMode
from engine.model import OrderType, Side
from engine.positions import store
from engine.positions.manager import ManagerConfig, PositionManager
from engine.positions.metrics import PositionMetrics
from engine.positions.registration import canonical_rules
from engine.positions.wakeup import BookListener
from engine.risk import RiskLimits
from engine.signal import order_tag

D = Decimal
SYMBOLS = [f"SYM{i:02d}" for i in range(10)]
POINT = D("0.00001")
ENTRY = D("1.10000")
SL = D("1.09000")  # 1 R = 1000 points
TRAIL: dict[str, object] = {"trailing": {"distance_points": 150, "activation_rr": 0}}
LOCK: dict[str, object] = {"lock": [[1, 0.5]]}


def spec(symbol: str) -> MarketSpec:
    """EURUSD-like: 5 digits, 100,000 a lot, no stops or freeze level."""
    return MarketSpec(symbol, 5, POINT, D(100000), POINT, D(1), D("0.01"), D(100), D("0.01"), 0, 0, TradeMode.FULL)


class BenchPrices:
    """The market as the manager and the paper broker read it: a bid per symbol, set here."""

    def __init__(self) -> None:
        self.bids = dict.fromkeys(SYMBOLS, ENTRY)

    def tick(self, symbol: str, *, max_age_ms: int) -> Tick:
        bid = self.bids[symbol]
        return Tick(symbol, 0, bid, bid + 8 * POINT, None, 0)

    def spec(self, symbol: str) -> MarketSpec:
        return spec(symbol)

    def bars(self, symbol: str, timeframe: Timeframe | str, count: int, *, max_age_ms: int) -> Bars:
        raise AssertionError("the bench's rules read no bars")


class Fencing:
    def __init__(self, cluster: str, epoch: int) -> None:
        self.cluster, self.epoch = cluster, epoch

    def fence(self, min_remaining_ms: float = 0.0) -> Fence:
        return Fence(self.epoch, 60_000.0)

    @contextmanager
    def fenced(self, conn: psycopg.Connection) -> Iterator[tuple[psycopg.Cursor, Fence]]:
        with fenced(conn, self.cluster, self.epoch) as cur:
            yield cur, Fence(self.epoch, 60_000.0)


@dataclass
class Rig:
    cluster: str
    pool: ConnectionPool
    broker: PaperBroker
    prices: BenchPrices
    epoch: int
    n: int = 0

    def book(
        self, count: int, symbol: str | None = None, naked: bool = False, tags: list[str] | None = None
    ) -> list[str]:
        reqs = []
        for i in range(count):
            self.n += 1
            tag = tags[i] if tags else f"BENCH{self.n}"
            sym = symbol or SYMBOLS[i % len(SYMBOLS)]
            reqs.append(OrderRequest(tag, sym, Side.BUY, OrderType.MARKET, D("0.10"), ENTRY, SL, None, self.epoch))
        results = self.broker.book(reqs)
        tickets = [r.ref for r in results if r.outcome is Outcome.DONE and r.ref]
        if len(tickets) != count:
            raise BenchError(f"booked {len(tickets)} of {count}")
        if naked:
            with self.pool.connection() as conn:
                conn.execute(
                    "UPDATE paper_positions SET sl = NULL WHERE ticket = ANY(%s)", ([int(t) for t in tickets],)
                )
        return tickets

    def register(self, tickets: list[str], manage: Mapping[str, object], symbol: str | None = None) -> None:
        rules = canonical_rules(manage)
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            for i, t in enumerate(tickets):
                sym = symbol or SYMBOLS[i % len(SYMBOLS)]
                new = store.NewPosition(t, sym, Side.BUY, ENTRY, SL, D("0.10"), "api", rules)
                store.register(cur, self.cluster, "paper", new, (None, "bench", "registered"))

    def manager(self, clock: FakeClock | None = None, **cfg: object) -> PositionManager:
        kwargs = {"clock": clock} if clock is not None else {}
        return PositionManager(
            ManagerConfig(self.cluster, "bench", "paper", **cfg),  # type: ignore[arg-type]
            Fencing(self.cluster, self.epoch),
            self.pool,
            self.broker,
            self.prices,
            RiskLimits(),
            metrics=PositionMetrics(CollectorRegistry()),
            **kwargs,  # type: ignore[arg-type]
        )


@contextmanager
def rig(database_url: str) -> Iterator[Rig]:
    cluster = f"bench-pos-{uuid.uuid4().hex[:8]}"
    pool = make_pool(database_url, SessionLimits(5000, "haexec-bench-positions"), name="bench", min_size=4, max_size=8)
    pool.open(wait=True, timeout=10)
    try:
        epoch = EpochStore(pool, cluster, stale_after_ms=1, handoff_ms=1).claim(0, "bench")
        if epoch is None:
            raise BenchError("could not claim an epoch")
        prices = BenchPrices()
        broker = PaperBroker(pool, cluster, "bench", market=prices)  # type: ignore[arg-type]
        broker.connect()
        yield Rig(cluster, pool, broker, prices, epoch)
    finally:
        with pool.connection() as conn:
            for table in ("paper_deals", "paper_positions", "paper_orders"):
                conn.execute(f"DELETE FROM {table} WHERE cluster = %s", (cluster,))
            # signals' events and executions go with them; the journal is append-only and stays
            for table in ("signals", "paper_accounts", "plan_execution_state", "leader_record"):
                conn.execute(f"DELETE FROM {table} WHERE cluster = %s", (cluster,))
        pool.close()


def wait(what: str, predicate: Callable[[], bool], timeout_s: float = 5.0) -> float:
    """Poll `predicate()` every millisecond; the monotonic time it first held."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.001)


def bench_loop(database_url: str, positions: int, loops: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    with rig(database_url) as r:
        r.register(r.book(positions), TRAIL | LOCK)
        m = r.manager(max_in_flight=3)
        times = []
        for i in range(loops + 10):  # the first 10 warm up (the first one sets every trailing stop)
            for s in SYMBOLS:
                r.prices.bids[s] += rng.choice((-3, -1, 1, 3, 5)) * POINT
            t0 = time.perf_counter()
            m.run_once()
            if i >= 10:
                times.append(time.perf_counter() - t0)
        return times


def verified(r: Rig, ticket: str) -> bool:
    with r.pool.connection() as conn:
        row = store.one(conn, r.cluster, "paper", ticket)
    return row is not None and row.verified_sl is not None


def bench_fill(database_url: str, rounds: int, background: int) -> list[float]:
    with rig(database_url) as r:
        r.register(r.book(background), TRAIL)
        m = r.manager()
        m.start()
        listener = BookListener(database_url, r.cluster, "bench", m.wake)  # as a replica wires it
        listener.start()
        try:
            out = []
            for i in range(rounds):
                body = {"source": "bench", "signal_id": f"f{i}", "symbol": "SYM00", "side": "buy",
                        "type": "market", "volume": "0.10", "price": str(ENTRY), "sl": str(SL)}  # fmt: skip
                tag = order_tag(intake.submit(r.pool, r.cluster, "bench", body).fingerprint)
                [ticket] = r.book(1, "SYM00", naked=True, tags=[tag])
                t0 = time.perf_counter()
                out.append(wait(f"the stop of {ticket}", partial(verified, r, ticket)) - t0)
        finally:
            listener.stop()
            m.stop(timeout_s=2)
        return out


def bench_lock(database_url: str, rounds: int, background: int) -> list[float]:
    with rig(database_url) as r:
        r.register(r.book(background), TRAIL)
        m = r.manager()
        m.start()
        locked = ENTRY + 500 * POINT  # +0.5 R
        try:
            out = []
            for i in range(rounds):
                symbol = SYMBOLS[i % len(SYMBOLS)]
                r.prices.bids[symbol] = ENTRY
                [ticket] = r.book(1, symbol)
                r.register([ticket], LOCK, symbol)
                wait(f"{ticket} registered", partial(verified, r, ticket))
                r.prices.bids[symbol] = ENTRY + 1001 * POINT  # the crossing tick
                t0 = time.perf_counter()
                m.wake()
                out.append(wait(f"the lock of {ticket}", partial(is_sl, r, ticket, locked)) - t0)
        finally:
            m.stop(timeout_s=2)
        return out


def is_sl(r: Rig, ticket: str, sl: Decimal) -> bool:
    return venue_sl(r, ticket) == sl


def venue_sl(r: Rig, ticket: str) -> Decimal | None:
    with r.pool.connection() as conn:
        row = conn.execute("SELECT sl FROM paper_positions WHERE ticket = %s", (int(ticket),)).fetchone()
    return None if row is None else row[0]


def bench_trailing(database_url: str, ticks: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    distance = 150 * POINT
    with rig(database_url) as r:
        [ticket] = r.book(1, "SYM00")
        r.register([ticket], TRAIL, "SYM00")
        clock = FakeClock()
        m = r.manager(clock=clock, max_in_flight=1)
        references: list[Decimal] = []
        best = ENTRY
        lags = []
        for _ in range(ticks):
            bid = r.prices.bids["SYM00"] + rng.choice((-20, -10, 10, 20, 30)) * POINT
            r.prices.bids["SYM00"] = bid
            best = max(best, bid)
            references.append(best - distance)
            clock.advance(250)
            m.run_once()
            sl = venue_sl(r, ticket)
            # behind by j ticks: the venue's stop is the reference of j ticks ago
            lag = next((j for j in range(len(references)) if references[-1 - j] == sl), len(references))
            lags.append(lag)
        return lags


def fmt(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"median {nearest_rank(ms, 50):.2f} ms, p99 {nearest_rank(ms, 99):.2f} ms (n={len(ms)})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.positions", description=__doc__.split("\n\n")[0])
    p.add_argument("--loops", type=int, default=200)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--ticks", type=int, default=400)
    p.add_argument("--sizes", default="50,500", help="open positions for the loop phase (comma-separated)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--redis-url")
    p.add_argument("--database-url")
    a = p.parse_args(argv)
    if a.loops < 1 or a.rounds < 1 or a.ticks < 1:
        p.error("--loops, --rounds and --ticks must be >= 1")
    try:
        sizes = [int(n) for n in a.sizes.split(",")]
    except ValueError:
        p.error("--sizes must be comma-separated integers")
    if not all(1 <= n <= 5000 for n in sizes):
        p.error("--sizes must be from 1 to 5000")
    try:
        with Servers(a.redis_url, a.database_url, keep=False) as servers:
            url = servers.database_url
            for n in sizes:
                print(f"loop, {n} positions:    {fmt(bench_loop(url, n, a.loops, a.seed))}")
            print(f"fill -> verified stop:  {fmt(bench_fill(url, a.rounds, min(sizes)))}")
            print(f"crossing tick -> lock:  {fmt(bench_lock(url, a.rounds, min(sizes)))}")
            lags = bench_trailing(url, a.ticks, a.seed)
            print(
                f"trailing lag, ticks:    median {nearest_rank(lags, 50):.0f}, p99 {nearest_rank(lags, 99):.0f},"
                f" max {max(lags)} (n={len(lags)})"
            )
    except BenchError as e:
        log(f"error: {e}")
        return 1
    print(f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
