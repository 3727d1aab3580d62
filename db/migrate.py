"""Schema migrations through alembic, driven from code (no alembic.ini to find)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TextIO

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import create_engine, pool

from db.session import SessionLimits, connect
from db.urls import libpq_url, redact, sqlalchemy_url

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

# The tables the migrations create (test_migrations holds this to the real head schema). A
# database with no alembic revision that already has one of them was not made by haexec, and
# migrating it would fail half-way or, worse, run on a stranger's table of the same name.
TABLES = frozenset(
    {
        "leader_record",
        "leadership_history",
        "signals",
        "signal_events",
        "executions",
        "paper_accounts",
        "paper_orders",
        "paper_positions",
        "paper_deals",
        "controls",
        "reconciliations",
        "broker_positions",
        "market_replay_cursor",
        "paper_marks",
        "paper_venue_cursor",
        "operator_audit",
        "loop_restarts",
    }
)

READ_REVISION_SQL = "SELECT version_num FROM alembic_version ORDER BY version_num"
READ_TABLES_SQL = "SELECT tablename FROM pg_tables WHERE schemaname = ANY (current_schemas(false))"


class MigrationError(Exception):
    """One-line reason a migration command could not run."""


class SchemaError(MigrationError):
    """The database is not at the schema this release runs on; the message says what to do."""


def alembic_config(url: str, stdout: TextIO | None = None) -> Config:
    cfg = Config(stdout=stdout) if stdout is not None else Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return cfg


@cache
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("postgresql://unused/")).get_current_head()
    assert head is not None
    return head


@cache
def known_revisions() -> frozenset[str]:
    return frozenset(rev for rev, _, _ in history())


@dataclass(frozen=True)
class SchemaState:
    """What a database holds: its alembic revision (None: never migrated) and its tables."""

    revision: str | None
    tables: frozenset[str]

    @property
    def foreign_tables(self) -> list[str]:
        """haexec's table names present in a database haexec never migrated."""
        return sorted(TABLES & self.tables) if self.revision is None else []

    @property
    def upgradable(self) -> bool:
        """`haexec db upgrade` would bring it to head: never migrated and no clashing table,
        or at a revision this release knows."""
        if self.revision is None:
            return not self.foreign_tables
        return self.revision in known_revisions()

    def problem(self) -> str | None:
        """None at head, else one line saying what is wrong and what to do about it."""
        head = head_revision()
        if self.revision == head:
            return None
        if self.foreign_tables:
            return (
                f"database schema is not haexec's: it has tables named like haexec's "
                f"({', '.join(self.foreign_tables)}) but no alembic revision; use a database of its own"
            )
        if self.upgradable:
            at = self.revision or "base"
            return f"database schema is at {at}, this release needs {head}: run `haexec db upgrade`"
        # Never advise `db upgrade` here: this release cannot migrate from a revision it does not know.
        return (
            f"database schema is at revision {self.revision!r}, which this release (head {head}) does not know: "
            f"a newer haexec migrated it (upgrade haexec, or run `haexec db downgrade {head}` with that release) "
            "or it is not haexec's database"
        )


def read_schema(conn: psycopg.Connection) -> SchemaState:
    """On a connection the caller already holds (psycopg, no SQLAlchemy engine)."""
    tables = frozenset(row[0] for row in conn.execute(READ_TABLES_SQL).fetchall())
    revision = None
    if "alembic_version" in tables:
        revisions = [row[0] for row in conn.execute(READ_REVISION_SQL).fetchall()]
        revision = ",".join(revisions) or None  # several rows: branches haexec never makes
    return SchemaState(revision, tables - {"alembic_version"})


def schema_state(url: str, timeout_ms: int = 2000) -> SchemaState:
    """Raises psycopg.OperationalError when the database cannot be reached."""
    with connect(url, SessionLimits(timeout_ms, "haexec-schema")) as conn:
        return read_schema(conn)


