"""What every embedded server shares: finding its binary in a wheel, free ports, whose
process a pid is, waiting with a deadline, and the start/stop life cycle of one server
process (`ServerProcess`), which `RedisServer` and `PostgresServer` implement."""

from __future__ import annotations

import abc
import contextlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
# A server we own that is alive but silent (paused, wedged) is given this long
# before ensure_servers replaces it, so one stuck server cannot hang every caller.
UNRESPONSIVE_GRACE_S = 5.0
# Backends orphaned by a dead postmaster notice within milliseconds and exit;
# anything still there after this is stuck and gets SIGKILL.
ORPHAN_GRACE_S = 5.0

HAVE_PROC = Path("/proc/self/stat").exists()

# Popen objects of servers started by this process. Polling them reaps our own
# zombies, which os.kill(pid, 0) would otherwise report as alive; holding them
# also avoids "subprocess still running" warnings when a server outlives its
# RedisServer object (as ensure_servers intends).
CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class EmbeddedError(Exception):
    """An embedded server could not be located, started or stopped (one-line message)."""


def wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
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


def remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def pid_alive(pid: int) -> bool:
    child = CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        CHILDREN.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if not HAVE_PROC:
        return True
    try:
        proc_stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie (some other process's unreaped child) holds no ports and serves nothing.
    return proc_stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def cmdline_has(pid: int, marker: str) -> bool:
    """Whether ``pid``'s command line contains ``marker`` (true when /proc is missing)."""
    if not HAVE_PROC:
        return True
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def runs_in(pid: int, directory: Path) -> bool:
    """Whether ``pid``'s working directory is ``directory`` (true when /proc is missing).

    Both servers chdir into their data directory, so the cwd identifies which
    instance a process belongs to, even after its parent is gone.
    """
    if not HAVE_PROC:
        return True
    try:
        return os.readlink(f"/proc/{pid}/cwd") == str(directory.resolve())
    except OSError:
        return False


def server_procs(directory: Path, marker: str) -> list[int]:
    """Live processes running in ``directory`` whose command line contains ``marker``."""
    if not HAVE_PROC:
        return []
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        and runs_in(int(entry.name), directory)
        and cmdline_has(int(entry.name), marker)
        and pid_alive(int(entry.name))
    ]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Both servers set SO_REUSEADDR, so a port held only by TIME_WAIT sockets of
        # a previous instance is usable and must not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def log_hint(path: Path) -> str:
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


def package_dir(name: str) -> Path:
    # find_spec locates the package without running its __init__ (see module docstring).
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(
            f"Python package {name!r} is not installed, so no server can run embedded: install the"
            " extra (pip install -c constraints.txt -e '.[embedded]') or set HAEXEC_REDIS_URL and HAEXEC_DATABASE_URL"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def executable(path: Path) -> Path:
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise EmbeddedError(f"server binary not found or not executable: {path}")
    return path


def send_signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# --------------------------------------------------------------------------- redis


class ServerProcess(abc.ABC):
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
