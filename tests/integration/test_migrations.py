"""Alembic migrations and the `haexec db` commands on real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from db import migrate
from db.urls import libpq_url
from tests.conftest import create_database, drop_database
from tests.support import run_cli

TABLES = {"leader_record", "leadership_history"}


@pytest.fixture
def empty_db(server_urls: tuple[str, str]) -> Iterator[str]:
    url = create_database(server_urls[1], prefix="haexec_m")
    yield url
    drop_database(server_urls[1], url)


def tables(url: str) -> set[str]:
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows} - {"alembic_version"}


def test_upgrade_downgrade_upgrade(empty_db: str) -> None:
    assert migrate.current_revision(empty_db) is None
    migrate.upgrade(empty_db)
    assert migrate.is_at_head(empty_db)
    assert TABLES <= tables(empty_db)
    migrate.downgrade(empty_db, "base")
    assert migrate.current_revision(empty_db) is None
    assert tables(empty_db) == set()
    migrate.upgrade(empty_db)
    assert migrate.is_at_head(empty_db)
    assert TABLES <= tables(empty_db)


def test_the_table_list_is_the_head_schema(empty_db: str) -> None:
    migrate.upgrade(empty_db)
    assert tables(empty_db) == migrate.TABLES
    state = migrate.schema_state(empty_db)
    assert state.revision == migrate.head_revision() and state.problem() is None


def test_cli_upgrade_with_backup_current_and_history(empty_db: str, tmp_path: Path) -> None:
    env = {"HAEXEC_DATABASE_URL": empty_db}
    up = run_cli(["db", "upgrade", "--backup-dir", str(tmp_path / "backups")], env)
    assert up.returncode == 0, up.stderr
    dumps = list((tmp_path / "backups").glob("*.dump"))
    assert len(dumps) == 1 and dumps[0].stat().st_size > 0
    current = run_cli(["db", "current"], env)
    assert current.returncode == 0 and "(head)" in current.stdout
    hist = run_cli(["db", "history"], env)
    assert hist.returncode == 0 and migrate.head_revision() in hist.stdout


def test_backup_with_a_password_in_the_query_string(empty_db: str, tmp_path: Path) -> None:
    # trust authentication ignores the password; the point is that pg_dump runs with the
    # password-less connection string and the password file it is given
    dump = migrate.backup(f"{empty_db}?password=not-in-argv&sslmode=disable", tmp_path)
    assert dump.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == [dump.name]


def test_failed_backup_refuses_to_migrate(empty_db: str, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    result = run_cli(["db", "upgrade", "--backup-dir", str(blocker / "sub")], {"HAEXEC_DATABASE_URL": empty_db})
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "backup" in result.stderr
    assert "Traceback" not in result.stderr
    assert migrate.current_revision(empty_db) is None


def test_unknown_revision_is_one_line(empty_db: str) -> None:
    result = run_cli(["db", "downgrade", "nonexistent"], {"HAEXEC_DATABASE_URL": empty_db})
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_replica_refuses_to_start_below_head(empty_db: str, redis_url: str) -> None:
    result = run_cli(
        ["run", "--http", "127.0.0.1:0"],
        {"HAEXEC_DATABASE_URL": empty_db, "HAEXEC_REDIS_URL": redis_url, "HAEXEC_CLUSTER": "below-head"},
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"haexec run: database schema is at base, this release needs {migrate.head_revision()}: run `haexec db upgrade`"
    ]
    assert "Traceback" not in result.stderr


def columns(url: str, table: str) -> set[str]:
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,)
        ).fetchall()
    return {r[0] for r in rows}


def test_0004_the_venue_upgrades_over_a_book_and_downgrades_to_it(empty_db: str) -> None:
    migrate.upgrade(empty_db, "0003")
    with psycopg.connect(libpq_url(empty_db), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO paper_orders (cluster, tag, symbol, side, type, volume, price, sl, epoch, instance_id, state)"
            " VALUES ('c', 'HX1', 'EURUSD', 'buy', 'market', 1, 1.1, 1.09, 1, 'a', 'filled')"
        )
        conn.execute(
            "INSERT INTO paper_positions (ticket, cluster, symbol, side, volume, price, sl, tag)"
            " SELECT ticket, 'c', 'EURUSD', 'buy', 1, 1.1, 1.09, 'HX1' FROM paper_orders"
        )
    migrate.upgrade(empty_db)
    assert {"paper_marks", "paper_venue_cursor"} <= tables(empty_db)
    assert {"expires_at", "done_at", "fill_price"} <= columns(empty_db, "paper_orders")
    with (
        psycopg.connect(libpq_url(empty_db), autocommit=True) as conn,
        psycopg.connect(libpq_url(empty_db), autocommit=True) as listener,
    ):
        listener.execute("LISTEN haexec_paper_book")
        # a modification of an open position's stops is a deal, whoever makes it; a change of
        # anything else is not
        conn.execute("UPDATE paper_positions SET sl = 1.095 WHERE cluster = 'c'")
        conn.execute("UPDATE paper_positions SET tag = 'HX1' WHERE cluster = 'c'")
        deals = conn.execute("SELECT kind, pnl, sl FROM paper_deals WHERE cluster = 'c'").fetchall()
        assert [(k, p, str(s)) for k, p, s in deals] == [("modify", 0, "1.095")]
        ticket = conn.execute("SELECT ticket FROM paper_positions").fetchone()[0]  # type: ignore[index]
        payloads = {n.payload for n in listener.notifies(timeout=1, stop_after=2)}
        assert payloads == {f"c|p|{ticket}"}  # the same row twice in a transaction is one notice
        # the snapshot can only hold equity = balance + floating
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO paper_marks (cluster, balance, floating, equity, margin, free_margin, leverage,"
                " positions, venue) VALUES ('c', 100, 5, 104, 0, 104, 100, 1, 'v')"
            )
    migrate.downgrade(empty_db, "0003")
    assert not {"paper_marks", "paper_venue_cursor"} & tables(empty_db)
    assert "expires_at" not in columns(empty_db, "paper_orders")
    assert "balance" not in columns(empty_db, "paper_deals")
    with psycopg.connect(libpq_url(empty_db), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM paper_positions").fetchone() == (1,)  # the book is kept
        conn.execute("UPDATE paper_positions SET sl = 1.08")  # no trigger left behind
        assert conn.execute("SELECT count(*) FROM paper_deals").fetchone() == (1,)
    migrate.upgrade(empty_db)
    assert migrate.is_at_head(empty_db)
