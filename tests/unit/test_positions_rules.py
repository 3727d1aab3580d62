"""engine.positions.rules: the `manage` block (every bad field named, the canonical form)
and `decide` on hand-worked paths: breakeven, locks, the three trailing modes, partials,
rounding to the point, the never-loosen rule and a failover resume from stored state."""

from __future__ import annotations

import json
from decimal import ROUND_DOWN, Context, Decimal, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.market.base import Timeframe
from engine.model import Side
from engine.positions.rules import (
    Breakeven,
    Held,
    Lock,
    ManageRules,
    Partial,
    RulesError,
    Trailing,
    TrailState,
    decide,
    parse_manage,
)

D = Decimal

# A buy at 1.10000 with its stop 100 points (0.00100) below: R = 0.00100.
BUY = Held("1", "EURUSD", Side.BUY, D("1.10000"), D("1.09900"), D("1.00"), D("0.00001"))
SELL = Held("2", "EURUSD", Side.SELL, D("1.10000"), D("1.10100"), D("1.00"), D("0.00001"))


def errors_of(block: object) -> list[str]:
    with pytest.raises(RulesError) as caught:
        parse_manage(block)
    return caught.value.errors


# --------------------------------------------------------------------------- parse_manage


def test_the_issue_example_parses_to_decimals() -> None:
    rules = parse_manage(
        {
            "breakeven": {"at_rr": 1, "offset_points": "10"},
            "trailing": {"distance_points": 150, "activation_rr": 1.5},
            "lock": [[2, 1], ["3", "2.0"]],
            "partial": {"at_rr": 2, "fraction": 0.5},
        }
    )
    assert rules == ManageRules(
        breakeven=Breakeven(D(1), D(10)),
        trailing=Trailing(activation_rr=D("1.5"), distance_points=D(150)),
        locks=(Lock(D(2), D(1)), Lock(D(3), D(2))),
        partial=Partial(D(2), D("0.5")),
    )
    assert all(type(x) is Decimal for x in (rules.locks[1].lock_rr, rules.partial.fraction))  # type: ignore[union-attr]


def test_atr_and_swing_trailing() -> None:
    atr = parse_manage({"trailing": {"atr": {"timeframe": "M15", "period": 14, "multiple": 2}, "activation_rr": 1}})
    assert atr.trailing == Trailing(D(1), atr_multiple=D(2), atr_timeframe=Timeframe.M15, atr_period=14)
    swing = parse_manage({"trailing": {"swing": {"timeframe": "m5", "bars": "3"}, "activation_rr": "0"}})
    assert swing.trailing == Trailing(D(0), swing_timeframe=Timeframe.M5, swing_bars=3)
    assert parse_manage({"trailing": {"swing": {"timeframe": "H1"}, "activation_rr": 1}}).trailing.swing_bars == 2  # type: ignore[union-attr]


def test_empty_block_is_empty_rules() -> None:
    assert parse_manage({}).empty
    assert parse_manage({"breakeven": None}).empty  # null counts as absent, as for signal fields


