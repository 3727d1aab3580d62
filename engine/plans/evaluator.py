"""Three-valued evaluation of a plan's condition tree, the reason vector it leaves, the
snapshot of market data one round shares, and the index of which plans a bar close or a
tick affects.

The rules:
- a leaf is TRUE, FALSE or UNKNOWN (data missing, stale or the source cannot say);
- a guard (Condition.guard: the news filter, order-flow filters) fails closed: its UNKNOWN
  blocks the plan wherever it sits in the tree (under `not`, UNKNOWN read as FALSE would
  turn into TRUE, and under `any` a sibling's TRUE would carry the plan past it);
- an optional leaf (`"optional": true`) that is UNKNOWN is skipped (logged) and the node
  above decides without it; a guard is never skipped;
- `all` is FALSE if a child is FALSE, else UNKNOWN if one is UNKNOWN, else TRUE (`all` of
  nothing holds); `any` is TRUE if a child is TRUE, else UNKNOWN if one is, else FALSE;
  `not` swaps TRUE and FALSE and keeps UNKNOWN;
- a plan executes only on TRUE: a required UNKNOWN blocks it.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.market.base import Bars, MarketDataError, Tick, Timeframe
from engine.plans.conditions.base import BookLevel, NewsEvent, Pattern, Reading, Snapshot, Truth
from engine.plans.model import Leaf, Plan, Tree

log = logging.getLogger("haexec.plans")

SKIPPED = "skipped"  # an optional leaf's UNKNOWN, left out of its node
# The snapshot reads with this age and each condition applies its own max_age_ms, so one
# read per (symbol, timeframe) serves every plan whatever ages they accept.
FETCH_MAX_AGE_MS = 86_400_000
DEFAULT_LOOKBACK = 100


@dataclass(frozen=True)
class LeafResult:
    path: str
    type: str
    truth: Truth  # what the condition said
    effective: str  # what the tree used: true, false, unknown, or skipped
    optional: bool
    guard: bool
    detail: str
    value: str | None
    threshold: str | None
    age_ms: int | None
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "type": self.type,
            "value": self.truth.value,
            "effective": self.effective,
            "optional": self.optional,
            "guard": self.guard,
            "detail": self.detail,
            "measured": self.value,
            "threshold": self.threshold,
            "age_ms": self.age_ms,
        }


@dataclass(frozen=True)
class Evaluation:
    truth: Truth
    leaves: tuple[LeafResult, ...]
    at_ms: int
    patterns: tuple[Pattern, ...] = ()

    def reason(self) -> dict[str, Any]:
        """The reason vector stored with the plan and shown by `plan explain`."""
        return {"result": self.truth.value, "at_ms": self.at_ms, "conditions": [r.to_json() for r in self.leaves]}


Observer = Callable[[LeafResult], None]


def evaluate(plan: Plan, snapshot: Snapshot, observe: Observer | None = None) -> Evaluation:
    """The plan's tree on one snapshot; `observe` sees each leaf (metrics)."""
    results: list[LeafResult] = []
    patterns: list[Pattern] = []
    if plan.conditions is None:
        return Evaluation(Truth.TRUE, (), snapshot.now_ms)
    value = _node(plan.conditions, snapshot, results, patterns)
    if observe is not None:
        for r in results:
            observe(r)
    truth = Truth.TRUE if value == SKIPPED else Truth(value)
    if any(r.guard and r.truth is Truth.UNKNOWN for r in results):
        truth = Truth.UNKNOWN  # a guard that cannot say blocks, whatever the tree above it says
    return Evaluation(truth, tuple(results), snapshot.now_ms, tuple(patterns))


def _node(tree: Tree, snapshot: Snapshot, out: list[LeafResult], patterns: list[Pattern]) -> str:
    if isinstance(tree, Leaf):
        return _leaf(tree, snapshot, out, patterns)
    values = [v for v in (_node(c, snapshot, out, patterns) for c in tree.children) if v != SKIPPED]
    if tree.op == "not":
        if not values:
            return SKIPPED
        return {"true": "false", "false": "true"}.get(values[0], "unknown")
    if tree.op == "all":
        return "false" if "false" in values else "unknown" if "unknown" in values else "true"
    return "true" if "true" in values else "unknown" if "unknown" in values else "false"


def _leaf(leaf: Leaf, snapshot: Snapshot, out: list[LeafResult], patterns: list[Pattern]) -> str:
    cond = leaf.condition
    started = time.perf_counter()
    memo: dict[Any, Reading] | None = getattr(snapshot, "readings", None)
    shared = memo is not None and _stateless(cond)
    reading = memo.get(cond) if memo is not None and shared else None
    if reading is not None and isinstance(snapshot, RoundSnapshot):
        snapshot.shared_readings += 1
    if reading is None:
        try:
            reading = cond.evaluate(snapshot)
        except Exception as exc:  # a family's bug must not stop every other plan; it is UNKNOWN
            log.exception("plan condition %s (%s) failed", leaf.path, cond.type)
            reading = Reading.unknown(f"check failed: {type(exc).__name__}: {exc}")
        if memo is not None and shared:
            memo[cond] = reading
    seconds = time.perf_counter() - started
    effective = reading.truth.value
    if reading.truth is Truth.UNKNOWN:
        if cond.guard:
            pass  # never skipped: evaluate() blocks the plan on it
        elif leaf.optional:
            effective = SKIPPED
            log.info("plan condition %s (%s) skipped: %s", leaf.path, cond.type, reading.detail)
    patterns.extend(reading.patterns)
    out.append(
        LeafResult(
            leaf.path,
            cond.type,
            reading.truth,
            effective,
            leaf.optional,
            cond.guard,
            reading.detail,
            reading.value,
            reading.threshold,
            reading.age_ms,
            seconds,
        )
    )
    return effective


