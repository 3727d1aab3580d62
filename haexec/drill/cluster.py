"""A throwaway local cluster for drills: servers, one pair of fault proxies per replica, and
the replica processes themselves.

Everything started here is registered for teardown: ``DrillCluster.close`` stops replicas
(SIGCONT, SIGTERM, then SIGKILL of the process group), the proxy process and the drill's
own servers, each step on its own so one failure does not leave the rest running.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

from db.urls import libpq_url, redact
from haexec.drill.proxy import ProxyError, ProxyProcess

T = TypeVar("T")
HOST = "127.0.0.1"
DRILL_DATABASE = "haexec_drill"
REPO = Path(__file__).resolve().parent.parent.parent
_PR_SET_PDEATHSIG = 1

LIBFAKETIME_PATHS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)

# libfaketime 0.9.10 (Debian 12) shifts the absolute deadline of clock_nanosleep(CLOCK_MONOTONIC,
# TIMER_ABSTIME) even with FAKETIME_DONT_FAKE_MONOTONIC=1 (fixed in 0.9.11), so Python's
# time.sleep fails with EINVAL in a faked process. This shim, put on the faked replica's
# PYTHONPATH only when the probe shows the bug, sleeps on a lock wait instead (sem_clockwait on
# CLOCK_MONOTONIC, which libfaketime leaves alone). Nothing else in the replica changes.
SLEEP_SHIM = '''"""haexec drill: time.sleep without clock_nanosleep (libfaketime 0.9.10 breaks it)."""
import threading as _threading
import time as _time

_never = _threading.Event()


def _sleep(secs):
    secs = float(secs)
    if secs < 0:
        raise ValueError("sleep length must be non-negative")
    _never.wait(secs)


_time.sleep = _sleep
'''


class DrillError(Exception):
    """The drill cannot go on (one line); exit status 1."""


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} drill: {msg}", file=sys.stderr, flush=True)


def wait_until(predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.01) -> T | None:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval_s)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http_call(
    port: int, method: str, path: str, body: dict[str, Any] | None = None, timeout_s: float = 1.0
) -> tuple[int, Any, dict[str, str]]:
    """(status, parsed JSON or None, headers); status 0 when nothing answered in time."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        return resp.status, data, {k.lower(): v for k, v in resp.getheaders()}
    except (OSError, http.client.HTTPException):
        return 0, None, {}
    finally:
        conn.close()


