"""`python -m bench.signals` in a short form: the benchmark the README names still runs end to
end on real processes (its own Redis, PostgreSQL and three replicas), and what it verifies
holds: every signal executed, exactly one paper order each. Its timing figures are for the
full command to report, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_signal_benchmark_runs_and_verifies_every_signal() -> None:
    argv = ["--signals", "100", "--warmup", "20", "--rate", "200", "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.signals", *argv], cwd=ROOT, capture_output=True, text=True, timeout=170
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    for phase in ("latency", "throughput"):
        assert result[phase]["problems"] == []
        assert result[phase]["executed"] == result[phase]["accepted"] == 100
    # 64 producers outrun one claim at a time: the backlog is claimed (and booked) in batches.
    assert result["throughput"]["claim_batches"]["max"] > 1
