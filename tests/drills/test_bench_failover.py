"""`python -m bench.failover` in a short form: the takeover phase the README names runs end to
end on real processes (three replicas on this session's Redis and PostgreSQL, a seeded paper
book), every round's signal is booked by the new leader, and the figures are reported. Their
values are for the full command, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_takeover_benchmark_books_each_rounds_signal(redis_url: str, database_url: str) -> None:
    # The drills' lease: each round's takeover waits out half as long as with the default.
    argv = ["--only", "takeover", "--rounds", "2", "--lease-ms", "1500", "--open-positions", "500", "--json"]
    argv += ["--redis-url", redis_url, "--database-url", database_url]
    done = subprocess.run(
        [sys.executable, "-m", "bench.failover", *argv], cwd=ROOT, capture_output=True, text=True, timeout=170
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    takeover = result["takeover"]
    assert (takeover["n"], takeover["failed"], takeover["open_positions"]) == (2, 0, 500)
    assert set(takeover["first_order_ms"]) == {"p50", "p99", "max"}
    assert all(s["ok"] and s["first_order_ms"] > 0 for s in takeover["samples"])
