"""The MT5 gateway as a real process in tests: `python -m haexec gateway` with the fake
`MetaTrader5` module on its path (PYTHONPATH=tests/fakes) and the fake's control socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from db.urls import libpq_url
from tests.support import REPO, free_port, wait_for, wait_stopped

FAKES = REPO / "tests" / "fakes"
TOKEN = "gw-test-token-0123456789"
# The fake terminal's account (tests/fakes/MetaTrader5.py)
LOGIN, PASSWORD, SERVER = "5012345", "s3cret-Pa55", "FakeBroker-Demo"
TAG_PREFIX = "HX"


def tag(n: int | str) -> str:
    """A tag as the engine makes them: HX + 24 base32 characters."""
    return (TAG_PREFIX + str(n).upper().rjust(24, "A"))[:26]


class FakeControl:
    """Drives the fake terminal inside the gateway process (see MetaTrader5._control)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, op: str, **fields: Any) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5.0)
            s.connect(str(self.path))
            s.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        answer = json.loads(data)
        if not answer["ok"]:
            raise AssertionError(f"fake control {op}: {answer['error']}")
        return answer["value"]

    def state(self) -> dict[str, Any]:
        return self("state")

    def order_sends(self) -> int:
        return int(self.state()["calls"].get("order_send", 0))


@dataclass
class GatewayProcess:
    proc: subprocess.Popen[bytes]
    port: int
    state_dir: Path
    log_path: Path
    env: dict[str, str]
    scheme: str = "http"
    verify: Any = True
    _client: httpx.Client | None = field(default=None, repr=False)

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def control(self) -> FakeControl:
        return FakeControl(Path(self.env["FAKE_MT5_CONTROL"]))

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                base_url=self.base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10.0, verify=self.verify
            )
        return self._client

    def get(self, path: str, **params: str) -> httpx.Response:
        return self.client.get(path, params=params)

    def post(self, path: str, body: Any) -> httpx.Response:
        return self.client.post(path, json=body)

    def health(self) -> tuple[int, Any]:
        try:
            r = httpx.get(self.base + "/health", timeout=2.0, verify=self.verify)
        except httpx.HTTPError:
            return 0, None
        return r.status_code, r.json()

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.base + "/metrics", timeout=2.0, verify=self.verify).text
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self.proc.wait(timeout=15)
            elif sig == signal.SIGSTOP:
                wait_stopped(self.proc.pid)

    def stop(self) -> int:
        """SIGTERM and wait; the exit status."""
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
        return self.proc.wait(timeout=15)


def gateway_env(
    database_url: str, cluster: str, state_dir: Path, port: int, control: Path, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HAEXEC_", "FAKE_MT5_"))}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(FAKES), str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "FAKE_MT5_CONTROL": str(control),
            "HAEXEC_CLUSTER": cluster,
            "HAEXEC_DATABASE_URL": database_url,
            "HAEXEC_GATEWAY_TOKEN": TOKEN,
            "HAEXEC_GATEWAY_HTTP": f"127.0.0.1:{port}",
            "HAEXEC_GATEWAY_STATE_DIR": str(state_dir),
            "HAEXEC_GATEWAY_PROBE_MS": "200",
            "HAEXEC_MT5_LOGIN": LOGIN,
            "HAEXEC_MT5_PASSWORD": PASSWORD,
            "HAEXEC_MT5_SERVER": SERVER,
            "HAEXEC_STARTUP_TIMEOUT_S": "10",
        }
    )
    env.update(extra)
    return env


def launch(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "haexec", "gateway"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(REPO),
        )


def start_gateway(
    workdir: Path,
    database_url: str,
    cluster: str,
    state_dir: Path | None = None,
    port: int | None = None,
    wait: bool = True,
    scheme: str = "http",
    verify: Any = True,
    **extra: str,
) -> GatewayProcess:
    """Start a gateway; with `wait`, until /health answers (or fail with its log)."""
    port = port or free_port()
    state_dir = state_dir or workdir / "state"
    # Unix socket paths are short (108 bytes): keep the control socket in /tmp.
    control = Path("/tmp") / f"haexec-fake-mt5-{uuid.uuid4().hex[:12]}.sock"
    env = gateway_env(database_url, cluster, state_dir, port, control, **extra)
    log_path = workdir / f"gateway-{port}.log"
    gw = GatewayProcess(launch(env, log_path), port, state_dir, log_path, env, scheme, verify)
    if wait:
        wait_for(lambda: not gw.alive() or gw.health()[0] in (200, 503), 20, "the gateway to serve /health")
        assert gw.alive(), f"gateway exited {gw.proc.returncode}:\n{gw.log()}"
    return gw


def grant(database_url: str, cluster: str, epoch: int, instance: str, released: bool = False) -> None:
    """Make the leader record say what a real election would have: `instance` holds `epoch`."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO leader_record (cluster, epoch, instance_id, acquired_at, heartbeat_at, released_at) "
            "VALUES (%s, %s, %s, now(), now(), CASE WHEN %s THEN now() END) "
            "ON CONFLICT (cluster) DO UPDATE SET epoch = EXCLUDED.epoch, instance_id = EXCLUDED.instance_id, "
            "heartbeat_at = now(), released_at = EXCLUDED.released_at",
            (cluster, epoch, instance, released),
        )


def fence(cluster: str, epoch: int, instance: str) -> dict[str, Any]:
    return {"cluster": cluster, "epoch": epoch, "instance": instance}


def order(the_tag: str, epoch: int, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "tag": the_tag,
        "symbol": "EURUSD",
        "side": "buy",
        "type": "market",
        "volume": "0.10",
        "price": "1.1001",
        "sl": "1.0950",
        "tp": None,
        "epoch": epoch,
        "expires_at": None,
        "max_loss": None,
    }
    body.update(changes)
    return body


def send_body(cluster: str, epoch: int, instance: str, the_tag: str, **changes: Any) -> dict[str, Any]:
    return {"fence": fence(cluster, epoch, instance), "order": order(the_tag, epoch, **changes)}
