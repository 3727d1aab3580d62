"""The gateway's write-ahead journal, in process: rows, what a tag's calls mean, a restart."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine.brokers.base import Outcome, Refusal
from engine.brokers.gateway_wire import Fence
from haexec.gateway.journal import Journal

FENCE = Fence("c1", 4, "r1")
REQUEST = {"action": 1, "symbol": "EURUSD", "volume": 0.1, "price": 1.1001, "comment": "HXTAG", "magic": 7}


def answer(retcode: int, order: int = 0, deal: int = 0) -> Any:
    return SimpleNamespace(retcode=retcode, order=order, deal=deal, volume=0.1, price=1.1001, comment="server says")


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path)
    j.open()
    return j


def sent(j: Journal, call: str, tag: str = "HXTAG", digest: str = "d1", attempt: int = 1) -> int:
    return j.begin(call, attempt, "send", FENCE, digest, REQUEST, tag=tag)


def test_a_done_send_is_the_tags_answer(journal: Journal) -> None:
    seq = sent(journal, "c1")
    assert journal.tag_state("HXTAG").kind == "in_flight"
    journal.answered(seq, answer(10009, order=700001, deal=700002), None, None)
    state = journal.tag_state("HXTAG")
    assert state.kind == "done" and state.call is not None
    result = state.call.result()
    assert result is not None and result.outcome is Outcome.DONE and result.ref == "700001"
    assert str(result.price) == "1.1001"
    row = state.call.last
    assert row.request["price"] == "1.1001"  # the float the terminal saw, digit for digit
    assert (row.epoch, row.instance, row.digest) == (4, "r1", "d1")


def test_requotes_then_rejection_leave_the_tag_free(journal: Journal) -> None:
    journal.answered(sent(journal, "c1"), answer(10004), None, None)
    journal.answered(sent(journal, "c1", attempt=2), answer(10004), None, None)
    state = journal.tag_state("HXTAG")
    assert state.kind == "rejected" and len(state.calls) == 1 and len(state.calls[0].attempts) == 2
    journal.answered(sent(journal, "c2", digest="d2"), answer(10019), None, None)  # no money
    state = journal.tag_state("HXTAG")
    assert state.kind == "rejected" and state.call is not None and state.call.first.digest == "d2"


@pytest.mark.parametrize(
    ("res", "err", "raised", "detail"),
    [
        (None, (-10002, "IPC recv failed"), None, "returned None (last_error -10002 IPC recv failed)"),
        (None, None, RuntimeError("boom"), "raised RuntimeError: boom"),
        (answer(10012), None, None, "retcode 10012 TIMEOUT"),
    ],
)
def test_no_answer_is_unknown_and_outranks_a_rejection(
    journal: Journal, res: Any, err: Any, raised: Exception | None, detail: str
) -> None:
    journal.answered(sent(journal, "c1"), answer(10006), None, None)  # rejected first
    journal.answered(sent(journal, "c2", digest="d2"), res, err, raised)
    state = journal.tag_state("HXTAG")
    assert state.kind == "unknown" and state.call is not None
    result = state.call.result()
    assert result is not None and result.outcome is Outcome.UNKNOWN and detail in result.detail


def test_a_restart_marks_a_send_that_never_returned_interrupted(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.open()
    seq = sent(j, "c1")
    j.close()  # the process died with the row `sending`
    again = Journal(tmp_path)
    assert again.open() == 1
    state = again.tag_state("HXTAG")
    assert state.kind == "unknown" and state.call is not None and state.call.last.seq == seq
    result = state.call.result()
    assert result is not None and "stopped during order_send" in result.detail
    assert again.rows == 1 and again.highest_fence() == (4, "r1")


def test_other_operations_and_tags_do_not_mix(journal: Journal) -> None:
    journal.answered(sent(journal, "c1", tag="HXONE"), answer(10009, order=1), None, None)
    journal.begin("c9", 1, "close", Fence("c1", 5, "r2"), "dc", {"action": 1, "position": 1}, target="1")
    assert journal.tag_state("HXTWO").kind == "none"
    assert journal.tag_state("HXONE").kind == "done"
    sending = journal.sending()
    assert sending is not None and sending.op == "close" and sending.target == "1"
    assert journal.highest_fence() == (5, "r2") and journal.rows == 2 and journal.size_bytes() > 0


@pytest.mark.parametrize(
    ("op", "retcode", "outcome", "refusal"),
    [
        ("modify", 10025, Outcome.DONE, None),
        ("modify", 10016, Outcome.REJECTED, Refusal.INVALID_STOPS),
        ("close", 10036, Outcome.REJECTED, Refusal.GONE),
        ("cancel", 10029, Outcome.REJECTED, Refusal.FROZEN),
        ("send", 10016, Outcome.REJECTED, None),  # an entry's refusal is not a modification's
    ],
)
def test_a_recorded_answer_keeps_its_meaning(
    journal: Journal, op: str, retcode: int, outcome: Outcome, refusal: Refusal | None
) -> None:
    journal.begin("c1", 1, op, FENCE, "d", {"action": 6, "position": 1}, target="1")
    row = journal.sending()
    assert row is not None
    result = replace(row, state="answered", retcode=retcode).result()
    assert result is not None and (result.outcome, result.refusal) == (outcome, refusal)
    assert retcode != 10025 or result.detail == "no change"