def _die_with_parent() -> None:
    """In the child before exec: if the drill is killed outright, its replicas go with it."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def find_libfaketime() -> Path | None:
    override = os.environ.get("HAEXEC_DRILL_LIBFAKETIME")
    for candidate in ([override] if override else []) + list(LIBFAKETIME_PATHS):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def probe_faketime(lib: Path, workdir: Path) -> tuple[bool, bool, str]:
    """(fakes the wall clock only, needs the sleep shim, detail) for this libfaketime."""
    stamp = workdir / "faketime-probe"
    stamp.write_text("+3600\n")
    code = (
        "import time,sys\n"
        "w=time.time(); b=time.clock_gettime(time.CLOCK_BOOTTIME); m=time.monotonic()\n"
        "ok=1\n"
        "try:\n time.sleep(0.001)\n"
        "except OSError:\n ok=0\n"
        "print(w, b, m, ok)\n"
    )
    env = {
        **os.environ,
        "LD_PRELOAD": str(lib),
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_TIMESTAMP_FILE": str(stamp),
        "FAKETIME_NO_CACHE": "1",
    }
    try:
        before_b = time.clock_gettime(time.CLOCK_BOOTTIME)
        before_w = time.time()
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
        ).stdout.split()
        w, b, _m, ok = float(out[0]), float(out[1]), float(out[2]), out[3] == "1"
    except (OSError, subprocess.SubprocessError, IndexError, ValueError) as e:
        return False, False, f"probe failed: {e}"
    finally:
        stamp.unlink(missing_ok=True)
    wall_shift = w - before_w
    boot_shift = b - before_b
    if not (3500 < wall_shift < 3700 and -1 < boot_shift < 30):
        return False, False, f"wall clock moved {wall_shift:.0f}s, boot clock {boot_shift:.0f}s under {lib}"
    return True, not ok, "time.sleep needs a shim" if not ok else "ok"


# --------------------------------------------------------------------------- servers


@dataclass
class Servers:
    """The drill's Redis and PostgreSQL: owned (in the work directory) or external by URL."""

    workdir: Path
    redis_url_arg: str | None
    database_url_arg: str | None
    redis_server: Any = None
    pg_server: Any = None
    redis_url: str = ""
    database_url: str = ""

    @property
    def owns_redis(self) -> bool:
        return self.redis_server is not None

    @property
    def owns_postgres(self) -> bool:
        return self.pg_server is not None

    def start(self) -> None:
        from db import migrate
        from embedded import EmbeddedError, PostgresServer, RedisServer

        try:
            if self.redis_url_arg:
                self.redis_url = self.redis_url_arg
            else:
                self.redis_server = RedisServer(self.workdir / "redis")
                self.redis_server.start()
                self.redis_url = self.redis_server.url
            if self.database_url_arg:
                self.database_url = self.database_url_arg
            else:
                self.pg_server = PostgresServer(self.workdir / "pg")
                self.pg_server.start()
                self.database_url = self.pg_server.create_database(DRILL_DATABASE)
        except EmbeddedError as e:
            raise DrillError(f"cannot start the drill's servers: {e}") from None
        with redis.Redis.from_url(self.redis_url, socket_timeout=5, socket_connect_timeout=5) as probe:
            try:
                probe.ping()
            except redis.RedisError as e:
                raise DrillError(f"redis at {redact(self.redis_url)} unreachable: {e}") from None
        try:
            if self.owns_postgres:
                migrate.upgrade(self.database_url)
            elif not migrate.is_at_head(self.database_url):
                raise DrillError(
                    f"database at {redact(self.database_url)} is not at schema head: run `haexec db upgrade`"
                )
        except DrillError:
            raise
        except Exception as e:  # SQLAlchemy wraps the driver's errors; any means unusable
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DrillError(f"database at {redact(self.database_url)} unusable: {first}") from None

    def stop(self) -> None:
        if self.pg_server is not None:
            try:
                self.pg_server.stop(30)
            except Exception as e:
                log(f"stopping PostgreSQL failed ({e}); killing it")
                with contextlib.suppress(Exception):
                    self.pg_server.kill()
        if self.redis_server is not None:
            try:
                self.redis_server.stop(10)
            except Exception as e:
                log(f"stopping redis-server failed ({e}); killing it")
                with contextlib.suppress(Exception):
                    self.redis_server.kill()


