"""Deployment of the MT5 gateway: ops/supervisord-gateway.conf run by a real supervisord (the
gateway with the fake terminal, stopped by supervisorctl with SIGTERM), and the systemd unit."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway_support import gateway_env
from tests.ops.test_supervisord import documented_settings, env_file_keys, needs_supervisor, unit_directives
from tests.support import REPO, free_port, http_get, wait_for

CONF = REPO / "ops" / "supervisord-gateway.conf"
UNIT = REPO / "ops" / "systemd" / "haexec-gateway.service"
ENV_EXAMPLE = REPO / "ops" / "systemd" / "gateway.env.example"


def ctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(CONF), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="haexec-gw-supervisord-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.drill
def test_supervisord_runs_the_gateway_and_stops_it_with_sigterm(workdir: Path, database_url: str, cluster: str) -> None:
    needs_supervisor()
    port = free_port()
    (workdir / "log").mkdir()
    (workdir / "run").mkdir()
    control = Path("/tmp") / f"haexec-fake-mt5-{uuid.uuid4().hex[:12]}.sock"
    env = gateway_env(database_url, cluster, workdir / "state", port, control)
    env.update(
        {
            "HAEXEC_GATEWAY_PYTHON": sys.executable,  # here the fake MetaTrader5 is importable
            "HAEXEC_LOG_DIR": str(workdir / "log"),
            "HAEXEC_RUN_DIR": str(workdir / "run"),
        }
    )
    sup = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(CONF), "-n"],
        env=env,
        cwd=str(REPO),  # where `-m haexec` is found (an installed haexec needs no cwd)
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log = workdir / "log" / "haexec-gateway.log"
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/health")[0] == 200, 30, "the gateway healthy")
        wait_for(lambda: "RUNNING" in ctl(env, "status", "haexec-gateway").stdout, 30, "RUNNING in supervisord")
        result = ctl(env, "stop", "haexec-gateway")
        assert "stopped" in result.stdout, result.stdout + result.stderr
        text = log.read_text()
        assert "gateway ready" in text and "gateway stopping" in text
        assert "STOPPED" in ctl(env, "status", "haexec-gateway").stdout
        assert "exit status 0" in (workdir / "log" / "supervisord-gateway.log").read_text()
    finally:
        sup.send_signal(signal.SIGTERM)
        try:
            sup.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(sup.pid, signal.SIGKILL)
            sup.wait()
        control.unlink(missing_ok=True)


def test_supervisord_gateway_conf_runs_one_gateway_with_sigterm(monkeypatch: pytest.MonkeyPatch, workdir: Path) -> None:
    needs_supervisor()
    from supervisor.options import ServerOptions

    for name, value in {
        "HAEXEC_GATEWAY_PYTHON": "wine /home/haexec/.wine/drive_c/Python311/python.exe",
        "HAEXEC_LOG_DIR": str(workdir),
        "HAEXEC_RUN_DIR": str(workdir),
    }.items():
        monkeypatch.setenv(name, value)
    options = ServerOptions()
    options.realize(args=["-c", str(CONF)])
    [group] = options.process_group_configs
    [proc] = group.process_configs
    assert proc.name == "haexec-gateway"
    assert proc.command == "wine /home/haexec/.wine/drive_c/Python311/python.exe -m haexec gateway"
    assert proc.stopsignal == signal.SIGTERM and proc.stopwaitsecs >= 10
    assert proc.startsecs > 0 and proc.redirect_stderr


def test_systemd_gateway_unit_restarts_on_failure_but_not_on_bad_configuration() -> None:
    service: dict[str, list[str]] = {}
    for section, key, value in unit_directives(UNIT):
        if section == "Service":
            service.setdefault(key, []).append(value)
    assert service["ExecStart"] == ["/usr/bin/env $HAEXEC_GATEWAY_PYTHON -m haexec gateway"]
    assert service["EnvironmentFile"] == ["/etc/haexec/gateway.env"]
    assert service["Restart"] == ["on-failure"] and service["RestartPreventExitStatus"] == ["2"]
    assert service["KillSignal"] == ["SIGTERM"] and int(service["TimeoutStopSec"][0]) >= 10
    assert service["StateDirectory"] == ["haexec-gateway"]
    documented = documented_settings()
    keys = env_file_keys(ENV_EXAMPLE)
    assert keys and keys <= documented, f"gateway.env.example: undocumented {keys - documented}"


def test_systemd_gateway_unit_passes_systemd_analyze_verify(workdir: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    shutil.copy(UNIT, workdir / UNIT.name)
    result = subprocess.run([analyze, "verify", str(workdir / UNIT.name)], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert UNIT.name not in output, output
