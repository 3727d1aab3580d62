"""The journal's fallback file: kept facts survive, a line cut short by a crash is skipped,
a replay that fails keeps the fact it failed on and every later one."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.positions.fallback import Fallback


def test_facts_are_kept_in_order_and_replayed_once(tmp_path: Path) -> None:
    fb = Fallback(tmp_path / "state" / "fallback.jsonl")
    fb.append({"ticket": "1", "at": None})
    fb.append({"ticket": "2", "at": "2026-12-04 05:00:00+00:00"})
    assert [f["ticket"] for f in fb.pending()] == ["1", "2"]
    applied: list[str] = []
    assert fb.replay(lambda f: applied.append(f["ticket"])) == 2
    assert applied == ["1", "2"] and fb.pending() == []
    assert fb.replay(lambda f: pytest.fail("nothing is left to replay")) == 0


def test_a_failed_replay_keeps_the_rest_and_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    fb = Fallback(tmp_path / "fallback.jsonl")
    for t in ("1", "2", "3"):
        fb.append({"ticket": t})
    with open(fb.path, "a", encoding="utf-8") as out:
        out.write('{"ticket": "4", "at')  # a crash mid-append: never acknowledged as kept

    def apply(fact: dict) -> None:
        if fact["ticket"] == "2":
            raise OSError("the database is still away")

    assert fb.replay(apply) == 1
    assert [f["ticket"] for f in fb.pending()] == ["2", "3"]
