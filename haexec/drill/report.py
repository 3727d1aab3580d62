"""Drill figures: per-scenario summaries, the human table and the goals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from haexec.drill.scenarios import FAILOVER, STEADY

# Goals from the brief: how far failover may exceed the lease the old leader had left, how
# fast a switchover must be.
GOAL_LAG_MS = 50.0
GOAL_SWITCHOVER_MS = 100.0


def nearest_rank(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


def stats(values: Sequence[float | None]) -> dict[str, float | None]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {
        "n": len(vals),
        "p50": round(nearest_rank(vals, 50), 1),
        "p99": round(nearest_rank(vals, 99), 1),
        "max": round(max(vals), 1),
    }


def summarize(scenario: str, rounds: list[dict[str, Any]], renew_ms: int, violations: int) -> dict[str, Any]:
    ran = [r for r in rounds if not r.get("skipped")]
    fo = stats([r.get("failover_ms") for r in ran])
    lag = stats([r.get("lag_ms") for r in ran])
    out: dict[str, Any] = {
        "rounds": len(rounds),
        "failed_rounds": sum(1 for r in rounds if not r.get("ok")),
        "skipped_rounds": len(rounds) - len(ran),
        "failover_ms_p50": fo["p50"],
        "failover_ms_p99": fo["p99"],
        "failover_ms_max": fo["max"],
        "lag_ms_p50": lag["p50"],
        "lag_ms_p99": lag["p99"],
        "lag_ms_max": lag["max"],
        "detect_ms": stats([r.get("detect_ms") for r in ran]),
        "pttl_ms": stats([r.get("pttl_ms") for r in ran]),
        "accepted_in_rounds": sum(r.get("accepted", 0) for r in ran),
        "executed_in_rounds": sum(r.get("executed", 0) for r in ran),
        "duplicates": sum(r.get("duplicated", 0) for r in ran),
        "lost": sum(r.get("lost", 0) for r in ran),
        "in_doubt": sum(r.get("in_doubt", 0) for r in ran),
        "leadership_changes": sum(len(r.get("epochs", [])) for r in ran),
        "max_exec_gap_ms": max(
            (r["max_exec_gap_ms"] for r in ran if r.get("max_exec_gap_ms") is not None), default=None
        ),
        "violations": violations,
    }
    if len(ran) < len(rounds):
        out["skipped"] = next(r["skipped"] for r in rounds if r.get("skipped"))
    out["goals"] = goals(scenario, ran, out, renew_ms)
    return out


def goals(scenario: str, ran: list[dict[str, Any]], s: dict[str, Any], renew_ms: int) -> dict[str, Any]:
    g: dict[str, Any] = {}
    if not ran:
        return g
    if scenario in ("kill", "pause"):
        p99 = s["lag_ms_p99"]
        g["lag_p99_le_50ms"] = p99 is not None and p99 <= GOAL_LAG_MS
    if scenario == "switchover":
        p99 = s["failover_ms_p99"]
        g["switchover_p99_le_100ms"] = p99 is not None and p99 <= GOAL_SWITCHOVER_MS
    if scenario in STEADY:
        g["no_leadership_change"] = all(not r.get("leadership_changed") for r in ran)
    if scenario == "redis-restart":
        gap = s["max_exec_gap_ms"]
        g["exec_gap_le_renew"] = gap is not None and gap <= renew_ms
    if scenario == "clock-jump":
        g["leader_throughout"] = all(r.get("leader_throughout") for r in ran)
    if scenario in FAILOVER:
        g["every_round_recovered"] = all(r.get("ok") for r in ran)
    return g


def _f(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


COLUMNS = (
    ("round", "rnd", 4),
    ("victim", "victim", 7),
    ("new_leader", "new", 5),
    ("epoch_before", "ep0", 5),
    ("epoch_after", "ep1", 5),
    ("detect_ms", "detect", 8),
    ("failover_ms", "failover", 9),
    ("pttl_ms", "pttl", 7),
    ("lag_ms", "lag", 7),
    ("accepted", "acc", 5),
    ("executed", "exec", 5),
    ("duplicated", "dup", 4),
    ("lost", "lost", 5),
    ("in_doubt", "doubt", 6),
    ("max_exec_gap_ms", "gap", 6),
)


def table(scenario: str, rounds: list[dict[str, Any]]) -> list[str]:
    lines = [f"== {scenario}", "".join(f"{h:>{w}}" for _, h, w in COLUMNS) + "  note"]
    for r in rounds:
        note = r.get("skipped") or r.get("error") or r.get("note") or ""
        if not note and scenario in STEADY:
            note = "leader changed" if r.get("leadership_changed") else "leader kept"
            if scenario == "clock-jump":
                note += f", offsets seen {r.get('offsets_seen_s')}"
        cells = "".join(f"{_f(r.get(k)):>{w}}" for k, _, w in COLUMNS)
        lines.append(cells + ("  " + note if note else ""))
    return lines


def summary_lines(scenario: str, s: dict[str, Any]) -> list[str]:
    def trio(prefix: str) -> str:
        return f"p50 {_f(s[prefix + '_p50'], 1)}  p99 {_f(s[prefix + '_p99'], 1)}  max {_f(s[prefix + '_max'], 1)}"

    lines = [f"   {scenario}: failover_ms {trio('failover_ms')}"]
    if s.get("lag_ms_p50") is not None:
        lines.append(f"   {' ' * len(scenario)}  lag_ms      {trio('lag_ms')}")
    d = s["detect_ms"]
    if d["n"]:
        lines.append(
            f"   {' ' * len(scenario)}  detect_ms   p50 {_f(d['p50'], 1)}  p99 {_f(d['p99'], 1)}  max {_f(d['max'], 1)}"
        )
    lines.append(
        f"   {' ' * len(scenario)}  signals accepted {s['accepted_in_rounds']} executed {s['executed_in_rounds']} "
        f"duplicates {s['duplicates']} lost {s['lost']} in doubt {s['in_doubt']}; "
        f"leadership changes {s['leadership_changes']}; max exec gap {_f(s['max_exec_gap_ms'], 0)} ms; "
        f"failed rounds {s['failed_rounds']}"
    )
    if s.get("skipped"):
        lines.append(f"   {' ' * len(scenario)}  {s['skipped']}")
    for name, ok in s["goals"].items():
        lines.append(f"   {' ' * len(scenario)}  goal {name}: {'ok' if ok else 'MISSED'}")
    return lines
