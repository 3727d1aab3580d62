"""ops/supervisord.conf, shipped unchanged, run by a real supervisord: three replicas of
`haexec run` against the suite's Redis and PostgreSQL, leadership moved by `supervisorctl`."""

from __future__ import annotations

import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO, http_get, wait_for

pytest.importorskip("supervisor", reason="supervisor is not installed: pip install supervisor (part of the test extra)")

pytestmark = pytest.mark.drill

CONF = REPO / "ops" / "supervisord.conf"
REPLICAS = 3
LEASE_MS = 1500
PROGRAM = "haexec"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_prefix() -> str:
    """A prefix P whose ports P01..P03 are free. The config derives each replica's port from
    its process number by string concatenation (supervisor cannot add), so the test picks
    the prefix; 100..327 keeps the ports below the usual ephemeral range."""
    prefixes = list(range(100, 328))
    random.shuffle(prefixes)
    for prefix in prefixes:
        if all(_port_free(prefix * 100 + n) for n in range(1, REPLICAS + 1)):
            return str(prefix)
    raise AssertionError("no free port prefix for the replicas")


@dataclass
class Replica:
    num: int
    port: int

    @property
    def name(self) -> str:
        return f"{PROGRAM}:{PROGRAM}-{self.num}"

    @property
    def instance_id(self) -> str:
        return f"{platform.node()}-{self.num}"

    def get(self, path: str) -> tuple[int, Any]:
        return http_get(f"http://127.0.0.1:{self.port}{path}", timeout_s=1.0)

    def is_leader(self) -> bool:
        return self.get("/leader")[0] == 200


