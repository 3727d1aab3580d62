"""Migration 0007: the loop restart log upgrades over the earlier schema, keeps only its two
actions, and downgrades to 0006 leaving the rest untouched."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from db import migrate
from db.urls import libpq_url
from tests.conftest import create_database, drop_database


@pytest.fixture
def empty_db(server_urls: tuple[str, str]) -> Iterator[str]:
    url = create_database(server_urls[1], prefix="haexec_lp")
    yield url
    drop_database(server_urls[1], url)


def tables(url: str) -> set[str]:
    with psycopg.connect(libpq_url(url)) as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_0007_creates_the_restart_log_and_downgrades_to_0006(empty_db: str) -> None:
    migrate.upgrade(empty_db, "0006")
    with psycopg.connect(libpq_url(empty_db), autocommit=True) as conn:
        conn.execute("INSERT INTO leader_record (cluster, epoch) VALUES ('c', 4)")
    assert "loop_restarts" not in tables(empty_db)
    migrate.upgrade(empty_db, "0007")
    assert migrate.current_revision(empty_db) == "0007" and "loop_restarts" in tables(empty_db)
    with psycopg.connect(libpq_url(empty_db), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO loop_restarts (cluster, instance_id, loop, action, reason)"
            " VALUES ('c', 'r1', 'executor', 'restarted', 'no heartbeat')"
        )
        at = conn.execute("SELECT at FROM loop_restarts").fetchone()
        assert at is not None and at[0] is not None  # the database's clock stamps it
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO loop_restarts (cluster, instance_id, loop, action, reason)"
                " VALUES ('c', 'r1', 'executor', 'rebooted', 'x')"
            )
    migrate.downgrade(empty_db, "0006")
    assert migrate.current_revision(empty_db) == "0006" and "loop_restarts" not in tables(empty_db)
    with psycopg.connect(libpq_url(empty_db)) as conn:
        assert conn.execute("SELECT epoch FROM leader_record WHERE cluster = 'c'").fetchone() == (4,)
    migrate.upgrade(empty_db)
    assert "loop_restarts" in tables(empty_db)
