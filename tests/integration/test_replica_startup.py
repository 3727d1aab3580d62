"""What start-up waits for beyond the stores and the venue: a reconciliation that runs, and
the first heartbeat of every supervised loop. Each failure is one line (exit 1 in `haexec run`)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from engine.brokers.base import BrokerError, BrokerUnavailable
from haexec import replica as replica_mod
from haexec import settings
from haexec.replica import Replica, StartupError
from tests.support import free_port


@pytest.fixture
def make(cluster: str, redis_url: str, database_url: str) -> Iterator[type[Replica]]:
    made: list[Replica] = []

    def build() -> Replica:
        env = {
            "HAEXEC_CLUSTER": cluster,
            "HAEXEC_INSTANCE_ID": "r1",
            "HAEXEC_REDIS_URL": redis_url,
            "HAEXEC_DATABASE_URL": database_url,
            "HAEXEC_HTTP": f"127.0.0.1:{free_port()}",
            "HAEXEC_LEASE_MS": "1500",
            "HAEXEC_STARTUP_TIMEOUT_S": "1",
        }
        r = Replica(settings.load(env), redis_url, database_url)
        made.append(r)
        return r

    yield build  # type: ignore[misc]
    for r in made:
        r.stop()


def test_a_venue_that_does_not_connect_fails_start_up_in_one_line(
    make: type[Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    r = make()

    def refuse() -> None:
        raise BrokerError("login refused")

    monkeypatch.setattr(r.broker, "connect", refuse)
    with pytest.raises(StartupError) as e:
        r.start()
    assert str(e.value) == "broker paper unavailable after 1s: login refused" and not r.ready


def test_a_reconciliation_that_cannot_run_fails_start_up_in_one_line(
    make: type[Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def unreachable(*args: object, **kwargs: object) -> None:
        calls.append(1)
        raise BrokerUnavailable("positions: terminal not answering")

    monkeypatch.setattr(replica_mod, "reconcile", unreachable)
    r = make()
    with pytest.raises(StartupError) as e:
        r.start()
    assert str(e.value) == "reconciliation with broker paper: positions: terminal not answering"
    assert len(calls) >= 2  # retried within the start-up timeout first
    assert not r.ready


def test_a_loop_without_a_first_heartbeat_fails_start_up_naming_it(make: type[Replica]) -> None:
    r = make()
    r.supervisor.register("stuck", 100, lambda: None)  # never beats
    with pytest.raises(StartupError) as e:
        r.start()
    assert str(e.value) == "loop stuck: no first heartbeat within 1s"
    assert not r.ready and r.http is not None
    with socket.socket() as s:  # it never served
        assert s.connect_ex(("127.0.0.1", r.http.port)) != 0


def test_start_up_reconciles_and_waits_for_the_loops(make: type[Replica]) -> None:
    r = make()
    r.start()
    assert r.ready
    states = r.loops()
    assert set(states) == {"executor", "feed", "plans", "positions"}
    beating = ("executor", "feed", "plans")
    assert all(states[n]["state"] == "ok" and states[n]["heartbeat_age_s"] is not None for n in beating)
    # The position manager is leader-only: registered, it beats once this replica leads.
    assert states["positions"]["heartbeat_age_s"] is None


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    def emit(self, kind: str, severity: str, message: str, **fields: object) -> None:
        self.sent.append((kind, severity, message))

    def flush(self, timeout_s: float) -> bool:
        return True

    def stop(self, timeout_s: float) -> None:
        pass


def test_a_failed_loop_alerts_critical_and_the_replica_may_not_lead(make: type[Replica]) -> None:
    r = make()
    alerts = r.alerts = Recorder()  # type: ignore[assignment]
    r.executor.start()  # the replica's own loops beat, as after start-up
    r.supervisor.register("dead", 100, lambda: None, alive=lambda: False)
    assert r._may_lead()
    for _ in range(4):
        r.supervisor.check()
    dead = [(k, s, m) for k, s, m in alerts.sent if m.startswith("loop dead ")]  # not the loops never started here
    assert [(k, s) for k, s, _ in dead] == [("loop_restarted", "warning")] * 3 + [("loop_failed", "critical")]
    assert dead[-1][2] == "loop dead failed: its thread died; 3 restarts within the hour"
    assert not r._may_lead()
    assert r.health_extra()["loops"] == "failed: dead (its thread died; 3 restarts within the hour)"


def test_a_stopping_replica_claims_no_leadership(make: type[Replica]) -> None:
    # Between the executor's stop and the coordinator's, a peer's release must not hand a
    # stopping follower the lease (seen under load: it led epoch 3 after its SIGTERM).
    r = make()
    assert r._may_lead()
    r.stop()
    assert not r._may_lead()
