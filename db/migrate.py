"""Schema migrations through alembic, driven from code (no alembic.ini to find)."""

from __future__ import annotations

import importlib.util
import io
import shutil
import subprocess
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

from db.urls import libpq_url, redact, sqlalchemy_url

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class MigrationError(Exception):
    """One-line reason a migration command could not run."""


def alembic_config(url: str, stdout: io.TextIOBase | None = None) -> Config:
    cfg = Config(stdout=stdout) if stdout is not None else Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("postgresql://unused/")).get_current_head()
    assert head is not None
    return head


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
        proc = subprocess.run(
            [pg_dump, "--format=custom", f"--file={target}", f"--dbname={libpq_url(url)}"],
            capture_output=True,
            text=True,
            timeout=600,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MigrationError(f"pg_dump failed: {e}") from e
    if proc.returncode != 0:
        target.unlink(missing_ok=True)
        first = (proc.stderr.strip().splitlines() or ["no output"])[0]
        raise MigrationError(f"pg_dump of {redact(url)} failed: {first}")
    return target


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
