"""Three-valued evaluation: required UNKNOWN blocks, optional is skipped, guards fail closed,
the reason vector; the round snapshot's sharing and the index."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from engine.market.base import Bars, MarketDataError, Tick, Timeframe
from engine.plans.conditions.base import Reading, Snapshot, Truth
from engine.plans.evaluator import PlanIndex, RoundSnapshot, evaluate, lookbacks
from engine.plans.model import Leaf, Node, Plan
from tests.plans_support import T0, FakeSnapshot, make_bars


@dataclass(frozen=True)
class Fixed:
    answer: Truth
    guard: bool = False
    type: ClassVar[str] = "fixed"

    def needs(self) -> list[tuple[str, Timeframe | None]]:
        return [("X", Timeframe.M5)]

    def evaluate(self, snapshot: Snapshot) -> Reading:
        return Reading(self.answer, f"says {self.answer.value}", value="1", threshold="2", age_ms=3)

    def to_json(self) -> dict[str, Any]:
        return {"type": "fixed"}


@dataclass(frozen=True)
class Broken(Fixed):
    def evaluate(self, snapshot: Snapshot) -> Reading:
        raise ZeroDivisionError("bug")


T, F, U = Truth.TRUE, Truth.FALSE, Truth.UNKNOWN


def leaf(answer: Truth, optional: bool = False, guard: bool = False) -> Leaf:
    return Leaf(Fixed(answer, guard), optional, "c")


def plan(tree: Leaf | Node | None) -> Plan:
    return Plan(1, {}, tree, None)


def run(tree: Leaf | Node | None) -> Truth:
    return evaluate(plan(tree), FakeSnapshot()).truth


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        (None, T),
        (Node("all", (), "c"), T),
        (Node("all", (leaf(T), leaf(T)), "c"), T),
        (Node("all", (leaf(T), leaf(U)), "c"), U),  # a required unknown blocks
        (Node("all", (leaf(U), leaf(F)), "c"), F),
        (Node("all", (leaf(T), leaf(U, optional=True)), "c"), T),  # an optional unknown is skipped
        (Node("all", (leaf(T), leaf(F, optional=True)), "c"), F),  # an optional false still counts
        (Node("all", (leaf(T), leaf(U, optional=True, guard=True)), "c"), U),  # a guard is never skipped: it blocks
        (Node("any", (leaf(F), leaf(U)), "c"), U),
        (Node("any", (leaf(U), leaf(T)), "c"), T),
        (Node("any", (leaf(F), leaf(F)), "c"), F),
        (Node("not", (leaf(T),), "c"), F),
        (Node("not", (leaf(U),), "c"), U),
        # A guard that cannot say blocks wherever it sits: `not` must not turn it into TRUE
        # (not spoof_suspected with no order book), nor a sibling's TRUE carry the plan past it.
        (Node("not", (leaf(U, guard=True),), "c"), U),
        (Node("any", (leaf(T), leaf(U, guard=True)), "c"), U),
        (Node("not", (leaf(F, guard=True),), "c"), T),
        (Node("all", (leaf(T), Node("not", (leaf(U, optional=True),), "c")), "c"), T),
    ],
)
def test_three_valued_rules(tree: Leaf | Node | None, expected: Truth) -> None:
    assert run(tree) is expected


def test_reason_vector_and_a_failing_check() -> None:
    ev = evaluate(plan(Node("all", (leaf(T), Leaf(Broken(T), False, "c.all[1]")), "c")), FakeSnapshot(now_ms=T0))
    assert ev.truth is U
    reason = ev.reason()
    assert reason["result"] == "unknown" and reason["at_ms"] == T0
    first, second = reason["conditions"]
    assert first == {
        "path": "c",
        "type": "fixed",
        "value": "true",
        "effective": "true",
        "optional": False,
        "guard": False,
        "detail": "says true",
        "measured": "1",
        "threshold": "2",
        "age_ms": 3,
    }
    assert second["value"] == "unknown" and "ZeroDivisionError" in second["detail"]


class CountingMarket:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, Timeframe, int]] = []
        self.fail = fail

    def bars(self, symbol: str, timeframe: Timeframe | str, count: int, *, max_age_ms: int) -> Bars:
        assert isinstance(timeframe, Timeframe)
        self.calls.append((symbol, timeframe, count))
        if self.fail:
            raise MarketDataError("source down")
        return make_bars(symbol, timeframe, [str(100 + i) for i in range(count)])

    def tick(self, symbol: str, *, max_age_ms: int) -> Tick:
        raise MarketDataError("no ticks")


def test_round_snapshot_reads_each_series_once() -> None:
    from engine.plans.conditions.registry import parse_condition

    def p(obj: Mapping[str, Any]) -> Plan:
        return plan(Leaf(parse_condition(obj, "c"), False, "c"))

    plans = [
        p({"type": "holds_above", "symbol": "A", "timeframe": "M5", "level": "1", "bars": b}) for b in (2, 30, 5)
    ] + [p({"type": "crosses", "symbol": "A", "timeframe": "M15", "level": "1", "direction": "above"})]
    market = CountingMarket()
    snap = RoundSnapshot(market, T0, lookback=lookbacks(plans))
    assert all(evaluate(x, snap).truth is T for x in plans[:3])
    assert market.calls == [("A", Timeframe.M5, 30)]  # the most any plan needs, once
    down = CountingMarket(fail=True)
    snap = RoundSnapshot(down, T0)
    assert {evaluate(x, snap).truth for x in plans} == {U}
    assert len(down.calls) == 2  # one failed read per series per round, not one per plan


def test_index_marks_only_affected_plans() -> None:
    idx = PlanIndex()
    idx.add("a", [("EURUSD", Timeframe.M5), ("DXY", None)])
    idx.add("b", [("EURUSD", Timeframe.M15)])
    assert idx.on_bar("EURUSD", Timeframe.M5) == {"a"} and idx.on_bar("EURUSD", Timeframe.H1) == set()
    assert idx.on_tick("DXY") == {"a"} and idx.on_tick("EURUSD") == set()
    idx.add("a", [("GBPUSD", Timeframe.M5)])  # an edit re-indexes
    assert idx.on_tick("DXY") == set() and idx.on_bar("GBPUSD", Timeframe.M5) == {"a"}
    idx.remove("b")
    assert idx.on_bar("EURUSD", Timeframe.M15) == set() and len(idx) == 1


@dataclass(frozen=True)
class Counted:
    calls: list[int]
    guard: ClassVar[bool] = False
    type: ClassVar[str] = "counted"

    def __hash__(self) -> int:
        return 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Counted)

    def needs(self) -> list[tuple[str, Timeframe | None]]:
        return []

    def evaluate(self, snapshot: Snapshot) -> Reading:
        self.calls.append(1)
        return Reading(T, "ok")

    def to_json(self) -> dict[str, Any]:
        return {"type": "counted"}


@dataclass(eq=False)
class Stateful:
    calls: list[int]
    guard: ClassVar[bool] = False
    type: ClassVar[str] = "stateful"

    def needs(self) -> list[tuple[str, Timeframe | None]]:
        return []

    def evaluate(self, snapshot: Snapshot) -> Reading:
        self.calls.append(1)
        return Reading(T, "ok")

    def to_json(self) -> dict[str, Any]:
        return {"type": "stateful"}


def test_equal_stateless_conditions_are_read_once_a_round_stateful_ones_each_time() -> None:
    calls: list[int] = []
    twins = [plan(Leaf(Counted(calls), False, "c")) for _ in range(3)]
    snap = RoundSnapshot(CountingMarket(), T0)
    assert {evaluate(p, snap).truth for p in twins} == {T} and len(calls) == 1
    evaluate(twins[0], RoundSnapshot(CountingMarket(), T0))  # a new round reads again
    assert len(calls) == 2
    own: list[int] = []
    one = Stateful(own)
    for _ in range(3):
        evaluate(plan(Leaf(one, False, "c")), snap)
    assert len(own) == 3
