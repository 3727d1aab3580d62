"""One real PostgreSQL 16, the binaries shipped in the ``pgserver`` wheel (run as a system
account of its own when started by root: PostgreSQL refuses uid 0)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from common.errors import first_line
from embedded.process import (
    HOST,
    ORPHAN_GRACE_S,
    EmbeddedError,
    ServerProcess,
    cmdline_has,
    executable,
    free_port,
    log_hint,
    package_dir,
    pid_alive,
    port_free,
    remaining,
    send_signal,
    server_procs,
    wait_until,
)

log = logging.getLogger(__name__)

DATABASE = "haexec"
PG_SYSTEM_USER = "haexec-pg"


def pg_binary(name: str) -> Path:
    """A PostgreSQL executable (``initdb``, ``pg_ctl``, ``pg_dump``...) from the pgserver wheel."""
    return executable(package_dir("pgserver") / "pginstall" / "bin" / name)


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


class PostgresServer(ServerProcess):
    """A PostgreSQL cluster owned by the caller; initdb runs into ``workdir`` on first start."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir).absolute()
        self.datadir = self.workdir / "data"
        self.log_path = self.workdir / "pg.log"
        self.port = port if port is not None else free_port()

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
        return pid if pid_alive(pid) and cmdline_has(pid, "postgres") else None

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
                    f"{Path(args[0]).name} timed out after {timeout_s:g}s for {self.datadir}; {log_hint(self.log_path)}"
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
                f"initdb failed (exit {result.returncode}) for {self.datadir}; {log_hint(self.log_path)}"
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
            return not server_procs(self.datadir, "postgres")

        if wait_until(gone, min(ORPHAN_GRACE_S, timeout_s)):
            return
        for pid in server_procs(self.datadir, "postgres"):
            log.warning("killing leftover PostgreSQL process %d in %s", pid, self.datadir)
            send_signal(pid, signal.SIGKILL)
        if not wait_until(gone, remaining(deadline)):
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
            if wait_until(self._answers, timeout_s):
                return
            raise EmbeddedError(
                f"PostgreSQL pid {pid} runs in {self.datadir} but does not accept connections "
                f"on port {self.port}; {log_hint(self.log_path)}"
            )
        user = self._prepare()
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb(user, remaining(deadline))
        self._wait_for_orphans(remaining(deadline))
        # A killed postmaster can linger as a zombie until init reaps it (seconds on
        # this kind of VM, never with some container inits). postgres' own kill(pid, 0)
        # check counts a zombie as alive and would refuse to start. Nothing uses the
        # data dir any more (checked just above), so the lock file is certainly stale.
        with contextlib.suppress(FileNotFoundError):
            (self.datadir / "postmaster.pid").unlink()
        if not port_free(self.port):
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
        wait_s = max(1, math.ceil(remaining(deadline)))
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
                f"{self.port}; {log_hint(self.log_path)}"
            )
        if not wait_until(self._answers, remaining(deadline)):
            raise EmbeddedError(
                f"PostgreSQL in {self.datadir} did not accept connections on port {self.port} "
                f"within {timeout_s:g}s; {log_hint(self.log_path)}"
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
        send_signal(pid, signal.SIGINT)
        if not wait_until(lambda: not pid_alive(pid), timeout_s):
            raise EmbeddedError(
                f"PostgreSQL pid {pid} did not shut down within {timeout_s:g}s; {log_hint(self.log_path)}"
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
        if not wait_until(lambda: not pid_alive(pid), 10.0):
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
