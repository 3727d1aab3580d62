"""The JSON the gateway and its client exchange: exact round trips, strict requests."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from engine.brokers.base import (
    Account,
    OrderRequest,
    OrderResult,
    Outcome,
    Position,
    Quote,
    Refusal,
    SymbolSpec,
    VenueOrder,
)
from engine.brokers.deals import ClosingDeal
from engine.brokers.gateway_wire import (
    WireError,
    account_from_json,
    account_to_json,
    closing_deal_from_json,
    closing_deal_to_json,
    fence_from_json,
    order_digest,
    order_from_json,
    order_to_json,
    position_from_json,
    position_to_json,
    quote_from_json,
    quote_to_json,
    result_from_json,
    result_to_json,
    venue_order_from_json,
    venue_order_to_json,
)
from engine.model import OrderType, Side

ORDER = OrderRequest(
    tag="HX" + "A" * 24,
    symbol="EURUSD",
    side=Side.BUY,
    type=OrderType.MARKET,
    volume=Decimal("0.10"),
    price=Decimal("1.10010"),
    sl=Decimal("1.0950"),
    tp=None,
    epoch=7,
    expires_at=datetime(2026, 3, 4, 15, 30, tzinfo=UTC),
    max_loss=Decimal("200.00"),
)


def test_every_shape_round_trips_exactly() -> None:
    assert order_from_json(order_to_json(ORDER)) == ORDER
    result = OrderResult(Outcome.DONE, "700001", "retcode 10009", 10009, Decimal("1.1001"))
    assert result_from_json(result_to_json(result)) == result
    refused = OrderResult(Outcome.REJECTED, None, "retcode 10029 FROZEN", 10029, refusal=Refusal.FROZEN)
    assert result_from_json(result_to_json(refused)) == refused
    account = Account(Decimal("10000.01"), Decimal("9990.5"), "USD", Decimal("-12.30"))
    assert account_from_json(account_to_json(account)) == account
    margined = replace(account, margin=Decimal("2200.00"), free_margin=Decimal("7790.50"))
    assert account_from_json(account_to_json(margined)) == margined
    position = Position("1", "EURUSD", Side.SELL, Decimal("0.5"), Decimal("1.1"), None, Decimal("1.0"), "HXT")
    assert position_from_json(position_to_json(position)) == position
    order = VenueOrder("2", "HXT", "XAUUSD", Side.BUY, Decimal("1"), Decimal("2400.4"), "history", None, None, {"a": 1})
    assert venue_order_from_json(venue_order_to_json(order)) == order
    quote = Quote(SymbolSpec(tick_size=Decimal("0.00001"), tick_value=Decimal("1")), Decimal("1.1"), Decimal("1.1001"))
    assert quote_from_json(quote_to_json(quote)) == quote
    with_margin = replace(quote, margin_per_lot=Decimal("1100.10"))
    assert quote_from_json(quote_to_json(with_margin)) == with_margin
    deal = ClosingDeal(
        "3", "sl", Decimal("0.10"), Decimal("1.0950"), Decimal("-60.10"), datetime(2026, 3, 4, tzinfo=UTC)
    )
    assert closing_deal_from_json(closing_deal_to_json(deal)) == deal


@pytest.mark.parametrize(
    ("change", "field"),
    [({"ticket": "x1"}, "deal.ticket"), ({"pnl": 1.5}, "deal.pnl"), ({"at": "2026-03-04T00:00:00"}, "deal.at")],
)
def test_a_malformed_closing_deal_names_its_field(change: dict[str, Any], field: str) -> None:
    good = closing_deal_to_json(
        ClosingDeal("3", "tp", Decimal("0.1"), Decimal("1.1"), Decimal("5"), datetime(2026, 3, 4, tzinfo=UTC))
    )
    with pytest.raises(WireError, match=field):
        closing_deal_from_json({**good, **change})


def test_money_travels_as_strings() -> None:
    body = order_to_json(ORDER)
    assert body["volume"] == "0.10" and body["price"] == "1.10010" and body["max_loss"] == "200.00"


def bad(**changes: Any) -> dict[str, Any]:
    body = order_to_json(ORDER)
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (bad(volume=0.1), "order.volume"),  # a JSON number: money never travels as one
        (bad(volume="-1"), "order.volume"),
        (bad(price="NaN"), "order.price"),
        (bad(price="1e999999"), "order.price"),  # finite, but no price has a million digits
        (bad(tag="HX-bad-tag"), "order.tag"),
        (bad(tag="H" * 32), "order.tag"),
        (bad(side="long"), "order.side"),
        (bad(epoch=True), "order.epoch"),
        (bad(epoch=0), "order.epoch"),
        (bad(expires_at="2026-03-04T15:30:00"), "order.expires_at"),  # no offset
        (bad(sl=...), "order.sl"),
        (bad(colour="red"), "order.colour"),  # a field the gateway does not know
    ],
)
def test_a_malformed_order_names_its_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(WireError) as err:
        order_from_json(body)
    assert err.value.field == field and str(err.value).startswith(field)


@pytest.mark.parametrize(
    "fence",
    [
        {"cluster": "c", "epoch": 1},
        {"cluster": "c", "epoch": "1", "instance": "r"},
        {"cluster": "c", "epoch": 1, "instance": "has space"},
        {"cluster": "c", "epoch": 1, "instance": "r", "extra": 1},
        ["c", 1, "r"],
    ],
)
def test_a_malformed_fence_is_refused(fence: Any) -> None:
    with pytest.raises(WireError):
        fence_from_json(fence)


def test_the_digest_is_the_order_not_its_epoch_or_spelling() -> None:
    d = order_digest(ORDER)
    assert order_digest(replace(ORDER, epoch=8)) == d  # a new leader's retry is the same order
    assert order_digest(replace(ORDER, volume=Decimal("0.1"), price=Decimal("1.1001"))) == d
    assert order_digest(replace(ORDER, volume=Decimal("0.11"))) != d
    assert order_digest(replace(ORDER, tag="HX" + "B" * 24)) != d


def test_a_refusal_this_side_does_not_know_is_other_never_a_malformed_answer() -> None:
    wire = {"outcome": "rejected", "detail": "x", "refusal": "a_newer_meaning"}
    assert result_from_json(wire).refusal is Refusal.OTHER
    assert result_from_json({"outcome": "done"}).refusal is None  # an older gateway says nothing
