"""The gateway's promise, in process: the comparison, the confirmation, the file on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from coordinator.fencing import EpochNotGranted
from engine.brokers.gateway_wire import Fence
from haexec.gateway.promise import (
    FILE,
    Promise,
    PromiseFileError,
    PromiseKeeper,
    PromiseWriteFailed,
    Reason,
    Refused,
    Unconfirmed,
)

CLUSTER = "c1"


class Database:
    """What check_granted would say: the one (epoch, instance) the leader record holds."""

    def __init__(self, epoch: int = 0, instance: str | None = None) -> None:
        self.held = (epoch, instance)
        self.asked: list[Fence] = []
        self.down = False

    def confirm(self, fence: Fence) -> None:
        self.asked.append(fence)
        if self.down:
            raise Unconfirmed("database unreachable")
        if (fence.epoch, fence.instance) != self.held:
            raise EpochNotGranted(fence.cluster, fence.epoch, fence.instance, (self.held[0], self.held[1], True))


def keeper(tmp_path: Path, db: Database, floor: Promise | None = None) -> PromiseKeeper:
    return PromiseKeeper(tmp_path, CLUSTER, db.confirm, floor)


def f(epoch: int, instance: str = "r1", cluster: str = CLUSTER) -> Fence:
    return Fence(cluster, epoch, instance)


def on_disk(tmp_path: Path) -> dict[str, object]:
    return json.loads((tmp_path / FILE).read_text())


def test_a_granted_epoch_advances_the_promise_and_is_on_disk_first(tmp_path: Path) -> None:
    db = Database(3, "r1")
    p = keeper(tmp_path, db)
    assert p.current == Promise(0, None) and not (tmp_path / FILE).exists()
    assert p.accept(f(3)) is True
    assert p.current == Promise(3, "r1")
    assert on_disk(tmp_path) == {"cluster": CLUSTER, "epoch": 3, "instance": "r1"}
    assert p.accept(f(3)) is False  # the promise already is this fence: no database, no write
    assert db.asked == [f(3)]
    assert not (tmp_path / (FILE + ".tmp")).exists()


@pytest.mark.parametrize(
    ("fence", "reason"),
    [
        (f(2), Reason.LOWER_EPOCH),
        (f(3, "r2"), Reason.EQUAL_EPOCH_OTHER_INSTANCE),
        (f(3, cluster="other"), Reason.WRONG_CLUSTER),
    ],
)
def test_refusals_change_nothing(tmp_path: Path, fence: Fence, reason: Reason) -> None:
    db = Database(3, "r1")
    p = keeper(tmp_path, db)
    p.accept(f(3))
    before = (tmp_path / FILE).read_bytes()
    with pytest.raises(Refused) as err:
        p.accept(fence)
    assert err.value.reason is reason and err.value.promise == Promise(3, "r1")
    assert p.current == Promise(3, "r1") and (tmp_path / FILE).read_bytes() == before
    assert db.asked == [f(3)]  # a refusal never asks the database


def test_an_epoch_the_database_never_granted_is_refused(tmp_path: Path) -> None:
    db = Database(3, "r1")
    p = keeper(tmp_path, db)
    for fence in (f(4), f(3, "r9")):  # a higher epoch, and the current one claimed by another
        with pytest.raises(Refused) as err:
            p.accept(fence)
        assert err.value.reason is Reason.NOT_GRANTED
    assert p.current == Promise(0, None) and not (tmp_path / FILE).exists()


def test_unreachable_database_promises_nothing_but_the_promised_epoch_still_acts(tmp_path: Path) -> None:
    db = Database(3, "r1")
    p = keeper(tmp_path, db)
    p.accept(f(3))
    db.down = True
    assert p.accept(f(3)) is False  # the leader keeps trading while the database is away
    db.held = (4, "r2")
    with pytest.raises(Unconfirmed):
        p.accept(f(4, "r2"))
    assert p.current == Promise(3, "r1")


def test_the_worker_check_is_exact(tmp_path: Path) -> None:
    db = Database(3, "r1")
    p = keeper(tmp_path, db)
    p.accept(f(3))
    p.check(f(3))
    db.held = (4, "r2")
    p.accept(f(4, "r2"))
    with pytest.raises(Refused) as err:
        p.check(f(3))  # accepted on arrival, but a new leader came while it waited
    assert err.value.reason is Reason.LOWER_EPOCH and err.value.stage == "worker"
    with pytest.raises(Refused):
        p.check(f(5, "r3"))  # never accepted on arrival: never sent


def test_a_restart_reads_the_promise_and_refuses_what_it_refused_before(tmp_path: Path) -> None:
    db = Database(7, "r1")
    keeper(tmp_path, db).accept(f(7))
    again = keeper(tmp_path, db)
    assert again.current == Promise(7, "r1")
    with pytest.raises(Refused):
        again.accept(f(6))


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b'{"epoch": "7", "instance": "r1", "cluster": "c1"}', b'{"epoch": 7}', b"[]"],
)
def test_a_damaged_promise_file_stops_the_start(tmp_path: Path, content: bytes) -> None:
    (tmp_path / FILE).write_bytes(content)
    with pytest.raises(PromiseFileError, match="refusing to start without it"):
        keeper(tmp_path, Database())


def test_another_clusters_promise_file_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / FILE).write_text(json.dumps({"cluster": "prod", "epoch": 9, "instance": "r1"}))
    with pytest.raises(PromiseFileError, match="cluster 'prod'"):
        keeper(tmp_path, Database())


def test_the_journal_is_a_floor_under_a_lost_promise_file(tmp_path: Path) -> None:
    p = keeper(tmp_path, Database(), floor=Promise(12, "r4"))
    assert p.current == Promise(12, "r4") and on_disk(tmp_path)["epoch"] == 12
    with pytest.raises(Refused):
        p.accept(f(11, "r4"))


def test_a_promise_that_cannot_be_made_durable_is_not_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = Database(3, "r1")
    p = keeper(tmp_path, db)
    p.accept(f(3))
    db.held = (4, "r2")

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(PromiseWriteFailed, match="Input/output error"):
        p.accept(f(4, "r2"))
    assert p.current == Promise(3, "r1") and on_disk(tmp_path)["epoch"] == 3
    monkeypatch.undo()
    p.check(f(3))  # the old promise stands, in memory and on disk