@dataclass
class Supervisor:
    env: dict[str, str]
    workdir: Path
    log_dir: Path
    proc: subprocess.Popen[bytes]
    replicas: list[Replica]
    pids: set[int] = field(default_factory=set)

    def ctl(self, *args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(CONF), *args],
            env=self.env,
            cwd=str(self.workdir),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def states(self) -> dict[str, str]:
        """Process name -> state, from `supervisorctl status` ({} while it cannot connect)."""
        out = self.ctl("status").stdout
        states = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith(f"{PROGRAM}:"):
                states[parts[0]] = parts[1]
        return states

    def record_pids(self) -> None:
        """Remember every replica pid, so teardown can make sure none outlives the test."""
        for line in self.ctl("pid", "all").stdout.split():
            if line.isdigit() and int(line) > 0:
                self.pids.add(int(line))

    def logs(self) -> str:
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            parts.append(f"----- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def leaders(self) -> list[Replica]:
        return [r for r in self.replicas if r.is_leader()]

    def the_leader(self, timeout_s: float = 15.0) -> Replica:
        def one() -> Replica | None:
            found = self.leaders()
            return found[0] if len(found) == 1 else None

        return wait_for(one, timeout_s, "exactly one replica answering 200 on /leader", interval_s=0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pids_of_cluster(cluster: str) -> set[int]:
    """Processes whose environment names this test's cluster (unique per test): the replicas
    supervisord started, even when supervisord itself is gone."""
    marker = f"HAEXEC_CLUSTER={cluster}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.add(int(entry.name))
    return found


def _stop(sup: Supervisor) -> None:
    """SIGTERM supervisord (it stops the replicas the configured way), SIGKILL whatever is
    left: supervisord, then every replica pid seen (supervisor puts each child in a process
    group of its own, so killing supervisord's group would not reach them)."""
    if sys.platform.startswith("linux"):
        sup.pids |= _pids_of_cluster(sup.env["HAEXEC_CLUSTER"])
    if sup.proc.poll() is None:
        try:
            sup.record_pids()
        except (subprocess.SubprocessError, OSError):
            pass
        sup.proc.send_signal(signal.SIGTERM)
        try:
            sup.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            sup.proc.kill()
            sup.proc.wait()
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in sup.pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in sup.pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def supervised(redis_url: str, database_url: str, cluster: str) -> Iterator[Supervisor]:
    haexec_bin = Path(sys.executable).parent / "haexec"
    assert haexec_bin.exists(), f"{haexec_bin} missing: install the project into this venv (pip install -e .)"
    workdir = Path(tempfile.mkdtemp(prefix="haexec-supervisord-"))
    log_dir = workdir / "log"
    run_dir = workdir / "run"
    log_dir.mkdir()
    run_dir.mkdir()
    prefix = free_port_prefix()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAEXEC_")}
    env.update(
        {
            "HAEXEC_BIN": str(haexec_bin),
            "HAEXEC_CLUSTER": cluster,
            "HAEXEC_REDIS_URL": redis_url,
            "HAEXEC_DATABASE_URL": database_url,
            "HAEXEC_HTTP_HOST": "127.0.0.1",
            "HAEXEC_PORT_PREFIX": prefix,
            "HAEXEC_LOG_DIR": str(log_dir),
            "HAEXEC_RUN_DIR": str(run_dir),
            # inherited by the replicas through supervisord's environment
            "HAEXEC_LEASE_MS": str(LEASE_MS),
            "HAEXEC_STARTUP_TIMEOUT_S": "10",
        }
    )
    with open(workdir / "supervisord.out", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(CONF), "-n"],
            env=env,
            cwd=str(workdir),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    replicas = [Replica(n, int(f"{prefix}{n:02d}")) for n in range(1, REPLICAS + 1)]
    sup = Supervisor(env, workdir, log_dir, proc, replicas)
    try:
        yield sup
    finally:
        _stop(sup)
        shutil.rmtree(workdir, ignore_errors=True)


def test_supervisord_runs_three_replicas_and_moves_leadership(supervised: Supervisor) -> None:
    sup = supervised
    names = {r.name for r in sup.replicas}
    try:
        wait_for(
            lambda: (
                sup.proc.poll() is not None
                or (set(sup.states()) == names and set(sup.states().values()) == {"RUNNING"})
            ),
            30,
            "supervisord with three RUNNING replicas",
            interval_s=0.2,
        )
        assert sup.proc.poll() is None, "supervisord exited"
        sup.record_pids()
        for r in sup.replicas:
            wait_for(lambda r=r: r.get("/ready")[0] == 200, 30, f"{r.name} ready on port {r.port}")

        # Exactly one leader; each replica has the instance id and port derived from its number.
        leader = sup.the_leader()
        for r in sup.replicas:
            status, body = r.get("/coordinator/leader")
            assert status == 200, body
            assert body["this_instance"] == r.instance_id
            assert body["db_leader"] == leader.instance_id
            if r is not leader:
                assert r.get("/leader")[0] == 503
        first_epoch = int(leader.get("/leader")[1]["epoch"])

        # Stopping the leader's process (SIGTERM) hands leadership to another replica.
        result = sup.ctl("stop", leader.name)
        assert result.returncode == 0 and "stopped" in result.stdout, result.stdout + result.stderr
        assert sup.states()[leader.name] == "STOPPED"
        assert leader.get("/leader")[0] == 0, "the stopped replica still answers"
        others = [r for r in sup.replicas if r is not leader]

        def new_leader() -> Replica | None:
            found = [r for r in others if r.is_leader()]
            return found[0] if len(found) == 1 else None

        successor = wait_for(new_leader, 10, "another replica to take over", interval_s=0.05)
        assert int(successor.get("/leader")[1]["epoch"]) > first_epoch
        log = (sup.log_dir / f"{PROGRAM}-{leader.num}.log").read_text(errors="replace")
        assert f"released leadership: instance={leader.instance_id}" in log and "released:sigterm" in log

        # Starting it again brings it back as a follower; the successor keeps leading.
        result = sup.ctl("start", leader.name)
        assert result.returncode == 0 and "started" in result.stdout, result.stdout + result.stderr
        sup.record_pids()
        wait_for(lambda: leader.get("/ready")[0] == 200, 30, f"{leader.name} ready again")
        deadline = time.monotonic() + 2 * LEASE_MS / 1000
        while time.monotonic() < deadline:
            assert leader.get("/leader")[0] == 503, "the restarted replica must come back as a follower"
            assert leader.get("/ready")[0] == 200
            assert sup.leaders() == [successor]
            time.sleep(0.1)
        assert set(sup.states().values()) == {"RUNNING"}
    except BaseException:
        print(sup.logs())
        raise