def test_every_bad_field_is_named_at_once() -> None:
    errors = errors_of(
        {
            "breakeven": {"at_rr": -1, "offset_points": "NaN"},
            "trailing": {"distance_points": 150, "atr": {"timeframe": "M15", "multiple": 2}, "activation_rr": 1},
            "lock": [[2, 2], [1, "x"]],
            "partial": {"at_rr": 2, "fraction": 1.5, "when": 1},
            "trail": {},
        }
    )
    text = "\n".join(errors)
    for expected in (
        "manage.breakeven.at_rr: must be > 0 (got -1)",
        "manage.breakeven.offset_points: must be a decimal number",
        "manage.trailing: give exactly one of distance_points, atr, swing (got distance_points, atr)",
        "manage.lock[0]: lock 2 R must be below its at 2 R",
        "manage.lock[1][1]: must be a decimal number",
        "manage.partial.fraction: must be between 0 and 1",
        "manage.partial.when: unknown key",
        "manage.trail: unknown key",
    ):
        assert expected in text, (expected, errors)
    assert all("\n" not in e for e in errors)


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ([], "manage: must be an object, got an array"),
        ({"lock": [[2, 1], [2, 1.5]]}, "manage.lock[1]: at 2 R must be above the previous step's 2 R"),
        ({"lock": [[3, 2], [2, 1]]}, "manage.lock[1]: at 2 R must be above the previous step's 3 R"),
        ({"lock": [[2]]}, "manage.lock[0]: must be an [at_rr, lock_rr] pair"),
        ({"lock": {"2": 1}}, "manage.lock: must be an array of [at_rr, lock_rr] pairs, got an object"),
        ({"lock": [[2, -1]]}, "manage.lock[0][1]: must be >= 0 (got -1)"),
        ({"breakeven": {}}, "manage.breakeven.at_rr: required"),
        ({"breakeven": {"at_rr": True}}, "manage.breakeven.at_rr: must be a number, got a boolean"),
        ({"breakeven": {"at_rr": float("inf")}}, "manage.breakeven.at_rr: must be a finite number"),
        ({"breakeven": {"at_rr": "1e400"}}, "manage.breakeven.at_rr: must be between"),
        ({"trailing": {"activation_rr": 1}}, "manage.trailing: give exactly one of distance_points, atr, swing"),
        (
            {"trailing": {"distance_points": 10, "swing": {"timeframe": "M5", "bars": 99}, "activation_rr": 1}},
            "manage.trailing.swing.bars: must be a whole number 1..50 (got 99)",  # named beside "exactly one"
        ),
        ({"trailing": {"distance_points": 10}}, "manage.trailing.activation_rr: required"),
        ({"trailing": {"distance_points": 0, "activation_rr": 1}}, "manage.trailing.distance_points: must be > 0"),
        (
            {"trailing": {"atr": {"timeframe": "M7", "multiple": 2}, "activation_rr": 1}},
            "manage.trailing.atr.timeframe: timeframe 'M7' does not exist",
        ),
        (
            {"trailing": {"atr": {"timeframe": "M5", "multiple": 2, "period": 1.5}, "activation_rr": 1}},
            "manage.trailing.atr.period: must be a whole number 1..1000 (got 1.5)",
        ),
        (
            {"trailing": {"swing": {"timeframe": "M5", "bars": 0}, "activation_rr": 1}},
            "manage.trailing.swing.bars: must be a whole number 1..50 (got 0)",
        ),
        ({"partial": {"at_rr": 2, "fraction": 0}}, "manage.partial.fraction: must be between 0 and 1"),
        ({"partial": {"fraction": "0.5"}}, "manage.partial.at_rr: required"),
    ],
)
def test_bad_blocks_are_refused_naming_the_field(block: object, expected: str) -> None:
    errors = errors_of(block)
    assert any(e.startswith(expected) for e in errors), errors


def test_path_prefix_is_the_callers() -> None:
    assert errors_of_path({"breakeven": {"at_rr": 0}}, "HAEXEC_MANAGE_DEFAULT") == [
        "HAEXEC_MANAGE_DEFAULT.breakeven.at_rr: must be > 0 (got 0)"
    ]


def errors_of_path(block: object, path: str) -> list[str]:
    with pytest.raises(RulesError) as caught:
        parse_manage(block, path)
    return caught.value.errors


