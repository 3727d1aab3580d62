"""A trade plan: an order intent, a condition tree, an expiry, an optional `manage` block.

The JSON a user writes (POST /plans, `haexec plan create`):

    {"plan_id": "dxy-btc-1", "symbol": "BTCUSD", "side": "buy", "type": "market",
     "risk_pct": "1", "price": "64500", "sl": "63200", "expires_at": "...Z",
     "conditions": {"all": [{"type": "change_pct", ...}, {"type": "holds_above", ...}]}}

The order fields are a signal's (engine/signal.py validates them, with `source` = plan and
`signal_id` = <plan id>:<revision> filled in here), so a plan can only hold an order the
signal path would accept. `conditions` is a tree of `all` / `any` / `not` over typed leaves
(conditions/registry.py); a leaf may say `"optional": true`. No `conditions` at all is a
pending order that executes at once, as does `{"all": []}`.

`schema_version` (1 now) is stored with every plan; a plan stored under an earlier version
keeps loading as it was written (parse_plan reads each version it ever accepted), and a
condition type is added, never changed in meaning.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.market.base import Timeframe
from engine.model import SignalIntent
from engine.plans.conditions.base import Condition, ConditionError
from engine.plans.conditions.registry import parse_condition
from engine.signal import FIELDS as SIGNAL_FIELDS
from engine.signal import SignalValidationError, canonical_payload, parse_signal

SCHEMA_VERSION = 1
SCHEMA_VERSIONS = frozenset({1})
PLAN_SOURCE = "plan"  # every plan's signal has this source
PLAN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
MAX_DEPTH = 8
MAX_LEAVES = 64

# The signal fields a plan fills itself: the user gives neither.
_FILLED = frozenset({"source", "signal_id"})
ORDER_FIELDS = SIGNAL_FIELDS - _FILLED - {"expires_at"}
PLAN_FIELDS = ORDER_FIELDS | {"schema_version", "plan_id", "conditions", "expires_at"}
_OPERATORS = ("all", "any", "not")


class PlanValidationError(Exception):
    """`errors` maps every bad field (a path: `conditions.all[1].level`) to its problem."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = dict(errors)
        detail = "; ".join(f"{name}: {message}" for name, message in sorted(self.errors.items()))
        super().__init__(f"invalid plan: {detail}")


@dataclass(frozen=True)
class Leaf:
    condition: Condition
    optional: bool
    path: str


@dataclass(frozen=True)
class Node:
    op: str  # all / any / not
    children: tuple[Tree, ...]
    path: str


Tree = Leaf | Node


@dataclass(frozen=True)
class Plan:
    schema_version: int
    order: dict[str, Any]  # the signal's fields in their canonical stored form
    conditions: Tree | None
    expires_at: datetime | None
    expires_text: str | None = None  # expires_at in the signal's canonical form

    @property
    def manage(self) -> dict[str, Any] | None:
        """The position rules the signal carries (engine.positions.rules), canonical."""
        return self.order.get("manage")

    def leaves(self) -> Iterator[Leaf]:
        if self.conditions is not None:
            yield from _leaves(self.conditions)

    def needs(self) -> set[tuple[str, Timeframe | None]]:
        """The (symbol, timeframe) pairs the plan reads (timeframe None: ticks)."""
        return {need for leaf in self.leaves() for need in leaf.condition.needs()}

    def signal_body(self, plan_id: str, revision: int) -> dict[str, Any]:
        """The signal this plan's revision becomes: a valid signal body (parse_signal takes it)."""
        body = dict(self.order)
        body["source"] = PLAN_SOURCE
        body["signal_id"] = f"{plan_id}:{revision}"
        if self.expires_text is not None:
            body["expires_at"] = self.expires_text
        return body

    def signal_intent(self, plan_id: str, revision: int) -> SignalIntent:
        """The signal, validated now (SignalValidationError if today's rules refuse it)."""
        return parse_signal(self.signal_body(plan_id, revision))

    def to_json(self) -> dict[str, Any]:
        """The stored form: parse_plan(plan.to_json()) is the same plan, every condition's
        defaults written out (a default that changes later never changes a stored plan)."""
        out: dict[str, Any] = {"schema_version": self.schema_version, **self.order}
        if self.expires_text is not None:
            out["expires_at"] = self.expires_text
        if self.conditions is not None:
            out["conditions"] = tree_json(self.conditions)
        return out


def _leaves(tree: Tree) -> Iterator[Leaf]:
    if isinstance(tree, Leaf):
        yield tree
    else:
        for child in tree.children:
            yield from _leaves(child)


