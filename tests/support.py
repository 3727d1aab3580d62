"""Shared test helpers: waiting on conditions with deadlines, replica processes."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from db.urls import libpq_url

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.02) -> T:
    """Poll until predicate() is truthy; fail the test naming `what` after the deadline."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")
        time.sleep(interval_s)


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        body = e.read()
        status = e.code
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        # HTTPException: polling a port in the ephemeral range that nobody listens on yet can
        # connect the socket to itself (TCP simultaneous open) and read back its own request.
        return 0, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ReplicaProcess:
    instance_id: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    paused: bool = False
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, Any]:
        return http_get(self.base + path)

    def is_leader(self) -> bool:
        return not self.paused and self.get("/leader")[0] == 200

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.proc.pid, sig)
        if sig == signal.SIGSTOP:
            wait_stopped(self.proc.pid)
            self.paused = True
        elif sig == signal.SIGCONT:
            self.paused = False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


Spawn = Callable[[dict[str, str], str], "ReplicaProcess"]


def start_replica(env: dict[str, str], instance_id: str, log_dir: Path, port: int | None = None) -> ReplicaProcess:
    port = port or free_port()
    child_env = {**os.environ, **env, "HAEXEC_INSTANCE_ID": instance_id, "HAEXEC_HTTP": f"127.0.0.1:{port}"}
    log_path = log_dir / f"{instance_id}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "haexec.cli", "run"],
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(REPO),
        )
    return ReplicaProcess(instance_id, port, proc, log_path, env=child_env)


def stop_replica(r: ReplicaProcess, timeout_s: float = 10.0) -> None:
    stop_replicas([r], timeout_s)


def stop_replicas(replicas: list[ReplicaProcess], timeout_s: float = 10.0) -> None:
    """Stop the followers together, then whoever may lead (a paused one may still think it
    does): their graceful shutdowns overlap instead of adding up, and no replica is asked to
    stop while a leader's release may be handing it the lease."""
    running = [r for r in replicas if r.proc.poll() is None]
    for r in running:
        if r.paused:
            r.signal(signal.SIGCONT)
    leading = [r for r in running if r.get("/leader")[0] != 503]
    _terminate([r for r in running if r not in leading], timeout_s)
    _terminate(leading, timeout_s)


def _terminate(replicas: list[ReplicaProcess], timeout_s: float) -> None:
    for r in replicas:
        r.proc.terminate()
    deadline = time.monotonic() + timeout_s
    for r in replicas:
        try:
            r.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait()


def run_cli(
    args: list[str], env: dict[str, str], timeout_s: float = 60.0, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haexec.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=str(REPO),
        input=stdin,
    )


def run_clis(
    calls: list[tuple[list[str], dict[str, str]]], timeout_s: float = 60.0
) -> list[subprocess.CompletedProcess[str]]:
    """Independent `run_cli` calls side by side, as many at once as there are cores: each is
    a fresh interpreter, mostly import time, so one after another leaves a core idle."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(lambda call: run_cli(call[0], call[1], timeout_s), calls))


def wait_stopped(pid: int, timeout_s: float = 10.0) -> None:
    """kill(SIGSTOP) returns before the process has stopped: on a busy machine it may still
    answer a request sent right after. Wait until the kernel says it is stopped (T)."""

    def stopped() -> bool:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")

    wait_for(stopped, timeout_s, f"process {pid} stopped by SIGSTOP")


LEASE_MS = 1500  # short drills; the protocol scales every other timer from the lease


def cluster_env(cluster: str, redis_url: str, database_url: str, lease_ms: int = LEASE_MS) -> dict[str, str]:
    return {
        "HAEXEC_CLUSTER": cluster,
        "HAEXEC_REDIS_URL": redis_url,
        "HAEXEC_DATABASE_URL": database_url,
        "HAEXEC_LEASE_MS": str(lease_ms),
        "HAEXEC_STARTUP_TIMEOUT_S": "10",
    }


def wait_ready(replicas: list[ReplicaProcess], timeout_s: float = 30) -> None:
    for r in replicas:
        wait_for(lambda r=r: r.get("/ready")[0] == 200 or not r.alive(), timeout_s, f"{r.instance_id} ready")
        assert r.alive(), f"{r.instance_id} exited:\n{r.log()}"


def the_leader(replicas: list[ReplicaProcess], timeout_s: float = 15) -> ReplicaProcess:
    """Wait until exactly one replica answers 200 on /leader."""

    def one() -> ReplicaProcess | None:
        found = [r for r in replicas if r.is_leader()]
        return found[0] if len(found) == 1 else None

    return wait_for(one, timeout_s, "exactly one leader", interval_s=0.05)


def epoch_of(r: ReplicaProcess) -> int:
    status, body = r.get("/leader")
    assert status == 200, body
    return int(body["epoch"])


def history(database_url: str, cluster: str) -> list[tuple[str, int, str]]:
    with psycopg.connect(libpq_url(database_url)) as conn:
        rows = conn.execute(
            "SELECT instance_id, epoch, reason FROM leadership_history WHERE cluster = %s ORDER BY id",
            (cluster,),
        ).fetchall()
    return [(r[0], int(r[1]), r[2]) for r in rows]


def epochs_held(database_url: str, cluster: str) -> dict[int, set[str]]:
    """Which instances ever held each epoch, by the `acquired` rows."""
    held: dict[int, set[str]] = {}
    for instance, epoch, reason in history(database_url, cluster):
        if reason == "acquired":
            held.setdefault(epoch, set()).add(instance)
    return held