def test_to_json_is_canonical_and_reads_back() -> None:
    spelled = [
        {"breakeven": {"at_rr": 1}, "lock": [[2, 1]], "trailing": {"distance_points": 150, "activation_rr": 1.5}},
        {
            "breakeven": {"at_rr": "1.0", "offset_points": 0},
            "lock": [["2.00", "1"]],
            "trailing": {"distance_points": "1.5E2", "activation_rr": "1.50"},
        },
    ]
    canonical = [json.dumps(parse_manage(s).to_json(), sort_keys=True) for s in spelled]
    assert canonical[0] == canonical[1]
    assert json.loads(canonical[0]) == {
        "breakeven": {"at_rr": "1", "offset_points": "0"},
        "lock": [["2", "1"]],
        "trailing": {"activation_rr": "1.5", "distance_points": "150"},
    }
    for block in (
        {"trailing": {"atr": {"timeframe": "M15", "period": 20, "multiple": 2.5}, "activation_rr": 1}},
        {
            "trailing": {"swing": {"timeframe": "M5", "bars": 3}, "activation_rr": 0},
            "partial": {"at_rr": 2, "fraction": 0.25},
        },
    ):
        rules = parse_manage(block)
        assert parse_manage(json.loads(json.dumps(rules.to_json()))) == rules
        assert all(isinstance(leaf, str) for leaf in leaves(rules.to_json()))


def leaves(value: object) -> list[object]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in leaves(item)]
    return [value]


# --------------------------------------------------------------------------- decide


def walk(held: Held, rules: ManageRules, prices: list[str], sl: Decimal | None = None, **kw: Decimal) -> list[Decimal]:
    state, stop, stops = TrailState(), sl if sl is not None else held.initial_sl, []
    for p in prices:
        d = decide(held, rules, state, D(p), stop, **kw)
        state, stop = d.state, d.stop
        stops.append(stop)
    return stops


def test_breakeven_with_offset_at_one_r() -> None:
    rules = parse_manage({"breakeven": {"at_rr": 1, "offset_points": 10}})
    d0 = decide(BUY, rules, TrailState(), D("1.10099"), BUY.initial_sl)
    assert d0.stop == BUY.initial_sl and not d0.state.breakeven_done and d0.why == ()
    d1 = decide(BUY, rules, d0.state, D("1.10100"), d0.stop)
    assert (d1.stop, d1.why, d1.state.breakeven_done, d1.state.current_rr) == (D("1.10010"), ("breakeven",), True, 1)
    # Done is done: the price falling back keeps asking for the breakeven stop.
    d2 = decide(BUY, rules, d1.state, D("1.10050"), BUY.initial_sl)
    assert d2.stop == D("1.10010")
    sell = decide(SELL, rules, TrailState(), D("1.09900"), SELL.initial_sl)
    assert sell.stop == D("1.09990")


def test_a_breakeven_stop_the_price_has_crossed_waits() -> None:
    # offset 150 points: at +1 R (100 points) the stop would sit above the bid.
    rules = parse_manage({"breakeven": {"at_rr": 1, "offset_points": 150}})
    assert walk(BUY, rules, ["1.10100", "1.10150", "1.10151"]) == [D("1.09900"), D("1.09900"), D("1.10150")]


def test_locks_step_up_and_never_step_back() -> None:
    rules = parse_manage({"lock": [[2, 1], [3, 2]]})
    stops = walk(BUY, rules, ["1.10150", "1.10200", "1.10250", "1.10300", "1.10100"])
    assert stops == [D("1.09900"), D("1.10100"), D("1.10100"), D("1.10200"), D("1.10200")]
    d = decide(BUY, rules, TrailState(), D("1.10300"), BUY.initial_sl)
    assert d.why == ("lock 3R->2R",) and d.state.locks_done == 2
    assert walk(SELL, rules, ["1.09800"]) == [D("1.09900")]


def test_distance_trailing_activates_stays_active_and_follows_high_water() -> None:
    rules = parse_manage({"trailing": {"distance_points": 50, "activation_rr": 1.5}})
    prices = ["1.10140", "1.10150", "1.10200", "1.10120", "1.10250"]
    assert walk(BUY, rules, prices) == [D("1.09900"), D("1.10100"), D("1.10150"), D("1.10150"), D("1.10200")]
    state = TrailState()
    for p in prices[:4]:
        state = decide(BUY, rules, state, D(p), BUY.initial_sl).state
    # Back to +1.2 R: still active, high water 1.10200 kept.
    assert state.trailing_active and state.high_water == D("1.10200") and state.current_rr == D("1.2")
    sell = walk(SELL, rules, ["1.09850", "1.09800", "1.09900"])
    assert sell == [D("1.09900"), D("1.09850"), D("1.09850")]