def tree_json(tree: Tree) -> dict[str, Any]:
    if isinstance(tree, Leaf):
        out = tree.condition.to_json()
        if tree.optional:
            out["optional"] = True
        return out
    if tree.op == "not":
        return {"not": tree_json(tree.children[0])}
    return {tree.op: [tree_json(c) for c in tree.children]}


def parse_plan(body: object, plan_id: str | None = None) -> tuple[str | None, Plan]:
    """Validate a plan's JSON: (its plan_id, if it names one, else `plan_id`; the Plan).
    PlanValidationError naming every bad field."""
    if not isinstance(body, Mapping):
        raise PlanValidationError({"body": "must be a JSON object"})
    errors: dict[str, str] = {}
    for key in body:
        if key in _FILLED:
            errors[str(key)] = f"set by the plan (source {PLAN_SOURCE}, signal_id <plan id>:<revision>); leave it out"
        elif key not in PLAN_FIELDS:
            errors[str(key)[:64]] = "unknown field"

    version = body.get("schema_version", SCHEMA_VERSION)
    if isinstance(version, bool) or version not in SCHEMA_VERSIONS:
        errors["schema_version"] = (
            f"must be one of {', '.join(map(str, sorted(SCHEMA_VERSIONS)))} (got {version!r:.20})"
        )
        version = SCHEMA_VERSION

    given_id = body.get("plan_id")
    if given_id is not None:
        if not isinstance(given_id, str) or not PLAN_ID_RE.fullmatch(given_id):
            errors["plan_id"] = "must be 1..64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit"
        else:
            plan_id = given_id

    # The order through the signal's own validation, as the signal it will become.
    probe = {k: v for k, v in body.items() if k in ORDER_FIELDS}
    probe.update(source=PLAN_SOURCE, signal_id=f"{plan_id or 'p'}:1")
    if body.get("expires_at") is not None:
        probe["expires_at"] = body["expires_at"]
    intent = None
    try:
        intent = parse_signal(probe)
    except SignalValidationError as exc:
        errors.update(exc.errors)

    tree = None
    raw = body.get("conditions")
    if raw is not None:
        counter = [0]
        try:
            tree = _parse_tree(raw, "conditions", 0, counter)
        except ConditionError as exc:
            for line in exc.errors:
                path, _, message = line.partition(": ")
                errors[path] = message
    if errors or intent is None:
        raise PlanValidationError(errors)

    payload = canonical_payload(intent)
    order = {k: v for k, v in payload.items() if k in ORDER_FIELDS and v is not None and v != {}}
    return plan_id, Plan(version, order, tree, intent.expires_at, payload["expires_at"])


def _parse_tree(obj: object, path: str, depth: int, counter: list[int]) -> Tree:
    if depth > MAX_DEPTH:
        raise ConditionError([f"{path}: nested deeper than {MAX_DEPTH} levels"])
    if not isinstance(obj, Mapping):
        raise ConditionError(
            [f'{path}: must be an object: {{"all": [...]}}, {{"any": [...]}}, {{"not": ...}} or a condition']
        )
    ops = [op for op in _OPERATORS if op in obj]
    if not ops:
        optional = obj.get("optional", False)
        if not isinstance(optional, bool):
            raise ConditionError([f"{path}.optional: must be true or false"])
        counter[0] += 1
        if counter[0] > MAX_LEAVES:
            raise ConditionError([f"{path}: more than {MAX_LEAVES} conditions in one plan"])
        leaf = {k: v for k, v in obj.items() if k != "optional"}
        return Leaf(parse_condition(leaf, path), optional, path)
    if len(obj) != 1:
        raise ConditionError([f"{path}: an {ops[0]} node has no other keys (got {', '.join(sorted(map(str, obj)))})"])
    op = ops[0]
    value = obj[op]
    if op == "not":
        return Node(op, (_parse_tree(value, f"{path}.not", depth + 1, counter),), path)
    if not isinstance(value, list):
        raise ConditionError([f"{path}.{op}: must be a list of conditions"])
    if op == "any" and not value:
        raise ConditionError([f"{path}.any: an empty any never holds; list at least one condition"])
    errors: list[str] = []
    children: list[Tree] = []
    for i, child in enumerate(value):
        try:
            children.append(_parse_tree(child, f"{path}.{op}[{i}]", depth + 1, counter))
        except ConditionError as exc:
            errors.extend(exc.errors)
    if errors:
        raise ConditionError(errors)
    return Node(op, tuple(children), path)
