"""Market data through the MT5 gateway against the direct mt5 source: `python -m bench.gateway_market`.

Both paths read the same fake terminal (tests/fakes/MetaTrader5.py, microseconds a call), fed
the same 500 M1 bars of EURUSD: directly, engine.market's MT5Source in this process on a
worker of its own; through the gateway, GatewaySource (HAEXEC_MARKET=gateway) -> HTTP/1.1
keep-alive -> `haexec gateway` -> the same MT5Source on its terminal worker, plus the wire
form both ways. Alternated direct / gateway: `tick` and `bars` (closed_bars M1, 100: 700
integers on the wire). Reported: p50 / p99 / max per path and the difference of each.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.cluster import BenchError, Servers, log
from bench.gateway import FAKES, TOKEN, _start_gateway, _summary, _timed
from engine.market.base import Source, Timeframe
from engine.market.gateway import GatewaySource
from engine.market.mt5 import MT5Source

BARS = 500
M1 = 1  # TIMEFRAME_M1


def _rows(now_s: int) -> list[list[Any]]:
    minute = now_s // 60 * 60
    return [[minute - 60 * k, 1.1, 1.1009, 1.0991, 1.1004, 40, 10, 0] for k in range(BARS - 1, -1, -1)]


def _control(path: Path, op: str, **fields: Any) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        s.connect(str(path))
        s.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
        answer = json.loads(s.makefile().readline())
    if not answer["ok"]:
        raise BenchError(f"fake control {op}: {answer['error']}")


def run(calls: int, warmup: int, servers: Servers) -> dict[str, Any]:
    sys.path.insert(0, str(FAKES))
    fake = importlib.import_module("MetaTrader5")  # the test fake: this process's direct terminal
    rows = _rows(int(time.time()))
    fake._fake.add_rates("EURUSD", M1, [tuple(r) for r in rows])
    direct = MT5Source(fake, deadline_ms=2000)
    direct.connect()
    control = Path("/tmp") / f"haexec-bench-mt5-{uuid.uuid4().hex[:12]}.sock"
    proc, base = _start_gateway(
        servers.workdir, servers.database_url, f"bgm{uuid.uuid4().hex[:10]}", {"FAKE_MT5_CONTROL": str(control)}
    )
    try:
        _control(control, "add_rates", symbol="EURUSD", timeframe=M1, rows=rows)
        gateway = GatewaySource(base, TOKEN, deadline_ms=3000)
        gateway.connect()
        paths: dict[str, Source] = {"direct": direct, "gateway": gateway}
        reads: dict[str, Callable[[Source], Any]] = {
            "tick": lambda s: s.tick("EURUSD"),
            "bars": lambda s: s.closed_bars("EURUSD", Timeframe.M1, 100),
        }
        samples: dict[str, dict[str, list[float]]] = {r: {p: [] for p in paths} for r in reads}
        for i in range(warmup + calls):
            for path, source in paths.items():
                for read, fn in reads.items():
                    ms, value = _timed(functools.partial(fn, source))
                    if read == "bars" and len(value) != 100:
                        raise BenchError(f"{path} bars: {len(value)} rows, not 100")
                    if i >= warmup:
                        samples[read][path].append(ms)
        out: dict[str, Any] = {"calls": calls, "cpus": os.cpu_count(), "loadavg": os.getloadavg()[0]}
        for read, by_path in samples.items():
            d, g = _summary(by_path["direct"]), _summary(by_path["gateway"])
            out[read] = {
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
        control.unlink(missing_ok=True)


def _print(result: dict[str, Any]) -> None:
    print(f"{result['calls']} calls per path, {result['cpus']} CPUs, load {result['loadavg']:.2f}")
    print(f"{'read':<6} {'path':<8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for read in ("tick", "bars"):
        for path in ("direct", "gateway"):
            s = result[read][f"{path}_ms"]
            print(f"{read:<6} {path:<8} {s['p50']:>8.3f} {s['p99']:>8.3f} {s['max']:>8.3f}")
        o = result[read]["overhead_ms"]
        print(f"{read:<6} {'overhead':<8} {o['p50']:>8.3f} {o['p99']:>8.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gateway_market", description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=1000, help="measured reads of each kind per path")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--redis-url", help="an existing Redis (default: a bench-owned one)")
    p.add_argument("--database-url", help="an existing PostgreSQL database at schema head")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        with Servers(args.redis_url, args.database_url, keep=False) as servers:
            log(f"measuring {args.calls} reads per path")
            result = run(args.calls, args.warmup, servers)
    except BenchError as e:
        print(f"bench.gateway_market: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
