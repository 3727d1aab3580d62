"""The replica's side (engine/brokers/gateway.py) against a real gateway process: reads,
fenced sends, what each failure means (nothing sent, unknown, superseded), find_by_tag from
the journal first, and the leader's executor trading through it -- a signal executed once,
an unanswered send settled from the journal, a deposed leader refused."""

from __future__ import annotations

import shutil
import signal
import ssl
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from coordinator.fencing import EpochSuperseded
from engine.breaker import CircuitBreaker
from engine.brokers.base import (
    BrokerError,
    BrokerUnavailable,
    OrderRequest,
    Outcome,
    Refusal,
    SymbolUnavailable,
    TagInDoubt,
)
from engine.brokers.gateway import GatewayBroker, TagInFlight
from engine.executor import Executor, ExecutorConfig
from engine.model import OrderType, Side
from engine.risk import RiskLimits
from tests.gateway_support import TOKEN, GatewayProcess, grant, start_gateway, tag
from tests.integration import test_executor
from tests.integration.test_executor import Rig, submit
from tests.support import free_port, wait_for

rig = test_executor.rig  # real Redis and PostgreSQL, a coordinator "leader" not yet started
GATEWAY_DEADLINE_MS = 300
DEADLINE_MS = GATEWAY_DEADLINE_MS + 300


@pytest.fixture
def gateway(tmp_path: Path, database_url: str, cluster: str) -> Iterator[GatewayProcess]:
    gw = start_gateway(tmp_path, database_url, cluster, HAEXEC_GATEWAY_DEADLINE_MS=str(GATEWAY_DEADLINE_MS))
    yield gw
    if gw.alive():
        if gw.proc.poll() is None:
            gw.kill(signal.SIGCONT)
        try:
            gw.control("release")
        except (OSError, AssertionError):
            pass
        gw.kill()
    gw.control.path.unlink(missing_ok=True)


def broker(gw: GatewayProcess, cluster: str, instance: str = "r1", token: str = TOKEN) -> GatewayBroker:
    b = GatewayBroker(gw.base, token, cluster, instance, DEADLINE_MS)
    b.connect()
    return b


def order(the_tag: str, epoch: int, **changes: Any) -> OrderRequest:
    fields: dict[str, Any] = dict(
        tag=the_tag,
        symbol="EURUSD",
        side=Side.BUY,
        type=OrderType.MARKET,
        volume=Decimal("0.10"),
        price=Decimal("1.1001"),
        sl=Decimal("1.0950"),
        tp=None,
        epoch=epoch,
    )
    fields.update(changes)
    return OrderRequest(**fields)


def test_connect_checks_token_cluster_and_deadline(gateway: GatewayProcess, cluster: str) -> None:
    with pytest.raises(BrokerUnavailable, match="refused HAEXEC_GATEWAY_TOKEN"):
        broker(gateway, cluster, token="wrong")
    with pytest.raises(BrokerUnavailable, match=f"serves cluster '{cluster}', not 'other'"):
        broker(gateway, "other")
    short = GatewayBroker(gateway.base, TOKEN, cluster, "r1", GATEWAY_DEADLINE_MS)
    with pytest.raises(BrokerUnavailable, match="HAEXEC_BROKER_DEADLINE_MS"):
        short.connect()
    assert TOKEN not in repr(broker(gateway, cluster))


def test_reads_are_decimal_and_an_unknown_symbol_is_unavailable(gateway: GatewayProcess, cluster: str) -> None:
    b = broker(gateway, cluster)
    account = b.account()
    assert account.balance == Decimal("10000.0") and account.currency == "USD"
    quote = b.quote("EURUSD")
    assert quote.ask == Decimal("1.1001") and quote.spec.tick_size == Decimal("0.00001")
    with pytest.raises(SymbolUnavailable):
        b.quote("NOPE")
    assert b.positions() == [] and b.orders() == []


def test_sends_are_fenced_and_refusals_are_epoch_superseded(
    gateway: GatewayProcess, cluster: str, database_url: str
) -> None:
    grant(database_url, cluster, 4, "r1")
    r1 = broker(gateway, cluster, "r1")
    done = r1.send(order(tag(1), 4))
    assert done.outcome is Outcome.DONE and done.ref and done.price == Decimal("1.1001")
    [position] = r1.positions()
    assert position.tag == tag(1) and position.volume == Decimal("0.1")
    with pytest.raises(EpochSuperseded):
        broker(gateway, cluster, "r2").send(order(tag(2), 4))  # the impostor with r1's epoch
    grant(database_url, cluster, 5, "r2")
    assert broker(gateway, cluster, "r2").send(order(tag(3), 5)).outcome is Outcome.DONE
    with pytest.raises(EpochSuperseded) as err:
        r1.send(order(tag(4), 4))
    assert err.value.epoch == 4 and err.value.current == 5
    with pytest.raises(EpochSuperseded):
        r1.close_position(position.ticket, 4)
    with pytest.raises(BrokerError, match="needs an epoch"):
        r1.close_position(position.ticket)  # never unfenced
    assert gateway.control.order_sends() == 2


