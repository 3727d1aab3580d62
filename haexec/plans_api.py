"""What POST/GET/DELETE /plans and `haexec plan` share: each operation as an answer (an HTTP
status and a JSON body), so both ways in decide alike. No SQL here: engine/plans/store.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from engine.plans import store
from engine.plans.model import PlanValidationError, parse_plan

STATUSES = ("pending", "executing", "executed", "failed", "cancelled", "expired")


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


def create(conn: psycopg.Connection, cluster: str, instance: str, body: object) -> Answer:
    """201 stored; 200 the same plan under its plan_id again (a retry); 409 the plan_id holds
    another plan; 422 naming each bad field."""
    try:
        plan_id, plan = parse_plan(body)
    except PlanValidationError as exc:
        return Answer(422, {"error": "invalid plan", "errors": exc.errors})
    if plan.expires_at is not None and plan.expires_at <= datetime.now(UTC):
        return Answer(422, {"error": "invalid plan", "errors": {"expires_at": "is already past"}})
    made = store.create(conn, cluster, instance, plan_id, plan)
    if made.outcome is store.Created.CONFLICT:
        return Answer(409, {"error": "plan_id already holds another plan", "plan_id": made.plan_id})
    answer = {"plan_id": made.plan_id, "revision": made.revision, "status": made.status}
    return Answer(
        201 if made.outcome is store.Created.CREATED else 200,
        {**answer, "duplicate": made.outcome is store.Created.SAME},
    )


def edit(conn: psycopg.Connection, cluster: str, plan_id: str, body: object) -> Answer:
    """A new revision of a pending plan: the body is the whole plan plus `revision`, the one
    the editor read (compare-and-set: an edit racing an execution, a cancel or another edit
    loses). 200 with the new revision; 404; 409 not pending at that revision any more, with
    the plan as it is; 422 naming each bad field (a plan_id other than the path's too)."""
    if not isinstance(body, dict):
        return Answer(422, {"error": "invalid plan", "errors": {"body": "must be a JSON object"}})
    fields = dict(body)
    revision = fields.pop("revision", None)
    errors: dict[str, str] = {}
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
        errors["revision"] = "required: the revision being edited (an integer >= 1, as GET /plans/{id} shows it)"
    if fields.get("plan_id", plan_id) != plan_id:
        errors["plan_id"] = f"must be the edited plan's ({plan_id!r:.80}) or left out"
    try:
        _, plan = parse_plan(fields, plan_id)
    except PlanValidationError as exc:
        errors.update(exc.errors)
    if errors:
        return Answer(422, {"error": "invalid plan", "errors": errors})
    if plan.expires_at is not None and plan.expires_at <= datetime.now(UTC):
        return Answer(422, {"error": "invalid plan", "errors": {"expires_at": "is already past"}})
    assert isinstance(revision, int)
    new = store.edit(conn, cluster, plan_id, revision, plan)
    if new is not None:
        return Answer(200, {"plan_id": plan_id, "revision": new, "status": "pending"})
    current = store.show(conn, cluster, plan_id)
    if current is None:
        return Answer(404, {"error": f"no plan {plan_id!r:.80}"})
    return Answer(
        409,
        {
            "error": f"plan is {current['status']} at revision {current['revision']}, not pending at {revision}",
            "plan": current,
        },
    )


def show(conn: psycopg.Connection, cluster: str, plan_id: str) -> Answer:
    found = store.show(conn, cluster, plan_id)
    if found is None:
        return Answer(404, {"error": f"no plan {plan_id!r:.80}"})
    return Answer(200, found)


def list_plans(conn: psycopg.Connection, cluster: str, status: str | None, limit: int) -> Answer:
    return Answer(200, {"plans": store.list_plans(conn, cluster, status, limit)})


def cancel(conn: psycopg.Connection, cluster: str, plan_id: str, actor: str) -> Answer:
    """200 cancelled (also when it already was); 404; 409 when it executed or expired first,
    with the plan and its order (the signal's fingerprint and status)."""
    outcome, current = store.cancel(conn, cluster, plan_id, actor)
    if outcome is store.Cancelled.NOT_FOUND or current is None:
        return Answer(404, {"error": f"no plan {plan_id!r:.80}"})
    if outcome is store.Cancelled.CANCELLED or current["status"] == "cancelled":
        return Answer(200, {"plan_id": plan_id, "status": "cancelled"})
    order = None
    if current["signal_fingerprint"] is not None:
        order = {
            "fingerprint": current["signal_fingerprint"],
            "status": current["signal_status"],
            "broker_ref": current["broker_ref"],
        }
    return Answer(409, {"error": f"plan is {current['status']}, too late to cancel", "plan": current, "order": order})
