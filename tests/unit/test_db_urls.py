"""Database URLs in errors, and pg_dump's command line: no password in either."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from db import migrate
from db.urls import redact

SECRET = "hunter2"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        (f"postgresql://u:{SECRET}@h:5432/db", "postgresql://u:***@h:5432/db"),
        (f"postgresql://:{SECRET}@h/db", "postgresql://:***@h/db"),
        (f"postgresql://u@h/db?password={SECRET}", "postgresql://u@h/db?password=***"),
        (f"postgresql://u@h/db?sslmode=require&password={SECRET}", "postgresql://u@h/db?sslmode=require&password=***"),
        (f"postgresql://u@h/db?sslpassword={SECRET}", "postgresql://u@h/db?sslpassword=***"),
        (f"postgresql://u@h/db?pass%77ord={SECRET}", "postgresql://u@h/db?pass%77ord=***"),
        (f"postgresql://u:p@ss/{SECRET}@h/db", "postgresql://u:***@h/db"),
        (f"postgres+psycopg://u:{SECRET}@h1,h2/db", "postgres+psycopg://u:***@h1,h2/db"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown


class FakeRun:
    """subprocess.run for pg_dump: records what it was given, and the password file as it was then."""

    def __init__(self, returncode: int = 0, stderr: str = "") -> None:
        self.returncode = returncode
        self.stderr = stderr
        self.calls: list[dict[str, Any]] = []

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        env = kwargs["env"]
        passfile = env.get("PGPASSFILE")
        seen: dict[str, Any] = {"argv": argv, "env": env, "passfile": passfile}
        if passfile is not None:
            seen["mode"] = stat.S_IMODE(os.stat(passfile).st_mode)
            seen["content"] = Path(passfile).read_text()
        self.calls.append(seen)
        return subprocess.CompletedProcess(argv, self.returncode, "", self.stderr)


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch) -> FakeRun:
    run = FakeRun()
    monkeypatch.setattr(migrate, "_pg_dump_binary", lambda: "/usr/bin/pg_dump")
    monkeypatch.setattr(migrate.subprocess, "run", run)
    monkeypatch.setenv("PGPASSWORD", "from-the-caller")
    return run


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{SECRET}@db.example:5433/haexec",
        f"postgresql://app@db.example/haexec?password={SECRET}",
        f"postgresql://:{SECRET}@db.example/haexec",
        f"postgresql+psycopg://app:{SECRET}@db.example/haexec?sslmode=require&passfile=/elsewhere",
    ],
)
def test_pg_dump_gets_the_password_from_a_private_file_not_argv(url: str, fake_run: FakeRun, tmp_path: Path) -> None:
    dump = migrate.backup(url, tmp_path)
    (call,) = fake_run.calls
    assert not any(SECRET in arg for arg in call["argv"]), call["argv"]
    assert call["argv"][-1].startswith("--dbname=") and "db.example" in call["argv"][-1]
    assert "passfile" not in call["argv"][-1]
    assert call["mode"] == 0o600 and call["content"] == f"*:*:*:*:{SECRET}\n"
    assert "PGPASSWORD" not in call["env"]
    assert not Path(call["passfile"]).exists()  # removed once pg_dump is done
    assert dump.parent == tmp_path


def test_a_password_with_colons_and_backslashes_is_escaped(fake_run: FakeRun, tmp_path: Path) -> None:
    migrate.backup("postgresql://app:a%3Ab%5Cc@h/db", tmp_path)
    assert fake_run.calls[0]["content"] == "*:*:*:*:a\\:b\\\\c\n"


def test_no_password_no_password_file(fake_run: FakeRun, tmp_path: Path) -> None:
    migrate.backup("postgresql://app@h/db", tmp_path)
    (call,) = fake_run.calls
    assert call["passfile"] is None and call["env"]["PGPASSWORD"] == "from-the-caller"


def test_a_failed_dump_names_the_database_without_its_password(fake_run: FakeRun, tmp_path: Path) -> None:
    fake_run.returncode, fake_run.stderr = 1, 'pg_dump: error: connection to server at "h" failed\nmore'
    with pytest.raises(migrate.MigrationError) as info:
        migrate.backup(f"postgresql://:{SECRET}@h/db?password={SECRET}", tmp_path)
    assert str(info.value) == (
        'pg_dump of postgresql://:***@h/db?password=*** failed: pg_dump: error: connection to server at "h" failed'
    )
    assert not Path(fake_run.calls[0]["passfile"]).exists()
