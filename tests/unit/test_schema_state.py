"""What start-up and the CLI say about a database's schema, from its revision and tables alone."""

from __future__ import annotations

import pytest

from db.migrate import TABLES, SchemaState, head_revision, history, schema_mismatch


def state(revision: str | None, *tables: str) -> SchemaState:
    return SchemaState(revision, frozenset(tables))


def test_at_head_is_fine() -> None:
    assert state(head_revision(), *TABLES).problem() is None


@pytest.mark.parametrize("revision", [None, *(rev for rev, _, _ in history()[1:])])
def test_behind_head_says_db_upgrade(revision: str | None) -> None:
    s = state(revision, "someone_elses_table")
    assert s.upgradable
    assert s.problem() == (
        f"database schema is at {revision or 'base'}, this release needs {head_revision()}: run `haexec db upgrade`"
    )


def test_an_unknown_revision_never_says_db_upgrade() -> None:
    s = state("ffff", *TABLES)
    problem = s.problem()
    assert not s.upgradable and problem is not None
    assert "'ffff'" in problem and "upgrade haexec" in problem and "db upgrade" not in problem
    assert f"haexec db downgrade {head_revision()}" in problem


def test_haexec_tables_without_a_revision_are_foreign() -> None:
    s = state(None, "signals", "controls", "unrelated")
    problem = s.problem()
    assert not s.upgradable and problem is not None
    assert "not haexec's" in problem and "controls, signals" in problem and "db upgrade" not in problem


class FakeError(Exception):
    def __init__(self, sqlstate: str, text: str) -> None:
        super().__init__(text)
        self.sqlstate = sqlstate


@pytest.mark.parametrize("sqlstate", ["42P01", "42703", "42883", "42804"])
def test_schema_mismatch_names_the_statement_error(sqlstate: str) -> None:
    line = schema_mismatch(FakeError(sqlstate, 'column "tag" does not exist\nLINE 1: SELECT tag'))
    assert line is not None and "\n" not in line and 'column "tag" does not exist' in line


@pytest.mark.parametrize("sqlstate", ["42501", "08006", "57014", None])
def test_other_errors_are_not_a_schema_mismatch(sqlstate: str | None) -> None:
    assert schema_mismatch(FakeError(sqlstate, "x") if sqlstate else ValueError("x")) is None
