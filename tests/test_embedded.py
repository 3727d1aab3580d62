"""Real redis-server / PostgreSQL processes started from the venv's wheels."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from embedded import (
    EmbeddedError,
    PostgresServer,
    RedisServer,
    ensure_servers,
    port_free,
    stop_servers,
)

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PORTS = {5432, 6379}


def wait_for(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout_s}s: {predicate}")
        time.sleep(0.02)


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting to be reaped counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def procs_under(root: Path) -> list[tuple[int, Path, str]]:
    """(pid, cwd, cmdline) of live server processes whose cwd lies under ``root``."""
    found = []
    root = root.resolve()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cwd.is_relative_to(root) and ("redis-server" in cmd or "postgres" in cmd):
            if not gone(int(entry.name)):
                found.append((int(entry.name), cwd, cmd))
    return found


def postmasters(datadir: Path) -> list[int]:
    # Only the postmaster keeps its original "postgres -D ..." command line.
    return [pid for pid, cwd, cmd in procs_under(datadir) if " -D " in cmd]


def redis_servers(workdir: Path) -> list[int]:
    return [pid for pid, cwd, cmd in procs_under(workdir) if cwd == workdir.resolve()]


def kill_everything_under(root: Path) -> None:
    """Last-resort cleanup, so no test leaves a server behind even when it fails."""
    pids = [pid for pid, _, _ in procs_under(root)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: all(gone(pid) for pid in pids))


def saved_state(state_dir: Path) -> dict:
    return json.loads((state_dir / "servers.json").read_text())


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A private temp dir; every server started below it is killed afterwards.

    Not tmp_path: as root, PostgreSQL runs as an unprivileged account that must
    traverse to its data dir, and pytest resets /tmp/pytest-of-<user> to 0700
    whenever another pytest session starts (a colleague's run in the same tree,
    say), which would randomly lock that account out mid-test.
    """
    base = Path(tempfile.mkdtemp(prefix="haexec-embedded-test-"))
    try:
        yield base
    finally:
        try:
            kill_everything_under(base)
        finally:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def state_dir(workdir: Path) -> Iterator[Path]:
    state = workdir / "state"
    try:
        yield state
    finally:
        stop_servers(state)


def redis_client(url: str, timeout_s: float = 5.0) -> redis.Redis:
    # No retries: redis-py's default backoff would hide (and slow down) failures.
    return redis.Redis.from_url(url, socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0))


def redis_ping(url: str) -> bool:
    with redis_client(url) as client:
        return bool(client.ping())


def pg_select_1(url: str) -> int:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT 1").fetchone()
    assert row is not None
    return int(row[0])


def test_ensure_servers_starts_both_and_reuses_them(state_dir: Path) -> None:
    servers = ensure_servers(state_dir)

    assert servers.redis_url.startswith("redis://127.0.0.1:")
    assert servers.database_url.startswith("postgresql://postgres@127.0.0.1:")
    assert servers.database_url.endswith("/haexec")
    assert redis_ping(servers.redis_url)
    assert pg_select_1(servers.database_url) == 1
    first = saved_state(state_dir)
    assert {first["redis"]["port"], first["postgres"]["port"]}.isdisjoint(SYSTEM_PORTS)

    again = ensure_servers(state_dir)

    assert again == servers
    assert saved_state(state_dir) == first
    assert redis_servers(state_dir / "redis") == [first["redis"]["pid"]]
    assert postmasters(state_dir / "pg" / "data") == [first["postgres"]["pid"]]