def test_modify_close_and_cancel_carry_their_meaning_and_a_superseded_epoch_never_reaches_the_terminal(
    gateway: GatewayProcess, cluster: str, database_url: str
) -> None:
    grant(database_url, cluster, 2, "r1")
    b = broker(gateway, cluster)
    ticket = b.send(order(tag(1), 2)).ref
    assert ticket is not None
    same = b.modify(ticket, Decimal("1.0950"), None, 2)  # the stop the entry carried
    assert (same.outcome, same.detail, same.refusal) == (Outcome.DONE, "no change", None)
    for retcode, meaning in ((10016, Refusal.INVALID_STOPS), (10029, Refusal.FROZEN), (10028, Refusal.FROZEN)):
        gateway.control("script", replies=[retcode])
        r = b.modify(ticket, Decimal("1.0960"), None, 2)
        assert (r.outcome, r.refusal, r.retcode) == (Outcome.REJECTED, meaning, retcode)
    gateway.control("script", replies=[10036])
    assert b.close_position(ticket, 2).refusal is Refusal.GONE
    assert b.modify("424242", Decimal("1.0960"), None, 2).refusal is Refusal.GONE
    assert b.cancel_order("424242", 2).refusal is Refusal.GONE
    sends = gateway.control.order_sends()
    grant(database_url, cluster, 3, "r2")
    assert broker(gateway, cluster, "r2").modify(ticket, Decimal("1.0960"), None, 3).outcome is Outcome.DONE
    for call in (
        lambda: b.modify(ticket, Decimal("1.0970"), None, 2),
        lambda: b.close_position(ticket, 2),
        lambda: b.cancel_order("424242", 2),
    ):
        with pytest.raises(EpochSuperseded):
            call()
    assert gateway.control.order_sends() == sends + 1  # only r2's modify reached the terminal
    assert b.positions()[0].sl == Decimal("1.096")
    r2 = broker(gateway, cluster, "r2")
    assert r2.close_position(ticket, 3).outcome is Outcome.DONE and r2.positions() == []
    ops = [c["op"] for c in b.journal(tag(1))["calls"]]
    assert ops == ["send"]  # the journal by tag holds sends; modify/close rows carry the ticket


def test_a_position_the_server_closed_is_told_by_its_closing_deal(
    gateway: GatewayProcess, cluster: str, database_url: str
) -> None:
    grant(database_url, cluster, 2, "r1")
    b = broker(gateway, cluster)
    ticket = b.send(order(tag(1), 2)).ref
    assert ticket is not None and b.closing_deal(ticket) is None  # still open
    gateway.control("trigger", ticket=int(ticket))  # its stop, at the trade server
    deal = b.closing_deal(ticket)
    assert deal is not None and (deal.ticket, deal.kind, deal.price) == (ticket, "sl", Decimal("1.095"))
    assert deal.pnl < 0 and deal.at.tzinfo is not None
    assert b.closing_deal("424242") is None and b.closing_deal("nonsense") is None


def test_a_partial_close_goes_through_the_fence_and_leaves_the_rest_open(
    gateway: GatewayProcess, cluster: str, database_url: str
) -> None:
    grant(database_url, cluster, 2, "r1")
    b = broker(gateway, cluster)
    ticket = b.send(order(tag(1), 2)).ref
    assert ticket is not None
    part = b.close_partial(ticket, Decimal("0.04"), 2)
    assert part.outcome is Outcome.DONE, part
    [left] = b.positions()
    assert (left.ticket, left.volume, left.sl) == (ticket, Decimal("0.06"), Decimal("1.095"))
    whole = b.close_partial(ticket, Decimal("0.06"), 2)
    assert (whole.outcome, whole.refusal) == (Outcome.REJECTED, Refusal.OTHER) and "must leave some" in whole.detail
    grant(database_url, cluster, 3, "r2")
    assert broker(gateway, cluster, "r2").close_partial(ticket, Decimal("0.01"), 3).outcome is Outcome.DONE
    sends = gateway.control.order_sends()
    with pytest.raises(EpochSuperseded):
        b.close_partial(ticket, Decimal("0.01"), 2)  # the deposed leader
    assert gateway.control.order_sends() == sends and b.positions()[0].volume == Decimal("0.05")


