"""`python -m bench.gateway` and `python -m bench.gateway_market` in a short form, on the
suite's servers: the benchmarks the README quotes still run end to end (a real gateway
process, the fake terminal on both paths) and every send is DONE, every read complete. Their
timing figures are for the full command, never asserted."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import REPO


def test_the_gateway_benchmark_runs(redis_url: str, database_url: str) -> None:
    argv = ["--calls", "20", "--warmup", "5", "--json", "--redis-url", redis_url, "--database-url", database_url]
    done = subprocess.run(
        [sys.executable, "-m", "bench.gateway", *argv], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    for call in ("quote", "send", "modify"):
        for path in ("direct_ms", "gateway_ms"):
            assert 0 < result[call][path]["p50"] <= result[call][path]["p99"] <= result[call][path]["max"]


def test_the_gateway_market_benchmark_runs(redis_url: str, database_url: str) -> None:
    argv = ["--calls", "20", "--warmup", "5", "--json", "--redis-url", redis_url, "--database-url", database_url]
    done = subprocess.run(
        [sys.executable, "-m", "bench.gateway_market", *argv], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    for read in ("tick", "bars"):
        for path in ("direct_ms", "gateway_ms"):
            assert 0 < result[read][path]["p50"] <= result[read][path]["p99"] <= result[read][path]["max"]