def schema_mismatch(error: BaseException) -> str | None:
    """One line when a statement failed because the tables are not what it expects (SQLSTATE
    class 42: no such table, column or function, wrong type; not a refused permission), else None."""
    sqlstate = getattr(error, "sqlstate", None) or ""
    if not sqlstate.startswith("42") or sqlstate == "42501":
        return None
    detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return (
        f"database schema is not what this release expects ({detail}): "
        "not haexec's database, not migrated (`haexec db upgrade`), or altered by hand"
    )


def check_schema(state: SchemaState) -> None:
    problem = state.problem()
    if problem is not None:
        raise SchemaError(problem)


def current_revision(url: str) -> str | None:
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def is_at_head(url: str) -> bool:
    return current_revision(url) == head_revision()


def history() -> list[tuple[str, str | None, str]]:
    """(revision, down_revision, message), newest first."""
    script = ScriptDirectory.from_config(alembic_config("postgresql://unused/"))
    return [
        (s.revision, s.down_revision if isinstance(s.down_revision, str) else None, s.doc or "")
        for s in script.walk_revisions()
    ]


def backup(url: str, backup_dir: Path) -> Path:
    """pg_dump in custom format; raises MigrationError when the dump cannot be made."""
    pg_dump = _pg_dump_binary()
    try:
        backup_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MigrationError(f"cannot create backup directory {backup_dir}: {e.strerror}") from None
    target = backup_dir / f"haexec-{time.strftime('%Y%m%dT%H%M%S')}.dump"
    try:
        params = conninfo_to_dict(libpq_url(url))
    except psycopg.ProgrammingError:
        raise MigrationError(f"cannot read the database URL {redact(url)}") from None
    password = params.pop("password", None)
    env = dict(os.environ)
    with _passfile(None if password is None else str(password)) as passfile:
        if passfile is not None:
            params.pop("passfile", None)  # it would win over PGPASSFILE
            env.pop("PGPASSWORD", None)  # it would win over any password file
            env["PGPASSFILE"] = passfile
        try:
            proc = subprocess.run(
                [pg_dump, "--format=custom", f"--file={target}", f"--dbname={make_conninfo('', **params)}"],
                capture_output=True,
                text=True,
                timeout=600,
                env=env,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise MigrationError(f"pg_dump failed: {e}") from e
    if proc.returncode != 0:
        target.unlink(missing_ok=True)
        first = (proc.stderr.strip().splitlines() or ["no output"])[0]
        raise MigrationError(f"pg_dump of {redact(url)} failed: {first}")
    return target


@contextmanager
def _passfile(password: str | None) -> Iterator[str | None]:
    """A libpq password file holding `password` for any server, mode 0600, removed afterwards.
    pg_dump's argv is readable by every user in /proc; its password file is not."""
    if password is None:
        yield None
        return
    if "\n" in password or "\r" in password:
        raise MigrationError("the database password contains a line break, which a libpq password file cannot hold")
    fd, path = tempfile.mkstemp(prefix="haexec-pgpass-")  # created 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write("*:*:*:*:" + password.replace("\\", "\\\\").replace(":", "\\:") + "\n")
        yield path
    finally:
        Path(path).unlink(missing_ok=True)


def _pg_dump_binary() -> str:
    """The embedded server's pg_dump when present (its major version matches), else PATH."""
    spec = importlib.util.find_spec("pgserver")  # the wheel that ships the embedded server
    if spec and spec.submodule_search_locations:
        bundled = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / "pg_dump"
        if bundled.exists():
            return str(bundled)
    found = shutil.which("pg_dump")
    if not found:
        raise MigrationError("pg_dump not found: install PostgreSQL client tools")
    return found


def upgrade(url: str, revision: str = "head", backup_dir: Path | None = None) -> Path | None:
    dump = backup(url, backup_dir) if backup_dir is not None else None
    command.upgrade(alembic_config(url), revision)
    return dump


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)
