"""The drill's timeline as a PNG: who led when (one row per instance, a colored band per
epoch, from leadership_history), the faults as shaded vertical spans, and below it the
signals accepted and executed per second. matplotlib is imported here only, lazily, with the
Agg backend: the `drill` extra installs it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from haexec.drill.checker import Facts
from haexec.drill.producer import Answer
from haexec.drill.scenarios import FaultSpan

FAULT_COLORS = {
    "kill": "#d62728",
    "pause": "#ff7f0e",
    "switchover": "#1f77b4",
    "redis-restart": "#9467bd",
    "db-restart": "#8c564b",
    "partition-redis": "#e377c2",
    "partition-db": "#bcbd22",
    "latency-redis": "#7f7f7f",
    "latency-db": "#a0a0a0",
    "reset-redis": "#f7b6d2",
    "reset-db": "#dbdb8d",
    "clock-jump": "#17becf",
}
# Dark, saturated leader colors, so bands stand out from the pale fault spans behind them.
INSTANCE_COLORS = ("#1b7837", "#253494", "#7f2704", "#016c59", "#54278f", "#8c2d04", "#3f007d", "#252525")


class TimelineUnavailable(Exception):
    """matplotlib is not installed (one line)."""


def leader_bands(facts: Facts, end: float) -> list[tuple[str, int, float, float, str]]:
    """(instance, epoch, start, stop, how it ended) per acquired epoch. A band ends at the
    holder's own step-down row, or at the next acquisition, whichever is first."""
    bands = []
    acquired = facts.acquired
    for i, a in enumerate(acquired):
        stop, how = end, "still leading"
        nxt = acquired[i + 1] if i + 1 < len(acquired) else None
        if nxt is not None:
            stop, how = nxt.at, f"superseded by {nxt.instance_id}"
        own = next((h for h in facts.history if h[1] == a.instance_id and h[2] == a.epoch and h[3] != "acquired"), None)
        if own is not None and own[4] < stop:
            stop, how = own[4], own[3]
        bands.append((a.instance_id, a.epoch, a.at, max(stop, a.at), how))
    return bands


# A long drill is cut into panels of at most this many seconds, stacked top to bottom, so
# the picture stays readable at a glance instead of turning into a thin ribbon.
PANEL_S = 240.0
WIDTH_IN = 16.0


def render(
    path: Path,
    title: str,
    instances: Sequence[str],
    facts: Facts,
    faults: Sequence[FaultSpan],
    answers: Sequence[Answer],
    start: float,
    end: float,
) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise TimelineUnavailable("matplotlib is not installed: pip install 'haexec[drill]'") from None

    duration = max(1.0, end - start)
    panels = max(1, math.ceil(duration / PANEL_S))
    span = duration / panels
    n = len(instances)
    lead_h, rate_h = 0.45 * n + 1.1, 1.3
    fig, axes = plt.subplots(
        2 * panels,
        1,
        figsize=(WIDTH_IN, 0.6 + panels * (lead_h + rate_h + 0.35)),
        height_ratios=[lead_h, rate_h] * panels,
        squeeze=False,
    )
    rows = {name: i for i, name in enumerate(instances)}
    color = {name: INSTANCE_COLORS[i % len(INSTANCE_COLORS)] for i, name in enumerate(instances)}
    bands = leader_bands(facts, end)
    acc, exe = _per_second(facts, answers, start, duration)
    kinds = list(dict.fromkeys(f.kind for f in faults))

    def x(t: float) -> float:
        return t - start

    for p in range(panels):
        ax, ax2 = axes[2 * p][0], axes[2 * p + 1][0]
        lo, hi = p * span, (p + 1) * span
        mine = [f for f in faults if x(f.start) < hi and x(f.end if f.end is not None else end) > lo]
        label_faults = len(mine) <= 40
        instant = span / 500  # shorter than this is drawn as a line
        for f in mine:
            stop = f.end if f.end is not None else end
            c = FAULT_COLORS.get(f.kind, "#cccccc")
            for a in (ax, ax2):
                if stop - f.start < instant:
                    a.axvline(x(f.start), color=c, alpha=0.9, lw=1.5)
                else:
                    a.axvspan(x(f.start), x(stop), color=c, alpha=0.2, lw=0)
            if label_faults and lo <= x(f.start) < hi:
                ax.text(
                    x(f.start),
                    1.0,
                    f" {f.kind}{' ' + f.detail if f.kind == 'clock-jump' else ''}",
                    transform=ax.get_xaxis_transform(),
                    rotation=90,
                    ha="left",
                    va="top",
                    fontsize=7,
                    color=c,
                    clip_on=True,
                )
            if f.target in rows:
                y = rows[f.target]
                ax.add_patch(
                    plt.Rectangle(
                        (x(f.start), y - 0.42),
                        max(stop - f.start, instant),
                        0.84,
                        fill=False,
                        ec=c,
                        lw=1.3,
                        ls="--",
                    )
                )
        # Leaders: one band per epoch on its holder's row, labelled with the epoch.
        min_label = span / (WIDTH_IN * 5)  # about a fifth of an inch
        for inst, epoch, t0, t1, _how in bands:
            row = rows.get(inst)
            if row is None or x(t1) < lo or x(t0) > hi:
                continue
            y = row
            ax.barh(y, max(t1 - t0, instant / 2), left=x(t0), height=0.6, color=color[inst], alpha=0.9)
            mid = (max(x(t0), lo) + min(x(t1), hi)) / 2
            if min(x(t1), hi) - max(x(t0), lo) >= min_label:
                ax.text(mid, y, f"e{epoch}", ha="center", va="center", fontsize=8, color="white", weight="bold")
            elif lo <= x(t0) < hi:
                ax.text(x(t0), y + 0.36, f"{epoch}", ha="left", va="bottom", fontsize=6, color=color[inst])
        ax.set_yticks(range(n), list(instances))
        ax.set_ylim(-1.7 if label_faults else -0.7, n - 0.3)
        ax.invert_yaxis()
        ax.set_xlim(lo, hi)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelbottom=False)
        if p == 0:
            ax.set_title(title, fontsize=11, loc="left")
            handles = [Patch(color=FAULT_COLORS.get(k, "#cccccc"), alpha=0.6, label=k) for k in kinds]
            if handles:
                ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, title="faults")
            ax.set_ylabel("leader\n(band = epoch)")
        # Signals per second: accepted (producer answers) and executed (broker orders).
        i0, i1 = int(lo), min(len(acc), int(hi) + 2)
        xs = list(range(i0, i1))
        ax2.step(xs, acc[i0:i1], where="post", label="accepted/s", color="#1f77b4", lw=1)
        ax2.step(xs, exe[i0:i1], where="post", label="executed/s", color="#2ca02c", lw=1)
        ax2.set_xlim(lo, hi)
        ax2.set_ylim(0, max(10, max(acc + exe, default=0) * 1.1))
        ax2.grid(alpha=0.3)
        ax2.set_ylabel("signals/s", fontsize=8)
        if p == 0:
            ax2.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8)
        if p == panels - 1:
            ax2.set_xlabel("seconds since the drill started")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _per_second(facts: Facts, answers: Sequence[Answer], start: float, duration: float) -> tuple[list[int], list[int]]:
    bins = max(1, int(duration)) + 1
    acc = [0] * bins
    exe = [0] * bins
    for a in answers:
        i = int(a.at - start)
        if 0 <= i < bins:
            acc[i] += 1
    for rows in facts.orders_by_tag.values():
        for o in rows:
            i = int(o.placed_at - start)
            if 0 <= i < bins:
                exe[i] += 1
    return acc, exe
