"""`python -m bench.venue` in a short form against the suite's Redis and PostgreSQL: the
benchmark the README names still runs end to end, and each of its rounds stops exactly one
position out (it fails otherwise). Its timing figures are for the full command to report,
never asserted here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_venue_benchmark_runs(redis_url: str, database_url: str) -> None:
    argv = ["--ticks", "5000", "--rounds", "20", "--redis-url", redis_url, "--database-url", database_url]
    done = subprocess.run(
        [sys.executable, "-m", "bench.venue", *argv], cwd=ROOT, capture_output=True, text=True, timeout=170
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "core: 20 symbols, book 500 positions + 100 orders, 5,000 ticks" in done.stdout
    assert "tick read -> stop-out committed: median" in done.stdout and "(n=20)" in done.stdout