def test_atr_trailing_uses_the_atr_given_and_waits_without_one() -> None:
    rules = parse_manage({"trailing": {"atr": {"timeframe": "M15", "multiple": 2}, "activation_rr": 1}})
    no_atr = decide(BUY, rules, TrailState(), D("1.10200"), BUY.initial_sl)
    assert no_atr.stop == BUY.initial_sl and no_atr.state.trailing_active
    d = decide(BUY, rules, TrailState(), D("1.10200"), BUY.initial_sl, atr=D("0.000333"))
    # 1.10200 - 2 x 0.000333 = 1.101334, up to the point: 1.10134.
    assert d.stop == D("1.10134") and d.why == ("trailing 2 x ATR(14) M15",)
    s = decide(SELL, rules, TrailState(), D("1.09800"), SELL.initial_sl, atr=D("0.000333"))
    assert s.stop == D("1.09866")  # 1.098666 down to the point


def test_swing_trailing_sits_one_point_beyond_the_swing() -> None:
    rules = parse_manage({"trailing": {"swing": {"timeframe": "M5"}, "activation_rr": 0}})
    assert decide(BUY, rules, TrailState(), D("1.10050"), BUY.initial_sl, swing=D("1.10000")).stop == D("1.09999")
    assert decide(SELL, rules, TrailState(), D("1.09950"), SELL.initial_sl, swing=D("1.10000")).stop == D("1.10001")
    # A swing low above the bid cannot carry a stop: the current one stays.
    assert decide(BUY, rules, TrailState(), D("1.09950"), BUY.initial_sl, swing=D("1.10000")).stop == BUY.initial_sl


def test_the_tightest_candidate_wins_and_a_tie_names_both() -> None:
    rules = parse_manage(
        {"breakeven": {"at_rr": 1}, "lock": [[2, 0]], "trailing": {"distance_points": 300, "activation_rr": 2}}
    )
    d = decide(BUY, rules, TrailState(), D("1.10300"), BUY.initial_sl)
    assert d.stop == BUY.entry and d.why == ("breakeven", "lock 2R->0R", "trailing 300 points")
    d = decide(BUY, rules, TrailState(), D("1.10400"), BUY.initial_sl)
    assert d.stop == D("1.10100") and d.why == ("trailing 300 points",)


def test_never_loosens_a_tighter_current_stop() -> None:
    rules = parse_manage({"breakeven": {"at_rr": 1}})
    d = decide(BUY, rules, TrailState(), D("1.10200"), D("1.10150"))
    assert d.stop == D("1.10150") and d.why == ()


def test_partial_close_rounds_down_to_the_step_once() -> None:
    rules = parse_manage({"partial": {"at_rr": 2, "fraction": 0.33}})
    held = Held("3", "EURUSD", Side.BUY, D("1.10000"), D("1.09900"), D("1.00"), D("0.00001"), volume_step=D("0.1"))
    before = decide(held, rules, TrailState(), D("1.10199"), held.initial_sl)
    assert before.partial_volume is None and not before.state.partial_done
    at = decide(held, rules, before.state, D("1.10200"), held.initial_sl)
    assert at.partial_volume == D("0.3") and at.state.partial_done
    again = decide(held, rules, at.state, D("1.10300"), held.initial_sl)
    assert again.partial_volume is None
    tiny = Held("4", "EURUSD", Side.BUY, D("1.10000"), D("1.09900"), D("0.02"), D("0.00001"))
    small = decide(
        tiny, parse_manage({"partial": {"at_rr": 2, "fraction": 0.4}}), TrailState(), D("1.10200"), tiny.initial_sl
    )
    assert small.partial_volume is None and small.state.partial_done  # 0.008 is below the step


