"""Plan evaluation on a replayed feed of 20 symbols x 3 timeframes (M1, M5, M15): one
affected plan's evaluation, a round of N active plans, bar close to the plan's signal
committed in PostgreSQL, a multi-timeframe fetch, the bar cache's hit ratio and the RSS
the plans add. Prints median and p99 of each, and the goals.

    python -m bench.plans [--plans 1000] [--minutes 120] [--database-url URL]

The feed is a bars file written for the run (random walks, one symbol alternating across a
level so a `crosses` plan fires at known bar closes), played by the replay source on a
clock the benchmark moves a minute a step; each step pumps the feed (bar closes mark the
plans reading them) and runs the leader's round.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry

from bench.cluster import BENCH_DATABASE, BenchError, log
from bench.stats import nearest_rank
from coordinator.elector import Fence
from coordinator.fencing import fenced
from db import migrate
from db.session import SessionLimits, make_pool
from db.urls import libpq_url
from embedded import PostgresServer
from engine.market.base import Timeframe
from engine.market.metrics import MarketMetrics
from engine.market.replay import ReplaySource, load
from engine.market.service import Market
from engine.plans import store
from engine.plans.evaluator import RoundSnapshot, evaluate, lookbacks
from engine.plans.metrics import PlanMetrics
from engine.plans.model import Plan, parse_plan
from engine.plans.runner import PlanRunner, RunnerConfig

SYMBOLS = [f"S{i:02d}" for i in range(1, 20)] + ["FLIP"]
TIMEFRAMES = (Timeframe.M1, Timeframe.M5, Timeframe.M15)
START_MS = 1_796_083_200_000  # a Friday 00:00 UTC
WARMUP_MIN = 24 * 60  # a day of history before the first step
ORDER = {"side": "buy", "type": "market", "volume": "0.01", "sl": "1"}
GOALS = {
    "evaluation": 2.0,
    "round": 50.0,
    "signal": 30.0,
    "mtf": 100.0,
}


def write_feed(path: Path, minutes: int, seed: int) -> None:
    """M1 bars of every symbol; FLIP closes 100 and 102 on alternate minutes (it crosses
    above 101 at the close of every odd minute's bar)."""
    rng = random.Random(seed)
    levels = {s: 100.0 for s in SYMBOLS}
    with path.open("w") as f:
        f.write("time,symbol,open,high,low,close,volume\n")
        for m in range(minutes):
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((START_MS + m * 60_000) / 1000))
            for s in SYMBOLS:
                if s == "FLIP":
                    c = 102.0 if m % 2 else 100.0
                    o = 100.0 if m % 2 else 102.0
                else:
                    o = levels[s]
                    c = max(1.0, o + rng.gauss(0, 0.05))
                    levels[s] = c
                hi, lo = max(o, c) + 0.01, min(o, c) - 0.01
                f.write(f"{stamp},{s},{o:.2f},{hi:.2f},{lo:.2f},{c:.2f},{rng.randint(1, 50)}\n")


def make_plans(n: int, seed: int) -> list[dict[str, Any]]:
    """N plans that stay pending (their conditions never all hold on a walk near 100)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        s = rng.choice(SYMBOLS[:-1])
        tf = rng.choice(TIMEFRAMES).name
        other = rng.choice([x for x in SYMBOLS[:-1] if x != s])
        kind = i % 5
        leaf: dict[str, Any]
        if kind == 0:
            leaf = {"type": "holds_above", "symbol": s, "timeframe": tf, "level": "1000", "bars": 3}
        elif kind == 1:
            leaf = {"type": "crosses", "symbol": s, "timeframe": tf, "level": "1000", "direction": "above"}
        elif kind == 2:
            leaf = {"type": "change_pct", "symbol": s, "window": "1h", "below": "-50"}
        elif kind == 3:
            leaf = {"type": "correlation", "symbol": s, "other": other, "timeframe": tf, "bars": 30, "above": "0.999"}
        else:
            leaf = {"type": "holds_below", "symbol": s, "timeframe": tf, "level": "1", "bars": 5}
        second = {"type": "holds_above", "symbol": other, "timeframe": "M5", "level": "1", "bars": 2}
        out.append({**ORDER, "plan_id": f"b{i}", "symbol": s, "price": "100", "conditions": {"all": [leaf, second]}})
    return out


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Fencing:
    """The executor's Fencing over the leader record this benchmark writes for itself."""

    cluster: str
    epoch: int

    def fence(self, min_remaining_ms: float = 0.0) -> Fence:
        return Fence(self.epoch, 10_000.0)

    @contextmanager
    def fenced(self, conn: psycopg.Connection) -> Iterator[tuple[psycopg.Cursor, Fence]]:
        with fenced(conn, self.cluster, self.epoch) as cur:
            yield cur, self.fence()


