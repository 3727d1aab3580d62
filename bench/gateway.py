"""Per-call cost of the MT5 gateway over the direct adapter: `python -m bench.gateway`.

Both paths drive the same fake terminal (tests/fakes/MetaTrader5.py, whose calls take
microseconds): directly, MT5Broker in this process; through the gateway, GatewayBroker ->
HTTP/1.1 keep-alive -> `haexec gateway` (a child process with the fake on its PYTHONPATH) ->
MT5Broker there, plus the promise check and, for a send, the journal's two fsync'd SQLite
commits around order_send. So the difference is what the gateway costs, and with a real
terminal (whose order_send takes milliseconds to a trade server) it is the part that stays.

Calls, alternated direct / gateway so both see the same machine: `quote` (a read: symbol
info and tick), `send` (a market order, a new tag each) and `modify` (that position's stop
moved with one TRADE_ACTION_SLTP: what the position manager pays per stop update). Reported: p50 / p99 / max per
path and the difference of the p50s and of the p99s.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from bench.cluster import REPO, BenchError, Servers, http_status, log, wait_until
from bench.stats import nearest_rank
from db.urls import libpq_url
from engine.brokers.base import Broker, OrderRequest, Outcome
from engine.brokers.gateway import GatewayBroker
from engine.brokers.mt5 import MT5Broker
from engine.model import OrderType, Side
from haexec.drill.cluster import free_port

FAKES = REPO / "tests" / "fakes"
TOKEN = "bench-gateway-token"
LOGIN, PASSWORD, SERVER, MAGIC = 5012345, "s3cret-Pa55", "FakeBroker-Demo", 770077
CALLS = ("quote", "send", "modify")
MOVED_SL = Decimal("1.0960")  # each send's stop (1.0950) tightened


def _order(n: int, epoch: int) -> OrderRequest:
    return OrderRequest(
        tag=f"HXB{n:023d}",
        symbol="EURUSD",
        side=Side.BUY,
        type=OrderType.MARKET,
        volume=Decimal("0.01"),
        price=Decimal("1.1001"),
        sl=Decimal("1.0950"),
        tp=None,
        epoch=epoch,
    )


def _grant(database_url: str, cluster: str, epoch: int, instance: str) -> None:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO leader_record (cluster, epoch, instance_id, acquired_at, heartbeat_at) "
            "VALUES (%s, %s, %s, now(), now()) ON CONFLICT (cluster) DO UPDATE SET epoch = EXCLUDED.epoch, "
            "instance_id = EXCLUDED.instance_id, heartbeat_at = now(), released_at = NULL",
            (cluster, epoch, instance),
        )


def _start_gateway(
    workdir: Path, database_url: str, cluster: str, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAEXEC_")}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(FAKES), str(REPO)]),
            "HAEXEC_CLUSTER": cluster,
            "HAEXEC_DATABASE_URL": database_url,
            "HAEXEC_GATEWAY_TOKEN": TOKEN,
            "HAEXEC_GATEWAY_HTTP": f"127.0.0.1:{port}",
            "HAEXEC_GATEWAY_STATE_DIR": str(workdir / "gateway"),
            "HAEXEC_MT5_LOGIN": str(LOGIN),
            "HAEXEC_MT5_PASSWORD": PASSWORD,
            "HAEXEC_MT5_SERVER": SERVER,
            "HAEXEC_LOG_LEVEL": "WARNING",  # a log line per send would be part of the measure
            **(extra_env or {}),
        }
    )
    with open(workdir / "gateway.log", "ab") as log_file:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "haexec", "gateway"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=str(REPO),
        )
    base = f"http://127.0.0.1:{port}"
    if not wait_until(lambda: proc.poll() is not None or http_status(base + "/health") == 200, 30):
        raise BenchError("the gateway did not become healthy in 30 s")
    if proc.poll() is not None:
        raise BenchError(f"the gateway exited {proc.returncode}: see {workdir / 'gateway.log'}")
    return proc, base


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(milliseconds, the answer) of one call."""
    started = time.perf_counter_ns()
    value = fn()
    return (time.perf_counter_ns() - started) / 1e6, value


def _summary(ms: list[float]) -> dict[str, float]:
    return {
        "p50": round(nearest_rank(ms, 50), 3),
        "p99": round(nearest_rank(ms, 99), 3),
        "max": round(max(ms), 3),
    }


def run(calls: int, warmup: int, servers: Servers) -> dict[str, Any]:
    sys.path.insert(0, str(FAKES))
    fake = importlib.import_module("MetaTrader5")  # the test fake: this process's direct terminal

    cluster = f"bgw{uuid.uuid4().hex[:10]}"
    _grant(servers.database_url, cluster, 1, "bench")
    direct = MT5Broker(LOGIN, PASSWORD, SERVER, None, MAGIC, 2000, module=fake)
    direct.connect()
    proc, base = _start_gateway(servers.workdir, servers.database_url, cluster)
    try:
        gateway = GatewayBroker(base, TOKEN, cluster, "bench", 3000)
        gateway.connect()
        paths: dict[str, Broker] = {"direct": direct, "gateway": gateway}
        samples: dict[str, dict[str, list[float]]] = {c: {p: [] for p in paths} for c in CALLS}
        n = 0
        for i in range(warmup + calls):
            for path, broker in paths.items():
                n += 1
                q, _ = _timed(functools.partial(broker.quote, "EURUSD"))
                s, result = _timed(functools.partial(broker.send, _order(n, 1)))
                if result.outcome is not Outcome.DONE:
                    raise BenchError(f"{path} send: {result}")
                m, moved = _timed(functools.partial(broker.modify, result.ref, MOVED_SL, None, 1))
                if moved.outcome is not Outcome.DONE or moved.detail == "no change":
                    raise BenchError(f"{path} modify: {moved}")
                if i >= warmup:
                    samples["quote"][path].append(q)
                    samples["send"][path].append(s)
                    samples["modify"][path].append(m)
        out: dict[str, Any] = {"calls": calls, "cpus": os.cpu_count(), "loadavg": os.getloadavg()[0]}
        for call, by_path in samples.items():
            d, g = _summary(by_path["direct"]), _summary(by_path["gateway"])
            out[call] = {
                "direct_ms": d,
                "gateway_ms": g,
                "overhead_ms": {"p50": round(g["p50"] - d["p50"], 3), "p99": round(g["p99"] - d["p99"], 3)},
            }
        gateway.close()
        return out
    finally:
        direct.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _print(result: dict[str, Any]) -> None:
    print(f"{result['calls']} calls per path, {result['cpus']} CPUs, load {result['loadavg']:.2f}")
    print(f"{'call':<6} {'path':<8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for call in CALLS:
        for path in ("direct", "gateway"):
            s = result[call][f"{path}_ms"]
            print(f"{call:<6} {path:<8} {s['p50']:>8.3f} {s['p99']:>8.3f} {s['max']:>8.3f}")
        o = result[call]["overhead_ms"]
        print(f"{call:<6} {'overhead':<8} {o['p50']:>8.3f} {o['p99']:>8.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=1000, help="measured calls of each kind per path")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--redis-url", help="an existing Redis (default: a bench-owned one)")
    p.add_argument("--database-url", help="an existing PostgreSQL database at schema head")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        with Servers(args.redis_url, args.database_url, keep=False) as servers:
            log(f"measuring {args.calls} calls per path")
            result = run(args.calls, args.warmup, servers)
    except BenchError as e:
        print(f"bench.gateway: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
