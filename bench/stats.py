"""Summary statistics for the benchmark's samples."""

from __future__ import annotations

import math
from collections.abc import Sequence


def nearest_rank(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile: the smallest sample with at least pct% of samples <= it.
    Always an observed value, which is what a reader of a latency table expects."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float] | None:
    """p50 / p99 / max (milliseconds stay floats, rounded to 0.1), or None without samples."""
    if not values:
        return None
    return {
        "p50": round(nearest_rank(values, 50), 1),
        "p99": round(nearest_rank(values, 99), 1),
        "max": round(max(values), 1),
    }
