"""Migration 0006 (plans) on a database holding rows of the earlier revisions: they survive
the upgrade and the downgrade, the new tables' constraints hold, and the signal trigger
settles a plan."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest

from db import migrate
from db.urls import libpq_url
from tests.conftest import create_database, drop_database

PLAN_TABLES = {"trade_plans", "pattern_history", "news_events"}


@pytest.fixture
def db_at_0005(server_urls: tuple[str, str]) -> Iterator[str]:
    url = create_database(server_urls[1], prefix="haexec_mp")
    migrate.upgrade(url, "0005")
    with psycopg.connect(libpq_url(url)) as conn:
        # Production-like rows of the earlier revisions: a leader, signals in several states
        # (one of them from a plan-like source), an order, a replay cursor.
        conn.execute("INSERT INTO leader_record (cluster, epoch, instance_id) VALUES ('c', 7, 'r1')")
        for i, status in enumerate(("received", "executed", "rejected", "in_doubt")):
            conn.execute(
                "INSERT INTO signals (cluster, fingerprint, intent_digest, tag, source, payload, status, received_by)"
                " VALUES ('c', %s, %s, %s, %s, %s, %s, 'r1')",
                (f"fp{i}", f"d{i}", f"HX{i}", "plan" if i == 3 else "tv", json.dumps({"symbol": "EURUSD"}), status),
            )
        conn.execute(
            "INSERT INTO paper_orders (cluster, tag, symbol, side, type, volume, price, epoch, instance_id, state)"
            " VALUES ('c', 'HX1', 'EURUSD', 'buy', 'market', 0.1, 1.1, 7, 'r1', 'filled')"
        )
        conn.execute(
            "INSERT INTO market_replay_cursor (cluster, feed, path, position, data_ms) VALUES ('c', %s, 'f.csv', 3, 9)",
            ("a" * 64,),
        )
    yield url
    drop_database(server_urls[1], url)


def _tables(conn: psycopg.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def _earlier_rows(conn: psycopg.Connection) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT (SELECT count(*) FROM signals), (SELECT string_agg(status, ',' ORDER BY id) FROM signals),"
        " (SELECT count(*) FROM paper_orders), (SELECT position FROM market_replay_cursor),"
        " (SELECT epoch FROM leader_record WHERE cluster = 'c')"
    ).fetchall()


def test_upgrade_keeps_earlier_rows_and_downgrade_removes_only_the_plan_tables(db_at_0005: str) -> None:
    with psycopg.connect(libpq_url(db_at_0005)) as conn:
        before = _earlier_rows(conn)
        assert not PLAN_TABLES & _tables(conn)
    migrate.upgrade(db_at_0005, "0006")
    with psycopg.connect(libpq_url(db_at_0005)) as conn:
        assert _earlier_rows(conn) == before
        assert PLAN_TABLES <= _tables(conn)
        conn.execute(
            "INSERT INTO trade_plans (cluster, plan_id, schema_version, plan, created_by, status, signal_fingerprint)"
            " VALUES ('c', 'p1', 1, '{}', 'r1', 'executing', 'fp3')"
        )
        conn.execute(
            "INSERT INTO pattern_history (cluster, symbol, timeframe, kind, bar_at, confirmed_at)"
            " VALUES ('c', 'EURUSD', 'M5', 'bos_up', '2026-01-01', '2026-01-01 00:10')"
        )
        conn.execute(
            "INSERT INTO news_events (at, currency, impact, title, source)"
            " VALUES ('2026-01-02', 'USD', 'high', 'NFP', 'f')"
        )
        conn.commit()
    migrate.downgrade(db_at_0005, "0005")
    with psycopg.connect(libpq_url(db_at_0005)) as conn:
        assert not PLAN_TABLES & _tables(conn)
        assert _earlier_rows(conn) == before
        # the trigger went with its table: settling a plan-sourced signal still works
        conn.execute("UPDATE signals SET status = 'executed' WHERE fingerprint = 'fp3'")
    migrate.upgrade(db_at_0005)
    assert migrate.is_at_head(db_at_0005)


def test_constraints_and_the_settle_trigger(db_at_0005: str) -> None:
    migrate.upgrade(db_at_0005, "0006")
    with psycopg.connect(libpq_url(db_at_0005), autocommit=True) as conn:
        insert = (
            "INSERT INTO trade_plans (cluster, plan_id, schema_version, plan, created_by, status, signal_fingerprint)"
            " VALUES ('c', %s, 1, '{}', 'r1', %s, %s)"
        )
        conn.execute(insert, ("p1", "executing", "fp3"))
        for bad in (("p2", "executing", None), ("p3", "pending", "fp9"), ("p4", "done", None), ("p1", "pending", None)):
            with pytest.raises(psycopg.errors.IntegrityError):
                conn.execute(insert, bad)
        pattern = (
            "INSERT INTO pattern_history (cluster, symbol, timeframe, kind, bar_at, confirmed_at)"
            " VALUES ('c', 'EURUSD', 'M5', 'bos_up', '2026-01-01', '2026-01-01 00:10')"
        )
        conn.execute(pattern)
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(pattern)
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO news_events (at, currency, impact, title, source) VALUES (now(), 'usd', 'high', 't', 's')"
            )
        # in_doubt -> executed: the plan follows its signal in the same statement's transaction
        conn.execute("UPDATE signals SET status = 'executed', broker_ref = '42' WHERE fingerprint = 'fp3'")
        assert conn.execute("SELECT status, detail FROM trade_plans WHERE plan_id = 'p1'").fetchone() == (
            "executed",
            "42",
        )
