"""The drill's parts on their own: the fault proxy (against a local echo server), the checker
(on hand-made facts), the random schedule and the timeline's leader bands."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from haexec.drill.checker import Acquired, Facts, OrderRow, SignalRow, check
from haexec.drill.producer import Answer
from haexec.drill.proxy import ProxyError, ProxyHub
from haexec.drill.run import exit_status, missed_goals
from haexec.drill.scenarios import RANDOM_WEIGHTS, REPLICA_FAULTS, random_schedule
from haexec.drill.timeline import leader_bands

# --------------------------------------------------------------------------- proxy


@pytest.fixture
def hub() -> Iterator[ProxyHub]:
    h = ProxyHub()
    yield h
    h.close()


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


def test_proxy_passes_delays_holds_and_resets(hub: ProxyHub, echo: int) -> None:
    port = hub.add("p", "127.0.0.1", echo)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        assert roundtrip(s, b"hello") == b"hello"

        hub.set_mode("p", "latency", 100)
        started = time.monotonic()
        assert roundtrip(s, b"slow") == b"slow"
        assert time.monotonic() - started >= 0.19  # 100 ms each way

        hub.set_mode("p", "blackhole")
        s.settimeout(0.4)
        s.sendall(b"held")
        with pytest.raises(TimeoutError):
            s.recv(10)
        assert hub.describe("p")["connections"] == 1  # the socket stays open
        hub.set_mode("p", "pass")
        s.settimeout(2)
        assert s.recv(10) == b"held"  # delivered after the heal, not dropped

        hub.set_mode("p", "reset")
        s.settimeout(2)
        with pytest.raises((ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
            s.sendall(b"x")
            if not s.recv(10):
                raise ConnectionResetError("closed")
    # A new connection is reset at once (under load, already during connect()).
    with (
        pytest.raises((ConnectionResetError, ConnectionAbortedError, BrokenPipeError)),
        socket.create_connection(("127.0.0.1", port), timeout=2) as s2,
    ):
        s2.settimeout(2)
        if not s2.recv(10):
            raise ConnectionResetError("closed")
    hub.set_mode("p", "pass")
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s3:
        assert roundtrip(s3, b"again") == b"again"


def test_proxy_refuses_unknown_modes_and_names(hub: ProxyHub, echo: int) -> None:
    hub.add("p", "127.0.0.1", echo)
    with pytest.raises(ProxyError):
        hub.set_mode("p", "flaky")
    with pytest.raises(ProxyError):
        hub.set_mode("nope", "pass")
    with pytest.raises(ProxyError):
        hub.add("p", "127.0.0.1", echo)


# --------------------------------------------------------------------------- checker


def signal_row(i: int, status: str = "executed", ticket: int | None = None) -> SignalRow:
    return SignalRow(
        i, f"fp{i}", f"TAG{i}", f"s{i}", status, 1, "r1", str(ticket) if ticket else None, 100.0 + i, 101.0 + i, None
    )


def answer(i: int) -> Answer:
    return Answer(i, f"s{i}", f"fp{i}", 202, False, 100.0 + i, 100.0 + i, "r1", 1)


def facts(signals: list[SignalRow], orders: list[OrderRow], acquired: list[Acquired]) -> Facts:
    by_tag: dict[str, list[OrderRow]] = {}
    for o in orders:
        by_tag.setdefault(o.tag, []).append(o)
    history = [(a.id, a.instance_id, a.epoch, "acquired", a.at) for a in acquired]
    return Facts(acquired, history, {s.fingerprint: s for s in signals}, by_tag)


def test_checker_passes_a_clean_history() -> None:
    acquired = [Acquired(1, "r1", 1, 10.0), Acquired(2, "r2", 2, 200.0)]
    sigs = [signal_row(1, ticket=1), signal_row(2, status="in_doubt")]
    result = check(facts(sigs, [OrderRow(1, "TAG1", 1, "r1", 101.5)], acquired), [answer(1), answer(2)])
    assert result.ok, result.as_dict()
    assert result.counts["executed"] == 1 and result.counts["in_doubt"] == 1


def test_checker_names_every_broken_rule_with_evidence() -> None:
    acquired = [Acquired(1, "r1", 1, 10.0), Acquired(2, "r2", 1, 11.0), Acquired(3, "r3", 2, 150.0)]
    sigs = [
        signal_row(1, ticket=1),  # booked twice
        signal_row(2, status="received"),  # never executed
        signal_row(3, ticket=4),  # booked under epoch 1 after epoch 2 was acquired
    ]
    orders = [
        OrderRow(1, "TAG1", 1, "r1", 101.0),
        OrderRow(2, "TAG1", 1, "r1", 101.2),
        OrderRow(4, "TAG3", 1, "r1", 151.0),
        OrderRow(5, "NOPE", 2, "r3", 160.0),
    ]
    result = check(facts(sigs, orders, acquired), [answer(1), answer(9)])
    rules = result.by_rule()
    assert rules["one-leader-per-epoch"] == 1
    assert rules["epochs-increase"] == 1
    assert rules["answered-stored"] == 1
    assert rules["executed-once"] == 2  # the duplicate and the lost one
    assert rules["no-foreign-order"] == 1
    assert rules["no-stale-order"] >= 1
    stale = next(v for v in result.violations if v.rule == "no-stale-order" and v.evidence.get("superseded_by"))
    assert stale.evidence["order"]["ticket"] == 4 and stale.evidence["superseded_by"]["epoch"] == 2
    assert not result.ok and result.counts["duplicated"] == 1 and result.counts["lost"] == 1


def test_checker_holds_in_doubt_alerts_to_the_database() -> None:
    acquired = [Acquired(1, "r1", 1, 10.0)]
    sigs = [signal_row(1, ticket=1), signal_row(2, status="in_doubt"), signal_row(3, ticket=3)]
    orders = [OrderRow(1, "TAG1", 1, "r1", 101.0), OrderRow(3, "TAG3", 1, "r1", 103.0)]
    f = facts(sigs, orders, acquired)
    f.held = {3}  # held in doubt for a while, then adopted as executed
    alerts = [
        {"kind": "signal_in_doubt", "instance_id": "r1", "signal": 2},
        {"kind": "signal_in_doubt", "instance_id": "r1", "fingerprint": "fp3"},
        {"kind": "signal_in_doubt", "instance_id": "r2", "signal": 1},  # executed once, never held
        {"kind": "leadership_change", "instance_id": "r1"},
    ]
    result = check(f, [answer(1), answer(2), answer(3)], alerts)
    assert result.by_rule() == {"true-in-doubt-alert": 1}
    [false_alarm] = result.violations
    assert "r2 alerted signal_in_doubt for signal s1, which ended executed" in false_alarm.detail
    assert (result.counts["alerts"], result.counts["in_doubt_alerts"]) == (4, 3)


# --------------------------------------------------------------------------- random schedule


def test_random_schedule_is_reproducible_and_keeps_a_replica_unharmed() -> None:
    kinds = list(RANDOM_WEIGHTS)
    names = ["r1", "r2", "r3"]
    a = random_schedule(7, 120.0, names, 1.5, kinds, "r3")
    assert a == random_schedule(7, 120.0, names, 1.5, kinds, "r3")
    assert a != random_schedule(8, 120.0, names, 1.5, kinds, "r3")
    assert len(a) > 30 and {p.kind for p in a} >= {"kill", "pause", "partition-redis", "partition-db"}
    assert any(p.at < q.at < p.at + p.duration for p, q in zip(a, a[1:], strict=False)), "some faults should overlap"
    # At every fault's start, at most n-1 replicas are under a fault (concurrency peaks at a start).
    for p in a:
        active = [q for q in a if q.kind in REPLICA_FAULTS and q.at <= p.at < q.at + max(q.duration, 0.5)]
        assert len(active) <= len(names) - 1, (p, active)
    without_jump = random_schedule(7, 60.0, names, 1.5, kinds, None)
    assert all(p.kind != "clock-jump" for p in without_jump)


# --------------------------------------------------------------------------- timeline


def test_leader_bands_end_at_the_step_down_or_the_next_epoch() -> None:
    acquired = [Acquired(1, "r1", 1, 10.0), Acquired(3, "r2", 2, 20.0)]
    f = facts([], [], acquired)
    f.history.insert(1, (2, "r1", 1, "released:switchover", 15.0))
    bands = leader_bands(f, 30.0)
    assert bands == [("r1", 1, 10.0, 15.0, "released:switchover"), ("r2", 2, 20.0, 30.0, "still leading")]


# --------------------------------------------------------------------------- exit status


def drill_doc(violations: int = 0, failed_rounds: int = 0, goals: dict[str, bool] | None = None) -> dict:
    summary: dict = {"failed_rounds": failed_rounds}
    if goals is not None:
        summary["goals"] = goals
    return {"summary": summary, "check": {"violations": violations}}


@pytest.mark.parametrize(
    ("doc", "status"),
    [
        (drill_doc(goals={"lag_p99_le_50ms": True, "every_round_recovered": True}), 0),
        (drill_doc(), 0),  # random: no goals
        (drill_doc(goals={}), 0),  # every round skipped
        (drill_doc(goals={"lag_p99_le_50ms": False, "every_round_recovered": True}), 1),
        (drill_doc(goals={"kill.lag_p99_le_50ms": True, "switchover.switchover_p99_le_100ms": False}), 1),
        (drill_doc(violations=1, goals={"lag_p99_le_50ms": True}), 1),
        (drill_doc(failed_rounds=1), 1),
    ],
)
def test_exit_status_is_1_for_a_violation_a_failed_round_or_a_missed_goal(doc: dict, status: int) -> None:
    assert exit_status(doc) == status


def test_missed_goals_are_named() -> None:
    doc = drill_doc(goals={"b.x": False, "a.y": False, "c.z": True})
    assert missed_goals(doc) == ["a.y", "b.x"]