def _stateless(cond: Any) -> bool:
    """A frozen dataclass is a pure function of the snapshot, so plans holding an equal one
    share its reading within a round; a condition that keeps state (not frozen) is evaluated
    for each plan, as its state requires."""
    params = getattr(cond, "__dataclass_params__", None)
    return bool(params is not None and params.frozen)


class MarketReader(Protocol):
    """What the snapshot needs of engine.market.Market (Market is one)."""

    def bars(self, symbol: str, timeframe: Timeframe | str, count: int, *, max_age_ms: int) -> Bars: ...

    def tick(self, symbol: str, *, max_age_ms: int) -> Tick: ...


NewsReader = Callable[[int, int], list[NewsEvent]]


@dataclass
class RoundSnapshot:
    """One round's view of the market: each (symbol, timeframe)'s closed bars and each tick
    read once (the first time a condition asks) and shared by every plan of the round; a
    failed read is remembered too, so a source that is down is asked once per round."""

    market: MarketReader
    now_ms: int
    news_reader: NewsReader | None = None
    lookback: dict[tuple[str, Timeframe], int] = field(default_factory=dict)
    reads: int = 0  # source reads (misses of the round's cache)
    requests: int = 0
    shared_readings: int = 0  # conditions answered from an equal condition's reading
    _bars: dict[tuple[str, Timeframe], tuple[Bars | MarketDataError, int]] = field(default_factory=dict)
    readings: dict[Any, Reading] = field(default_factory=dict)  # equal stateless conditions, read once
    _tails: dict[tuple[str, Timeframe, int], tuple[Bars, Bars]] = field(default_factory=dict)
    _ticks: dict[str, Tick | MarketDataError] = field(default_factory=dict)
    _news: dict[tuple[int, int], list[NewsEvent]] = field(default_factory=dict)

    def bars(self, symbol: str, timeframe: Timeframe, count: int) -> Bars:
        self.requests += 1
        key = (symbol, timeframe)
        got = self._bars.get(key)
        if got is None or got[1] < count:
            self.reads += 1
            want = max(count, self.lookback.get(key, DEFAULT_LOOKBACK))
            try:
                got = (self.market.bars(symbol, timeframe, want, max_age_ms=FETCH_MAX_AGE_MS).closed(), want)
            except MarketDataError as exc:
                got = (exc, want)
            self._bars[key] = got
        bars = got[0]
        if isinstance(bars, MarketDataError):
            raise bars
        # Plans ask for the same few lengths: one tail each, its Decimal columns computed once.
        tail = self._tails.get((symbol, timeframe, count))
        if tail is None or tail[0] is not bars:
            tail = (bars, bars.tail(count))
            self._tails[(symbol, timeframe, count)] = tail
        return tail[1]

    def tick(self, symbol: str) -> Tick:
        self.requests += 1
        got = self._ticks.get(symbol)
        if got is None:
            self.reads += 1
            try:
                got = self.market.tick(symbol, max_age_ms=FETCH_MAX_AGE_MS)
            except MarketDataError as exc:
                got = exc
            self._ticks[symbol] = got
        if isinstance(got, MarketDataError):
            raise got
        return got

    def book(self, symbol: str) -> list[BookLevel] | None:
        return None  # no source here has an order book: order flow is UNKNOWN

    def news(self, from_ms: int, to_ms: int) -> list[NewsEvent]:
        if self.news_reader is None:
            return []
        key = (from_ms, to_ms)
        if key not in self._news:
            self._news[key] = self.news_reader(from_ms, to_ms)
        return self._news[key]


def lookbacks(plans: Iterable[Plan]) -> dict[tuple[str, Timeframe], int]:
    """The most closed bars any plan reads per (symbol, timeframe): one fetch serves all."""
    out: dict[tuple[str, Timeframe], int] = {}
    for plan in plans:
        for leaf in plan.leaves():
            # A family says how many closed bars it reads with an int `lookback` (an attribute
            # or a property); one that does not is given DEFAULT_LOOKBACK.
            count = getattr(leaf.condition, "lookback", DEFAULT_LOOKBACK)
            for symbol, tf in leaf.condition.needs():
                if tf is not None:
                    out[(symbol, tf)] = max(out.get((symbol, tf), 0), int(count))
    return out


class PlanIndex:
    """(symbol, timeframe) -> the plans reading it; (symbol, None): the plans reading its ticks."""

    def __init__(self) -> None:
        self._by_need: dict[tuple[str, Timeframe | None], set[str]] = defaultdict(set)
        self._needs: dict[str, set[tuple[str, Timeframe | None]]] = {}

    def add(self, key: str, needs: Iterable[tuple[str, Timeframe | None]]) -> None:
        self.remove(key)
        wanted = set(needs)
        self._needs[key] = wanted
        for need in wanted:
            self._by_need[need].add(key)

    def remove(self, key: str) -> None:
        for need in self._needs.pop(key, set()):
            keys = self._by_need.get(need)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_need[need]

    def on_bar(self, symbol: str, timeframe: Timeframe) -> set[str]:
        return set(self._by_need.get((symbol, timeframe), ()))

    def on_tick(self, symbol: str) -> set[str]:
        return set(self._by_need.get((symbol, None), ()))

    def needs(self) -> set[tuple[str, Timeframe | None]]:
        return set(self._by_need)

    def __len__(self) -> int:
        return len(self._needs)
