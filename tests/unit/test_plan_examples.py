"""The seven example plans of the source requirements (examples/plans/) are valid plans.
An example using a condition family not in this build is skipped, naming the types."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.plans.conditions.base import PARSERS
from engine.plans.model import parse_plan
from engine.signal import parse_signal

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "plans").glob("*.json"))


def types(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["type"]} if isinstance(node.get("type"), str) else set()
        return found | {t for v in node.values() for t in types(v)}
    if isinstance(node, list):
        return {t for v in node for t in types(v)}
    return set()


def test_there_are_seven() -> None:
    assert len(EXAMPLES) == 7


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_is_a_valid_plan(path: Path) -> None:
    body = json.loads(path.read_text())
    missing = types(body.get("conditions")) - set(PARSERS)
    if missing:
        pytest.skip(f"condition types not in this build: {', '.join(sorted(missing))}")
    plan_id, plan = parse_plan(body)
    assert plan_id == body["plan_id"] and plan.conditions is not None
    parse_signal(plan.signal_body(plan_id, 1))
