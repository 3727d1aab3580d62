"""Migration 0005 (plan_execution_state, trade_journal) on real PostgreSQL: it upgrades over
rows of the earlier revisions, keeps updated_at by the database, holds one row per
(cluster, account, ticket), keeps the journal append-only, and downgrades back to 0004 with
the earlier rows intact."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from db import migrate
from db.urls import libpq_url
from tests.conftest import create_database, drop_database


@pytest.fixture
def empty_db(server_urls: tuple[str, str]) -> Iterator[str]:
    url = create_database(server_urls[1], prefix="haexec_m5")
    yield url
    drop_database(server_urls[1], url)


STATE_ROW = (
    "INSERT INTO plan_execution_state (cluster, account, ticket, symbol, side, entry, initial_sl, volume, source)"
    " VALUES ('c', 'paper', %s, 'EURUSD', 'buy', 1.1, 1.09, 0.1, 'signal') RETURNING updated_at"
)


def test_0005_upgrades_over_a_book_and_downgrades_to_it(empty_db: str) -> None:
    migrate.upgrade(empty_db, "0004")
    with psycopg.connect(libpq_url(empty_db), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO paper_orders (cluster, tag, symbol, side, type, volume, price, sl, epoch, instance_id, state)"
            " VALUES ('c', 'HX1', 'EURUSD', 'buy', 'market', 1, 1.1, 1.09, 1, 'a', 'filled')"
        )
    migrate.upgrade(empty_db, "0005")
    with psycopg.connect(libpq_url(empty_db), autocommit=True) as conn:
        created = conn.execute(STATE_ROW, ("1",)).fetchone()[0]
        touched = conn.execute(
            "UPDATE plan_execution_state SET sent_sl = 1.095 WHERE ticket = '1' RETURNING updated_at"
        ).fetchone()[0]
        assert touched > created  # kept by the trigger, not by whoever writes
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(STATE_ROW, ("1",))
        conn.execute(
            "INSERT INTO trade_journal (cluster, ticket, kind, epoch, instance, detail)"
            " VALUES ('c', '1', 'registered', 1, 'a', '{}')"
        )
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("UPDATE trade_journal SET kind = 'close'")
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("DELETE FROM trade_journal")
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO trade_journal (cluster, ticket, kind, instance) VALUES ('c', '1', 'x', 'a')")
    migrate.downgrade(empty_db, "0004")
    with psycopg.connect(libpq_url(empty_db)) as conn:
        names = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert not {"plan_execution_state", "trade_journal"} & names
        assert conn.execute("SELECT count(*) FROM paper_orders").fetchone()[0] == 1
        functions = conn.execute(
            "SELECT count(*) FROM pg_proc WHERE proname IN ('plan_execution_state_touch', 'trade_journal_append_only')"
        ).fetchone()[0]
        assert functions == 0
    migrate.upgrade(empty_db)
    assert migrate.is_at_head(empty_db)
