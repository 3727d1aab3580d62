"""Real replica processes (`python -m haexec.cli run`) and the servers under them.

Deliberately independent of `tests/`: the benchmark must keep working whatever the test
helpers turn into.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import psycopg
import redis

from db import migrate
from db.urls import libpq_url, redact
from embedded import PostgresServer, RedisServer
from haexec.drill.cluster import wait_until as drill_wait_until

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
BENCH_DATABASE = "haexec_bench"
# Bench connections carry this prefix so the idle measurement can leave them out.
BENCH_CLIENT_PREFIX = "haexec-bench"
# Short enough not to blur a handover of a few milliseconds, long enough that the bench's
# own polling does not compete for the CPU with the replicas it measures.
POLL_S = 0.005
_PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    """The benchmark cannot go on (one line)."""


def log(msg: str) -> None:
    # Progress goes to stderr so that `--json` leaves stdout to the one JSON object.
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def wait_until(predicate: Callable[[], T], timeout_s: float, interval_s: float = POLL_S) -> T | None:
    """The drill's poll, at the bench's finer default interval."""
    return drill_wait_until(predicate, timeout_s, interval_s)


def http_status(url: str, timeout_s: float = 1.0) -> int:
    """The HTTP status of a GET, 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as e:
        e.read()
        return int(e.code)
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        # HTTPException: a poll of a port nobody listens on yet can connect to itself.
        return 0


def _die_with_parent() -> None:
    """Runs in the child before exec: a bench that is itself SIGKILLed must not leave
    replicas behind that keep electing leaders against the servers."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def replica_env(
    cluster: str, instance_id: str, port: int, redis_url: str, database_url: str, lease_ms: int
) -> dict[str, str]:
    # Inherited HAEXEC_* settings (a shell that exported HAEXEC_RENEW_MS, say) would
    # silently change the timers being measured, so none of them pass through.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAEXEC_")}
    env.update(
        {
            "HAEXEC_CLUSTER": cluster,
            "HAEXEC_INSTANCE_ID": instance_id,
            "HAEXEC_HTTP": f"{HOST}:{port}",
            "HAEXEC_REDIS_URL": redis_url,
            "HAEXEC_DATABASE_URL": database_url,
            "HAEXEC_LEASE_MS": str(lease_ms),
            "HAEXEC_STARTUP_TIMEOUT_S": "20",
            "HAEXEC_LOG_LEVEL": "INFO",
            # The producers send fixed prices (EURUSD 1.1): fill there, as the figures assume.
            "HAEXEC_PAPER_PRICES": "signal",
        }
    )
    return env


@dataclass
class Replica:
    instance_id: str
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    starts: int = 0
    _exited: list[int] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError(f"{self.instance_id} was never started")
        return self.proc.pid

    def start(self) -> None:
        """Start (or restart: same instance id, same port) the replica process."""
        if self.alive():
            raise BenchError(f"{self.instance_id} is already running (pid {self.pid})")
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "haexec.cli", "run"],
                env=self.env,
                cwd=str(REPO),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Ctrl-C on the bench's terminal must reach the bench only: it stops the
                # replicas itself, in order, before the servers.
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        self.started_at = time.monotonic()
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str) -> int:
        return http_status(self.base + path)

    def is_leader(self) -> bool:
        return self.alive() and self.get("/leader") == 200

    def wait_ready(self, timeout_s: float) -> None:
        """Until /ready answers 200; BenchError (with the log's tail) if it exits or times out."""
        ok = wait_until(lambda: not self.alive() or self.get("/ready") == 200, timeout_s, 0.02)
        if not self.alive():
            raise BenchError(f"{self.instance_id} exited while starting: {self.log_tail()}")
        if not ok:
            raise BenchError(f"{self.instance_id} not ready after {timeout_s:g}s: {self.log_tail()}")

    def send(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, timeout_s: float) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (the replica releases leadership), then SIGKILL if it does not exit."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            self.send(signal.SIGTERM)
        if self.wait_exit(timeout_s) is None:
            log(f"{self.instance_id} ignored SIGTERM for {timeout_s:g}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                self.send(signal.SIGKILL)
            self.wait_exit(timeout_s)

    def memory_kb(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) from /proc, in kB."""
        out: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"


class Servers:
    """Redis and PostgreSQL for one benchmark run: bench-owned (started in a fresh temporary
    directory, torn down at the end) or existing ones given by URL."""

    def __init__(self, redis_url: str | None, database_url: str | None, keep: bool, trace: bool = False) -> None:
        # Not under /tmp/pytest-of-*: as root PostgreSQL runs as another account, which
        # must be able to traverse every parent directory of its data directory.
        self.workdir = Path(tempfile.mkdtemp(prefix="haexec-bench-"))
        self.logs = self.workdir / "logs"
        self.logs.mkdir()
        self.keep = keep
        self.trace = trace
        self._redis_url = redis_url
        self._database_url = database_url
        self.redis_server: RedisServer | None = None
        self.pg_server: PostgresServer | None = None
        self.redis_url = ""
        self.database_url = ""

    @property
    def owns_postgres(self) -> bool:
        return self.pg_server is not None

    def __enter__(self) -> Servers:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _start(self) -> None:
        if self._redis_url:
            self.redis_url = self._redis_url
        else:
            self.redis_server = RedisServer(self.workdir / "redis")
            self.redis_server.start()
            self.redis_url = self.redis_server.url
        with redis.Redis.from_url(self.redis_url, socket_timeout=5) as probe:
            try:
                probe.ping()
            except redis.RedisError as e:
                raise BenchError(f"redis at {redact(self.redis_url)}: {e}") from None
        if self._database_url:
            self.database_url = self._database_url
            try:
                at_head = migrate.is_at_head(self.database_url)
            except Exception as e:  # SQLAlchemy wraps the driver's errors; any means unusable
                raise BenchError(f"database at {redact(self.database_url)}: {e}") from None
            if not at_head:
                # Not ours to migrate: replicas would refuse to start on it anyway.
                raise BenchError(f"database at {redact(self.database_url)} is not at schema head")
        else:
            self.pg_server = PostgresServer(self.workdir / "pg")
            self.pg_server.start()
            self.database_url = self.pg_server.create_database(BENCH_DATABASE)
            migrate.upgrade(self.database_url)
            self._log_writes()

    def _log_writes(self) -> None:
        """Make the bench-owned server log every data-modifying statement with its session's
        application_name and an epoch timestamp, so DB writes can be counted exactly per
        replica and per time window (pg_stat counters flush late and are per table only)."""
        assert self.pg_server is not None
        with psycopg.connect(libpq_url(self.pg_server.url()), autocommit=True) as conn:
            # With --trace every statement (reads too), to follow a slow round step by step.
            conn.execute(f"ALTER SYSTEM SET log_statement = '{'all' if self.trace else 'mod'}'")
            conn.execute("ALTER SYSTEM SET log_line_prefix = '%n [%p] app=%a: '")
            conn.execute("SELECT pg_reload_conf()")

    def pg_log_path(self) -> Path | None:
        return self.pg_server.log_path if self.pg_server is not None else None

    def close(self) -> None:
        """Stop whatever this run started; each step on its own, so one failure does not leave
        the other server running."""
        if self.pg_server is not None:
            try:
                self.pg_server.stop()
            except Exception as e:
                log(f"stopping PostgreSQL failed: {e}")
        if self.redis_server is not None:
            try:
                self.redis_server.stop()
            except Exception as e:
                log(f"stopping redis-server failed: {e}")
        if self.keep:
            log(f"kept {self.workdir} (replica logs in {self.logs})")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
