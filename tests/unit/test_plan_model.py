"""The plan model: validation naming every bad field, the order through the signal's own
rules, condition trees, the stored form, plans of earlier schema versions (fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.plans.model import Leaf, Node, PlanValidationError, parse_plan
from engine.signal import parse_signal

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "plans"
ORDER = {"symbol": "EURUSD", "side": "buy", "type": "market", "volume": "0.01", "price": "1.1", "sl": "1.09"}


def errors(body: object) -> dict[str, str]:
    with pytest.raises(PlanValidationError) as err:
        parse_plan(body)
    return err.value.errors


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("v1_*.json")), ids=lambda p: p.stem)
def test_plans_of_every_schema_version_keep_loading(path: Path) -> None:
    body = json.loads(path.read_text())
    plan_id, plan = parse_plan(body)
    again = parse_plan(plan.to_json(), plan_id)[1]
    assert again == plan and again.schema_version == body["schema_version"]
    parse_signal(plan.signal_body(plan_id or "p", 1))  # still a signal the path takes


def test_no_conditions_is_a_pending_order_and_empty_all_holds() -> None:
    _, plan = parse_plan(dict(ORDER))
    assert plan.conditions is None and plan.needs() == set()
    _, plan = parse_plan({**ORDER, "conditions": {"all": []}})
    assert isinstance(plan.conditions, Node) and plan.conditions.children == ()


def test_the_signal_a_plan_becomes() -> None:
    pid, plan = parse_plan({**ORDER, "plan_id": "a-1", "expires_at": "2030-01-01T00:00:00+01:00", "meta": {"k": 1}})
    body = plan.signal_body(pid or "", 7)
    assert body["source"] == "plan" and body["signal_id"] == "a-1:7"
    intent = parse_signal(body)
    assert intent.expires_at is not None and intent.expires_at.isoformat() == "2029-12-31T23:00:00+00:00"
    assert intent.meta == {"k": 1}


def test_every_bad_field_is_named() -> None:
    bad = errors(
        {
            "plan_id": "no spaces",
            "schema_version": 9,
            "source": "me",
            "symbol": "EURUSD",
            "side": "hold",
            "price": "1.1",
            "sl": "1.2",
            "volume": "0.1",
            "type": "market",
            "colour": "red",
            "manage": [],
            "conditions": {"all": [{"type": "price_above", "symbol": "EURUSD"}, {"type": "nope"}, "x"]},
        }
    )
    assert set(bad) == {
        "plan_id",
        "schema_version",
        "source",
        "side",
        "colour",
        "manage",
        "conditions.all[0].level",
        "conditions.all[1].type",
        "conditions.all[2]",
    }


def test_tree_shapes() -> None:
    assert "conditions.any" in errors({**ORDER, "conditions": {"any": []}})
    assert "conditions" in errors({**ORDER, "conditions": {"all": [], "any": []}})
    assert "conditions.all[0].optional" in errors(
        {**ORDER, "conditions": {"all": [{"type": "price_above", "symbol": "X", "level": "1", "optional": "yes"}]}}
    )
    deep: dict[str, object] = {"type": "price_above", "symbol": "X", "level": "1"}
    for _ in range(10):
        deep = {"not": deep}
    assert any("deeper" in m for m in errors({**ORDER, "conditions": deep}).values())
    _, plan = parse_plan(
        {**ORDER, "conditions": {"not": {"type": "price_above", "symbol": "X", "level": "1", "optional": True}}}
    )
    leaf = plan.conditions.children[0] if isinstance(plan.conditions, Node) else None
    assert isinstance(leaf, Leaf) and leaf.optional and leaf.path == "conditions.not"


def test_the_order_is_validated_as_a_signal() -> None:
    # the same rules and messages as POST /signals
    assert errors({**ORDER, "sl": "1.2"})["sl"].startswith("must be below price for a buy")
    assert "risk_pct" in errors({**ORDER, "risk_pct": "1"})


def test_the_manage_block_goes_into_the_signal_as_the_signal_path_reads_it() -> None:
    manage = {"breakeven": {"at_rr": 1}, "trailing": {"distance_points": 150, "activation_rr": 1.5}}
    pid, plan = parse_plan({**ORDER, "plan_id": "m", "manage": manage})
    intent = parse_signal(plan.signal_body(pid or "", 1))
    assert intent.manage == plan.manage and plan.manage is not None and "trailing" in plan.manage
    assert parse_plan(plan.to_json(), pid)[1] == plan
    bad = errors({**ORDER, "manage": {"trailing": {"distance_points": -1}, "colour": 1}})
    assert bad and all(k.startswith("manage") for k in bad), bad
