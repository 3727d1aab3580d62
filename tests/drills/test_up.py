"""`haexec up` on the embedded default: the README's first command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedded import running_servers
from tests.conftest import server_workdir
from tests.support import REPO, http_get, run_cli, wait_for


def free_port_run(n: int) -> int:
    """A base port P with P+1..P+n free right now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        try:
            for i in range(1, n + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + i))
        except OSError:
            continue
        return base
    raise RuntimeError("no run of free ports")


@pytest.fixture
def state_dir() -> Iterator[Path]:
    path = server_workdir("up")
    yield path / "state"
    from embedded import stop_servers

    stop_servers(path / "state")
    shutil.rmtree(path, ignore_errors=True)


def test_up_runs_restarts_and_stops_a_local_cluster(state_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAEXEC_")}
    env["HAEXEC_LEASE_MS"] = "1500"
    base = free_port_run(2)
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "haexec.cli",
            "up",
            "--replicas",
            "2",
            "--http-base-port",
            str(base),
            "--state-dir",
            str(state_dir),
        ],
        env=env,
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def status() -> dict | None:
            result = run_cli(["status", "--json", "--state-dir", str(state_dir)], env, timeout_s=20)
            return json.loads(result.stdout) if result.returncode == 0 else None

        def ready() -> dict | None:
            s = status()
            return s if s and s["leader"] and len(s["replicas"]) == 2 else None

        # Polled over HTTP first: a `status` call is an interpreter start, and back to back they
        # take a core from the cluster starting up on a 2-core machine.
        ports = [base + 1, base + 2]
        wait_for(lambda: serving(ports) and leading(ports) == 1, 90, "2 replicas ready, one leading", interval_s=0.1)
        body = wait_for(ready, 90, "a leader and 2 registered replicas", interval_s=0.3)
        https = sorted(r["http"] for r in body["replicas"])
        assert https == [f"127.0.0.1:{base + 1}", f"127.0.0.1:{base + 2}"]
        follower = next(r for r in body["replicas"] if r["role"] == "follower")

        os.kill(follower["pid"], signal.SIGKILL)  # a crash: `up` restarts it
        follower_port = int(follower["http"].rsplit(":", 1)[1])
        wait_for(lambda: _zombie(follower["pid"]), 10, "the crashed replica gone")
        wait_for(lambda: serving([follower_port]), 60, "the crashed replica serving again", interval_s=0.1)

        def restarted() -> bool:
            s = status()
            return bool(s) and any(
                r["instance_id"] == follower["instance_id"] and r["pid"] != follower["pid"] for r in s["replicas"]
            )

        wait_for(restarted, 60, "the crashed replica restarted", interval_s=0.3)
        pids = [r["pid"] for r in status()["replicas"]]

        # the paper venue runs beside them, marks the account, and is restarted after a crash
        servers = running_servers(state_dir)
        assert servers is not None
        first = wait_for(lambda: venue_pid(state_dir), 30, "the venue process")
        wait_for(lambda: marked_within(servers.database_url, 2.0), 60, "the venue marking the account")
        os.kill(first, signal.SIGKILL)

        def restarted_venue() -> int | None:
            pid = venue_pid(state_dir)
            return pid if pid not in (None, first) else None

        second = wait_for(restarted_venue, 60, "a new venue process")
        wait_for(lambda: marked_within(servers.database_url, 1.0), 60, "the restarted venue marking again")
        pids.append(second)
    finally:
        up.send_signal(signal.SIGTERM)
        out, err = up.communicate(timeout=60)
    assert up.returncode == 0, err
    assert "leader" in out
    for pid in pids:
        wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 10, f"replica {pid} gone")
    assert running_servers(state_dir) is None, "up left the embedded servers it started running"


def serving(ports: list[int]) -> bool:
    return all(http_get(f"http://127.0.0.1:{port}/ready")[0] == 200 for port in ports)


def leading(ports: list[int]) -> int:
    return sum(http_get(f"http://127.0.0.1:{port}/leader")[0] == 200 for port in ports)


def venue_pid(state_dir: Path) -> int | None:
    """The `haexec venue` process `up` started for this state directory."""
    marker = f"HAEXEC_STATE_DIR={state_dir}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"venue" in cmdline and b"haexec.cli" in cmdline and marker in environ and not _zombie(int(entry.name)):
            return int(entry.name)
    return None


def marked_within(database_url: str, seconds: float) -> bool:
    import psycopg

    from db.urls import libpq_url

    with psycopg.connect(libpq_url(database_url)) as conn:
        row = conn.execute(
            "SELECT clock_timestamp() - marked_at < make_interval(secs => %s)"
            " FROM paper_marks WHERE cluster = 'default'",
            (seconds,),
        ).fetchone()
    return bool(row and row[0])


def _zombie(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    except OSError:
        return True
