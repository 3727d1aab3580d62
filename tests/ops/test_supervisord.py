"""Process supervision: ops/supervisord.conf, shipped unchanged, run by a real supervisord
(three replicas of `haexec run` and the paper venue against the suite's Redis and
PostgreSQL, leadership moved by `supervisorctl`), and the systemd units in ops/systemd."""

from __future__ import annotations

import os
import platform
import random
import re
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

CONF = REPO / "ops" / "supervisord.conf"
SYSTEMD = REPO / "ops" / "systemd"
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

    def states(self, prefix: str = f"{PROGRAM}:") -> dict[str, str]:
        """Process name -> state, from `supervisorctl status` ({} while it cannot connect)."""
        out = self.ctl("status").stdout
        states = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith(prefix):
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


def needs_supervisor() -> None:
    pytest.importorskip(
        "supervisor", reason="supervisor is not installed: pip install supervisor (part of the test extra)"
    )


@pytest.fixture
def supervised(redis_url: str, database_url: str, cluster: str) -> Iterator[Supervisor]:
    needs_supervisor()
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


@pytest.mark.drill
def test_supervisord_runs_three_replicas_and_moves_leadership(supervised: Supervisor) -> None:
    sup = supervised
    names = {r.name for r in sup.replicas}
    try:
        # Polled over HTTP first: a `supervisorctl status` is an interpreter start, and back to
        # back they take a core from the replicas starting up on a 2-core machine.
        wait_for(
            lambda: sup.proc.poll() is not None or all(r.get("/ready")[0] == 200 for r in sup.replicas),
            60,
            "three replicas ready (or supervisord gone)",
            interval_s=0.1,
        )
        wait_for(
            lambda: sup.proc.poll() is not None or sup.states() == dict.fromkeys(names, "RUNNING"),
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
        assert leader.instance_id in log and "released:sigterm" in log, "its log file shows the release"

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

        # the paper venue runs beside them, marking the cluster's paper account
        assert sup.states(VENUE) == {VENUE: "RUNNING"}
        wait_for(lambda: venue_marked(sup.env["HAEXEC_DATABASE_URL"], sup.env["HAEXEC_CLUSTER"]), 30, "venue marks")
    except BaseException:
        print(sup.logs())
        raise


VENUE = f"{PROGRAM}-venue"


def venue_marked(database_url: str, cluster: str) -> bool:
    import psycopg

    from db.urls import libpq_url

    with psycopg.connect(libpq_url(database_url)) as conn:
        row = conn.execute(
            "SELECT venue FROM paper_marks WHERE cluster = %s AND marked_at > clock_timestamp() - interval '2 s'",
            (cluster,),
        ).fetchone()
    return bool(row and row[0] == f"{platform.node()}-venue")


# ---- the configuration, without running it ----


def test_supervisord_conf_derives_id_port_and_logs_from_the_process_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    needs_supervisor()
    from supervisor.datatypes import RestartUnconditionally
    from supervisor.options import ServerOptions

    workdir = Path(tempfile.mkdtemp(prefix="haexec-supervisord-conf-"))
    try:
        values = {
            "HAEXEC_BIN": "/opt/haexec/.venv/bin/haexec",
            "HAEXEC_CLUSTER": "prod",
            "HAEXEC_REDIS_URL": "redis://redis.internal:6379/0",
            "HAEXEC_DATABASE_URL": "postgresql://haexec:p%40ss@pg.internal/haexec",  # % survives
            "HAEXEC_HTTP_HOST": "10.0.0.5",
            "HAEXEC_PORT_PREFIX": "87",
            "HAEXEC_LOG_DIR": str(workdir),
            "HAEXEC_RUN_DIR": str(workdir),
        }
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        options = ServerOptions()
        options.realize(args=["-c", str(CONF)])
        groups = {g.name: g for g in options.process_group_configs}
        assert set(groups) == {PROGRAM, VENUE}
        [venue] = groups[VENUE].process_configs
        assert venue.name == VENUE and venue.command == "/opt/haexec/.venv/bin/haexec venue"
        assert venue.environment == {
            "HAEXEC_INSTANCE_ID": f"{platform.node()}-venue",
            "HAEXEC_CLUSTER": "prod",
            "HAEXEC_REDIS_URL": values["HAEXEC_REDIS_URL"],
            "HAEXEC_DATABASE_URL": values["HAEXEC_DATABASE_URL"],
        }
        assert venue.stopsignal == signal.SIGTERM and venue.autorestart is RestartUnconditionally
        assert venue.stdout_logfile == str(workdir / "haexec-venue.log")
        procs = sorted(groups[PROGRAM].process_configs, key=lambda p: p.name)
        assert [p.name for p in procs] == ["haexec-1", "haexec-2", "haexec-3"]
        for n, p in enumerate(procs, start=1):
            assert p.command == "/opt/haexec/.venv/bin/haexec run"
            assert p.environment == {
                "HAEXEC_INSTANCE_ID": f"{platform.node()}-{n}",
                "HAEXEC_HTTP": f"10.0.0.5:870{n}",
                "HAEXEC_CLUSTER": "prod",
                "HAEXEC_REDIS_URL": values["HAEXEC_REDIS_URL"],
                "HAEXEC_DATABASE_URL": values["HAEXEC_DATABASE_URL"],
            }
            assert p.stopsignal == signal.SIGTERM
            assert p.stopwaitsecs > 3  # above the default lease
            assert p.autorestart is RestartUnconditionally and p.startsecs > 0
            assert p.redirect_stderr and p.stdout_logfile == str(workdir / f"haexec-{n}.log")
        assert options.server_configs[0]["file"] == str(workdir / "supervisor.sock")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def unit_directives(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of a systemd unit file, in order (keys may repeat)."""
    out = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def documented_settings() -> set[str]:
    return set(re.findall(r"`(HAEXEC_[A-Z_]+)`", (REPO / "README.md").read_text()))


def env_file_keys(path: Path) -> set[str]:
    keys = set()
    for line in path.read_text().splitlines():
        line = line.strip().lstrip("#").strip()
        m = re.match(r"(HAEXEC_[A-Z_]+)=", line)
        if m:
            keys.add(m.group(1))
    return keys


def test_systemd_unit_runs_one_named_replica_with_its_env_files_and_hardening() -> None:
    unit = unit_directives(SYSTEMD / "haexec@.service")
    service = {}
    for section, key, value in unit:
        if section == "Service":
            service.setdefault(key, []).append(value)
    assert service["ExecStart"] == ["/opt/haexec/.venv/bin/haexec run --instance-id %i"]
    assert service["EnvironmentFile"] == ["/etc/haexec/common.env", "/etc/haexec/%i.env"]
    assert service["Restart"] == ["on-failure"] and service["RestartSec"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert int(service["TimeoutStopSec"][0]) > 3  # above the default lease
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "DynamicUser": "yes",
    }.items():
        assert service[key] == [value], key
    assert service["ReadWritePaths"] and service["StateDirectory"]

    documented = documented_settings()
    for example in ("common.env.example", "haexec.env.example"):
        keys = env_file_keys(SYSTEMD / example)
        assert keys and keys <= documented, f"{example}: undocumented {keys - documented}"
    assert "HAEXEC_INSTANCE_ID" not in env_file_keys(SYSTEMD / "haexec.env.example")


def test_systemd_venue_unit_runs_the_venue_with_the_shared_env_and_hardening() -> None:
    unit = unit_directives(SYSTEMD / "haexec-venue.service")
    service: dict[str, list[str]] = {}
    for section, key, value in unit:
        if section == "Service":
            service.setdefault(key, []).append(value)
    assert service["ExecStart"] == ["/opt/haexec/.venv/bin/haexec venue --instance-id %H-venue"]
    assert service["EnvironmentFile"] == ["/etc/haexec/common.env"]
    assert service["Restart"] == ["on-failure"] and service["RestartPreventExitStatus"] == ["2"]
    assert service["KillSignal"] == ["SIGTERM"]
    replica = {k: v for s, k, v in unit_directives(SYSTEMD / "haexec@.service") if s == "Service"}
    hardening = ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "DynamicUser", "SystemCallFilter")
    for key in hardening:
        assert service[key][-1] == replica[key], key  # hardened as the replicas are


def test_systemd_venue_unit_passes_systemd_analyze_verify() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    haexec_bin = Path(sys.executable).parent / "haexec"
    workdir = Path(tempfile.mkdtemp(prefix="haexec-systemd-"))
    try:
        text = (SYSTEMD / "haexec-venue.service").read_text()
        unit = workdir / "haexec-venue.service"
        unit.write_text(text.replace("/opt/haexec/.venv/bin/haexec", str(haexec_bin)))
        result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "haexec-venue" not in output, output
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_systemd_unit_passes_systemd_analyze_verify() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    haexec_bin = Path(sys.executable).parent / "haexec"
    workdir = Path(tempfile.mkdtemp(prefix="haexec-systemd-"))
    try:
        # /opt/haexec does not exist here: point ExecStart at this venv's executable, which
        # verify requires to exist, and verify an instance of the template.
        text = (SYSTEMD / "haexec@.service").read_text()
        (workdir / "haexec@.service").write_text(text.replace("/opt/haexec/.venv/bin/haexec", str(haexec_bin)))
        instance = workdir / "haexec@replica-1.service"
        instance.symlink_to("haexec@.service")
        result = subprocess.run([analyze, "verify", str(instance)], capture_output=True, text=True, timeout=60)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        # Unknown or invalid directives are only warnings: none may name our unit.
        assert "haexec@" not in output, output

        if "--offline" in subprocess.run([analyze, "--help"], capture_output=True, text=True).stdout:
            result = subprocess.run(
                [analyze, "security", "--offline=yes", "--threshold=20", "--no-pager", str(instance)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, f"exposure above 2.0:\n{result.stdout}{result.stderr}"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
