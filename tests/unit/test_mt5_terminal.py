"""MT5 market data on the MT5 broker's one terminal thread (`MT5Broker.run_on_terminal`):
the package is one connection per process, so market reads and orders share the worker,
and a read never queues behind a hung order_send."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from engine.brokers.base import OrderRequest
from engine.brokers.mt5 import MT5Broker
from engine.market import FeedUnavailable
from engine.market.mt5 import MT5Source
from engine.model import OrderType, Side
from tests.fakes import MetaTrader5 as fake_mt5
from tests.fakes.MetaTrader5 import FakeTerminal


@pytest.fixture
def fake() -> Iterator[FakeTerminal]:
    t = fake_mt5.reset()
    yield t
    t.release()


@pytest.fixture
def mt5_broker(fake: FakeTerminal) -> Iterator[MT5Broker]:
    broker = MT5Broker(
        login=fake.login,
        password=fake.password,
        server=fake.server,
        path=None,
        magic=77,
        deadline_ms=200,
        module=fake_mt5,
        connect_backoff_s=0,
    )
    broker.connect()
    yield broker
    fake.release()
    broker.wait_idle(2.0)
    broker.close()


def test_market_reads_share_the_brokers_terminal_thread(fake: FakeTerminal, mt5_broker: MT5Broker) -> None:
    source = MT5Source(run=mt5_broker.run_on_terminal, deadline_ms=5_000, symbols=["EURUSD"])
    tick = source.tick("EURUSD")
    assert (tick.bid, tick.ask) == (Decimal("1.1"), Decimal("1.1001"))
    assert source.spec("EURUSD").contract_size == Decimal(100_000)
    threads = {thread for name, thread in fake.call_log if name in ("symbol_info_tick", "symbol_info")}
    assert threads == {"mt5-terminal-77"}  # the one thread orders go through


def test_a_hung_order_send_makes_a_market_read_fail_at_once_not_queue(
    fake: FakeTerminal, mt5_broker: MT5Broker
) -> None:
    source = MT5Source(run=mt5_broker.run_on_terminal, deadline_ms=5_000, symbols=["EURUSD"])
    source.tick("EURUSD")  # digits known
    fake.hang("order_send")
    req = OrderRequest(
        "hxQ2GAYTEMZUGQ2DMNZYHE4TANB", "EURUSD", Side.BUY, OrderType.MARKET, Decimal("0.1"), Decimal("1.1"),
        Decimal("1.09"), None, 7,
    )  # fmt: skip
    answers: list[Any] = []
    sender = threading.Thread(target=lambda: answers.append(mt5_broker.send(req)))
    sender.start()
    assert fake.entered.wait(5)
    sender.join(5)  # the order's deadline passed (in doubt); the call still holds the worker
    assert answers and answers[0].outcome.value == "unknown"
    started = time.monotonic()
    with pytest.raises(FeedUnavailable, match=r"^MT5 symbol_info_tick: MT5 terminal busy: order_send has not"):
        source.tick("EURUSD")
    assert time.monotonic() - started < 0.1  # refused at once, nothing queued behind the hung call
    fake.release()
    assert fake.returned.wait(5)
    assert source.tick("EURUSD").bid == Decimal("1.1")  # the worker is free again