def _endpoint(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    if not parts.hostname:
        raise DrillError(f"cannot proxy {redact(url)}: it names no TCP host")
    return parts.hostname, parts.port or default_port


def _via(url: str, port: int) -> str:
    """The same URL pointed at 127.0.0.1:port (user, password, database and query kept)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{HOST}:{port}" if userinfo else f"{HOST}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


# --------------------------------------------------------------------------- replicas


@dataclass
class Replica:
    instance_id: str
    port: int
    env: dict[str, str]
    log_path: Path
    redis_proxy: str
    db_proxy: str
    faketime_file: Path | None = None
    under_faketime: bool = False
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False
    starts: int = 0
    _exit_codes: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        if self.alive():
            return
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "haexec.cli", "run"],
                env=self.env,
                cwd=str(REPO),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the drill only; it stops replicas itself
                preexec_fn=_die_with_parent,
            )
        self.paused = False
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def answering(self) -> bool:
        return self.alive() and not self.paused

    def send(self, sig: signal.Signals) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)
        if sig == signal.SIGSTOP:
            self.paused = True
        elif sig == signal.SIGCONT:
            self.paused = False

    def kill(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.paused = False

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGCONT (if paused), SIGTERM (the replica releases), then SIGKILL of its group."""
        if self.proc is None:
            return
        if self.alive():
            self.send(signal.SIGCONT)
            self.send(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log(f"{self.instance_id} ignored SIGTERM for {timeout_s:g}s; killing it")
        self.kill()

    def get(self, path: str, timeout_s: float = 1.0) -> tuple[int, Any, dict[str, str]]:
        return http_call(self.port, "GET", path, timeout_s=timeout_s)

    def is_leader(self, timeout_s: float = 0.5) -> bool:
        return self.answering() and self.get("/leader", timeout_s)[0] == 200

    def ready(self) -> bool:
        return self.answering() and self.get("/ready")[0] == 200

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"


@dataclass(frozen=True)
class Record:
    epoch: int
    instance_id: str | None
    acquired_at: float | None
    released: bool


class DrillCluster:
    def __init__(
        self,
        replicas: int,
        lease_ms: int,
        redis_url: str | None,
        database_url: str | None,
        faked: bool,
        keep: bool = False,
        env_extra: dict[str, str] | None = None,
        faked_from_start: bool = True,
    ) -> None:
        # Not under /tmp/pytest-of-*: as root PostgreSQL runs as another account, which must be
        # able to traverse every parent directory of its data directory.
        self.workdir = Path(tempfile.mkdtemp(prefix="haexec-drill-"))
        self.logs = self.workdir / "logs"
        self.logs.mkdir()
        self.keep = keep
        self.n = replicas
        self.lease_ms = lease_ms
        self.renew_ms = lease_ms // 3
        self.cluster = f"drill{uuid.uuid4().hex[:10]}"
        self.key = f"haexec:{self.cluster}:leader"
        self.events = f"haexec:{self.cluster}:events"
        self.servers = Servers(self.workdir, redis_url, database_url)
        self.proxies: ProxyProcess | None = None
        self.replicas: list[Replica] = []
        self.want_faked = faked
        self.faked: Replica | None = None
        self.faketime_note: str | None = None
        self.faked_from_start = faked_from_start
        self._faketime_env: dict[str, str] = {}
        self._env_extra = env_extra or {}
        self._ctl: redis.Redis | None = None
        self._db: psycopg.Connection | None = None
        self._closed = False

    # ---- start ----

    def start(self) -> None:
        self.servers.start()
        # Only once the servers run: a drill that cannot start them says so in one line.
        log(f"workdir {self.workdir} cluster {self.cluster}")
        self.proxies = ProxyProcess(preexec=_die_with_parent, log_path=str(self.logs / "proxy.log"))
        rhost, rport = _endpoint(self.servers.redis_url, 6379)
        phost, pport = _endpoint(self.servers.database_url, 5432)
        lib = find_libfaketime() if self.want_faked else None
        shim_dir: Path | None = None
        if self.want_faked:
            if lib is None:
                self.faketime_note = "libfaketime not found (apt-get install faketime)"
            else:
                works, needs_shim, detail = probe_faketime(lib, self.workdir)
                if not works:
                    self.faketime_note = f"libfaketime unusable: {detail}"
                    lib = None
                elif needs_shim:
                    shim_dir = self.workdir / "faketime-shim"
                    shim_dir.mkdir()
                    (shim_dir / "sitecustomize.py").write_text(SLEEP_SHIM)
        try:
            for i in range(1, self.n + 1):
                name = f"r{i}"
                rp = self.proxies.add(f"{name}-redis", rhost, rport)
                dp = self.proxies.add(f"{name}-db", phost, pport)
                port = free_port()
                env = self._replica_env(
                    name, port, _via(self.servers.redis_url, rp), _via(self.servers.database_url, dp)
                )
                replica = Replica(name, port, env, self.logs / f"{name}.log", f"{name}-redis", f"{name}-db")
                if lib is not None and i == self.n:
                    # The last replica can run under libfaketime (offset 0 until a clock-jump).
                    # Only while needed: with FAKETIME_NO_CACHE every wall-clock read is a file
                    # read, which makes that replica measurably slower (a take-over's
                    # reconciliation several times over), so other scenarios run without it.
                    stamp = self.workdir / f"faketime-{name}"
                    stamp.write_text("+0\n")
                    replica.faketime_file = stamp
                    self._faketime_env = {
                        "LD_PRELOAD": str(lib),
                        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                        "FAKETIME_TIMESTAMP_FILE": str(stamp),
                        "FAKETIME_NO_CACHE": "1",
                    }
                    if shim_dir is not None:
                        self._faketime_env["PYTHONPATH"] = os.pathsep.join(
                            filter(None, [str(shim_dir), env.get("PYTHONPATH")])
                        )
                    if self.faked_from_start:
                        env.update(self._faketime_env)
                        replica.under_faketime = True
                    self.faked = replica
                self.replicas.append(replica)
        except ProxyError as e:
            raise DrillError(f"fault proxies: {e}") from None
        self._ctl = redis.Redis.from_url(
            self.servers.redis_url, socket_timeout=2, socket_connect_timeout=2, decode_responses=True
        )
        for r in self.replicas:
            r.start()
        for r in self.replicas:
            self.wait_ready(r)
        if self.leader(10 * self.lease_ms / 1000) is None:
            raise DrillError(f"no leader among {self.n} replicas after start-up")
        self.wait_subscribed()

    def _replica_env(self, name: str, port: int, redis_url: str, database_url: str) -> dict[str, str]:
        # Inherited HAEXEC_* settings would silently change what is being drilled.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HAEXEC_", "FAKETIME", "LD_PRELOAD"))}
        env.update(
            {
                "HAEXEC_CLUSTER": self.cluster,
                "HAEXEC_INSTANCE_ID": name,
                "HAEXEC_HTTP": f"{HOST}:{port}",
                "HAEXEC_REDIS_URL": redis_url,
                "HAEXEC_DATABASE_URL": database_url,
                "HAEXEC_LEASE_MS": str(self.lease_ms),
                "HAEXEC_STARTUP_TIMEOUT_S": "20",
                "HAEXEC_BROKER": "paper",
                # The producer sends fixed prices (EURUSD 1.1) and clock-jump moves a replica's
                # wall clock, and with it the sim's price, by up to a day: a failover drill
                # must not fail on price_tolerance, so the venue fills at the signal's price.
                "HAEXEC_PAPER_PRICES": "signal",
                "HAEXEC_RISK_MAX_OPEN_POSITIONS": "100000000",
                "HAEXEC_LOG_LEVEL": "INFO",
                "HAEXEC_STATE_DIR": str(self.workdir / "state"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self._env_extra)
        return env

    def wait_ready(self, r: Replica, timeout_s: float = 40.0) -> None:
        ok = wait_until(lambda: not r.alive() or r.ready(), timeout_s, 0.05)
        if not r.alive():
            raise DrillError(f"{r.instance_id} exited while starting: {r.log_tail()}")
        if not ok:
            raise DrillError(f"{r.instance_id} not ready after {timeout_s:g}s: {r.log_tail()}")

    def wait_subscribed(self, timeout_s: float = 20.0) -> bool:
        def subscribed() -> bool:
            try:
                numsub = dict(self.ctl.pubsub_numsub(self.events))
            except redis.RedisError:
                return False
            return int(numsub.get(self.events, 0)) >= sum(r.alive() for r in self.replicas)

        return wait_until(subscribed, timeout_s, 0.05) is not None

    # ---- looking ----

    @property
    def ctl(self) -> redis.Redis:
        assert self._ctl is not None
        return self._ctl

    def db(self) -> psycopg.Connection:
        """The drill's own connection, straight to the server (never through a proxy)."""
        if self._db is None or self._db.closed or self._db.broken:
            self._db = psycopg.connect(libpq_url(self.servers.database_url), autocommit=True, connect_timeout=3)
        return self._db

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A read that survives the drill's own DB restarts (one retry on a fresh connection)."""
        for attempt in (1, 2):
            try:
                return self.db().execute(sql, params).fetchall()
            except psycopg.OperationalError:
                with contextlib.suppress(Exception):
                    if self._db is not None:
                        self._db.close()
                self._db = None
                if attempt == 2:
                    raise
        return []

    def record(self) -> Record | None:
        try:
            rows = self.query(
                "SELECT epoch, instance_id, extract(epoch from acquired_at), released_at IS NOT NULL "
                "FROM leader_record WHERE cluster = %s",
                (self.cluster,),
            )
        except psycopg.Error:
            return None
        if not rows:
            return Record(0, None, None, False)
        e, inst, acq, rel = rows[0]
        return Record(int(e), inst, float(acq) if acq is not None else None, bool(rel))

    def key_state(self) -> tuple[str | None, int | None, float]:
        """(holder value, PTTL ms, wall time the key expires at the latest) or Nones."""
        try:
            pipe = self.ctl.pipeline(transaction=False)
            pipe.pttl(self.key)
            pipe.get(self.key)
            sent = time.time()
            pttl, value = pipe.execute()
        except redis.RedisError:
            return None, None, 0.0
        pttl = int(pttl)
        return value, (pttl if pttl >= 0 else None), sent + max(pttl, 0) / 1000.0

    def leader(self, timeout_s: float | None = None) -> Replica | None:
        """The one replica answering 200 on /leader (None if not exactly one in time)."""

        def one() -> Replica | None:
            found = [r for r in self.replicas if r.is_leader()]
            return found[0] if len(found) == 1 else None

        return wait_until(one, timeout_s if timeout_s is not None else 10 * self.lease_ms / 1000, 0.02)

    def by_name(self, name: str | None) -> Replica | None:
        return next((r for r in self.replicas if r.instance_id == name), None)

    def wait_new_epoch(self, above: int, timeout_s: float) -> Record | None:
        def moved() -> Record | None:
            rec = self.record()
            return rec if rec is not None and rec.epoch > above and rec.acquired_at is not None else None

        return wait_until(moved, timeout_s, 0.005)

    # ---- faults on servers and proxies ----

    def set_proxy(self, name: str, mode: str, latency_ms: float = 0.0) -> None:
        assert self.proxies is not None
        try:
            self.proxies.set_mode(name, mode, latency_ms)
        except ProxyError as e:
            raise DrillError(f"proxy {name}: {e}") from None

    def heal_all(self) -> None:
        """Every proxy to pass, every paused replica continued, every clock back to true time."""
        for r in self.replicas:
            with contextlib.suppress(DrillError):
                self.set_proxy(r.redis_proxy, "pass")
                self.set_proxy(r.db_proxy, "pass")
            if r.paused:
                r.send(signal.SIGCONT)
            if r.faketime_file is not None:
                r.faketime_file.write_text("+0\n")

    def ensure_faked(self) -> bool:
        """Put the faked replica under libfaketime if it is not yet (a graceful restart).
        True when it was restarted just now."""
        r = self.faked
        if r is None or r.under_faketime:
            return False
        r.env.update(self._faketime_env)
        r.stop(timeout_s=10.0)
        r.start()
        r.under_faketime = True
        self.wait_ready(r)
        self.wait_subscribed()
        return True

    def set_clock_offset(self, r: Replica, seconds: float) -> None:
        if r.faketime_file is None:
            raise DrillError(f"{r.instance_id} does not run under libfaketime")
        tmp = r.faketime_file.with_suffix(".tmp")
        tmp.write_text(f"{seconds:+.0f}\n")
        os.replace(tmp, r.faketime_file)

    # ---- teardown ----

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for r in self.replicas:
            if r.alive():
                r.send(signal.SIGCONT)
                r.send(signal.SIGTERM)
        for r in self.replicas:
            try:
                r.stop(timeout_s=10.0)
            except Exception as e:
                log(f"stopping {r.instance_id} failed: {e}")
        if self.proxies is not None:
            with contextlib.suppress(Exception):
                self.proxies.close()
        for conn in (self._db,):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        if self._ctl is not None:
            with contextlib.suppress(Exception):
                self._ctl.close()
        self._forget_cluster()
        self.servers.stop()
        if self.keep:
            log(f"kept {self.workdir} (replica logs in {self.logs})")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _forget_cluster(self) -> None:
        """On servers that outlive the drill, leave no keys behind (rows stay as evidence)."""
        if self.servers.owns_redis or not self.servers.redis_url:
            return
        try:
            with redis.Redis.from_url(self.servers.redis_url, socket_timeout=2) as client:
                keys = list(client.scan_iter(match=f"haexec:{self.cluster}:*", count=100))
                if keys:
                    client.delete(*keys)
        except redis.RedisError as e:
            log(f"could not remove cluster {self.cluster}'s keys: {e}")
