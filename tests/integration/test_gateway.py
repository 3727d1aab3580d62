"""The MT5 gateway as a real process (`python -m haexec gateway`, the fake MetaTrader5 module on
its PYTHONPATH, the suite's PostgreSQL): start-up, the token, the promise, the journal, a hung
terminal, a call queued under an old epoch, bad input, and the promise across kill -9.

Every wait is on a condition with a deadline."""

from __future__ import annotations

import shutil
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway_support import (
    PASSWORD,
    TOKEN,
    GatewayProcess,
    fence,
    grant,
    launch,
    send_body,
    start_gateway,
    tag,
)
from tests.support import free_port, wait_for

Start = Callable[..., GatewayProcess]


@pytest.fixture
def gateways(tmp_path: Path, database_url: str, cluster: str) -> Iterator[Start]:
    started: list[GatewayProcess] = []

    def _start(**kw: Any) -> GatewayProcess:
        gw = start_gateway(tmp_path, database_url, cluster, **kw)
        started.append(gw)
        return gw

    yield _start
    for gw in started:
        gw.control.path.unlink(missing_ok=True)
        if gw.alive():
            try:
                gw.control("release")  # a hung fake call must not delay the stop
            except (OSError, AssertionError):
                pass
            gw.kill(signal.SIGKILL)


def run_gateway(tmp_path: Path, env_changes: dict[str, str | None], database_url: str, cluster: str) -> Any:
    """Run a gateway that is expected to exit; its exit status and output."""
    from tests.gateway_support import gateway_env

    env = gateway_env(database_url, cluster, tmp_path / "state", free_port(), tmp_path / "unused.sock")
    for k, v in env_changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    log = tmp_path / f"exit-{len(list(tmp_path.glob('exit-*')))}.log"
    proc = launch(env, log)
    code = proc.wait(timeout=60)
    return code, log.read_text()


# ---- start-up ----


def test_start_up_waits_for_the_terminal_then_serves(gateways: Start) -> None:
    gw = gateways(FAKE_MT5_INIT_FAILURES="2")
    wait_for(lambda: gw.health()[0] == 200, 10, "a healthy gateway")
    state = gw.control.state()
    assert state["calls"]["initialize"] == 3 and state["initialized"]
    assert gw.log().count("MT5 terminal not ready") == 2
    assert "gateway ready" in gw.log()


def test_start_up_gives_up_on_the_terminal_with_one_line_and_no_password(
    tmp_path: Path, database_url: str, cluster: str
) -> None:
    wrong = "wr0ng-" + PASSWORD
    code, out = run_gateway(
        tmp_path, {"HAEXEC_MT5_PASSWORD": wrong, "HAEXEC_STARTUP_TIMEOUT_S": "1"}, database_url, cluster
    )
    assert code == 1, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("haexec gateway: MT5 terminal not ready after 1s") and "Authorization failed" in last
    assert wrong not in out and PASSWORD not in out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"HAEXEC_GATEWAY_TOKEN": None}, "HAEXEC_GATEWAY_TOKEN"),
        ({"HAEXEC_GATEWAY_TOKEN": "   "}, "HAEXEC_GATEWAY_TOKEN"),
        ({"HAEXEC_DATABASE_URL": None}, "HAEXEC_DATABASE_URL"),
        ({"HAEXEC_GATEWAY_HTTP": "0.0.0.0:0"}, "HAEXEC_GATEWAY_HTTP"),  # not loopback, no TLS
        ({"HAEXEC_GATEWAY_TLS_CERT": "/nonexistent.pem"}, "HAEXEC_GATEWAY_TLS_KEY"),
        ({"HAEXEC_GATEWAY_DEADLINE_MS": "soon"}, "HAEXEC_GATEWAY_DEADLINE_MS"),
        ({"HAEXEC_GATEWAY_ALLOW_PLAINTEXT": "maybe"}, "HAEXEC_GATEWAY_ALLOW_PLAINTEXT"),
    ],
)
def test_bad_settings_exit_2_naming_the_variable(
    tmp_path: Path, database_url: str, cluster: str, changes: dict[str, str | None], variable: str
) -> None:
    code, out = run_gateway(tmp_path, changes, database_url, cluster)
    assert code == 2, out
    assert out.strip().splitlines() == [out.strip()] and variable in out and "Traceback" not in out
    assert TOKEN not in out


