"""The CLI's answers to bad input and to a running cluster."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version

import psycopg
import pytest

from db import migrate
from db.urls import libpq_url
from tests.conftest import create_database, drop_database
from tests.support import (
    REPO,
    Spawn,
    cluster_env,
    epoch_of,
    free_port,
    run_cli,
    run_clis,
    the_leader,
    wait_for,
    wait_ready,
)


def run_into_closed_pipe(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`haexec ARGS | head -1` at its worst: the reader is gone before the first write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "haexec", *args],
            env={**os.environ, **env},
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            cwd=str(REPO),
        )
    finally:
        os.close(write_end)


def test_version() -> None:
    result = run_cli(["--version"], {})
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"haexec {version('haexec')}\n"


@pytest.mark.parametrize("args", [["status"], ["signal", "list"], ["history"], ["history", "--json"]])
def test_a_closed_stdout_ends_quietly_with_141(
    args: list[str], cluster: str, redis_url: str, database_url: str
) -> None:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO leadership_history (cluster, instance_id, epoch, event, reason) "
            "VALUES (%s, 'r1', 1, 'acquired', 'acquired')",
            (cluster,),
        )
    result = run_into_closed_pipe(args, cluster_env(cluster, redis_url, database_url))
    assert result.returncode == 141, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"HAEXEC_LEASE_MS": "abc"}, "HAEXEC_LEASE_MS"),
        ({"HAEXEC_LEASE_MS": "3000", "HAEXEC_RENEW_DEADLINE_MS": "3000"}, "HAEXEC_LEASE_MS"),
        ({"HAEXEC_RENEW_MS": "1900"}, "HAEXEC_RENEW_DEADLINE_MS"),
        ({"HAEXEC_STALE_AFTER_MS": "100"}, "HAEXEC_STALE_AFTER_MS"),
        ({"HAEXEC_REDIS_URL": "http://x", "HAEXEC_DATABASE_URL": "postgresql://x/y"}, "HAEXEC_REDIS_URL"),
        ({"HAEXEC_HTTP": "0.0.0.0:8000"}, "HAEXEC_API_TOKEN"),
        ({"HAEXEC_HTTP": "nonsense"}, "HAEXEC_HTTP"),
        ({"HAEXEC_BROKER": "ftx"}, "HAEXEC_BROKER"),
        ({"HAEXEC_CLUSTER": "a:b"}, "HAEXEC_CLUSTER"),
        ({"HAEXEC_ALERT_WEBHOOK": "ftp://alerts.example"}, "HAEXEC_ALERT_WEBHOOK"),
        ({"HAEXEC_IN_DOUBT": "maybe"}, "HAEXEC_IN_DOUBT"),
        ({"HAEXEC_BROKER_DEADLINE_MS": "5000"}, "HAEXEC_BROKER_DEADLINE_MS"),
        ({"HAEXEC_RISK_MAX_RISK_PCT": "200"}, "HAEXEC_RISK_MAX_RISK_PCT"),
        ({"HAEXEC_API_TOKEN": "  "}, "HAEXEC_API_TOKEN"),
        ({"HAEXEC_HTTP_MAX_CONNECTIONS": "0"}, "HAEXEC_HTTP_MAX_CONNECTIONS"),
        ({"HAEXEC_HTTP_BODY_TIMEOUT_MS": "ten"}, "HAEXEC_HTTP_BODY_TIMEOUT_MS"),
        ({"HAEXEC_LEASE_MS": "99999999999999999999"}, "HAEXEC_LEASE_MS"),
        ({"HAEXEC_STARTUP_TIMEOUT_S": "99999999999999999999"}, "HAEXEC_STARTUP_TIMEOUT_S"),
        ({"HAEXEC_LOG_LEVEL": "LOUD"}, "HAEXEC_LOG_LEVEL"),
        ({"HAEXEC_SWEEP_MS": "１０００"}, "HAEXEC_SWEEP_MS"),
        ({"HAEXEC_PAPER_BALANCE": "１００"}, "HAEXEC_PAPER_BALANCE"),
        ({"HAEXEC_RISK_MAX_RISK_PCT": "２"}, "HAEXEC_RISK_MAX_RISK_PCT"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(env: dict[str, str], names: str) -> None:
    result = run_cli(["run"], env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0], lines


@pytest.mark.parametrize(
    "args",
    [
        ["signal", "list", "--limit", "-5"],
        ["signal", "list", "--limit", "0"],
        ["signal", "list", "--limit", "99999999999999999999"],
        ["history", "--limit", "-5"],
        ["history", "--limit", "10001"],
        ["switchover", "--timeout", "nan"],
        ["up", "--replicas", "0"],
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    args: list[str], cluster: str, redis_url: str, database_url: str
) -> None:
    result = run_cli(args, cluster_env(cluster, redis_url, database_url))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and args[-2] in lines[0], lines
    assert "Traceback" not in result.stderr


def test_unreachable_redis_at_start_exits_1_after_bounded_retries(database_url: str) -> None:
    result = run_cli(
        ["run", "--http", "127.0.0.1:0"],
        {
            "HAEXEC_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "HAEXEC_DATABASE_URL": database_url,
            "HAEXEC_STARTUP_TIMEOUT_S": "1",
        },
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "redis" in lines[0] and "unreachable after 1s" in lines[0], lines


def test_unreachable_database_at_start_exits_1(redis_url: str) -> None:
    result = run_cli(
        ["run", "--http", "127.0.0.1:0"],
        {
            "HAEXEC_REDIS_URL": redis_url,
            "HAEXEC_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x",
            "HAEXEC_STARTUP_TIMEOUT_S": "1",
        },
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "database" in lines[0] and "unreachable" in lines[0], lines


@pytest.mark.parametrize("command", ["status", "leader", "history", "halt"])
@pytest.mark.parametrize("store", ["redis", "database"])
def test_a_store_that_is_down_is_one_line_naming_it_and_exit_1(
    command: str, store: str, cluster: str, redis_url: str, database_url: str
) -> None:
    port = free_port()  # nothing listens there
    if store == "redis":
        env = cluster_env(cluster, f"redis://:hunter2@127.0.0.1:{port}/0", database_url)
        named = f"redis at redis://:***@127.0.0.1:{port}/0 unreachable: "
    else:
        env = cluster_env(cluster, redis_url, f"postgresql://postgres:hunter2@127.0.0.1:{port}/x")
        named = f"database at postgresql://postgres:***@127.0.0.1:{port}/x unreachable: "
    if command in ("history", "halt") and store == "redis":
        pytest.skip(f"{command} reads no Redis")
    result = run_cli([command], env)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"haexec {command}: {named}"), lines
    assert "refused" in lines[0].lower() and "hunter2" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("command", [["run", "--http", "127.0.0.1:0"], ["status"], ["signal", "list"]])
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://postgres@127.0.0.1:{port}/x?password=hunter2",
            "postgresql://postgres@127.0.0.1:{port}/x?password=***",
        ),
        ("postgresql://:hunter2@127.0.0.1:{port}/x", "postgresql://:***@127.0.0.1:{port}/x"),
    ],
)
def test_a_database_password_never_reaches_an_error(command: list[str], url: str, shown: str, redis_url: str) -> None:
    port = free_port()
    env = {"HAEXEC_REDIS_URL": redis_url, "HAEXEC_DATABASE_URL": url.format(port=port), "HAEXEC_STARTUP_TIMEOUT_S": "1"}
    result = run_cli(command, env)
    assert result.returncode == 1, result.stderr
    assert shown.format(port=port) in result.stderr and "hunter2" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_port_in_use_exits_1(spawn: Spawn, cluster: str, redis_url: str, database_url: str) -> None:
    env = cluster_env(cluster, redis_url, database_url)
    first = spawn(env, "r1")
    wait_ready([first])
    result = run_cli(["run", "--instance-id", "r2", "--http", f"127.0.0.1:{first.port}"], env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"haexec run: cannot listen on 127.0.0.1:{first.port}: Address already in use"
    ]


def test_status_and_leader_read_the_stores_directly(
    spawn: Spawn, cluster: str, redis_url: str, database_url: str
) -> None:
    env = cluster_env(cluster, redis_url, database_url)
    replicas = [spawn(env, f"r{i}") for i in range(1, 4)]
    wait_ready(replicas)
    leader = the_leader(replicas)

    def status() -> dict:
        result = run_cli(["status", "--json"], env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def all_registered() -> dict | None:
        s = status()
        return s if len(s["replicas"]) == 3 and s["leader"] else None

    body = wait_for(all_registered, 10, "3 registered replicas")
    assert body["cluster"] == cluster
    assert body["leader"]["instance_id"] == leader.instance_id
    assert body["redis_leader"] == body["db_leader"] == leader.instance_id
    assert body["epoch"] == body["leader"]["epoch"] >= 1
    assert body["split_brain"] is False
    roles = {r["instance_id"]: r["role"] for r in body["replicas"]}
    assert roles == {r.instance_id: ("leader" if r is leader else "follower") for r in replicas}
    assert {"pid", "host", "http", "healthy"} <= set(body["replicas"][0])
    assert body["kill_switch"]["halted"] is False

    assert run_cli(["halt", "--reason", "news at 14:30"], env).returncode == 0
    switch = status()["kill_switch"]
    assert switch["halted"] is True and switch["reason"] == "news at 14:30" and switch["actor"].startswith("cli:")
    text = run_cli(["status"], env).stdout
    assert "trading     HALTED: trading is halted by cli:" in text and ": news at 14:30" in text
    assert run_cli(["resume"], env).returncode == 0

    result = run_cli(["leader", "--json"], env)
    assert result.returncode == 0
    answer = json.loads(result.stdout)
    assert answer["leader"]["instance_id"] == leader.instance_id
    assert answer["http"] == f"127.0.0.1:{leader.port}"

    for r in replicas:
        r.proc.terminate()
        r.proc.wait(10)
    # With no replica up the stores still answer: no leader, the record released.
    body = status()
    assert body["leader"] is None and body["replicas"] == []
    assert run_cli(["leader", "--json"], env).returncode == 1


def test_signal_submit_refuses_what_post_signals_refuses(cluster: str, redis_url: str, database_url: str) -> None:
    """One limit and one decoder for every way in: over 64 KiB, or a key given twice, is
    refused with one line and nothing stored (argument and stdin alike)."""
    env = cluster_env(cluster, redis_url, database_url)
    good = {"source": "cli", "symbol": "EURUSD", "side": "buy", "type": "market", "volume": "0.1"}
    good |= {"price": "1.1", "sl": "1"}
    big = json.dumps({**good, "meta": {"pad": "x" * 70_000}})
    twice = json.dumps(good)[:-1] + ', "volume": "50"}'

    for args, stdin, says in (
        ([big], None, "larger than 65536 bytes"),
        (["-"], big, "larger than 65536 bytes"),
        ([twice], None, "duplicate key 'volume'"),
        (["-"], twice, "duplicate key 'volume'"),
    ):
        result = run_cli(["signal", "submit", *args], env, stdin=stdin)
        assert result.returncode == 1, (args[0][:20], result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], lines

    with psycopg.connect(libpq_url(database_url)) as conn:
        stored = conn.execute("SELECT count(*) FROM signals WHERE cluster = %s", (cluster,)).fetchone()
    assert stored == (0,)
    accepted = run_cli(["signal", "submit", "--json", json.dumps(good)], env)
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["duplicate"] is False


# ---- a database that is not at this release's schema ----

FOREIGN = {
    # never migrated: the one case `haexec db upgrade` mends
    "empty": [],
    # a newer release's revision: `db upgrade` must not be advised
    "unknown_revision": [
        "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)",
        "INSERT INTO alembic_version VALUES ('ffff')",
    ],
    # another application's tables under haexec's names, no alembic revision
    "foreign_tables": ["CREATE TABLE signals (id int, name text)", "CREATE TABLE controls (x int)"],
}
SCHEMA_WORDS = {
    "empty": "run `haexec db upgrade`",
    "unknown_revision": "'ffff', which this release",
    "foreign_tables": "not haexec's",
    "altered": "not what this release expects",
}


@pytest.fixture(scope="module")
def schema_dbs(server_urls: tuple[str, str]) -> Iterator[dict[str, str]]:
    urls = {}
    for kind, statements in FOREIGN.items():
        urls[kind] = create_database(server_urls[1], prefix="haexec_s")
        with psycopg.connect(libpq_url(urls[kind]), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)
    # at head, then a column renamed by hand: only the statements themselves can notice
    urls["altered"] = create_database(server_urls[1], prefix="haexec_s")
    migrate.upgrade(urls["altered"])
    with psycopg.connect(libpq_url(urls["altered"]), autocommit=True) as conn:
        conn.execute("ALTER TABLE signals RENAME COLUMN tag TO tag_renamed")
        conn.execute("ALTER TABLE controls RENAME COLUMN halted TO stopped")
        conn.execute("ALTER TABLE paper_accounts RENAME COLUMN currency TO cur")
    yield urls
    for url in urls.values():
        drop_database(server_urls[1], url)


ENGINE_COMMANDS = [
    ["halt", "--reason", "test"],
    ["resume"],
    ["signal", "list"],
    ["signal", "show", "0" * 64],
    [
        "signal",
        "submit",
        '{"source": "t", "symbol": "EURUSD", "side": "buy", "type": "market", "volume": "0.01", '
        '"price": "1.1", "sl": "1.09"}',
    ],
    ["signal", "resolve", "0" * 64, "--cancel"],
    ["broker", "orders"],
    ["reconcile"],
]


def assert_one_schema_line(result: subprocess.CompletedProcess[str], kind: str) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and SCHEMA_WORDS[kind] in lines[0], lines
    if kind != "empty":
        assert "db upgrade`" not in lines[0] or kind == "altered", lines
    return lines[0]


@pytest.mark.parametrize("kind", list(SCHEMA_WORDS))
@pytest.mark.parametrize("args", [*ENGINE_COMMANDS, ["status"], ["leader"], ["history"]], ids=" ".join)
def test_commands_on_a_database_not_at_this_schema_are_one_line_and_exit_1(
    args: list[str], kind: str, schema_dbs: dict[str, str], cluster: str, redis_url: str
) -> None:
    # show and resolve look the fingerprint up first, find none, and read no further
    if kind == "altered" and args[:2] in (
        ["status"],
        ["leader"],
        ["history"],
        ["signal", "show"],
        ["signal", "resolve"],
    ):
        pytest.skip("reads no renamed column")
    result = run_cli(args, cluster_env(cluster, redis_url, schema_dbs[kind]))
    assert_one_schema_line(result, kind)


@pytest.mark.parametrize("kind", ["unknown_revision", "foreign_tables"])
def test_run_and_up_refuse_a_schema_they_cannot_use(
    kind: str, schema_dbs: dict[str, str], cluster: str, redis_url: str
) -> None:
    env = cluster_env(cluster, redis_url, schema_dbs[kind])
    line = assert_one_schema_line(run_cli(["run", "--http", "127.0.0.1:0"], env), kind)
    assert line.startswith("haexec run: ")
    up = run_cli(["up", "--http-base-port", str(free_port()), "--replicas", "1", "--no-view"], env, timeout_s=30)
    assert assert_one_schema_line(up, kind).startswith("haexec up: ")


def test_db_upgrade_refuses_what_it_cannot_migrate(schema_dbs: dict[str, str]) -> None:
    for kind in ("unknown_revision", "foreign_tables"):
        result = run_cli(["db", "upgrade"], {"HAEXEC_DATABASE_URL": schema_dbs[kind]})
        assert_one_schema_line(result, kind)


# ---- signal show / resolve by prefix; switchover to the leader ----


def forge_signal(database_url: str, cluster: str, fingerprint: str) -> None:
    """A stored signal whose fingerprint we choose, so two can share a long prefix."""
    from engine import store

    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        store.accept(conn, cluster, "test", fingerprint, fingerprint, f"HX{fingerprint[:24]}", {}, "t", None, None)


def test_signal_show_takes_the_prefix_signal_list_prints(cluster: str, redis_url: str, database_url: str) -> None:
    env = cluster_env(cluster, redis_url, database_url)
    shared = "abcdef01"
    for fp in (shared + "0" * 56, shared + "1" * 56, "9" * 64):
        forge_signal(database_url, cluster, fp)
    found = (
        ("9" * 16, "9" * 64),  # as `signal list` prints it
        ("9" * 8, "9" * 64),  # the shortest accepted
        ((shared + "1").upper(), shared + "1" * 56),  # one character past the shared part, any case
        (shared + "0" * 56, shared + "0" * 56),  # the whole fingerprint
    )
    # Every call below only reads (resolve refuses): they run side by side.
    listed, *shows, ambiguous, refused, missing = run_clis(
        [
            (["signal", "list"], env),
            *((["signal", "show", prefix, "--json"], env) for prefix, _ in found),
            (["signal", "show", shared], env),
            (["signal", "resolve", "9" * 8, "--cancel"], env),
            (["signal", "show", "12345678"], env),
        ]
    )
    assert listed.returncode == 0, listed.stderr
    shown = [line.split()[0] for line in listed.stdout.splitlines()]
    assert sorted(shown) == sorted([shared + "0" * 8, shared + "1" * 8, "9" * 16])

    for (_, full), result in zip(found, shows, strict=True):
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["fingerprint"] == full

    assert ambiguous.returncode == 1 and "Traceback" not in ambiguous.stderr
    assert ambiguous.stderr.strip().splitlines() == [
        f"haexec signal: {shared} is the start of several signals ({shared}0000, {shared}1111): give more characters"
    ]
    # resolve looks it up the same way (and then refuses: the signal is not in doubt)
    assert refused.returncode == 1
    assert refused.stderr.strip() == "haexec signal: signal is received; only in_doubt signals can be resolved"
    assert missing.returncode == 1 and "no signal 12345678" in missing.stderr


@pytest.mark.parametrize("prefix", ["abcdef0", "", "abcdefgh", "0" * 65])
def test_signal_show_refuses_a_short_or_non_hex_prefix(
    prefix: str, cluster: str, redis_url: str, database_url: str
) -> None:
    result = run_cli(["signal", "show", prefix], cluster_env(cluster, redis_url, database_url))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "8 or more hex characters" in lines[0], lines


def test_switchover_to_the_leader_says_so_and_exits_0(
    spawn: Spawn, cluster: str, redis_url: str, database_url: str
) -> None:
    env = cluster_env(cluster, redis_url, database_url)
    replicas = [spawn(env, "r1"), spawn(env, "r2")]
    wait_ready(replicas)
    leader = the_leader(replicas)
    epoch = epoch_of(leader)
    wait_for(lambda: len(json.loads(run_cli(["status", "--json"], env).stdout)["replicas"]) == 2, 10, "registry")
    result = run_cli(["switchover", "--to", leader.instance_id], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{leader.instance_id} already leads at epoch {epoch}\n"
    as_json = run_cli(["switchover", "--to", leader.instance_id, "--json"], env)
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["already_leader"] is True
    assert the_leader(replicas) is leader and epoch_of(leader) == epoch  # nothing was handed over


ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_every_timestamp_has_one_form(cluster: str, redis_url: str, database_url: str) -> None:
    """ISO 8601, UTC, milliseconds, Z: in history, signal list and signal show, JSON and text,
    whatever the database session's time zone."""
    env = {**cluster_env(cluster, redis_url, database_url), "PGTZ": "Asia/Kolkata"}
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO leadership_history (cluster, instance_id, epoch, event, reason) "
            "VALUES (%s, 'r1', 1, 'acquired', 'acquired')",
            (cluster,),
        )
    good = {"source": "cli", "symbol": "EURUSD", "side": "buy", "type": "market", "volume": "0.1"}
    submitted = run_cli(["signal", "submit", "--json", json.dumps({**good, "price": "1.1", "sl": "1"})], env)
    fp = json.loads(submitted.stdout)["fingerprint"]
    reads = [["history", "--json"], ["signal", "list", "--json"], ["signal", "show", fp, "--json"], ["history"]]
    *as_json, text = run_clis([(args, env) for args in reads])
    history, listed, shown = (json.loads(done.stdout) for done in as_json)
    stamps = [history[0]["at"], listed[0]["received_at"], shown["received_at"], shown["events"][0]["at"]]
    assert all(ISO_UTC.fullmatch(s) for s in stamps), stamps
    assert ISO_UTC.search(text.stdout)
