"""One long-lived pair of servers per state directory, shared by every process that asks
(`ensure_servers` is safe to call from several at once: a file lock and a state file)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

from embedded.postgres_server import DATABASE, PostgresServer
from embedded.process import UNRESPONSIVE_GRACE_S, EmbeddedError, free_port, port_free, remaining, wait_until
from embedded.redis_server import RedisServer

log = logging.getLogger(__name__)

STATE_FILE = "servers.json"
LOCK_FILE = "servers.lock"


@dataclass(frozen=True)
class EmbeddedServers:
    redis_url: str
    database_url: str


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _locked(state_dir: Path, timeout_s: float) -> Iterator[None]:
    lock = filelock.FileLock(str(state_dir / LOCK_FILE), timeout=max(0.0, timeout_s))
    try:
        lock.acquire()
    except filelock.Timeout:
        raise EmbeddedError(
            f"timed out after {timeout_s:g}s waiting for {lock.lock_file} "
            "(another process is starting or stopping the embedded servers)"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _load_state(state_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def _save_state(state_dir: Path, state: dict[str, dict[str, Any]]) -> None:
    # Write-then-rename so a crash never leaves a half-written file for the next caller.
    tmp = state_dir / f".{STATE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, state_dir / STATE_FILE)


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _ensure_redis(state_dir: Path, saved: dict[str, Any], deadline: float) -> RedisServer:
    workdir = state_dir / "redis"
    port, pid = _int_or_none(saved.get("port")), _int_or_none(saved.get("pid"))
    if port is not None and pid is not None:
        server = RedisServer(workdir, port)
        if server._adopt(pid):
            if wait_until(server._answers, min(UNRESPONSIVE_GRACE_S, remaining(deadline))):
                return server
            log.warning("redis-server pid %d on port %d does not answer; replacing it", pid, port)
            server.kill()
    # Same port as before when possible, so URLs handed out earlier stay valid.
    server = RedisServer(workdir, port if port is not None and port_free(port) else None)
    server.start(remaining(deadline))
    return server


def _ensure_postgres(state_dir: Path, saved: dict[str, Any], deadline: float) -> PostgresServer:
    port = _int_or_none(saved.get("port"))
    server = PostgresServer(state_dir / "pg", port)
    if server.pid is None and not port_free(server.port):
        server.port = free_port()
    # start() reuses a cluster that is already running (checking it really answers).
    server.start(remaining(deadline))
    return server


def ensure_servers(state_dir: Path, timeout_s: float = 60.0) -> EmbeddedServers:
    """Make sure this state directory's Redis and PostgreSQL servers run; return their URLs.

    Idempotent and safe to call from several processes at once: a file lock lets
    exactly one of them start the servers while the others wait and reuse them.
    Running servers are reused (pid alive and answering); dead ones are restarted
    on the same data directories and, when still free, the same ports. Servers
    run in their own session and outlive the caller. The ``haexec`` database is
    created if missing; migrations are left to the caller.
    """
    state_dir = Path(state_dir).absolute()
    state_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with _locked(state_dir, timeout_s):
        state = _load_state(state_dir)
        redis_server = _ensure_redis(state_dir, state.get("redis", {}), deadline)
        pg_server = _ensure_postgres(state_dir, state.get("postgres", {}), deadline)
        _save_state(
            state_dir,
            {
                "redis": {"port": redis_server.port, "pid": redis_server.pid},
                "postgres": {"port": pg_server.port, "pid": pg_server.pid},
            },
        )
        database_url = pg_server.create_database(DATABASE)
    return EmbeddedServers(redis_url=redis_server.url, database_url=database_url)


def running_servers(state_dir: Path) -> EmbeddedServers | None:
    """The URLs of this state directory's servers when both run and answer; never starts them."""
    state_dir = Path(state_dir).absolute()
    state = _load_state(state_dir)
    saved_redis, saved_pg = state.get("redis", {}), state.get("postgres", {})
    redis_port, redis_pid = _int_or_none(saved_redis.get("port")), _int_or_none(saved_redis.get("pid"))
    pg_port = _int_or_none(saved_pg.get("port"))
    if redis_port is None or redis_pid is None or pg_port is None:
        return None
    redis_server = RedisServer(state_dir / "redis", redis_port)
    pg_server = PostgresServer(state_dir / "pg", pg_port)
    if not (redis_server._adopt(redis_pid) and redis_server._answers() and pg_server._answers()):
        return None
    return EmbeddedServers(redis_url=redis_server.url, database_url=pg_server.url(DATABASE))


def stop_servers(state_dir: Path, timeout_s: float = 60.0) -> None:
    """Stop this state directory's servers if they run (Redis SHUTDOWN NOSAVE, pg_ctl -m fast)."""
    state_dir = Path(state_dir).absolute()
    if not state_dir.is_dir():
        return
    with _locked(state_dir, timeout_s):
        state = _load_state(state_dir)
        saved = state.get("redis", {})
        port, pid = _int_or_none(saved.get("port")), _int_or_none(saved.get("pid"))
        if port is not None and pid is not None:
            server = RedisServer(state_dir / "redis", port)
            if server._adopt(pid):
                server.stop(timeout_s)
        PostgresServer(state_dir / "pg").stop(timeout_s)
        for entry in state.values():
            entry["pid"] = None
        if state:
            _save_state(state_dir, state)