def test_concurrent_callers_share_one_pair_of_servers(state_dir: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from embedded import ensure_servers; "
        "s = ensure_servers(Path(sys.argv[1])); print(s.redis_url, s.database_url)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(state_dir)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(out.strip())

    assert outputs[0] == outputs[1]
    redis_url, database_url = outputs[0].split()
    assert redis_ping(redis_url)
    assert pg_select_1(database_url) == 1
    assert len(redis_servers(state_dir / "redis")) == 1
    assert len(postmasters(state_dir / "pg" / "data")) == 1


def test_ensure_servers_restarts_killed_servers_and_keeps_pg_data_and_stop_servers_stops_both(
    state_dir: Path,
) -> None:
    servers = ensure_servers(state_dir)
    with psycopg.connect(servers.database_url) as conn:
        conn.execute("CREATE TABLE survivor (id int PRIMARY KEY)")
        conn.execute("INSERT INTO survivor VALUES (42)")
    before = saved_state(state_dir)
    redis_pid, pg_pid = before["redis"]["pid"], before["postgres"]["pid"]

    os.kill(redis_pid, signal.SIGKILL)
    os.kill(pg_pid, signal.SIGKILL)
    wait_for(lambda: gone(redis_pid) and gone(pg_pid))

    # Same ports when still free; another process may have taken one meanwhile (an
    # ephemeral port handed out by the kernel), and then a new port is the right answer.
    ports_free = port_free(before["redis"]["port"]) and port_free(before["postgres"]["port"])
    restarted = ensure_servers(state_dir)

    after = saved_state(state_dir)
    assert after["redis"]["pid"] != redis_pid
    assert after["postgres"]["pid"] != pg_pid
    if ports_free:
        assert restarted == servers
    assert redis_ping(restarted.redis_url)
    with psycopg.connect(restarted.database_url) as conn:
        assert conn.execute("SELECT id FROM survivor").fetchall() == [(42,)]

    # The restarted pair is what stop_servers stops (one server start-up fewer than a test of its own).
    redis_pid, pg_pid = after["redis"]["pid"], after["postgres"]["pid"]

    stop_servers(state_dir)

    assert gone(redis_pid)
    assert gone(pg_pid)
    assert not procs_under(state_dir)
    stop_servers(state_dir)  # stopping stopped servers is a no-op


def test_redis_restart_comes_back_empty_on_same_port(workdir: Path) -> None:
    with RedisServer(workdir / "redis") as server:
        port, url = server.port, server.url
        with redis_client(url) as client:
            client.set("lease", "node-a")

        server.restart()

        assert (server.port, server.url) == (port, url)
        with redis_client(url) as client:
            assert client.get("lease") is None
            assert client.dbsize() == 0

        pid = server.pid
        assert pid is not None
        server.kill()
        assert gone(pid)
        with pytest.raises(redis.ConnectionError), redis_client(url) as client:
            client.ping()


def test_redis_pause_and_resume(workdir: Path) -> None:
    with RedisServer(workdir / "redis") as server:
        server.pause()
        with redis_client(server.url, timeout_s=0.3) as client:
            with pytest.raises(redis.TimeoutError):
                client.ping()
            server.resume()
            assert client.ping()


def test_redis_port_in_use_is_a_one_line_error(workdir: Path) -> None:
    with RedisServer(workdir / "a") as first:
        with pytest.raises(EmbeddedError) as info:
            RedisServer(workdir / "b", port=first.port).start()
    message = str(info.value)
    assert "\n" not in message
    assert str(first.port) in message and "redis.log" in message


def test_postgres_stop_start_keeps_data_on_same_port(workdir: Path) -> None:
    server = PostgresServer(workdir / "pg")
    with server:
        url = server.create_database("drill")
        assert server.create_database("drill") == url  # idempotent
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE kept AS SELECT 7 AS v")
        port, pid = server.port, server.pid
        assert pid is not None

        server.stop()
        assert server.pid is None
        assert gone(pid)

        server.start()
        assert server.port == port
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [(7,)]

        server.kill()
        assert server.pid is None
        assert not procs_under(server.workdir)
        server.start()  # crash recovery after SIGKILL
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [(7,)]


def test_without_the_extra_a_server_cannot_run_and_says_what_to_install() -> None:
    from embedded.process import package_dir

    with pytest.raises(EmbeddedError, match=r"install the extra \(pip install -c constraints.txt -e '.\[embedded\]'\)"):
        package_dir("haexec_no_such_server_wheel")