def test_a_position_at_zero_r_fires_no_r_rule() -> None:
    flat = Held("5", "EURUSD", Side.BUY, D("1.10000"), D("1.10000"), D("1"), D("0.00001"))
    rules = parse_manage({"breakeven": {"at_rr": 1}, "trailing": {"distance_points": 50, "activation_rr": 0}})
    d = decide(flat, rules, TrailState(), D("1.10200"), D("1.10000"))
    assert d.state.current_rr == 0 and not d.state.breakeven_done and d.stop == D("1.10150")


def test_trail_state_round_trips_and_a_resume_gives_the_same_stops() -> None:
    rules = parse_manage(
        {"breakeven": {"at_rr": 1}, "lock": [[2, 1]], "trailing": {"distance_points": 70, "activation_rr": 1.3}}
    )
    prices = [D(p) for p in ("1.10050", "1.10133", "1.10210", "1.10190", "1.10260", "1.10230", "1.10300")]
    state, stop, stops = TrailState(), BUY.initial_sl, []
    states = []
    for p in prices:
        d = decide(BUY, rules, state, p, stop)
        state, stop = d.state, d.stop
        states.append((json.loads(json.dumps(state.to_json())), stop))
        stops.append(stop)
    for i in range(len(prices) - 1):
        stored, sl = states[i]
        resumed = TrailState.from_json(stored)
        assert resumed == TrailState.from_json(json.loads(json.dumps(resumed.to_json())))
        replay = []
        for p in prices[i + 1 :]:
            d = decide(BUY, rules, resumed, p, sl)
            resumed, sl = d.state, d.stop
            replay.append(sl)
        assert replay == stops[i + 1 :]


def test_trail_state_from_json_defaults_and_refusals() -> None:
    assert TrailState.from_json({}) == TrailState()
    for bad in ({"high_water": 1.1}, {"current_rr": "x"}, {"locks_done": -1}, {"trailing_active": "yes"}):
        with pytest.raises(ValueError, match="trail state"):
            TrailState.from_json(bad)


def test_the_callers_decimal_context_does_not_change_a_stop() -> None:
    rules = parse_manage(
        {"lock": [[2, 1]], "trailing": {"atr": {"timeframe": "M15", "multiple": "1.37"}, "activation_rr": 1}}
    )
    held = Held("6", "X", Side.BUY, D("1.23457"), D("1.22111"), D("1"), D("0.00001"))
    args = (held, rules, TrailState(), D("1.27777"), held.initial_sl)
    expected = decide(*args, atr=D("0.0012345678"))
    with localcontext(Context(prec=3, rounding=ROUND_DOWN)):
        assert decide(*args, atr=D("0.0012345678")) == expected


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
near_blocks = st.dictionaries(
    st.sampled_from(["breakeven", "trailing", "lock", "partial", "x"]),
    st.one_of(
        json_values,
        st.dictionaries(
            st.sampled_from(["at_rr", "offset_points", "fraction", "activation_rr", "distance_points", "atr", "swing"]),
            json_values,
            max_size=4,
        ),
        st.lists(st.lists(st.one_of(st.integers(-3, 5), st.text(max_size=3)), max_size=3), max_size=3),
    ),
    max_size=4,
)


@settings(deadline=None, derandomize=True, database=None, max_examples=200)
@given(st.one_of(json_values, near_blocks))
def test_any_json_is_refused_in_one_line_per_field_or_reads_back_canonically(block: object) -> None:
    try:
        rules = parse_manage(block)
    except RulesError as exc:
        assert exc.errors and all("\n" not in e and e.startswith("manage") for e in exc.errors)
        assert [f"{where}: {problem}" for where, problem in exc.fields] == exc.errors
        return
    assert parse_manage(json.loads(json.dumps(rules.to_json()))) == rules
