"""Stop modification at MetaTrader 5, answered by meaning: one TRADE_ACTION_SLTP request per
modify, every venue answer the position manager acts on (no change, invalid stops, frozen or
locked, gone, anything else, no answer), the netting add-on that clears a stop and the modify
that restores it, and a hung SLTP call. Against the fake `MetaTrader5` module; the only
waits are the broker's own deadlines and events the fake sets."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from engine.brokers.base import OrderRequest, Outcome, Refusal
from engine.brokers.mt5 import MT5Broker, TerminalBusy
from engine.model import OrderType, Side
from tests.fakes import MetaTrader5 as fake_mt5
from tests.fakes.MetaTrader5 import FakeTerminal, Reply

MAGIC = 4243
DEADLINE_MS = 1000
MODIFY_DEADLINE_MS = 150
MARGIN_S = 0.3  # scheduling slack on top of a deadline
TAG = "hxMODIFY2GAYTEMZUGQ2DMNZYHE"
NOW = datetime(2026, 3, 4, 15, 30, tzinfo=UTC)


@pytest.fixture
def fake() -> Iterator[FakeTerminal]:
    t = fake_mt5.reset()
    t.now = lambda: NOW.timestamp()
    yield t
    t.release()


@pytest.fixture
def make_broker(fake: FakeTerminal) -> Iterator[Callable[..., MT5Broker]]:
    made: list[MT5Broker] = []

    def _make(**overrides: Any) -> MT5Broker:
        kwargs: dict[str, Any] = dict(
            login=fake.login,
            password=fake.password,
            server=fake.server,
            path=None,
            magic=MAGIC,
            deadline_ms=DEADLINE_MS,
            module=fake_mt5,
            connect_backoff_s=0,
            requote_backoff_s=0,
            modify_deadline_ms=DEADLINE_MS,  # roomy: only the hang test is about the modify's deadline
            utcnow=lambda: NOW,
        )
        kwargs.update(overrides)
        b = MT5Broker(**kwargs)
        b.connect()
        made.append(b)
        return b

    yield _make
    fake.release()
    for b in made:
        b.wait_idle(2.0)
        b.close()


@pytest.fixture
def broker(make_broker: Callable[..., MT5Broker]) -> MT5Broker:
    return make_broker()


def entry(side: Side = Side.BUY, sl: str = "1.09", volume: str = "0.1", tag: str = TAG) -> OrderRequest:
    return OrderRequest(
        tag=tag,
        symbol="EURUSD",
        side=side,
        type=OrderType.MARKET,
        volume=Decimal(volume),
        price=Decimal("1.1"),
        sl=Decimal(sl),
        tp=None,
        epoch=3,
    )


def opened(broker: MT5Broker, side: Side = Side.BUY, sl: str = "1.09") -> str:
    r = broker.send(entry(side, sl))
    assert r.outcome is Outcome.DONE and r.ref, r
    return r.ref


def test_a_modify_is_one_sltp_request_rounded_so_the_stop_never_loosens(fake: FakeTerminal, broker: MT5Broker) -> None:
    long = opened(broker)
    sends = fake.calls["order_send"]
    m = broker.modify(long, Decimal("1.0950001"), Decimal("1.1200049"), 3)
    assert m.outcome is Outcome.DONE and m.refusal is None and m.retcode == 10009
    assert fake.calls["order_send"] == sends + 1  # one atomic request: never cancel-then-replace
    assert fake.requests[-1] == {
        "action": fake_mt5.TRADE_ACTION_SLTP,
        "position": int(long),
        "symbol": "EURUSD",
        "sl": 1.09501,  # up, towards the bid: a long's stop rounds tighter, never looser
        "tp": 1.12,
        "magic": MAGIC,
    }
    short = opened(broker, Side.SELL, sl="1.11")
    assert broker.modify(short, Decimal("1.1049999"), None, 3).outcome is Outcome.DONE
    assert fake.requests[-1]["sl"] == 1.10499 and fake.requests[-1]["tp"] == 0.0  # down, towards the ask
    read = {p.ticket: p for p in broker.positions()}
    assert str(read[long].sl) == "1.09501" and str(read[long].tp) == "1.12000"
    assert str(read[short].sl) == "1.10499" and read[short].tp is None


def test_stops_read_back_exactly_in_the_symbols_digits(fake: FakeTerminal, broker: MT5Broker) -> None:
    fake.add_position(magic=MAGIC, sl=1.0950000000000002, tp=0.1 + 0.2 + 1)  # floats as a terminal may hold them
    fake.add_position(symbol="XAUUSD", magic=MAGIC, sl=2390.1000000000004, price_open=2400.4)
    eur, gold = broker.positions()
    assert (str(eur.sl), str(eur.tp)) == ("1.09500", "1.30000")
    assert str(gold.sl) == "2390.10"


def test_the_same_stops_again_are_done_with_no_change(fake: FakeTerminal, broker: MT5Broker) -> None:
    ticket = opened(broker)
    m = broker.modify(ticket, Decimal("1.09"), None, 3)  # what the fake's trade server judges, not scripted
    assert (m.outcome, m.detail, m.retcode, m.refusal) == (Outcome.DONE, "no change", 10025, None)


def test_invalid_stops_too_close_or_on_the_wrong_side(fake: FakeTerminal, broker: MT5Broker) -> None:
    fake.add_symbol("EURUSD", bid=1.10000, ask=1.10010, digits=5, stops_level=50)
    ticket = opened(broker, sl="1.09")
    close = broker.modify(ticket, Decimal("1.09960"), None, 3)  # 40 points under the bid, 50 needed
    assert close.outcome is Outcome.REJECTED and close.refusal is Refusal.INVALID_STOPS and close.retcode == 10016
    wrong = broker.modify(ticket, Decimal("1.10100"), None, 3)  # above the bid for a long
    assert wrong.refusal is Refusal.INVALID_STOPS and "INVALID_STOPS" in wrong.detail
    assert broker.modify(ticket, Decimal("1.09950"), None, 3).outcome is Outcome.DONE  # exactly 50 points away
    assert broker.positions()[0].sl == Decimal("1.0995")


def test_frozen_and_locked_are_frozen(fake: FakeTerminal, broker: MT5Broker) -> None:
    fake.add_symbol("EURUSD", bid=1.10000, ask=1.10010, digits=5, freeze_level=20)
    ticket = opened(broker, sl="1.0999")  # 10 points under the bid: about to trigger
    frozen = broker.modify(ticket, Decimal("1.0990"), None, 3)
    assert frozen.outcome is Outcome.REJECTED and frozen.refusal is Refusal.FROZEN and frozen.retcode == 10029
    fake.set_tick("EURUSD", 1.1010, 1.1011)
    fake.script(fake_mt5.TRADE_RETCODE_LOCKED)
    locked = broker.modify(ticket, Decimal("1.0990"), None, 3)
    assert locked.refusal is Refusal.FROZEN and locked.retcode == 10028
    fake.script(fake_mt5.TRADE_RETCODE_FROZEN)
    assert broker.close_position(ticket, 3).refusal is Refusal.FROZEN


def test_a_position_that_is_gone(fake: FakeTerminal, broker: MT5Broker) -> None:
    unknown = broker.modify("999", Decimal("1.09"), None, 3)
    assert unknown.outcome is Outcome.REJECTED and unknown.refusal is Refusal.GONE
    assert fake.calls["order_send"] == 0  # known before anything was sent
    ticket = opened(broker)
    fake.script(fake_mt5.TRADE_RETCODE_POSITION_CLOSED)  # stopped out between the read and the send
    raced = broker.modify(ticket, Decimal("1.095"), None, 3)
    assert raced.refusal is Refusal.GONE and raced.retcode == 10036
    assert broker.close_position(ticket, 3).outcome is Outcome.DONE
    assert broker.close_position(ticket, 3).refusal is Refusal.GONE
    assert broker.modify(ticket, Decimal("1.095"), None, 3).refusal is Refusal.GONE
    assert broker.cancel_order("424242", 3).refusal is Refusal.GONE


def test_the_fake_server_says_position_closed_for_a_closed_position(fake: FakeTerminal, broker: MT5Broker) -> None:
    ticket = opened(broker)
    assert broker.close_position(ticket, 3).outcome is Outcome.DONE
    request = {"action": 6, "position": int(ticket), "symbol": "EURUSD", "sl": 1.095, "tp": 0.0}
    assert fake_mt5.order_send(request).retcode == fake_mt5.TRADE_RETCODE_POSITION_CLOSED
    assert fake_mt5.order_send({**request, "position": 5}).retcode == fake_mt5.TRADE_RETCODE_INVALID


def test_any_other_refusal_is_other_with_its_retcode_and_no_answer_is_unknown(
    fake: FakeTerminal, broker: MT5Broker
) -> None:
    ticket = opened(broker)
    fake.script(fake_mt5.TRADE_RETCODE_MARKET_CLOSED)
    other = broker.modify(ticket, Decimal("1.095"), None, 3)
    assert (other.outcome, other.refusal, other.retcode) == (Outcome.REJECTED, Refusal.OTHER, 10018)
    fake.script(None)
    none = broker.modify(ticket, Decimal("1.095"), None, 3)
    assert none.outcome is Outcome.UNKNOWN and none.refusal is None
    fake.script(fake_mt5.TRADE_RETCODE_TIMEOUT)  # the server's own timeout: not "nothing changed" either
    timed_out = broker.modify(ticket, Decimal("1.095"), None, 3)
    assert timed_out.outcome is Outcome.UNKNOWN and timed_out.refusal is None and timed_out.retcode == 10012
    fake.script(fake_mt5.TRADE_RETCODE_MARKET_CLOSED)
    assert broker.send(entry(tag="hxOTHER")).refusal is None  # an entry is not a modification


def test_a_netting_add_on_without_a_stop_clears_it_and_a_modify_restores_it(
    fake: FakeTerminal, broker: MT5Broker
) -> None:
    fake.margin_mode = fake_mt5.ACCOUNT_MARGIN_MODE_RETAIL_NETTING
    ticket = opened(broker, sl="1.09")
    add_on = {"action": 1, "symbol": "EURUSD", "volume": 0.1, "type": 0, "price": 1.1001, "sl": 0.0, "magic": 1}
    assert fake_mt5.order_send(add_on).retcode == fake_mt5.TRADE_RETCODE_DONE  # e.g. a manual add-on
    [merged] = broker.positions()
    assert merged.ticket == ticket and merged.volume == Decimal("0.2") and merged.sl is None  # naked
    restored = broker.modify(ticket, Decimal("1.09"), None, 3)
    assert restored.outcome is Outcome.DONE
    assert broker.positions()[0].sl == Decimal("1.09")
    assert broker.send(entry(sl="1.0915", tag="hxADDON")).outcome is Outcome.DONE  # an add-on that carries its stop
    [merged] = broker.positions()
    assert merged.volume == Decimal("0.3") and merged.sl == Decimal("1.0915")
    assert fake_mt5.account_info().margin_mode == fake_mt5.ACCOUNT_MARGIN_MODE_RETAIL_NETTING


def test_a_hung_sltp_call_is_unknown_within_its_deadline_and_the_worker_is_free_after(
    fake: FakeTerminal, make_broker: Callable[..., MT5Broker]
) -> None:
    broker = make_broker(modify_deadline_ms=MODIFY_DEADLINE_MS)
    ticket = opened(broker)
    fake.hang("order_send", action=fake_mt5.TRADE_ACTION_SLTP)
    fake.script(Reply(fake_mt5.TRADE_RETCODE_DONE))  # it does take effect, late
    started = time.monotonic()
    r = broker.modify(ticket, Decimal("1.095"), None, 3)
    elapsed = time.monotonic() - started
    assert r.outcome is Outcome.UNKNOWN and "timed out" in r.detail and r.refusal is None
    assert elapsed < MODIFY_DEADLINE_MS / 1000 + MARGIN_S  # the modify's own deadline, not the broker's
    assert fake.entered.is_set() and broker.busy == "order_send"
    with pytest.raises(TerminalBusy):
        broker.modify(ticket, Decimal("1.096"), None, 3)  # refused at once, nothing queued behind the hung call
    fake.release()
    assert fake.returned.wait(2.0) and broker.wait_idle(2.0)
    assert broker.positions()[0].sl == Decimal("1.095")  # the timed-out call did execute
    assert broker.modify(ticket, Decimal("1.096"), None, 3).outcome is Outcome.DONE
    assert broker.positions()[0].sl == Decimal("1.096")