@dataclass
class Result:
    evaluation_ms: list[float] = field(default_factory=list)
    round_ms: list[float] = field(default_factory=list)
    signal_ms: list[float] = field(default_factory=list)
    mtf_ms: list[float] = field(default_factory=list)
    pump_ms: list[float] = field(default_factory=list)
    hit_ratio: float = 0.0
    shared_ratio: float = 0.0
    rss_plans_mb: float = 0.0
    rss_run_mb: float = 0.0


def fmt(values: list[float], goal: float | None = None) -> str:
    if not values:
        return "no samples"
    p99 = nearest_rank(values, 99)
    verdict = "" if goal is None else (f"  goal <= {goal:g} ms: " + ("met" if p99 <= goal else "MISSED"))
    return f"median {nearest_rank(values, 50):.3f} ms, p99 {p99:.3f} ms (n={len(values)}){verdict}"


@contextmanager
def postgres(database_url: str | None) -> Iterator[str]:
    """The given database (at schema head), or a PostgreSQL of this run's own, migrated."""
    if database_url:
        if not migrate.is_at_head(database_url):
            raise BenchError("the database is not at schema head: run `haexec db upgrade`")
        yield database_url
        return
    workdir = Path(tempfile.mkdtemp(prefix="haexec-bench-plans-pg-"))
    server = PostgresServer(workdir / "pg")
    server.start()
    try:
        url = server.create_database(BENCH_DATABASE)
        migrate.upgrade(url)
        yield url
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def run(n_plans: int, minutes: int, database_url: str | None, seed: int) -> Result:
    result = Result()
    with tempfile.TemporaryDirectory(prefix="haexec-bench-plans-") as tmp, postgres(database_url) as url:
        feed = Path(tmp) / "feed.csv"
        write_feed(feed, WARMUP_MIN + minutes + 2, seed)
        clock = [START_MS + WARMUP_MIN * 60_000]
        source = ReplaySource(load(feed), speed=1.0, clock=lambda: clock[0])
        registry = CollectorRegistry()
        market_metrics = MarketMetrics(registry)
        market = Market(source, metrics=market_metrics)
        cluster = f"bench-{uuid.uuid4().hex[:8]}"
        pool = make_pool(url, SessionLimits(5000, "haexec-bench-plans"), name="bench", max_size=4)
        pool.open(wait=True, timeout=30)
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute(
                "INSERT INTO leader_record (cluster, epoch, instance_id, acquired_at, heartbeat_at)"
                " VALUES (%s, 1, 'b', now(), now())",
                (cluster,),
            )
            rss_before = rss_mb()
            bodies = make_plans(n_plans, seed)
            plans: list[Plan] = [parse_plan(b)[1] for b in bodies]
            for body, plan in zip(bodies, plans, strict=True):
                store.create(conn, cluster, "bench", body["plan_id"], plan)
            runner = PlanRunner(
                RunnerConfig(cluster, "bench", period_ms=0, full_every_ms=10**12),
                Fencing(cluster, 1),
                pool,
                metrics=PlanMetrics(registry),
            )
            runner.market = market
            runner.on_started_leading(1)
            runner.run_round()  # load, subscribe, evaluate every plan once
            result.rss_plans_mb = rss_mb() - rss_before
            shared_requests = shared_reads = 0
            lookback = lookbacks(plans)
            rss_run = rss_mb()
            for step in range(minutes):
                clock[0] += 60_000
                minute = (clock[0] - START_MS) // 60_000
                trigger = None
                if minute % 2 == 0:  # the next bar (an odd minute's) crosses FLIP above 101
                    trigger = f"flip{step}"
                    body = {
                        **ORDER,
                        "plan_id": trigger,
                        "symbol": "FLIP",
                        "price": "101",
                        "sl": "99",
                        "conditions": {
                            "type": "crosses",
                            "symbol": "FLIP",
                            "timeframe": "M1",
                            "level": "101",
                            "direction": "above",
                        },
                    }
                    store.create(conn, cluster, "bench", trigger, parse_plan(body)[1])
                started = time.perf_counter()
                market.pump()  # the bar closes: marks the plans reading them
                result.pump_ms.append((time.perf_counter() - started) * 1000)
                stats = runner.run_round()
                if minute % 2 == 1 and stats.executed:
                    result.signal_ms.append((stats.committed_at[0] - started) * 1000)
                # A full round of every active plan on one snapshot, each plan timed.
                snap = RoundSnapshot(market, source.now_ms(), lookback=dict(lookback))
                t0 = time.perf_counter()
                for plan in plans:
                    t = time.perf_counter()
                    evaluate(plan, snap)
                    result.evaluation_ms.append((time.perf_counter() - t) * 1000)
                result.round_ms.append((time.perf_counter() - t0) * 1000)
                shared_requests += snap.requests + snap.shared_readings
                shared_reads += snap.reads
                # One symbol's three timeframes, as a multi-timeframe plan reads them.
                t = time.perf_counter()
                sym = SYMBOLS[step % (len(SYMBOLS) - 1)]
                for tf in TIMEFRAMES:
                    market.bars(sym, tf, 200, max_age_ms=86_400_000)
                result.mtf_ms.append((time.perf_counter() - t) * 1000)
            result.rss_run_mb = rss_mb() - rss_run
            runner.stop()
            executed = conn.execute(
                "SELECT count(*) FROM trade_plans WHERE cluster = %s AND status = 'executing'", (cluster,)
            ).fetchone()
            for table in ("trade_plans", "signal_events", "signals", "leader_record"):
                if table == "signal_events":
                    conn.execute(
                        "DELETE FROM signal_events WHERE signal IN (SELECT id FROM signals WHERE cluster = %s)",
                        (cluster,),
                    )
                else:
                    conn.execute(f"DELETE FROM {table} WHERE cluster = %s", (cluster,))
        pool.close()
        if executed is None or executed[0] != len(result.signal_ms):
            raise BenchError(f"expected {len(result.signal_ms)} executed plans, found {executed}")
        hits = market_metrics.cache.labels("hit")._value.get()
        misses = market_metrics.cache.labels("miss")._value.get()
        result.hit_ratio = hits / max(1.0, hits + misses)
        result.shared_ratio = 1 - shared_reads / max(1, shared_requests)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plans", description=__doc__.split("\n\n")[0])
    p.add_argument("--plans", type=int, default=1000)
    p.add_argument("--minutes", type=int, default=120, help="replayed minutes, one step each")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--database-url", help="an existing PostgreSQL at schema head (else one is started)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.plans < 1 or a.minutes < 4:
        p.error("--plans must be >= 1 and --minutes >= 4")
    try:
        r = run(a.plans, a.minutes, a.database_url, a.seed)
    except BenchError as e:
        log(f"error: {e}")
        return 1
    if a.json:
        print(json.dumps({k: v for k, v in vars(r).items()}, default=str))
        return 0
    print(f"{a.plans} plans on {len(SYMBOLS)} symbols x {len(TIMEFRAMES)} timeframes, {a.minutes} replayed minutes")
    print(f"  one plan's evaluation:          {fmt(r.evaluation_ms, GOALS['evaluation'])}")
    print(f"  a round of {a.plans} plans:        {fmt(r.round_ms, GOALS['round'])}")
    print(f"  bar close -> signal committed:  {fmt(r.signal_ms, GOALS['signal'])}")
    print(f"    of which the feed's pump (bar closes of 20 x 3 series): {fmt(r.pump_ms)}")
    print(f"  multi-timeframe fetch (3 x 200): {fmt(r.mtf_ms, GOALS['mtf'])}")
    print(f"  bar cache hit ratio: {r.hit_ratio:.1%} (goal >= 95 %); reads shared within a round: {r.shared_ratio:.1%}")
    print(f"  RSS: +{r.rss_plans_mb:.1f} MB for the plans (goal < 100 MB), +{r.rss_run_mb:.1f} MB over the run")
    print(f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