def test_nothing_listening_is_a_broker_error_before_any_send(cluster: str) -> None:
    b = GatewayBroker(f"http://127.0.0.1:{free_port()}", TOKEN, cluster, "r1", DEADLINE_MS)
    with pytest.raises(BrokerError, match="nothing sent|unreachable"):
        b.send(order(tag(1), 1))
    with pytest.raises(BrokerError):
        b.connect()


def test_no_answer_after_sending_is_unknown_and_the_journal_settles_it(
    gateway: GatewayProcess, cluster: str, database_url: str
) -> None:
    grant(database_url, cluster, 3, "r1")
    b = broker(gateway, cluster)
    gateway.kill(signal.SIGSTOP)  # the request reaches the socket; no answer comes
    try:
        started = time.monotonic()
        r = b.send(order(tag(1), 3))
        assert time.monotonic() - started < DEADLINE_MS / 1000 + 0.5
        assert r.outcome is Outcome.UNKNOWN and "no answer from the gateway" in r.detail, r
    finally:
        gateway.kill(signal.SIGCONT)
    # The gateway may or may not get to the stale requests (uvicorn drops one whose client has
    # gone before its body is read). Whatever it did, sending the tag again -- as often as it
    # takes to get past a stale one still on the terminal -- never makes a second order.
    wait_for(lambda: gateway.health()[0] == 200, 10, "the gateway serving again")
    again = wait_for(lambda: (a := b.send(order(tag(1), 3))).outcome is Outcome.DONE and a, 10, "a DONE answer")
    assert gateway.control.order_sends() == 1
    [found] = b.find_by_tag(tag(1))
    assert found.ticket == again.ref


def test_find_by_tag_asks_the_journal_first(
    gateway: GatewayProcess, cluster: str, database_url: str, tmp_path: Path
) -> None:
    grant(database_url, cluster, 3, "r1")
    b = broker(gateway, cluster)
    assert b.find_by_tag(tag(9)) == []
    ticket = b.send(order(tag(1), 3)).ref
    gateway.control("hang", function="order_send")
    assert b.send(order(tag(2), 3)).outcome is Outcome.UNKNOWN  # timed out at the terminal
    with pytest.raises(TagInFlight):
        b.find_by_tag(tag(2))
    gateway.kill()  # dies with tag 2 on the terminal

    restarted = start_gateway(
        tmp_path, database_url, cluster, state_dir=gateway.state_dir, HAEXEC_GATEWAY_DEADLINE_MS="300"
    )
    try:
        b2 = broker(restarted, cluster)
        [done] = b2.find_by_tag(tag(1))  # a fresh terminal session shows nothing: the journal does
        assert done.ticket == ticket and done.extra and done.extra["source"] == "gateway journal"
        with pytest.raises(TagInDoubt, match="will not send it again"):
            b2.find_by_tag(tag(2))
        assert b2.send(order(tag(2), 3)).outcome is Outcome.UNKNOWN  # never resent
        assert restarted.control.order_sends() == 0
    finally:
        restarted.kill()
        restarted.control.path.unlink(missing_ok=True)


# ---- the executor trading through the gateway ----


def executor(rig: Rig, database_url: str, b: GatewayBroker) -> Executor:
    return Executor(
        ExecutorConfig(
            cluster=rig.cluster,
            instance_id="leader",
            broker_deadline_ms=DEADLINE_MS,
            drift_margin_ms=50,
            sweep_ms=100,
        ),
        rig.coordinator,
        rig.pool,
        database_url,
        b,
        CircuitBreaker(broker="gateway"),
        RiskLimits(),
    )


def signal_row(rig: Rig, fp: str) -> tuple[str, str | None, str | None]:
    with rig.pool.connection() as conn:
        got = conn.execute(
            "SELECT status, broker_ref, error FROM signals WHERE cluster = %s AND fingerprint = %s", (rig.cluster, fp)
        ).fetchone()
    assert got is not None
    return got[0], got[1], got[2]


