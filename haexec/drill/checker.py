"""The drill's verdict, from the database, the broker's own records (paper_orders) and the
producer's answers only: never from what a replica says about itself.

Rules (each violation is listed with its evidence):

one-leader-per-epoch   at most one instance has an `acquired` row for any epoch
epochs-increase        `acquired` rows, in commit order, carry strictly increasing epochs
answered-stored        every 202/200 answer's fingerprint is a signal in the database
executed-once          every stored signal has exactly one broker order (its tag) and status
                       `executed` naming that ticket, or is explicitly `in_doubt` with none
no-stale-order         no order was placed under an epoch after a later epoch was acquired,
                       and every order's instance held the order's epoch
no-foreign-order       every broker order belongs to a stored signal
true-in-doubt-alert    every `signal_in_doubt` alert a replica sent names a signal that was
                       held in doubt (its status, or an `in_doubt` event): a deposed leader
                       whose status change did not apply must not page anyone
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from db.urls import libpq_url
from haexec.drill.producer import Answer

SETTLED = ("executed", "in_doubt", "rejected", "failed", "expired", "cancelled")
MAX_EVIDENCE = 20  # rows of evidence kept per rule


@dataclass(frozen=True)
class Violation:
    rule: str
    detail: str
    evidence: dict[str, Any]
    at: float | None = None  # wall time the evidence points at, to attribute it to a round

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "detail": self.detail, "at": self.at, "evidence": self.evidence}


@dataclass
class SignalRow:
    id: int
    fingerprint: str
    tag: str
    signal_id: str | None
    status: str
    epoch: int | None
    executed_by: str | None
    broker_ref: str | None
    received_at: float
    updated_at: float
    error: str | None


@dataclass
class OrderRow:
    ticket: int
    tag: str
    epoch: int
    instance_id: str
    placed_at: float


@dataclass
class Acquired:
    id: int
    instance_id: str
    epoch: int
    at: float


@dataclass
class Facts:
    """Everything the checker reads, kept for per-round figures and the timeline."""

    acquired: list[Acquired]
    history: list[tuple[int, str, int, str, float]]  # id, instance, epoch, reason, at
    signals: dict[str, SignalRow]  # by fingerprint
    orders_by_tag: dict[str, list[OrderRow]]
    held: set[int] = field(default_factory=set)  # signals with an `in_doubt` event

    def executed_times(self) -> list[float]:
        return sorted(s.updated_at for s in self.signals.values() if s.status == "executed")


@dataclass
class CheckResult:
    violations: list[Violation] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations and not self.truncated

    def add(self, v: Violation) -> None:
        kept = sum(1 for x in self.violations if x.rule == v.rule)
        if kept >= MAX_EVIDENCE:
            self.truncated[v.rule] = self.truncated.get(v.rule, 0) + 1
            return
        self.violations.append(v)

    def total_violations(self) -> int:
        return len(self.violations) + sum(self.truncated.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "violations": self.total_violations(),
            "by_rule": self.by_rule(),
            "counts": self.counts,
            "listed": [v.as_dict() for v in self.violations],
        }

    def by_rule(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for v in self.violations:
            out[v.rule] += 1
        for rule, n in self.truncated.items():
            out[rule] += n
        return dict(out)


def read_facts(database_url: str, cluster: str) -> Facts:
    with psycopg.connect(libpq_url(database_url), autocommit=True, connect_timeout=10) as conn:
        history = [
            (int(r[0]), r[1], int(r[2]), r[3], float(r[4]))
            for r in conn.execute(
                "SELECT id, instance_id, epoch, reason, extract(epoch from at) FROM leadership_history "
                "WHERE cluster = %s ORDER BY id",
                (cluster,),
            )
        ]
        signals = {
            r[1]: SignalRow(
                int(r[0]),
                r[1],
                r[2],
                r[3],
                r[4],
                None if r[5] is None else int(r[5]),
                r[6],
                r[7],
                float(r[8]),
                float(r[9]),
                r[10],
            )
            for r in conn.execute(
                "SELECT id, fingerprint, tag, signal_id, status, epoch, executed_by, broker_ref, "
                "extract(epoch from received_at), extract(epoch from updated_at), error "
                "FROM signals WHERE cluster = %s ORDER BY id",
                (cluster,),
            )
        }
        orders: dict[str, list[OrderRow]] = defaultdict(list)
        for r in conn.execute(
            "SELECT ticket, tag, epoch, instance_id, extract(epoch from placed_at) FROM paper_orders "
            "WHERE cluster = %s ORDER BY ticket",
            (cluster,),
        ):
            orders[r[1]].append(OrderRow(int(r[0]), r[1], int(r[2]), r[3], float(r[4])))
        held = {
            int(r[0])
            for r in conn.execute(
                "SELECT DISTINCT e.signal FROM signal_events e JOIN signals s ON s.id = e.signal"
                " WHERE s.cluster = %s AND e.status = 'in_doubt'",
                (cluster,),
            )
        }
    acquired = [Acquired(i, inst, e, at) for i, inst, e, reason, at in history if reason == "acquired"]
    return Facts(acquired, history, signals, dict(orders), held)


def unsettled_count(database_url: str, cluster: str) -> int:
    with psycopg.connect(libpq_url(database_url), autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM signals WHERE cluster = %s AND status <> ALL(%s)", (cluster, list(SETTLED))
        ).fetchone()
    return int(row[0]) if row else 0


def check(facts: Facts, answers: Iterable[Answer], alerts: Iterable[dict[str, Any]] = ()) -> CheckResult:
    result = CheckResult()
    _leaders(facts, result)
    _answers(facts, list(answers), result)
    _signals(facts, result)
    _orders(facts, result)
    _alerts(facts, list(alerts), result)
    return result


def _alerts(facts: Facts, alerts: list[dict[str, Any]], result: CheckResult) -> None:
    by_id = {s.id: s for s in facts.signals.values()}
    in_doubt = [a for a in alerts if a.get("kind") == "signal_in_doubt"]
    for a in in_doubt:
        s = by_id.get(a["signal"]) if isinstance(a.get("signal"), int) else facts.signals.get(a.get("fingerprint", ""))
        if s is not None and (s.status == "in_doubt" or s.id in facts.held):
            continue
        result.add(
            Violation(
                "true-in-doubt-alert",
                f"{a.get('instance_id')} alerted signal_in_doubt for "
                + (
                    f"signal {s.signal_id or s.fingerprint}, which ended {s.status} and was never held"
                    if s
                    else f"an unknown signal ({a.get('signal') or a.get('fingerprint')})"
                ),
                {"alert": a, "signal": vars(s) if s else None},
                s.updated_at if s else None,
            )
        )
    result.counts["alerts"] = len(alerts)
    result.counts["in_doubt_alerts"] = len(in_doubt)


def _leaders(facts: Facts, result: CheckResult) -> None:
    holders: dict[int, list[Acquired]] = defaultdict(list)
    for a in facts.acquired:
        holders[a.epoch].append(a)
    for epoch, rows in sorted(holders.items()):
        if len({a.instance_id for a in rows}) > 1:
            result.add(
                Violation(
                    "one-leader-per-epoch",
                    f"epoch {epoch} was acquired by {', '.join(sorted({a.instance_id for a in rows}))}",
                    {"acquired_rows": [vars(a) for a in rows]},
                    rows[-1].at,
                )
            )
    for prev, cur in zip(facts.acquired, facts.acquired[1:], strict=False):
        if cur.epoch <= prev.epoch:
            result.add(
                Violation(
                    "epochs-increase",
                    f"epoch {cur.epoch} ({cur.instance_id}) acquired after epoch {prev.epoch} ({prev.instance_id})",
                    {"previous": vars(prev), "next": vars(cur)},
                    cur.at,
                )
            )
    result.counts["epochs"] = len(holders)


def _answers(facts: Facts, answers: list[Answer], result: CheckResult) -> None:
    for a in answers:
        if a.fingerprint not in facts.signals:
            result.add(
                Violation(
                    "answered-stored",
                    f"signal {a.signal_id} was answered {a.status} by {a.replica} but is not in the database",
                    {"answer": vars(a)},
                    a.at,
                )
            )
    result.counts["answers"] = len(answers)
    result.counts["answered_signals"] = len({a.fingerprint for a in answers})


def _signals(facts: Facts, result: CheckResult) -> None:
    executed = in_doubt = lost = duplicated = 0
    for s in facts.signals.values():
        orders = facts.orders_by_tag.get(s.tag, [])
        evidence = {"signal": vars(s), "orders": [vars(o) for o in orders]}
        if len(orders) > 1:
            duplicated += 1
            result.add(
                Violation(
                    "executed-once",
                    f"signal {s.signal_id or s.fingerprint} has {len(orders)} broker orders",
                    evidence,
                    s.received_at,
                )
            )
        elif len(orders) == 1:
            if s.status == "executed" and s.broker_ref == str(orders[0].ticket):
                executed += 1
            else:
                result.add(
                    Violation(
                        "executed-once",
                        f"signal {s.signal_id or s.fingerprint} has broker ticket {orders[0].ticket} but status "
                        f"{s.status} (broker_ref {s.broker_ref})",
                        evidence,
                        s.received_at,
                    )
                )
        elif s.status == "in_doubt":
            in_doubt += 1
        else:
            lost += 1
            result.add(
                Violation(
                    "executed-once",
                    f"signal {s.signal_id or s.fingerprint} was accepted but never executed (status {s.status}"
                    + (f": {s.error}" if s.error else "")
                    + ")",
                    evidence,
                    s.received_at,
                )
            )
    result.counts.update(
        signals=len(facts.signals), executed=executed, in_doubt=in_doubt, lost=lost, duplicated=duplicated
    )


def _orders(facts: Facts, result: CheckResult) -> None:
    holder = {a.epoch: a for a in facts.acquired}
    # For each epoch, the earliest acquisition of any later epoch (suffix minimum by epoch).
    by_epoch = sorted(facts.acquired, key=lambda a: (a.epoch, a.at))
    epochs = [a.epoch for a in by_epoch]
    first_later: list[Acquired | None] = [None] * (len(by_epoch) + 1)
    for i in range(len(by_epoch) - 1, -1, -1):
        nxt = first_later[i + 1]
        first_later[i] = by_epoch[i] if nxt is None or by_epoch[i].at <= nxt.at else nxt
    tags = {s.tag for s in facts.signals.values()}
    orders = [o for rows in facts.orders_by_tag.values() for o in rows]
    for o in orders:
        if o.tag not in tags:
            result.add(
                Violation(
                    "no-foreign-order",
                    f"order {o.ticket} has tag {o.tag}, no stored signal",
                    {"order": vars(o)},
                    o.placed_at,
                )
            )
        owner = holder.get(o.epoch)
        if owner is None or owner.instance_id != o.instance_id:
            result.add(
                Violation(
                    "no-stale-order",
                    f"order {o.ticket} was placed by {o.instance_id} under epoch {o.epoch}, which "
                    + (f"{owner.instance_id} held" if owner else "nobody acquired"),
                    {"order": vars(o), "epoch_acquired": vars(owner) if owner else None},
                    o.placed_at,
                )
            )
        later = first_later[bisect_right(epochs, o.epoch)]
        if later is not None and later.at < o.placed_at:
            result.add(
                Violation(
                    "no-stale-order",
                    f"order {o.ticket} was placed under epoch {o.epoch} {o.placed_at - later.at:.3f}s after "
                    f"epoch {later.epoch} was acquired by {later.instance_id}",
                    {"order": vars(o), "superseded_by": vars(later)},
                    o.placed_at,
                )
            )
    result.counts["orders"] = len(orders)
