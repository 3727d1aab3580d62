"""`haexec up`'s table: a replica that died says why, one whose registry entry went stale is
unresponsive, not the healthy leader its last entry claims. Built from plain objects and
fakeredis: no process, no server."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import fakeredis
import pytest

from coordinator.registry import RegistryPublisher, heartbeat, list_replicas, replica_key
from coordinator.view import ClusterView
from engine.controls import KillSwitch
from haexec.up import Child, _render, exit_reason, last_line, role_of


class FakeProc:
    def __init__(self, pid: int, returncode: int | None = None) -> None:
        self.pid = pid
        self.returncode = returncode

    def poll(self) -> int | None:
        return self.returncode


def entry(instance: str, role: str, **extra: object) -> dict[str, object]:
    return {"instance_id": instance, "role": role, "healthy": True, "http": "127.0.0.1:1", **extra}


@pytest.mark.parametrize(
    ("ttl", "pttl", "expected"),
    [
        (6000, 5800, {"heartbeat_age_ms": 200, "unresponsive": False}),
        (6000, 3001, {"heartbeat_age_ms": 2999, "unresponsive": False}),
        (6000, 2000, {"heartbeat_age_ms": 4000, "unresponsive": True}),
        (None, 2000, {}),  # an entry from a release that did not say its TTL
        (6000, -2, {}),  # gone between MGET and PTTL
    ],
)
def test_heartbeat_from_the_ttl_left(ttl: int | None, pttl: int, expected: dict[str, object]) -> None:
    assert heartbeat(ttl, pttl) == expected


def test_a_registry_entry_no_longer_refreshed_is_unresponsive() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    RegistryPublisher(client, "c", "fresh", 6000, lambda: entry("fresh", "follower")).publish()
    # what a paused leader leaves behind: its last entry, two thirds of the TTL ago
    client.set(replica_key("c", "paused"), json.dumps({**entry("paused", "leader"), "ttl_ms": 6000}), px=2000)
    replicas = {r["instance_id"]: r for r in list_replicas(client, "c")}
    assert replicas["fresh"]["unresponsive"] is False and replicas["fresh"]["ttl_ms"] == 6000
    assert replicas["paused"]["unresponsive"] is True and replicas["paused"]["heartbeat_age_ms"] >= 3999


def test_the_table_shows_a_stale_leader_as_unresponsive_and_a_dead_replica_with_its_reason(tmp_path: Path) -> None:
    log = tmp_path / "replica-3.log"
    log.write_text("an earlier run's output\n")
    dead = Child("replica-3", "127.0.0.1:8703", log, proc=FakeProc(303, returncode=1), restarts=2)
    dead.log_offset = log.stat().st_size
    with log.open("a") as f:
        f.write("haexec run: database at postgresql://u:***@h/db unreachable after 30s: refused\n\n")
    dead.last_exit = 1
    dead.last_error = exit_reason(1, log, dead.log_offset)
    dead.proc = None
    children = [
        Child("replica-1", "127.0.0.1:8701", tmp_path / "1.log", proc=FakeProc(101), announced=True),
        Child("replica-2", "127.0.0.1:8702", tmp_path / "2.log", proc=FakeProc(202), announced=True),
        dead,
    ]
    view = ClusterView(
        cluster="c",
        replicas=[
            entry("replica-1", "leader", unresponsive=True, heartbeat_age_ms=4000),
            entry("replica-2", "follower", unresponsive=False, heartbeat_age_ms=100),
        ],
    )
    lines = _render(view, children, tty=False).splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:5]}
    assert rows["replica-1"][1:4] == ["101", "unresponsive", "no"]
    assert rows["replica-2"][1:4] == ["202", "follower", "True"]
    assert rows["replica-3"][1:4] == ["-", "exit", "1"]
    assert lines[5] == (
        f"replica-3 died: haexec run: database at postgresql://u:***@h/db unreachable after 30s: refused (log {log})"
    )
    assert len(lines) == 6


def test_an_alive_replica_that_fell_out_of_the_registry_is_unresponsive_once_it_had_announced() -> None:
    c = Child("r", "h:1", Path("/nonexistent"), proc=FakeProc(1))
    assert role_of(c, None) == ("starting", "-")
    c.announced = True
    assert role_of(c, None) == ("unresponsive", "no")


def test_exit_reasons(tmp_path: Path) -> None:
    assert exit_reason(-9, tmp_path / "none.log", 0) == "killed by SIGKILL"
    assert exit_reason(1, tmp_path / "none.log", 0) == "exit 1 with no output"
    log = tmp_path / "r.log"
    log.write_text("Traceback (most recent call last):\n  File x\nRuntimeError: boom\n")
    assert exit_reason(1, log, 0) == "RuntimeError: boom"
    assert last_line(log, log.stat().st_size) is None  # nothing written by this run


def test_the_table_says_when_trading_is_halted() -> None:
    view = ClusterView(cluster="c")
    halted = KillSwitch(True, "news at 14:30", "cli:ops", datetime(2026, 12, 4, 14, 0, tzinfo=UTC))
    lines = _render(view, [], tty=False, switch=halted).splitlines()
    assert lines[1] == "TRADING HALTED: trading is halted by cli:ops since 2026-12-04T14:00:00.000Z: news at 14:30"
    assert not any("HALTED" in line for line in _render(view, [], tty=False, switch=KillSwitch()).splitlines())


def test_the_venue_row_follows_its_account_marks(tmp_path: Path) -> None:
    from haexec.up import VENUE_STALE_MS, _note_announced, venue_child, venue_role

    venue = venue_child(tmp_path)
    assert venue.command == ("venue",) and venue.log_path == tmp_path / "venue.log"
    assert venue_role(venue, None) == ("stopped", "-")
    venue.proc = FakeProc(404)  # type: ignore[assignment]
    view = ClusterView(cluster="c")
    assert venue_role(venue, None) == ("starting", "-")
    # another venue's fresh marks: this one waits for the lock
    _note_announced(view, [venue], ("venue-elsewhere", 100))
    assert venue_role(venue, 100) == ("standby", "-")
    _note_announced(view, [venue], ("venue", 100))
    assert venue_role(venue, 100) == ("matching", "yes")
    assert venue_role(venue, VENUE_STALE_MS + 1) == ("stalled", "no")
    lines = _render(view, [venue], tty=False, mark_age_ms=100).splitlines()
    assert lines[-1].split()[:4] == ["venue", "404", "matching", "yes"]