def test_a_second_gateway_on_the_same_state_directory_is_refused(
    gateways: Start, tmp_path: Path, database_url: str, cluster: str
) -> None:
    gw = gateways()
    code, out = run_gateway(tmp_path, {"HAEXEC_GATEWAY_STATE_DIR": str(gw.state_dir)}, database_url, cluster)
    assert code == 1 and "another gateway holds" in out, out


# ---- the token ----


def test_every_call_needs_the_token_but_health_and_metrics(gateways: Start, cluster: str) -> None:
    gw = gateways()
    for path in ("/v1/info", "/v1/account", "/v1/positions", "/v1/quote?symbol=EURUSD"):
        assert httpx.get(gw.base + path).status_code == 401
        assert httpx.get(gw.base + path, headers={"Authorization": "Bearer nope"}).status_code == 401
    r = httpx.post(gw.base + "/v1/send", json=send_body(cluster, 1, "r1", tag(1)))
    assert r.status_code == 401
    assert gw.control.order_sends() == 0
    assert httpx.get(gw.base + "/health").status_code == 200
    assert httpx.get(gw.base + "/metrics").status_code == 200
    info = gw.get("/v1/info").json()
    assert info["cluster"] == cluster and info["promise"] == {"epoch": 0, "instance": None}


def test_reads_answer_decimal_strings(gateways: Start) -> None:
    gw = gateways()
    account = gw.get("/v1/account").json()["account"]
    assert account == {
        "balance": "10000.0",
        "equity": "10000.0",
        "currency": "USD",
        "daily_pnl": "0",
        "margin": "0.0",
        "free_margin": "10000.0",
    }
    quote = gw.get("/v1/quote", symbol="EURUSD").json()["quote"]
    assert quote["bid"] == "1.1" and quote["spec"]["tick_size"] == "0.00001"
    assert gw.get("/v1/quote", symbol="NOPE").status_code == 404
    assert gw.get("/v1/positions").json() == {"positions": []}


# ---- the promise ----


def test_the_promise_refuses_a_lower_epoch_an_impostor_and_an_epoch_never_granted(
    gateways: Start, database_url: str, cluster: str
) -> None:
    gw = gateways()
    grant(database_url, cluster, 5, "r1")
    r = gw.post("/v1/send", send_body(cluster, 5, "r1", tag(1)))
    assert r.status_code == 200 and r.json()["result"]["outcome"] == "done", r.text
    assert gw.health()[1]["promise"] == {"epoch": 5, "instance": "r1"}

    lower = gw.post("/v1/send", send_body(cluster, 4, "r0", tag(2)))
    assert lower.status_code == 409 and lower.json()["reason"] == "lower_epoch", lower.text
    assert lower.json()["error"] == "epoch superseded" and lower.json()["promise"] == {"epoch": 5, "instance": "r1"}

    impostor = gw.post("/v1/send", send_body(cluster, 5, "r2", tag(3)))
    assert impostor.status_code == 409 and impostor.json()["reason"] == "equal_epoch_other_instance"
    assert "CRITICAL haexec.gateway: REFUSED send: epoch superseded: epoch 5 is promised to r1, not r2" in gw.log()
    assert gw.metric("haexec_gateway_refusals_total", reason="equal_epoch_other_instance") == 1

    never = gw.post("/v1/send", send_body(cluster, 6, "r1", tag(4)))
    assert never.status_code == 409 and never.json()["reason"] == "not_granted", never.text
    assert "leader record has epoch 5, 'r1'" in never.json()["detail"]

    grant(database_url, cluster, 6, "r2")  # a real takeover: r2 now holds epoch 6
    assert gw.post("/v1/send", send_body(cluster, 6, "r2", tag(5))).json()["result"]["outcome"] == "done"
    old = gw.post("/v1/send", send_body(cluster, 5, "r1", tag(6)))
    assert old.status_code == 409 and old.json()["reason"] == "lower_epoch"
    closing = gw.post("/v1/close", {"fence": fence(cluster, 5, "r1"), "ticket": "700001"})
    assert closing.status_code == 409  # every mutating call, not only sends

    assert gw.control.order_sends() == 2  # tags 1 and 5, nothing else reached the terminal
    assert gw.metric("haexec_gateway_promise_epoch") == 6
    assert gw.metric("haexec_gateway_refusals_total", reason="lower_epoch") == 3


