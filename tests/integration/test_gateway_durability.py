"""The promise survives kill -9 right after an acknowledgement.

Each trial: a new leader (epoch k) is granted in the database; a gateway process starts on
the same state directory and must already promise epoch k-1 (the last one acknowledged) and
refuse epoch k-2; a call under epoch k is acknowledged (200) and the gateway is SIGKILLed the
moment the answer is read. The next trial's start is the check.

The short form (10 trials: each kind of acknowledgement, send and close, five times, and the
lower-epoch refusal from the third on) runs with the suite; the long one is
`HAEXEC_GATEWAY_KILL_TRIALS=1000 pytest tests/integration/test_gateway_durability.py`.

What SIGKILL can and cannot show: the kernel keeps a killed process's written pages, so this
proves the order (durable before the answer) and the atomic replacement (never a torn or
missing file), not the fsync itself against power loss, which needs a machine that loses
power (or a dm-flakey device)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from bench.stats import nearest_rank
from tests.gateway_support import fence, grant, send_body, start_gateway, tag

TRIALS = int(os.environ.get("HAEXEC_GATEWAY_KILL_TRIALS", "10"))


def instance(k: int) -> str:
    return f"r{k % 3}"


@pytest.mark.timeout(max(180, TRIALS * 3))
def test_the_promise_survives_kill_9_right_after_an_acknowledgement(
    tmp_path: Path, database_url: str, cluster: str
) -> None:
    state_dir = tmp_path / "state"
    restart_ms: list[float] = []
    for k in range(1, TRIALS + 1):
        grant(database_url, cluster, k, instance(k))
        started = time.monotonic()
        gw = start_gateway(tmp_path, database_url, cluster, state_dir=state_dir)
        restart_ms.append((time.monotonic() - started) * 1000)
        try:
            status, health = gw.health()
            expected = {"epoch": k - 1, "instance": instance(k - 1) if k > 1 else None}
            assert health["promise"] == expected, f"trial {k}: {health}\n{gw.log()}"
            if k > 2:  # the leader before the last one, still sending: refused
                late = gw.post("/v1/send", send_body(cluster, k - 2, instance(k - 2), tag(f"L{k}")))
                assert late.status_code == 409 and late.json()["reason"] == "lower_epoch", f"trial {k}: {late.text}"
            if k % 2:
                ack = gw.post("/v1/send", send_body(cluster, k, instance(k), tag(f"S{k}")))
                assert ack.status_code == 200 and ack.json()["result"]["outcome"] == "done", ack.text
            else:
                ack = gw.post("/v1/close", {"fence": fence(cluster, k, instance(k)), "ticket": "999999"})
                assert ack.status_code == 200 and ack.json()["result"]["outcome"] == "rejected", ack.text
            os.kill(gw.proc.pid, signal.SIGKILL)  # the moment the acknowledgement is read
            gw.proc.wait(timeout=10)
        finally:
            gw.control.path.unlink(missing_ok=True)
            if gw.alive():
                gw.kill()
    final = start_gateway(tmp_path, database_url, cluster, state_dir=state_dir)
    try:
        assert final.health()[1]["promise"] == {"epoch": TRIALS, "instance": instance(TRIALS)}
        journal = final.get("/v1/journal", tag=tag(f"S{TRIALS - (0 if TRIALS % 2 else 1)}")).json()
        assert journal["state"] == "done"  # the journal, too, kept every acknowledged send
    finally:
        final.kill()
        final.control.path.unlink(missing_ok=True)
    print(f"{TRIALS} trials; gateway start to healthy: p50 {nearest_rank(restart_ms, 50):.0f} ms")
