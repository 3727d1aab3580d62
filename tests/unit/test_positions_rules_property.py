"""The rules and the fail-safe together over random positions, rule settings and price
paths (hypothesis): every stop decide returns, fed step by step, passes failsafe.check
against the previous stop and a cap the initial stop was within, i.e. it never loosens and
never risks more than the cap: 0 violations. And a resume from any stored TrailState (to_json,
through JSON text, from_json) computes the same stops as the leader that never stopped."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.brokers.base import SymbolSpec
from engine.model import Side
from engine.positions.failsafe import check
from engine.positions.rules import Held, TrailState, decide, parse_manage

D = Decimal
FAST = settings(
    deadline=None, derandomize=True, database=None, max_examples=200, suppress_health_check=list(HealthCheck)
)

points = st.sampled_from([D("0.00001"), D("0.001"), D("0.01"), D("0.25"), D("1")])
ratios = st.decimals(min_value=D("0.1"), max_value=D("5"), places=1)


@st.composite
def manage_blocks(draw: st.DrawFn) -> dict[str, Any]:
    block: dict[str, Any] = {}
    if draw(st.booleans()):
        block["breakeven"] = {"at_rr": str(draw(ratios)), "offset_points": draw(st.integers(0, 200))}
    if draw(st.booleans()):
        mode = draw(st.sampled_from(["distance_points", "atr", "swing"]))
        trailing: dict[str, Any] = {"activation_rr": str(draw(st.decimals(min_value=0, max_value=3, places=1)))}
        if mode == "distance_points":
            trailing["distance_points"] = draw(st.integers(1, 500))
        elif mode == "atr":
            trailing["atr"] = {"timeframe": "M15", "multiple": str(draw(ratios))}
        else:
            trailing["swing"] = {"timeframe": "M5", "bars": draw(st.integers(1, 5))}
        block["trailing"] = trailing
    ats = sorted(set(draw(st.lists(ratios, max_size=4))))
    if ats:
        block["lock"] = [
            [str(at), str(draw(st.decimals(min_value=0, max_value=at - D("0.1"), places=1)))] for at in ats
        ]
    if draw(st.booleans()):
        block["partial"] = {"at_rr": str(draw(ratios)), "fraction": str(draw(st.decimals("0.1", "0.9", places=2)))}
    return block


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    point = draw(points)
    side = draw(st.sampled_from([Side.BUY, Side.SELL]))
    sign = 1 if side is Side.BUY else -1
    entry_points = draw(st.integers(10_000, 2_000_000))
    risk_points = draw(st.integers(1, 2_000))
    entry = entry_points * point
    held = Held(
        "t",
        "SYM",
        side,
        entry,
        (entry_points - sign * risk_points) * point,
        draw(st.integers(1, 500)) * D("0.01"),
        point,
    )
    spec = draw(
        st.sampled_from(
            [
                SymbolSpec(contract_size=D("100000")),
                SymbolSpec(contract_size=D("1")),
                SymbolSpec(tick_size=point, tick_value=D("0.7")),
            ]
        )
    )
    steps = draw(st.lists(st.integers(-risk_points, risk_points), min_size=1, max_size=40))
    path, at = [], entry_points
    for step in steps:
        at = max(1, at + step)
        path.append(at * point)
    atrs = draw(st.lists(st.one_of(st.none(), st.integers(1, 3 * risk_points)), min_size=len(path), max_size=len(path)))
    swings = draw(
        st.lists(
            st.one_of(st.none(), st.integers(-2 * risk_points, 4 * risk_points)), min_size=len(path), max_size=len(path)
        )
    )
    return {
        "held": held,
        "spec": spec,
        "rules": parse_manage(draw(manage_blocks())),
        "path": path,
        "atr": [None if a is None else a * point for a in atrs],
        "swing": [None if s is None else entry + sign * s * point for s in swings],
        "slack": draw(st.decimals(min_value=0, max_value=1, places=2)),
        "cut": draw(st.integers(0, len(path) - 1)),
    }


@FAST
@given(cases())
def test_no_stop_ever_fails_the_failsafe_and_a_resume_is_exact(case: dict[str, Any]) -> None:
    held: Held = case["held"]
    spec: SymbolSpec = case["spec"]
    # The cap: the initial stop's loss (so the first stop is within it) plus some slack.
    initial_loss = spec.loss_per_lot(held.risk) * held.volume
    cap = initial_loss * (1 + case["slack"])
    assert check(held.side, held.entry, held.volume, None, held.initial_sl, spec, cap).allowed

    def run(state: TrailState, stop: Decimal, start: int) -> tuple[list[Decimal], list[dict[str, Any]]]:
        stops, stored = [], []
        for i in range(start, len(case["path"])):
            d = decide(held, case["rules"], state, case["path"][i], stop, atr=case["atr"][i], swing=case["swing"][i])
            verdict = check(held.side, held.entry, held.volume, stop, d.stop, spec, cap)
            assert verdict.allowed, (i, verdict.reason)
            assert (d.stop - held.initial_sl) * (1 if held.side is Side.BUY else -1) >= 0
            assert d.stop % held.point == 0 or d.stop == held.initial_sl
            state, stop = d.state, d.stop
            stops.append(stop)
            stored.append(json.loads(json.dumps(state.to_json())))
        return stops, stored

    stops, stored = run(TrailState(), held.initial_sl, 0)
    cut = case["cut"]
    resumed, _ = run(TrailState.from_json(stored[cut]), stops[cut], cut + 1)
    assert resumed == stops[cut + 1 :]
