"""The operator audit on real PostgreSQL: migration 0008 (append-only, one chain per cluster,
its downgrade), the hash chain (`engine.audit`: written in the action's transaction, never
forked by concurrent writers, a rewritten row named by `verify`), and the operator actions
that record themselves (halt, resume, signal resolve) with `haexec audit verify|list`."""

from __future__ import annotations

import getpass
import json
import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest

from db import migrate
from db.urls import libpq_url
from engine import audit, store
from haexec import cli
from tests.conftest import create_database, drop_database

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def empty_db(server_urls: tuple[str, str]) -> Iterator[str]:
    url = create_database(server_urls[1], prefix="haexec_m8")
    yield url
    drop_database(server_urls[1], url)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], cluster: str, database_url: str) -> Cli:
    """`haexec ...` in this process (a subprocess costs seconds of start-up on a busy machine):
    its exit status, stdout and stderr."""

    def _run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main([*args, "--cluster", cluster, "--database-url", database_url])
        out, err = capsys.readouterr()
        return code, out, err

    return _run


def connect(url: str) -> psycopg.Connection:
    return psycopg.connect(libpq_url(url), autocommit=True)


def add(conn: psycopg.Connection, cluster: str, action: str = "halt", reason: str | None = "news") -> int:
    with conn.transaction(), conn.cursor() as cur:
        return audit.record(cur, cluster, action, "cli:ops", reason, {"n": 1, "price": "1.10010"})


def test_0008_is_append_only_one_chain_per_cluster_and_downgrades(empty_db: str) -> None:
    migrate.upgrade(empty_db, "0007")
    migrate.upgrade(empty_db, "0008")
    with connect(empty_db) as conn:
        first = add(conn, "c")
        add(conn, "c", "resume", None)
        add(conn, "other")  # a chain of its own
        assert audit.verify(conn, "c") == audit.Verdict(2) and audit.verify(conn, "other").entries == 1
        for statement in (
            "UPDATE operator_audit SET reason = 'x'",
            "DELETE FROM operator_audit",
            "TRUNCATE operator_audit",
        ):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement)
        head = conn.execute("SELECT prev_hash FROM operator_audit WHERE id = %s", (first,)).fetchone()[0]
        assert head == audit.GENESIS
        with pytest.raises(psycopg.errors.UniqueViolation):  # a second row after the same head: a fork
            conn.execute(
                "INSERT INTO operator_audit (cluster, at, actor, action, prev_hash, hash)"
                " VALUES ('c', now(), 'x', 'halt', %s, %s)",
                (audit.GENESIS, "f" * 64),
            )
    migrate.downgrade(empty_db, "0007")
    with connect(empty_db) as conn:
        assert conn.execute("SELECT to_regclass('operator_audit')").fetchone()[0] is None
        assert (
            conn.execute("SELECT count(*) FROM pg_proc WHERE proname = 'operator_audit_append_only'").fetchone()[0] == 0
        )
    migrate.upgrade(empty_db)
    assert migrate.is_at_head(empty_db)


def test_an_action_and_its_audit_row_commit_together(database_url: str, cluster: str) -> None:
    with connect(database_url) as conn:
        with pytest.raises(RuntimeError), conn.transaction(), conn.cursor() as cur:
            audit.record(cur, cluster, "halt", "cli:ops", "rolled back")
            raise RuntimeError("the action failed")
        assert audit.verify(conn, cluster).entries == 0


def test_concurrent_actions_never_fork_the_chain(database_url: str, cluster: str) -> None:
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with connect(database_url) as conn:
                for _ in range(15):
                    add(conn, cluster)
        except BaseException as e:  # the test names it below
            errors.append(e)

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    with connect(database_url) as conn:
        assert audit.verify(conn, cluster) == audit.Verdict(45)


def test_verify_names_the_first_rewritten_row_and_the_cli_says_so(run: Cli, database_url: str, cluster: str) -> None:
    with connect(database_url) as conn:
        ids = [add(conn, cluster) for _ in range(4)]
    assert run("audit", "verify")[:2] == (0, "audit chain intact: 4 entries\n")
    with connect(database_url) as conn, conn.transaction():
        # What only a superuser can do: the trigger off, a reason rewritten, the trigger back on.
        conn.execute("ALTER TABLE operator_audit DISABLE TRIGGER operator_audit_append_only")
        conn.execute("UPDATE operator_audit SET reason = 'nothing to see' WHERE id = %s", (ids[2],))
        conn.execute("ALTER TABLE operator_audit ENABLE TRIGGER operator_audit_append_only")
    with connect(database_url) as conn:
        verdict = audit.verify(conn, cluster)
    assert (verdict.entries, verdict.broken_id) == (3, ids[2]) and "rewritten" in (verdict.problem or "")
    code, _, err = run("audit", "verify")
    assert code == 1 and err.splitlines() == [
        f"haexec audit: audit chain of cluster {cluster!r} broken at entry {ids[2]}: {verdict.problem}"
    ]


def test_halt_resume_and_resolve_are_audited_with_who_and_why(run: Cli, cluster: str, database_url: str) -> None:
    assert run("halt", "--reason", "news at 14:30")[0] == 0
    assert run("resume")[0] == 0
    fingerprint = "ab" * 32
    with connect(database_url) as conn:
        store.accept(conn, cluster, "test", fingerprint, fingerprint, f"HX{fingerprint[:24]}", {}, "t", None, None)
        conn.execute("UPDATE signals SET status = 'in_doubt', epoch = 3 WHERE fingerprint = %s", (fingerprint,))
    assert run("signal", "resolve", fingerprint[:8], "--cancel", "--reason", "not at the broker")[0] == 0

    code, out, err = run("audit", "list", "--json", "--limit", "10")
    assert code == 0, err
    entries = json.loads(out)
    me = f"cli:{getpass.getuser()}"
    assert [(e["action"], e["actor"], e["reason"]) for e in entries] == [
        ("resolve", me, "not at the broker"),
        ("resume", me, None),
        ("halt", me, "news at 14:30"),
    ]
    assert entries[0]["detail"] == {"fingerprint": fingerprint, "to": "cancelled", "ticket": None}
    assert entries[1]["prev_hash"] == entries[2]["hash"]
    code, out, _ = run("audit", "list", "--limit", "1")
    assert code == 0 and out.count("\n") == 1 and "resolve" in out and "not at the broker" in out
    assert run("audit", "verify")[1] == "audit chain intact: 3 entries\n"
    with pytest.raises(SystemExit) as bad:
        run("audit", "list", "--limit", "0")
    assert bad.value.code == 2
