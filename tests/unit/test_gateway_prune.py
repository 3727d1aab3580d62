"""Journal pruning on an injected clock: settled calls older than the days kept go, whole;
a call in doubt (no answer, interrupted, raised) and the calls under the highest epoch stay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import generate_latest

from engine.brokers.gateway_wire import Fence
from haexec.gateway import journal as journal_module
from haexec.gateway.journal import Journal
from haexec.gateway.metrics import GatewayMetrics
from haexec.gateway.prune import JournalPruner

OLD, NEW = Fence("c1", 3, "r1"), Fence("c1", 4, "r2")
REQUEST = {"action": 1, "symbol": "EURUSD", "volume": 0.1, "price": 1.1001, "comment": "HX", "magic": 7}


def answer(retcode: int, order: int = 0) -> Any:
    return SimpleNamespace(retcode=retcode, order=order, deal=order, volume=0.1, price=1.1001, comment="")


def send(j: Journal, call: str, tag: str, fence: Fence = OLD, attempt: int = 1) -> int:
    return j.begin(call, attempt, "send", fence, "d", REQUEST, tag=tag)


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path)
    j.open()
    j.answered(send(j, "a-done", "HXDONE"), answer(10009, 700001), None, None)
    j.answered(send(j, "b-requoted", "HXREQ"), answer(10004), None, None)
    j.answered(send(j, "b-requoted", "HXREQ", attempt=2), answer(10006), None, None)
    j.answered(send(j, "c-raised", "HXRAISED"), None, None, TimeoutError("no answer"))
    send(j, "d-interrupted", "HXINT")  # the process dies mid-send: interrupted at the next open
    j.close()
    j.open()
    send(j, "e-sending", "HXSEND")  # on the terminal now
    j.answered(send(j, "f-newest", "HXNEW", NEW), answer(10009, 700002), None, None)
    return j


def pruner(j: Journal, days_later: float, metrics: GatewayMetrics) -> JournalPruner:
    later = datetime.now(UTC) + timedelta(days=days_later)
    return JournalPruner(j, 30, metrics, now=lambda: later)


def test_settled_calls_older_than_the_days_kept_are_pruned_and_doubt_never(journal: Journal) -> None:
    metrics = GatewayMetrics()
    assert journal.rows == 7
    assert pruner(journal, 29, metrics).run_once() == 0  # not old enough yet
    assert pruner(journal, 31, metrics).run_once() == 3  # the done call and both requote attempts
    assert journal.rows == 4
    assert journal.tag_state("HXDONE").kind == "none" and journal.tag_state("HXREQ").kind == "none"
    assert journal.tag_state("HXRAISED").kind == "unknown"
    assert journal.tag_state("HXINT").kind == "unknown"
    assert journal.tag_state("HXSEND").kind == "in_flight"
    assert journal.tag_state("HXNEW").kind == "done"  # under the highest epoch: the promise's floor
    assert journal.highest_fence() == (4, "r2")
    assert pruner(journal, 3650, metrics).run_once() == 0  # in doubt stays for good
    assert b"haexec_gateway_journal_pruned_total 3.0" in generate_latest(metrics.registry)


def test_pruning_pages_through_the_calls(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "PRUNE_BATCH", 1)
    assert journal.prune(datetime.now(UTC) + timedelta(days=31)) == 3
    assert journal.rows == 4


def test_a_closed_journal_is_logged_and_retried(journal: Journal, caplog: pytest.LogCaptureFixture) -> None:
    journal.close()
    assert pruner(journal, 31, GatewayMetrics()).run_once() == 0
    assert "journal prune: the journal is closed" in caplog.text
