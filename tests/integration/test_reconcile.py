"""Reconciliation on real PostgreSQL: the paper venue's in-database diff and the generic one
(any venue that lists its positions) find the same backfills, vanished positions, mismatches
and duplicate tags, and an unchanged book writes nothing but the report."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from engine.brokers.base import OrderRequest
from engine.brokers.paper import PaperBroker
from engine.model import OrderType, Side
from engine.reconcile import Report, diff_positions, reconcile
from tests.integration import test_paper
from tests.integration.test_paper import lead

pool = test_paper.pool  # the fixture


class ListingVenue:
    """The paper book seen through a venue that can only list its positions (like MT5)."""

    def __init__(self, paper: PaperBroker) -> None:
        self._paper = paper
        self.name = paper.name

    def positions(self) -> list[Any]:
        return self._paper.positions()


def order(tag: str, epoch: int, volume: str = "0.10") -> OrderRequest:
    return OrderRequest(
        tag, "EURUSD", Side.BUY, OrderType.MARKET, Decimal(volume), Decimal("1.1"), Decimal("1.09"), None, epoch
    )


def known(pool: ConnectionPool, cluster: str) -> dict[str, tuple[str, str]]:
    with pool.connection() as conn:
        rows = conn.execute("SELECT ticket, state, origin FROM broker_positions WHERE cluster = %s", (cluster,))
        return {r[0]: (r[1], r[2]) for r in rows}


def essentials(r: Report) -> dict[str, Any]:
    return {
        "positions": r.positions,
        "haexec": sorted(r.backfilled_haexec),
        "external": sorted(r.backfilled_external),
        "vanished": sorted(r.vanished),
        "mismatched": sorted(m["ticket"] for m in r.mismatched),
        "duplicates": {t: sorted(v) for t, v in r.duplicate_tags.items()},
        "ok": r.ok,
    }


@pytest.mark.parametrize("venue", ["paper (in the database)", "a venue that lists positions"])
def test_reconciliation_backfills_closes_flags_and_then_finds_nothing(
    pool: ConnectionPool, cluster: str, venue: str
) -> None:
    paper = PaperBroker(pool, cluster, "a")
    paper.connect()
    broker: Any = paper if venue.startswith("paper") else ListingVenue(paper)
    epoch = lead(pool, cluster, "a")
    with pool.connection() as conn:  # a signal owns HXOURS; HXEXT was opened by hand at the venue
        conn.execute(
            "INSERT INTO signals (cluster, fingerprint, intent_digest, tag, source, payload, received_by)"
            " VALUES (%s, 'fp-ours', 'd', 'HXOURS', 't', '{}', 't')",
            (cluster,),
        )
    ours = paper.send(order("HXOURS", epoch)).ref
    ext = paper.send(order("HXEXT", epoch)).ref
    first = reconcile(pool, broker, cluster, "a", epoch, 10_000)
    assert essentials(first) == {
        "positions": 2,
        "haexec": [ours],
        "external": [ext],
        "vanished": [],
        "mismatched": [],
        "duplicates": {},
        "ok": True,
    }
    assert known(pool, cluster) == {ours: ("open", "haexec"), ext: ("open", "external")}

    # unchanged: nothing to do
    assert essentials(reconcile(pool, broker, cluster, "a", epoch, 10_000))["haexec"] == []

    # one closed at the venue, one resized behind our back, a new one, two under one tag
    assert ext is not None and ours is not None
    paper.close_position(ext)
    with pool.connection() as conn:
        conn.execute("UPDATE paper_positions SET volume = 0.05 WHERE ticket = %s", (int(ours),))
    fresh = paper.send(order("HXNEW", epoch)).ref
    twin = paper.send(order("HXTWIN", epoch)).ref
    with pool.connection() as conn:  # the venue shows one tag twice (MT5 can)
        conn.execute("UPDATE paper_positions SET tag = 'HXTWIN' WHERE ticket = %s", (int(str(fresh)),))
    later = reconcile(pool, broker, cluster, "a", epoch, 10_000)
    assert essentials(later) == {
        "positions": 3,
        "haexec": [],
        "external": sorted([fresh, twin]),
        "vanished": [ext],
        "mismatched": [ours],
        "duplicates": {"HXTWIN": sorted([fresh, twin])},
        "ok": False,
    }
    assert known(pool, cluster)[ext] == ("closed", "external")
    again = reconcile(pool, broker, cluster, "a", epoch, 10_000)
    assert (again.vanished, again.mismatched, again.backfilled_external) == ([], [], [])


def test_both_diffs_agree_on_a_larger_book(pool: ConnectionPool, cluster: str) -> None:
    paper = PaperBroker(pool, cluster, "a")
    paper.connect()
    epoch = lead(pool, cluster, "a")
    paper.book([order(f"HX{i:06d}", epoch) for i in range(300)])
    with pool.connection() as conn:
        diff_sql = paper.position_diff(conn)
        diff_py = diff_positions(conn, ListingVenue(paper), cluster)  # type: ignore[arg-type]
    assert diff_sql.count == diff_py.count == 300
    assert sorted(p.ticket for p in diff_sql.new) == sorted(p.ticket for p in diff_py.new)
    assert {p.ticket: p for p in diff_sql.new} == {p.ticket: p for p in diff_py.new}
