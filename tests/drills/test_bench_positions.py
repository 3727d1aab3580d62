"""`python -m bench.positions` in a short form against the suite's PostgreSQL: the benchmark
the README names still runs end to end (each phase waits for what it measures at the venue
and fails otherwise). Its timing figures are for the full command to report, never asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_positions_benchmark_runs(redis_url: str, database_url: str) -> None:
    argv = ["--loops", "3", "--rounds", "3", "--ticks", "10", "--sizes", "20", "--database-url", database_url]
    argv += ["--redis-url", redis_url]
    done = subprocess.run(
        [sys.executable, "-m", "bench.positions", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for line in ("loop, 20 positions:", "fill -> verified stop:", "crossing tick -> lock:"):
        assert line in done.stdout, done.stdout
    assert "trailing lag, ticks:" in done.stdout and "(n=10)" in done.stdout