def test_a_released_epoch_and_another_cluster_are_refused(gateways: Start, database_url: str, cluster: str) -> None:
    gw = gateways()
    grant(database_url, cluster, 3, "r1", released=True)
    r = gw.post("/v1/send", send_body(cluster, 3, "r1", tag(1)))
    assert r.status_code == 409 and r.json()["reason"] == "not_granted" and "released" in r.json()["detail"]
    other = gw.post("/v1/send", send_body("elsewhere", 3, "r1", tag(1)))
    assert other.status_code == 409 and other.json()["error"] == "wrong cluster"
    assert gw.control.order_sends() == 0 and gw.health()[1]["promise"]["epoch"] == 0


def test_an_unreachable_database_blocks_a_new_epoch_only(
    gateways: Start, database_url: str, cluster: str, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there: the database is "down" from the gateway's side
    down = database_url.rsplit("@", 1)[0] + f"@127.0.0.1:{port}/nowhere"
    gw = gateways(HAEXEC_DATABASE_URL=down)
    r = gw.post("/v1/send", send_body(cluster, 1, "r1", tag(1)))
    assert r.status_code == 503 and r.json()["error"] == "epoch not confirmed", r.text
    assert gw.control.order_sends() == 0
    assert gw.metric("haexec_gateway_refusals_total", reason="unconfirmed") == 1


# ---- the journal ----


def test_a_retried_send_is_answered_from_the_journal_never_resent(
    gateways: Start, database_url: str, cluster: str, tmp_path: Path
) -> None:
    grant(database_url, cluster, 2, "r1")
    gw = gateways()
    first = gw.post("/v1/send", send_body(cluster, 2, "r1", tag(1)))
    assert first.json()["result"]["outcome"] == "done" and first.json()["replayed"] is False
    ticket = first.json()["result"]["ref"]
    again = gw.post("/v1/send", send_body(cluster, 2, "r1", tag(1)))
    assert again.status_code == 200 and again.json()["replayed"] is True
    assert again.json()["result"]["ref"] == ticket and "not sent again" in again.json()["result"]["detail"]
    assert gw.control.order_sends() == 1

    # The same tag as another order (a new leader re-sized it): the tag was executed once; that is the answer.
    resized = gw.post("/v1/send", send_body(cluster, 2, "r1", tag(1), volume="0.20"))
    assert resized.json()["replayed"] is True and resized.json()["result"]["ref"] == ticket
    assert gw.control.order_sends() == 1

    # After a restart (a fresh terminal session, nothing in memory) the journal still answers.
    assert gw.stop() == 0
    gw2 = gateways(state_dir=gw.state_dir)
    later = gw2.post("/v1/send", send_body(cluster, 2, "r1", tag(1)))
    assert later.json()["replayed"] is True and later.json()["result"]["ref"] == ticket
    assert gw2.control.order_sends() == 0
    journal = gw2.get("/v1/journal", tag=tag(1)).json()
    assert journal["state"] == "done" and len(journal["calls"]) == 1
    [call] = journal["calls"]
    assert call["fence"] == fence(cluster, 2, "r1") and call["attempts"][0]["request"]["comment"] == tag(1)
    assert gw2.metric("haexec_gateway_journal_entries") == 1


def test_a_rejected_send_is_replayed_and_another_order_under_the_tag_may_go(
    gateways: Start, database_url: str, cluster: str
) -> None:
    grant(database_url, cluster, 2, "r1")
    gw = gateways()
    gw.control("script", replies=[10019])  # no money
    r = gw.post("/v1/send", send_body(cluster, 2, "r1", tag(1)))
    assert r.json()["result"]["outcome"] == "rejected"
    assert gw.post("/v1/send", send_body(cluster, 2, "r1", tag(1))).json()["replayed"] is True
    assert gw.control.order_sends() == 1
    smaller = gw.post("/v1/send", send_body(cluster, 2, "r1", tag(1), volume="0.01"))
    assert smaller.json()["replayed"] is False and smaller.json()["result"]["outcome"] == "done"
    assert gw.control.order_sends() == 2


# ---- a hung terminal ----


def test_a_hung_send_holds_the_terminal_and_the_tag_is_in_flight(
    gateways: Start, database_url: str, cluster: str
) -> None:
    grant(database_url, cluster, 3, "r1")
    gw = gateways(HAEXEC_GATEWAY_DEADLINE_MS="400")
    gw.control("hang", function="order_send")
    started = time.monotonic()
    r = gw.post("/v1/send", send_body(cluster, 3, "r1", tag(1)))
    assert time.monotonic() - started < 2.0
    assert r.status_code == 200 and r.json()["result"]["outcome"] == "unknown", r.text
    assert gw.control.state()["entered"]

    other = gw.post("/v1/send", send_body(cluster, 3, "r1", tag(2)))
    assert other.status_code == 503 and other.json()["error"] == "terminal busy", other.text
    assert other.json()["in_flight"]["tag"] == tag(1) and tag(1) in other.json()["detail"]
    assert gw.get("/v1/account").status_code == 503
    same = gw.post("/v1/send", send_body(cluster, 3, "r1", tag(1)))
    assert same.status_code == 409 and same.json()["error"] == "tag in flight"
    found = gw.get("/v1/tags", tag=tag(1)).json()
    assert found["state"] == "in_flight" and found["venue"] is None
    wait_for(lambda: gw.health()[0] == 503, 5, "/health to report the hung call")
    assert "busy: send of " + tag(1) in gw.health()[1]["checks"]["terminal"]
    wait_for(lambda: gw.metric("haexec_gateway_terminal_busy_seconds") > 0, 5, "the busy gauge")
    assert gw.control.order_sends() == 1  # nothing queued behind it

    gw.control("release")
    wait_for(lambda: gw.get("/v1/journal", tag=tag(1)).json()["state"] == "done", 5, "the late answer journaled")
    retry = gw.post("/v1/send", send_body(cluster, 3, "r1", tag(1)))
    assert retry.json()["replayed"] is True and retry.json()["result"]["outcome"] == "done"
    wait_for(lambda: gw.health()[0] == 200, 5, "a healthy gateway again")
    assert gw.post("/v1/send", send_body(cluster, 3, "r1", tag(2))).json()["result"]["outcome"] == "done"
    assert gw.control.order_sends() == 2


def test_a_send_queued_under_an_old_epoch_is_refused_at_the_worker(
    gateways: Start, database_url: str, cluster: str
) -> None:
    """r1 (epoch 3) is accepted on arrival but waits for the terminal; meanwhile r2 takes over
    (epoch 4) and is accepted. The check immediately before order_send refuses r1's send."""
    grant(database_url, cluster, 3, "r1")
    gw = gateways(HAEXEC_GATEWAY_DEADLINE_MS="8000", HAEXEC_GATEWAY_PROBE_MS="60000")
    assert gw.post("/v1/send", send_body(cluster, 3, "r1", tag(1))).status_code == 200  # promise: epoch 3 of r1
    gw.control("hang", function="symbol_info")  # the next terminal call holds the worker (within its deadline)
    answers: dict[str, httpx.Response] = {}

    def call(name: str, method: str, path: str, body: Any = None) -> threading.Thread:
        def go() -> None:
            with httpx.Client(base_url=gw.base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=20) as c:
                answers[name] = c.get(path) if method == "GET" else c.post(path, json=body)

        t = threading.Thread(target=go)
        t.start()
        return t

    threads = [call("quote", "GET", "/v1/quote?symbol=EURUSD")]
    wait_for(lambda: gw.control.state()["entered"], 5, "the quote to hold the terminal")
    threads.append(call("old", "POST", "/v1/send", send_body(cluster, 3, "r1", tag(2))))
    wait_for(lambda: gw.metric("haexec_gateway_calls_in_progress") >= 2, 5, "r1's send accepted and waiting")
    grant(database_url, cluster, 4, "r2")
    threads.append(call("new", "POST", "/v1/send", send_body(cluster, 4, "r2", tag(3))))
    wait_for(lambda: gw.metric("haexec_gateway_promise_epoch") == 4, 5, "r2 accepted: the promise at epoch 4")
    gw.control("release")
    for t in threads:
        t.join(20)
    old, new = answers["old"], answers["new"]
    assert old.status_code == 409 and old.json()["reason"] == "lower_epoch", old.text
    assert old.json()["stage"] == "worker"  # it had passed the check on arrival
    assert new.status_code == 200 and new.json()["result"]["outcome"] == "done", new.text
    sent = [r["comment"] for r in gw.control.state()["requests"]]
    assert tag(2) not in sent and sent.count(tag(3)) == 1


def test_a_gateway_killed_during_a_send_never_sends_that_tag_again(
    gateways: Start, database_url: str, cluster: str
) -> None:
    grant(database_url, cluster, 3, "r1")
    gw = gateways(HAEXEC_GATEWAY_DEADLINE_MS="300")
    gw.control("hang", function="order_send")
    assert gw.post("/v1/send", send_body(cluster, 3, "r1", tag(1))).json()["result"]["outcome"] == "unknown"
    gw.kill(signal.SIGKILL)  # the terminal may or may not have taken the order
    gw2 = gateways(state_dir=gw.state_dir)
    assert "1 order_send(s) were on the terminal when the last gateway stopped" in gw2.log()
    r = gw2.post("/v1/send", send_body(cluster, 3, "r1", tag(1)))
    assert r.json()["replayed"] is True and r.json()["result"]["outcome"] == "unknown", r.text
    assert "stopped during order_send" in r.json()["result"]["detail"]
    assert gw2.control.order_sends() == 0
    found = gw2.get("/v1/tags", tag=tag(1)).json()
    assert found["state"] == "unknown" and found["venue"] == []


# ---- bad input ----


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, None),
        (b'{"fence": {}, "fence": {}}', 422, None),
        ({"fence": {"cluster": "c", "epoch": 1, "instance": "r1"}}, 422, "order"),
        ("volume-as-number", 422, "order.volume"),
        ("unknown-field", 422, "order.colour"),
        ("epoch-mismatch", 422, "order.epoch"),
        (b"x" * 70_000, 413, None),
    ],
)
def test_bad_input_is_a_4xx_and_changes_nothing(
    gateways: Start, database_url: str, cluster: str, body: Any, status: int, field: str | None
) -> None:
    grant(database_url, cluster, 2, "r1")
    gw = gateways()
    if body == "volume-as-number":
        body = send_body(cluster, 2, "r1", tag(1), volume=0.1)
    elif body == "unknown-field":
        body = send_body(cluster, 2, "r1", tag(1), colour="red")
    elif body == "epoch-mismatch":
        body = {"fence": fence(cluster, 2, "r1"), "order": send_body(cluster, 1, "r1", tag(1))["order"]}
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    content = body if isinstance(body, bytes) else None
    r = httpx.post(gw.base + "/v1/send", content=content, json=None if content else body, headers=headers)
    assert r.status_code == status, r.text
    if field is not None:
        assert r.json()["field"] == field
    assert gw.control.order_sends() == 0
    assert gw.health()[1]["promise"]["epoch"] == 0 and gw.get("/v1/journal", tag=tag(1)).json()["calls"] == []
    assert "Traceback" not in gw.log()


# ---- TLS ----


def make_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "gw.crt", directory / "gw.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed (it makes the test certificate)")
def test_a_non_loopback_bind_serves_tls(gateways: Start, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    port = free_port()
    gw = gateways(
        port=port,
        scheme="https",
        verify=ssl.create_default_context(cafile=str(cert)),
        HAEXEC_GATEWAY_HTTP=f"0.0.0.0:{port}",
        HAEXEC_GATEWAY_TLS_CERT=str(cert),
        HAEXEC_GATEWAY_TLS_KEY=str(key),
    )
    assert gw.get("/v1/account").status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)  # no plaintext on that port
    assert "PLAINTEXT" not in gw.log()


def test_the_plaintext_opt_out_is_loud(gateways: Start) -> None:
    port = free_port()
    gw = gateways(port=port, HAEXEC_GATEWAY_HTTP=f"0.0.0.0:{port}", HAEXEC_GATEWAY_ALLOW_PLAINTEXT="yes")
    assert gw.get("/v1/account").status_code == 200
    assert "CRITICAL haexec.gateway: PLAINTEXT: the gateway serves 0.0.0.0" in gw.log()
