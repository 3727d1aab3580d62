"""The loop supervisor's costs and its detection time, in one process, on the real clock:
a heartbeat (what every loop pays per step), a supervisor check over 10 healthy loops (every
250 ms), and how long after its last heartbeat a silent loop with a 100 ms period is
restarted (the rule: 3 periods, plus up to one check interval). Median and p99.

    python -m bench.loops [--beats 200000] [--stalls 30]
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time

from bench.stats import nearest_rank
from engine.supervision import Supervisor


class NoLog:
    """The restart log without a database: only failures touch it."""

    def recent(self, loop: str, window_ms: int) -> int:
        return 0

    def record(self, loop: str, action: str, reason: str) -> None:
        pass


def _line(what: str, values: list[float], unit: str, scale: float) -> str:
    p50, p99 = nearest_rank(values, 50) * scale, nearest_rank(values, 99) * scale
    return f"{what}: median {p50:.3f} {unit}, p99 {p99:.3f} {unit} (n={len(values)})"


def bench_beat(n: int) -> list[float]:
    beat = Supervisor(NoLog()).register("beat", 1000, lambda: None)
    out = []
    for _ in range(n // 100):
        t = time.perf_counter()
        for _ in range(100):
            beat()
        out.append((time.perf_counter() - t) / 100)
    return out


def bench_check(rounds: int) -> list[float]:
    sup = Supervisor(NoLog())
    beats = [sup.register(f"loop{i}", 1000, lambda: None) for i in range(10)]
    out = []
    for _ in range(rounds):
        for b in beats:
            b()
        t = time.perf_counter()
        sup.check()
        out.append(time.perf_counter() - t)
    return out


def bench_stalls(trials: int, period_ms: int = 100) -> list[float]:
    """Seconds from a loop's last heartbeat to its restart, the supervisor on its own thread."""
    out = []
    for i in range(trials):
        restarted = threading.Event()
        sup = Supervisor(NoLog())
        beat = sup.register(f"stall{i}", period_ms, restarted.set)
        sup.start()
        beat()
        last = time.perf_counter()
        restarted.wait(5)
        out.append(time.perf_counter() - last)
        sup.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beats", type=int, default=200_000)
    parser.add_argument("--stalls", type=int, default=30)
    args = parser.parse_args()
    logging.getLogger("haexec").setLevel(logging.CRITICAL)  # the stalls' restart lines
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    print(_line("heartbeat", bench_beat(args.beats), "us", 1e6))
    print(_line("check of 10 healthy loops", bench_check(10_000), "us", 1e6))
    stalls = bench_stalls(args.stalls)
    print(_line("last heartbeat to restart, period 100 ms (rule: 300 ms + one check)", stalls, "ms", 1e3))


if __name__ == "__main__":
    main()