def test_the_executor_trades_through_the_gateway_and_settles_an_unanswered_send_from_the_journal(
    rig: Rig, database_url: str, gateway: GatewayProcess
) -> None:
    rig.coordinator.start()
    wait_for(rig.coordinator.elector.is_leader, 10, "leadership")
    b = GatewayBroker(gateway.base, TOKEN, rig.cluster, "leader", DEADLINE_MS)
    b.connect()
    ex = executor(rig, database_url, b)
    ex.start()
    try:
        fp1, tag1, _ = submit(rig, 1, price="1.1001", sl="1.0950")
        wait_for(lambda: signal_row(rig, fp1)[0] == "executed", 10, "the first signal executed")
        epoch = rig.coordinator.elector.epoch
        assert gateway.health()[1]["promise"] == {"epoch": epoch, "instance": "leader"}

        gateway.control("hang", function="order_send")
        fp2, tag2, _ = submit(rig, 2, price="1.1001", sl="1.0950")
        wait_for(lambda: signal_row(rig, fp2)[0] == "in_doubt", 10, "the unanswered send in doubt")
        gateway.control("release")  # the terminal executes it late
        wait_for(lambda: signal_row(rig, fp2)[0] == "executed", 10, "settled from the journal")
        status, ref, _ = signal_row(rig, fp2)
        [found] = b.find_by_tag(tag2)
        assert ref == found.ticket
        sent = [r["comment"] for r in gateway.control.state()["requests"]]
        assert sent.count(tag1) == 1 and sent.count(tag2) == 1  # each signal is one order
    finally:
        ex.stop(5)
        b.close()


def test_a_send_the_gateway_died_during_is_held_never_re_executed(
    rig: Rig, database_url: str, gateway: GatewayProcess, tmp_path: Path
) -> None:
    rig.coordinator.start()
    wait_for(rig.coordinator.elector.is_leader, 10, "leadership")
    b = GatewayBroker(gateway.base, TOKEN, rig.cluster, "leader", DEADLINE_MS)
    b.connect()
    ex = executor(rig, database_url, b)
    ex.start()
    restarted: GatewayProcess | None = None
    try:
        gateway.control("hang", function="order_send")
        fp, the_tag, _ = submit(rig, 1, price="1.1001", sl="1.0950")
        wait_for(lambda: signal_row(rig, fp)[0] == "in_doubt", 10, "the unanswered send in doubt")
        gateway.kill()  # the terminal may have taken the order: nobody can tell now
        restarted = start_gateway(
            tmp_path,
            database_url,
            rig.cluster,
            state_dir=gateway.state_dir,
            port=gateway.port,
            HAEXEC_GATEWAY_DEADLINE_MS=str(GATEWAY_DEADLINE_MS),
        )
        # Sweeps go on (every 100 ms); the journal says "no answer", so the signal stays held.
        wait_for(
            lambda: restarted.metric("haexec_gateway_calls_total", call="find_by_tag", outcome="ok") >= 3,
            10,
            "three in-doubt resolutions asking the restarted gateway",
        )
        assert signal_row(rig, fp)[0] == "in_doubt"
        assert restarted.control.order_sends() == 0  # never re-executed
    finally:
        ex.stop(5)
        b.close()
        if restarted is not None:
            restarted.kill()
            restarted.control.path.unlink(missing_ok=True)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed (it makes the test certificate)")
def test_the_replica_reaches_a_tls_gateway_with_its_ca(tmp_path: Path, database_url: str, cluster: str) -> None:
    from tests.integration.test_gateway import make_cert

    cert, key = make_cert(tmp_path)
    port = free_port()
    gw = start_gateway(
        tmp_path,
        database_url,
        cluster,
        port=port,
        scheme="https",
        verify=ssl.create_default_context(cafile=str(cert)),
        HAEXEC_GATEWAY_HTTP=f"0.0.0.0:{port}",
        HAEXEC_GATEWAY_TLS_CERT=str(cert),
        HAEXEC_GATEWAY_TLS_KEY=str(key),
        HAEXEC_GATEWAY_DEADLINE_MS=str(GATEWAY_DEADLINE_MS),
    )
    try:
        grant(database_url, cluster, 1, "r1")
        b = GatewayBroker(f"https://127.0.0.1:{port}", TOKEN, cluster, "r1", DEADLINE_MS, ca_file=str(cert))
        b.connect()
        assert b.send(order(tag(1), 1)).outcome is Outcome.DONE
        untrusting = GatewayBroker(f"https://127.0.0.1:{port}", TOKEN, cluster, "r1", DEADLINE_MS)
        with pytest.raises(BrokerError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            untrusting.send(order(tag(2), 1))  # an unknown certificate: nothing sent
        assert gw.control.order_sends() == 1
    finally:
        gw.kill()
        gw.control.path.unlink(missing_ok=True)
