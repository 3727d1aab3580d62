"""The MetaTrader 5 broker against the fake `MetaTrader5` module (tests/fakes/MetaTrader5.py).

Nothing sleeps: the only waits are the broker's own deadlines (DEADLINE_MS) in the hang
tests, and events the fake sets."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from engine.brokers.base import BrokerError, BrokerUnavailable, OrderRequest, Outcome, SymbolSpec, SymbolUnavailable
from engine.brokers.mt5 import INSTALL_HINT, RETCODES, CallTimedOut, MT5Broker, SendRefused, TerminalBusy
from engine.model import OrderType, Side
from tests.fakes import MetaTrader5 as fake_mt5
from tests.fakes.MetaTrader5 import FakeTerminal, Reply

MAGIC = 4242
DEADLINE_MS = 200  # the hang tests' deadline: they wait it out
ROOMY_MS = 5_000  # every other test's: a busy machine must not spend it before the call
MARGIN_S = 0.3  # scheduling slack on top of a deadline
TAG = "hxQ2GAYTEMZUGQ2DMNZYHE4TANB"  # 27 characters, as the engine makes them
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
            deadline_ms=ROOMY_MS,
            module=fake_mt5,
            connect_backoff_s=0,
            requote_backoff_s=0,
            utcnow=lambda: NOW,
        )
        kwargs.update(overrides)
        broker = MT5Broker(**kwargs)
        made.append(broker)
        return broker

    yield _make
    fake.release()
    for b in made:
        b.wait_idle(2.0)
        b.close()


@pytest.fixture
def broker(make_broker: Callable[..., MT5Broker]) -> MT5Broker:
    b = make_broker()
    b.connect()
    return b


@pytest.fixture
def short_broker(make_broker: Callable[..., MT5Broker]) -> MT5Broker:
    b = make_broker(deadline_ms=DEADLINE_MS)
    b.connect()
    return b


def order(
    side: Side = Side.BUY,
    type: OrderType = OrderType.MARKET,
    tag: str = TAG,
    symbol: str = "EURUSD",
    price: str = "1.1",
    sl: str = "1.09",
    tp: str | None = "1.12",
    volume: str = "0.10",
    expires_at: datetime | None = None,
    max_loss: str | None = None,
) -> OrderRequest:
    return OrderRequest(
        tag=tag,
        symbol=symbol,
        side=side,
        type=type,
        volume=Decimal(volume),
        price=Decimal(price),
        sl=Decimal(sl),
        tp=Decimal(tp) if tp is not None else None,
        epoch=7,
        expires_at=expires_at,
        max_loss=Decimal(max_loss) if max_loss is not None else None,
    )


# -- connecting -------------------------------------------------------------------------------


def test_connect_passes_credentials_and_timeout(fake: FakeTerminal, make_broker: Callable[..., MT5Broker]) -> None:
    make_broker(connect_timeout_ms=12_345).connect()
    assert fake.init_calls == [
        {"path": None, "login": fake.login, "password": fake.password, "server": fake.server, "timeout": 12_345}
    ]


def test_connect_with_path_and_no_login(fake: FakeTerminal, make_broker: Callable[..., MT5Broker]) -> None:
    make_broker(login=None, password=None, server=None, path="C:\\MT5\\terminal64.exe").connect()
    assert fake.init_calls[0]["path"] == "C:\\MT5\\terminal64.exe"
    assert fake.init_calls[0]["login"] is None and fake.init_calls[0]["password"] is None


def test_connect_retries_then_succeeds(fake: FakeTerminal, make_broker: Callable[..., MT5Broker]) -> None:
    fake.init_failures = 2
    make_broker().connect()
    assert fake.calls["initialize"] == 3


def test_connect_gives_up_after_bounded_attempts(fake: FakeTerminal, make_broker: Callable[..., MT5Broker]) -> None:
    fake.init_failures = 10
    with pytest.raises(BrokerUnavailable) as err:
        make_broker().connect()
    assert fake.calls["initialize"] == 3
    msg = str(err.value)
    assert "\n" not in msg
    assert "initialize failed: last_error -10003 IPC initialize failed" in msg


@pytest.mark.parametrize(
    ("knob", "message"),
    [("connected", "not connected to trade server"), ("trade_allowed", "algorithmic trading disabled")],
)
def test_connect_refuses_an_unusable_terminal(
    fake: FakeTerminal, make_broker: Callable[..., MT5Broker], knob: str, message: str
) -> None:
    setattr(fake, knob, False)
    with pytest.raises(BrokerUnavailable, match=message):
        make_broker().connect()


def test_connect_refuses_a_module_with_other_constants(
    make_broker: Callable[..., MT5Broker], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake_mt5, "TRADE_ACTION_DEAL", 2)
    with pytest.raises(BrokerUnavailable, match="TRADE_ACTION_DEAL"):
        make_broker().connect()


def test_module_is_imported_only_on_connect(
    fake: FakeTerminal, make_broker: Callable[..., MT5Broker], monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = make_broker(module=None)  # constructing never imports
    monkeypatch.setitem(sys.modules, "MetaTrader5", fake_mt5)
    broker.connect()
    assert fake.calls["initialize"] == 1
    assert broker.account().currency == "USD"


def test_missing_package_is_one_clear_line(
    make_broker: Callable[..., MT5Broker], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "MetaTrader5", None)  # import raises ImportError
    with pytest.raises(BrokerUnavailable) as err:
        make_broker(module=None).connect()
    assert str(err.value) == INSTALL_HINT
    assert "\n" not in str(err.value)
    assert "pip install 'haexec[mt5]' on Windows" in str(err.value)


def test_calls_before_connect_and_after_close_fail(fake: FakeTerminal, make_broker: Callable[..., MT5Broker]) -> None:
    broker = make_broker()
    with pytest.raises(BrokerError, match="not connected"):
        broker.positions()
    broker.connect()
    broker.close()
    assert fake.calls["shutdown"] == 1 and not fake.initialized
    with pytest.raises(BrokerError, match="not connected"):
        broker.send(order())


def test_password_never_shows(
    fake: FakeTerminal, make_broker: Callable[..., MT5Broker], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = fake.password
    bad = make_broker(password="wr0ng-" + secret)
    with pytest.raises(BrokerUnavailable) as err:
        bad.connect()  # three attempts, each logged
    assert "Authorization failed" in str(err.value)
    texts = [str(err.value), repr(err.value), repr(bad), str(bad), repr(vars(bad))]
    broker = make_broker()
    broker.connect()
    broker.send(order())
    broker.find_by_tag(TAG)
    broker.close()
    texts += [caplog.text, repr(broker), str(broker), repr(vars(broker))]
    for text in texts:
        assert secret not in text
    assert "login=" in repr(broker) and "password" not in repr(broker)


# -- send: outcomes ---------------------------------------------------------------------------


def test_market_buy_done(fake: FakeTerminal, broker: MT5Broker) -> None:
    r = broker.send(order(Side.BUY))
    assert r.outcome is Outcome.DONE and r.retcode == 10009
    assert r.ref == str(fake.positions[0].ticket) == str(fake.history_orders[0].ticket)
    assert r.price == Decimal("1.1001") and isinstance(r.price, Decimal)  # the ask
    assert "retcode 10009 DONE" in r.detail
    [req] = fake.requests
    assert req == {
        "action": fake_mt5.TRADE_ACTION_DEAL,
        "symbol": "EURUSD",
        "volume": 0.1,
        "type": fake_mt5.ORDER_TYPE_BUY,
        "price": 1.1001,
        "sl": 1.09,
        "tp": 1.12,
        "deviation": 20,
        "magic": MAGIC,
        "comment": TAG,
        "type_time": fake_mt5.ORDER_TIME_GTC,
        "type_filling": fake_mt5.ORDER_FILLING_IOC,
    }


def test_market_sell_takes_the_bid_and_floats_cross_the_boundary(fake: FakeTerminal, broker: MT5Broker) -> None:
    r = broker.send(order(Side.SELL, sl="1.1100049", tp=None))
    assert r.outcome is Outcome.DONE and r.price == Decimal("1.1")
    [req] = fake.requests
    assert req["type"] == fake_mt5.ORDER_TYPE_SELL and req["price"] == 1.1
    assert req["sl"] == 1.11 and req["tp"] == 0.0  # rounded to the symbol's 5 digits; 0 = no tp
    for f in ("volume", "price", "sl", "tp"):
        assert type(req[f]) is float


@pytest.mark.parametrize(("side", "otype"), [(Side.BUY, 2), (Side.SELL, 3)])
def test_limit_order_is_placed(fake: FakeTerminal, broker: MT5Broker, side: Side, otype: int) -> None:
    r = broker.send(order(side, OrderType.LIMIT, price="1.09500", sl="1.08" if side is Side.BUY else "1.11"))
    assert r.outcome is Outcome.DONE and r.retcode == 10008
    assert r.ref == str(fake.orders[0].ticket)
    assert r.price == Decimal("1.095")
    [req] = fake.requests
    assert req["action"] == fake_mt5.TRADE_ACTION_PENDING and req["type"] == otype
    assert req["price"] == 1.095
    assert fake.calls["symbol_info_tick"] == 0  # a limit order needs no quote


def test_partial_fill_is_done_and_says_so(fake: FakeTerminal, broker: MT5Broker) -> None:
    fake.script(fake_mt5.TRADE_RETCODE_DONE_PARTIAL)
    r = broker.send(order())
    assert r.outcome is Outcome.DONE and r.retcode == 10010
    assert "DONE_PARTIAL" in r.detail and "filled 0.05 of 0.1" in r.detail


@pytest.mark.parametrize(
    ("mask", "filling"),
    [(1 | 2, fake_mt5.ORDER_FILLING_IOC), (1, fake_mt5.ORDER_FILLING_FOK), (0, fake_mt5.ORDER_FILLING_RETURN)],
)
def test_filling_mode_follows_the_symbol(fake: FakeTerminal, broker: MT5Broker, mask: int, filling: int) -> None:
    fake.add_symbol("GBPUSD", bid=1.25, ask=1.2501, digits=5, filling_mode=mask)
    r = broker.send(order(symbol="GBPUSD", price="1.25", sl="1.24", tp=None))
    assert r.outcome is Outcome.DONE
    assert fake.requests[0]["type_filling"] == filling


def test_requote_is_retried_with_a_fresh_quote(fake: FakeTerminal, broker: MT5Broker) -> None:
    fake.script(Reply(10004, move=(1.1002, 1.1003)), Reply(10021, move=(1.1004, 1.1005)))
    r = broker.send(order())
    assert r.outcome is Outcome.DONE
    assert fake.calls["order_send"] == 3 and fake.calls["symbol_info_tick"] == 3
    assert [q["price"] for q in fake.requests] == [1.1001, 1.1003, 1.1005]
    assert r.price == Decimal("1.1005")
    assert "attempt 3 of 3" in r.detail
    assert len(fake.positions) == 1


def test_requotes_exhausted_are_rejected(fake: FakeTerminal, broker: MT5Broker) -> None:
    fake.script(10004, 10004, 10004, 10004)
    r = broker.send(order())
    assert r.outcome is Outcome.REJECTED and r.retcode == 10004
    assert "retcode 10004 REQUOTE" in r.detail and "attempt 3 of 3" in r.detail
    assert fake.calls["order_send"] == 3
    assert fake.positions == []


def test_requote_retries_stay_within_the_deadline(fake: FakeTerminal, make_broker: Callable[..., MT5Broker]) -> None:
    broker = make_broker(deadline_ms=DEADLINE_MS, requote_backoff_s=10.0)  # a retry would wait past the deadline
    broker.connect()
    fake.script(10004, 10004)
    started = time.monotonic()
    r = broker.send(order())
    assert time.monotonic() - started < DEADLINE_MS / 1000
    assert r.outcome is Outcome.REJECTED and fake.calls["order_send"] == 1


@pytest.mark.parametrize("retcode", [10006, 10014, 10016, 10018, 10019, 10027, 10031, 10046])
def test_other_retcodes_are_rejected_by_name(fake: FakeTerminal, broker: MT5Broker, retcode: int) -> None:
    fake.script(retcode)
    r = broker.send(order())
    name, meaning = RETCODES[retcode]
    assert r.outcome is Outcome.REJECTED and r.retcode == retcode
    assert r.detail.startswith(f"retcode {retcode} {name}: {meaning}")
    assert fake.calls["order_send"] == 1


def test_undocumented_retcode_is_rejected(fake: FakeTerminal, broker: MT5Broker) -> None:
    fake.script(12345)
    r = broker.send(order())
    assert r.outcome is Outcome.REJECTED and r.detail.startswith("retcode 12345 UNDOCUMENTED")


@pytest.mark.parametrize("retcode", [10011, 10012])
def test_ambiguous_retcodes_are_unknown(fake: FakeTerminal, broker: MT5Broker, retcode: int) -> None:
    fake.script(retcode)
    r = broker.send(order())
    assert r.outcome is Outcome.UNKNOWN and r.retcode == retcode
    assert fake.calls["order_send"] == 1


def test_none_is_unknown_and_never_retried(fake: FakeTerminal, broker: MT5Broker) -> None:
    fake.script(Reply(None, execute=True))  # no answer, yet it went through
    r = broker.send(order())
    assert r.outcome is Outcome.UNKNOWN and r.ref is None
    assert "returned None (last_error -10002 IPC recv failed)" in r.detail
    assert fake.calls["order_send"] == 1
    [found] = broker.find_by_tag(TAG)  # what reconciliation will see
    assert found.state == "position"


def test_every_call_runs_on_one_worker_thread(fake: FakeTerminal, broker: MT5Broker) -> None:
    fake.script(None)
    broker.send(order())  # order_send -> None -> last_error
    broker.positions()
    threads = {thread for _, thread in fake.call_log}
    assert len(threads) == 1 and threads != {threading.current_thread().name}
    names = [name for name, _ in fake.call_log]
    assert names[names.index("order_send") + 1] == "last_error"  # read right after, same thread


def test_unknown_symbol_is_rejected(fake: FakeTerminal, broker: MT5Broker) -> None:
    r = broker.send(order(symbol="NOPE"))
    assert r.outcome is Outcome.REJECTED and "NOPE is not available" in r.detail
    assert fake.calls["order_send"] == 0


# -- specs, quotes and the checks at send ---------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "spec"),
    [
        (
            "EURUSD",
            SymbolSpec(Decimal(100000), Decimal("0.01"), Decimal("0.01"), Decimal(100), Decimal("0.00001"), Decimal(1)),
        ),
        (
            "XAUUSD",
            SymbolSpec(Decimal(100), Decimal("0.01"), Decimal("0.01"), Decimal(100), Decimal("0.01"), Decimal(1)),
        ),
        (
            "GER40",
            SymbolSpec(Decimal(1), Decimal("0.1"), Decimal("0.1"), Decimal(50), Decimal("0.1"), Decimal("0.108")),
        ),
    ],
)
def test_quote_carries_the_venue_spec(fake: FakeTerminal, broker: MT5Broker, symbol: str, spec: SymbolSpec) -> None:
    q = broker.quote(symbol)
    assert q.spec == spec
    s = fake.symbols[symbol]
    assert (q.bid, q.ask) == (Decimal(repr(s["bid"])), Decimal(repr(s["ask"])))


def test_quote_prefers_the_losing_tick_value(fake: FakeTerminal, broker: MT5Broker) -> None:
    fake.add_symbol("EURGBP", bid=0.85, ask=0.8501, digits=5, tick_value=1.27, tick_value_loss=1.28)
    assert broker.quote("EURGBP").spec.tick_value == Decimal("1.28")


@pytest.mark.parametrize("field", ["contract_size", "tick_size", "tick_value", "volume_step", "volume_min"])
def test_a_symbol_without_a_usable_spec_is_unavailable(fake: FakeTerminal, broker: MT5Broker, field: str) -> None:
    fake.add_symbol("BROKEN", bid=1.0, ask=1.1, digits=2)
    fake.symbols["BROKEN"][field] = 0.0
    if field == "tick_value":
        fake.symbols["BROKEN"]["tick_value_loss"] = 0.0
    with pytest.raises(SymbolUnavailable, match="BROKEN has no usable spec"):
        broker.quote("BROKEN")


def test_an_unknown_or_unpriced_symbol_is_unavailable(fake: FakeTerminal, broker: MT5Broker) -> None:
    with pytest.raises(SymbolUnavailable, match="NOPE is not available"):
        broker.quote("NOPE")
    fake.set_tick("EURUSD", 0.0, 0.0)
    with pytest.raises(SymbolUnavailable, match="EURUSD has no quote"):
        broker.quote("EURUSD")


def test_quote_over_a_broken_link_is_a_broker_error_not_unavailable(fake: FakeTerminal, broker: MT5Broker) -> None:
    fake.fail_next("symbol_info")
    with pytest.raises(BrokerError) as info:
        broker.quote("EURUSD")
    assert not isinstance(info.value, SymbolUnavailable)


def test_an_expired_order_is_not_sent(fake: FakeTerminal, broker: MT5Broker) -> None:
    r = broker.send(order(expires_at=NOW))
    assert r.outcome is Outcome.EXPIRED and "expired" in r.detail
    assert fake.calls["order_send"] == 0
    assert broker.send(order(expires_at=NOW + timedelta(seconds=1))).outcome is Outcome.DONE


@pytest.mark.parametrize(("side", "sl"), [(Side.BUY, "1.1002"), (Side.SELL, "1.0999")])
def test_a_stop_on_the_wrong_side_of_the_quote_is_not_sent(
    fake: FakeTerminal, broker: MT5Broker, side: Side, sl: str
) -> None:
    r = broker.send(order(side, sl=sl, tp=None))
    assert r.outcome is Outcome.REJECTED and "stop" in r.detail
    assert fake.calls["order_send"] == 0


def test_the_loss_at_the_stop_is_checked_at_the_price_it_goes_at(fake: FakeTerminal, broker: MT5Broker) -> None:
    # 1 lot, ask 1.1001, stop 1.0991: 100 ticks x 1 USD = 100 USD at the stop
    assert broker.send(order(volume="1", sl="1.0991", tp=None, max_loss="100")).outcome is Outcome.DONE
    fake.set_tick("EURUSD", 1.1010, 1.1011)  # the market moved away from the stop: 200 USD now
    r = broker.send(order(volume="1", sl="1.0991", tp=None, max_loss="199.99"))
    assert r.outcome is Outcome.REJECTED and "200.00, above the cap 199.99" in r.detail
    assert fake.calls["order_send"] == 1


def test_cancel_order_removes_a_pending_order(fake: FakeTerminal, broker: MT5Broker) -> None:
    placed = broker.send(order(type=OrderType.LIMIT, price="1.095", sl="1.08"))
    assert placed.outcome is Outcome.DONE and broker.orders()
    r = broker.cancel_order(str(placed.ref), 7)
    assert r.outcome is Outcome.DONE
    assert fake.requests[-1] == {"action": fake_mt5.TRADE_ACTION_REMOVE, "order": int(str(placed.ref))}
    assert broker.orders() == []
    [gone] = broker.find_by_tag(TAG)
    assert gone.state == "history" and gone.extra["order_state"] == "canceled"
    again = broker.cancel_order(str(placed.ref), 7)
    assert again.outcome is Outcome.REJECTED and "no pending order" in again.detail


@pytest.mark.parametrize(
    ("reason", "kind"),
    [(fake_mt5.DEAL_REASON_SL, "sl"), (fake_mt5.DEAL_REASON_TP, "tp"), (fake_mt5.DEAL_REASON_SO, "stop_out")],
)
def test_a_position_the_server_closed_tells_how_from_its_exit_deal(
    fake: FakeTerminal, broker: MT5Broker, reason: int, kind: str
) -> None:
    opened = broker.send(order(sl="1.09", tp="1.12"))
    [pos] = fake.positions
    assert broker.closing_deal(str(pos.ticket)) is None  # open: only its entry deal
    fake.trigger(pos.ticket, reason)
    deal = broker.closing_deal(str(pos.ticket))
    assert deal is not None and opened.outcome is Outcome.DONE
    level = {"sl": Decimal("1.09"), "tp": Decimal("1.12")}.get(kind, Decimal("1.1"))
    assert (deal.ticket, deal.kind, deal.volume, deal.price) == (str(pos.ticket), kind, Decimal("0.1"), level)
    assert deal.pnl == Decimal(str(fake.history_deals[-1].profit)) and deal.at.tzinfo is UTC


def test_a_partial_close_takes_part_off_and_keeps_the_rest_with_its_stops(
    fake: FakeTerminal, broker: MT5Broker
) -> None:
    broker.send(order(sl="1.09", tp="1.12"))
    [pos] = fake.positions
    part = broker.close_partial(str(pos.ticket), Decimal("0.04"), 7)
    assert part.outcome is Outcome.DONE, part
    sent = fake.requests[-1]
    assert (sent["action"], sent["position"], sent["volume"], sent["type"]) == (
        fake_mt5.TRADE_ACTION_DEAL,
        pos.ticket,
        0.04,
        fake_mt5.ORDER_TYPE_SELL,
    )
    [left] = broker.positions()
    assert (left.ticket, left.volume, left.sl, left.tp) == (
        str(pos.ticket),
        Decimal("0.06"),
        Decimal("1.09"),
        Decimal("1.12"),
    )
    assert broker.closing_deal(str(pos.ticket)) is None  # still open
    asked = len(fake.requests)
    for volume in ("0.06", "0.10", "0"):
        refused = broker.close_partial(str(pos.ticket), Decimal(volume), 7)
        assert refused.outcome is Outcome.REJECTED and "must leave some" in refused.detail
    assert len(fake.requests) == asked  # refused before anything was sent
    assert broker.close_partial("424242", Decimal("0.01"), 7).detail.startswith("no open position")


def test_a_close_on_request_is_a_close_and_an_unknown_ticket_has_no_deal(fake: FakeTerminal, broker: MT5Broker) -> None:
    broker.send(order(sl="1.09"))
    [pos] = fake.positions
    assert broker.close_position(str(pos.ticket), 7).outcome is Outcome.DONE
    deal = broker.closing_deal(str(pos.ticket))
    assert deal is not None and deal.kind == "close"
    assert broker.closing_deal("424242") is None and broker.closing_deal("nonsense") is None


@pytest.mark.parametrize("tag", ["", "hx-bad-tag", "h" * 32, "hx ABC", "hxÄBC"])
def test_malformed_tags_are_refused_before_anything_is_sent(fake: FakeTerminal, broker: MT5Broker, tag: str) -> None:
    with pytest.raises(ValueError, match="tag must be"):
        broker.send(order(tag=tag))
    assert fake.calls["order_send"] == 0


def test_symbol_map(fake: FakeTerminal, make_broker: Callable[..., MT5Broker]) -> None:
    fake.add_symbol("EURUSD.m", bid=1.2, ask=1.2001, digits=5)
    broker = make_broker(symbol_map={"EURUSD": "EURUSD.m"})
    broker.connect()
    r = broker.send(order(sl="1.19", tp=None))
    assert r.outcome is Outcome.DONE and fake.requests[0]["symbol"] == "EURUSD.m"
    assert [p.symbol for p in broker.positions()] == ["EURUSD"]
    assert [v.symbol for v in broker.find_by_tag(TAG)] == ["EURUSD"]


# -- hangs ------------------------------------------------------------------------------------


def test_hung_order_send_is_unknown_within_the_deadline_then_busy_then_recovers(
    fake: FakeTerminal, short_broker: MT5Broker
) -> None:
    broker = short_broker
    fake.hang("order_send")
    started = time.monotonic()
    r = broker.send(order())
    elapsed = time.monotonic() - started
    assert r.outcome is Outcome.UNKNOWN and "timed out" in r.detail and "never resend" in r.detail
    assert elapsed < DEADLINE_MS / 1000 + MARGIN_S
    assert fake.entered.is_set() and broker.busy == "order_send"

    started = time.monotonic()
    with pytest.raises(TerminalBusy, match="terminal busy: order_send has not returned"):
        broker.account()
    with pytest.raises(BrokerError, match="terminal busy"):
        broker.send(order(tag="hxOTHER"))  # fails fast, nothing queued
    assert time.monotonic() - started < 0.1
    assert fake.calls["order_send"] == 1

    fake.release()
    assert fake.returned.wait(2.0) and broker.wait_idle(2.0)
    assert broker.account().balance == Decimal("10000.0")
    [late] = broker.find_by_tag(TAG)  # the timed-out call did execute, late
    assert late.state == "position"


def test_hung_read_times_out_and_blocks_nothing_forever(fake: FakeTerminal, short_broker: MT5Broker) -> None:
    broker = short_broker
    fake.hang("positions_get")
    started = time.monotonic()
    with pytest.raises(CallTimedOut, match="positions_get timed out"):
        broker.positions()
    assert time.monotonic() - started < DEADLINE_MS / 1000 + MARGIN_S
    started = time.monotonic()
    with pytest.raises(TerminalBusy):
        broker.orders()
    assert time.monotonic() - started < 0.1  # fails fast, does not wait out another deadline
    fake.release()
    assert broker.wait_idle(2.0)
    assert broker.orders() == []


def test_a_call_in_progress_is_waited_for_not_refused(
    fake: FakeTerminal, make_broker: Callable[..., MT5Broker]
) -> None:
    broker = make_broker()
    broker.connect()
    fake.hang("positions_get")
    results: dict[str, Any] = {}
    reader = threading.Thread(target=lambda: results.update(positions=broker.positions()))
    reader.start()
    assert fake.entered.wait(2.0)
    other = threading.Thread(target=lambda: results.update(account=broker.account()))
    other.start()
    fake.release()  # well within both callers' deadlines
    reader.join(5.0)
    other.join(5.0)
    assert results["positions"] == [] and results["account"].currency == "USD"


# -- reconciliation reads ---------------------------------------------------------------------


def test_find_by_tag_across_positions_orders_and_history(fake: FakeTerminal, broker: MT5Broker) -> None:
    ts = int(NOW.timestamp())
    old = int((NOW - timedelta(days=8)).timestamp())
    pos = fake.add_position(magic=MAGIC, comment=TAG, volume=0.2, price_open=1.2345, time=ts - 60)
    pend = fake.add_order(magic=MAGIC, comment=TAG, type=fake_mt5.ORDER_TYPE_SELL_LIMIT, price_open=1.3)
    closed = fake.add_order(history=True, magic=MAGIC, comment=TAG, time_setup=ts - 3600)
    fake.add_deal(order=closed.ticket, position_id=closed.ticket, magic=MAGIC, comment=TAG, price=1.2, time=ts - 3600)
    cancelled = fake.add_order(history=True, magic=MAGIC, comment=TAG, state=fake_mt5.ORDER_STATE_CANCELED)
    truncated = fake.add_position(magic=MAGIC, comment=TAG[:20])
    # none of these are ours
    fake.add_position(magic=MAGIC + 1, comment=TAG)  # another EA, same comment
    fake.add_position(magic=MAGIC, comment=TAG[:19])  # too short a prefix to trust
    fake.add_position(magic=MAGIC, comment="")
    fake.add_position(magic=MAGIC, comment="hxSOMEOTHERTAGAAAAAAAAAAAAAA")
    fake.add_order(history=True, magic=MAGIC, comment=TAG, time_setup=old)  # outside the window
    fake.add_deal(magic=MAGIC, comment=TAG, type=fake_mt5.DEAL_TYPE_BALANCE)  # not a trade

    found = {v.ticket: v for v in broker.find_by_tag(TAG)}
    assert set(found) == {str(x.ticket) for x in (pos, pend, closed, cancelled, truncated)}
    assert found[str(pos.ticket)].state == "position"
    assert found[str(pos.ticket)].volume == Decimal("0.2") and found[str(pos.ticket)].price == Decimal("1.2345")
    assert found[str(pend.ticket)].state == "pending" and found[str(pend.ticket)].side is Side.SELL
    assert found[str(closed.ticket)].state == "history" and found[str(closed.ticket)].extra["filled"]
    assert found[str(closed.ticket)].price == Decimal("1.2")  # the deal's fill price
    assert found[str(cancelled.ticket)].state == "history"
    assert not found[str(cancelled.ticket)].extra["filled"]
    assert found[str(cancelled.ticket)].extra["order_state"] == "canceled"
    assert found[str(truncated.ticket)].extra["exact"] is False
    assert all(v.tag == TAG and v.extra["magic"] == MAGIC for v in found.values())
    assert fake.calls["history_orders_get"] == fake.calls["history_deals_get"] == 1


def test_one_execution_is_one_entry_and_a_duplicate_is_two(fake: FakeTerminal, broker: MT5Broker) -> None:
    first = broker.send(order())
    [one] = broker.find_by_tag(TAG)  # position + history order + deal, grouped
    assert one.ticket == first.ref and one.state == "position"
    assert one.extra["deals"] and one.extra["position_ticket"] == int(first.ref or 0)
    second = broker.send(order())
    assert [v.ticket for v in broker.find_by_tag(TAG)] == [first.ref, second.ref]
    broker.close_position(first.ref or "")
    states = {v.ticket: v.state for v in broker.find_by_tag(TAG)}
    assert states == {first.ref: "history", second.ref: "position"}


@pytest.mark.parametrize(("limit", "found"), [(None, 1), (25, 1), (20, 1), (16, 0)])
def test_broker_truncated_comments(fake: FakeTerminal, broker: MT5Broker, limit: int | None, found: int) -> None:
    fake.comment_limit = limit
    assert broker.send(order()).outcome is Outcome.DONE
    assert len(broker.find_by_tag(TAG)) == found


def test_find_by_tag_raises_on_a_failed_read_never_answers_not_found(fake: FakeTerminal, broker: MT5Broker) -> None:
    broker.send(order())
    fake.fail_next("history_deals_get", -10002, "IPC recv failed")
    with pytest.raises(BrokerError, match="history_deals_get failed: last_error -10002"):
        broker.find_by_tag(TAG)


def test_none_with_success_means_nothing_found(fake: FakeTerminal, broker: MT5Broker) -> None:
    fake.none_when_empty = True
    assert broker.find_by_tag(TAG) == []
    assert broker.account().daily_pnl == Decimal(0)


def test_account_and_daily_pnl(fake: FakeTerminal, broker: MT5Broker) -> None:
    fake.balance, fake.equity, fake.currency = 10_250.5, 10_100.25, "EUR"
    today = int(NOW.timestamp())
    fake.add_deal(
        type=fake_mt5.DEAL_TYPE_SELL,
        entry=fake_mt5.DEAL_ENTRY_OUT,
        profit=-30.1,
        commission=-1.2,
        swap=-0.3,
        fee=-0.1,
        time=today - 3600,
    )
    fake.add_deal(type=fake_mt5.DEAL_TYPE_BUY, entry=fake_mt5.DEAL_ENTRY_OUT, profit=12.0, time=today - 60)
    fake.add_deal(type=fake_mt5.DEAL_TYPE_BALANCE, profit=5000.0, time=today - 120)  # a deposit
    fake.add_deal(type=fake_mt5.DEAL_TYPE_BUY, profit=-999.0, time=today - 86_400)  # yesterday
    acct = broker.account()
    assert acct.balance == Decimal("10250.5") and acct.equity == Decimal("10100.25")
    assert acct.currency == "EUR"
    assert acct.daily_pnl == Decimal("-19.7")
    assert all(isinstance(x, Decimal) for x in (acct.balance, acct.equity, acct.daily_pnl))


def test_positions_and_orders(fake: FakeTerminal, broker: MT5Broker) -> None:
    fake.add_position(
        magic=MAGIC, comment=TAG, type=fake_mt5.POSITION_TYPE_SELL, volume=0.3, price_open=1.25, sl=1.26, tp=0.0
    )
    fake.add_position(magic=0, comment="manual trade", volume=1.0)
    fake.add_order(magic=MAGIC, comment=TAG, type=fake_mt5.ORDER_TYPE_BUY_LIMIT, volume_current=0.1)
    ours, manual = broker.positions()
    assert ours.side is Side.SELL and ours.volume == Decimal("0.3") and ours.price == Decimal("1.25")
    assert ours.sl == Decimal("1.26") and ours.tp is None and ours.tag == TAG
    assert manual.tag is None  # not our magic: its comment is not one of our tags
    [pending] = broker.orders()
    assert pending.state == "pending" and pending.side is Side.BUY and pending.tag == TAG


# -- modify / close ---------------------------------------------------------------------------


def test_modify_sets_stops_and_keeps_what_is_not_given(fake: FakeTerminal, broker: MT5Broker) -> None:
    r = broker.send(order(sl="1.09", tp="1.12"))
    m = broker.modify(r.ref or "", Decimal("1.0950"), None)
    assert m.outcome is Outcome.DONE
    req = fake.requests[-1]
    assert req["action"] == fake_mt5.TRADE_ACTION_SLTP and req["position"] == int(r.ref or 0)
    assert req["sl"] == 1.095 and req["tp"] == 1.12
    assert fake.positions[0].sl == 1.095 and fake.positions[0].tp == 1.12


def test_modify_no_changes_is_done_and_unknown_ticket_rejected(fake: FakeTerminal, broker: MT5Broker) -> None:
    r = broker.send(order())
    fake.script(fake_mt5.TRADE_RETCODE_NO_CHANGES)
    assert broker.modify(r.ref or "", None, None).outcome is Outcome.DONE
    missing = broker.modify("999", Decimal("1"), None)
    assert missing.outcome is Outcome.REJECTED and "no open position with ticket 999" in missing.detail


def test_close_position_sends_the_opposite_deal(fake: FakeTerminal, broker: MT5Broker) -> None:
    r = broker.send(order(Side.BUY))
    c = broker.close_position(r.ref or "", epoch=7)
    assert c.outcome is Outcome.DONE and c.price == Decimal("1.1")  # a long closes at the bid
    req = fake.requests[-1]
    assert req["action"] == fake_mt5.TRADE_ACTION_DEAL and req["type"] == fake_mt5.ORDER_TYPE_SELL
    assert req["position"] == int(r.ref or 0) and req["volume"] == 0.1 and req["magic"] == MAGIC
    assert fake.positions == []
    gone = broker.close_position(r.ref or "")
    assert gone.outcome is Outcome.REJECTED and "no open position" in gone.detail


def test_close_by_identifier_when_the_position_ticket_changed(fake: FakeTerminal, broker: MT5Broker) -> None:
    pos = fake.add_position(ticket=900_002, identifier=900_001, magic=MAGIC, comment=TAG)
    c = broker.close_position("900001")
    assert c.outcome is Outcome.DONE and fake.requests[-1]["position"] == pos.ticket
    assert broker.close_position("not-a-ticket").outcome is Outcome.REJECTED


# -- the fake itself --------------------------------------------------------------------------


def test_fake_order_send_refuses_long_comments_and_decimals(fake: FakeTerminal) -> None:
    assert fake_mt5.initialize()
    base = {"action": 1, "symbol": "EURUSD", "volume": 0.1, "type": 0, "price": 1.1, "magic": 1}
    assert fake_mt5.order_send({**base, "comment": "x" * 32}) is None
    assert fake_mt5.last_error() == (-2, 'Invalid "comment" argument')
    assert fake_mt5.order_send({**base, "volume": Decimal("0.1")}) is None
    assert fake_mt5.last_error()[0] == -2
    res = fake_mt5.order_send({**base, "comment": "x" * 31})
    assert res.retcode == fake_mt5.TRADE_RETCODE_DONE and res.request.comment == "x" * 31
    assert res._fields == (
        "retcode",
        "deal",
        "order",
        "volume",
        "price",
        "bid",
        "ask",
        "comment",
        "request_id",
        "retcode_external",
        "request",
    )
    fake_mt5.shutdown()
    assert fake_mt5.positions_get() is None and fake_mt5.last_error() == (-10004, "No IPC connection")


# -- a send guard (the gateway's fence and journal) -------------------------------------------


class RecordingGuard:
    """Records, on the thread it runs on, what happens around each order_send."""

    def __init__(self, refuse_on: int | None = None) -> None:
        self.refuse_on = refuse_on  # refuse the Nth order_send (1-based)
        self.events: list[tuple[str, str, Any]] = []

    def before(self, request: dict[str, Any]) -> None:
        n = sum(1 for e in self.events if e[0] == "before") + 1
        self.events.append(("before", threading.current_thread().name, request["comment"]))
        if n == self.refuse_on:
            raise SendRefused("refused by the test guard")

    def after(self, request: dict[str, Any], result: Any, error: Any, raised: BaseException | None) -> None:
        self.events.append(("after", threading.current_thread().name, result.retcode if result else error))


def test_a_guard_runs_on_the_worker_around_every_order_send(fake: FakeTerminal, broker: MT5Broker) -> None:
    fake.script(10004, 10009)  # a requote, then done: two order_sends
    guard = RecordingGuard()
    r = broker.send(order(), guard=guard)
    assert r.outcome is Outcome.DONE
    assert [e[0] for e in guard.events] == ["before", "after", "before", "after"]
    assert {e[1] for e in guard.events} == {f"mt5-terminal-{MAGIC}"}  # the one worker thread
    assert [e[2] for e in guard.events if e[0] == "after"] == [10004, 10009]


def test_a_guard_refusal_sends_nothing_and_raises_even_after_a_requote(fake: FakeTerminal, broker: MT5Broker) -> None:
    with pytest.raises(SendRefused, match="test guard"):
        broker.send(order(), guard=RecordingGuard(refuse_on=1))
    assert fake.calls["order_send"] == 0
    fake.script(10004)
    with pytest.raises(SendRefused):
        broker.send(order(), guard=RecordingGuard(refuse_on=2))  # a requote, then the retry refused
    assert fake.calls["order_send"] == 1 and broker.positions() == []


def test_a_guard_sees_an_order_send_that_answered_none(fake: FakeTerminal, broker: MT5Broker) -> None:
    fake.script(Reply(None, execute=True))
    guard = RecordingGuard()
    assert broker.send(order(), guard=guard).outcome is Outcome.UNKNOWN
    assert guard.events[-1][0] == "after" and guard.events[-1][2] == (-10002, "IPC recv failed")


def test_a_symbol_spelled_with_a_lower_case_suffix_at_the_broker_is_found(
    fake: FakeTerminal, make_broker: Callable[..., MT5Broker]
) -> None:
    # Signals upper-case a symbol (XAUUSD.m is XAUUSD.M); the terminal's own spelling is sent
    # and read back as the signal's.
    fake.add_symbol("XAUUSD.m", bid=2300.0, ask=2300.3, digits=2, contract_size=100.0)
    fake.add_symbol("US30.cash", bid=39000.0, ask=39002.0, digits=1)
    fake.add_symbol("us30.CASH", bid=39000.0, ask=39002.0, digits=1)  # two spellings: neither is mapped
    broker = make_broker()
    broker.connect()
    r = broker.send(order(symbol="XAUUSD.M", price="2300.3", sl="2290", tp=None))
    assert r.outcome is Outcome.DONE and fake.requests[-1]["symbol"] == "XAUUSD.m"
    assert [p.symbol for p in broker.positions()] == ["XAUUSD.M"]
    assert broker.quote("XAUUSD.M").margin_per_lot == Decimal("2300.3")  # 100 oz x 2300.3 / 1:100
    with pytest.raises(SymbolUnavailable, match="US30.CASH is not available"):
        broker.quote("US30.CASH")
