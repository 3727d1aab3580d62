"""The paper broker's modify, close and cancel answer by meaning (`OrderResult.refusal`),
judged by the venue's rules against the market's price: GONE for no open position,
INVALID_STOPS for a stop on the wrong side or within the stops level, FROZEN within the
freeze level (a modify of a position, a cancel of a pending order); a change to what the
position has is DONE; a superseded epoch modifies nothing."""

from __future__ import annotations

from decimal import Decimal

import pytest

from coordinator.fencing import EpochSuperseded
from engine.brokers.base import OrderRequest, Outcome, Refusal
from engine.brokers.paper import PaperBroker
from engine.market.base import TradeMode
from engine.market.sim import SimSource
from engine.model import OrderType, Side
from engine.venue.hours import parse_hours
from engine.venue.settings import VenueSettings
from tests.integration.test_executor import Rig, rig  # noqa: F401 (rig is a fixture)
from tests.integration.test_paper import lead
from tests.integration.test_paper_prices import priced, sim  # noqa: F401 (fixtures)


def gold(broker: PaperBroker, epoch: int, tag: str, sl: Decimal) -> str:
    """A bought lot of XAUUSD (point 0.01, stops level 50 points, freeze level 10)."""
    opened = broker.send(
        OrderRequest(tag, "XAUUSD", Side.BUY, OrderType.MARKET, Decimal("0.1"), Decimal(1), sl, None, epoch)
    )
    assert opened.outcome is Outcome.DONE and opened.ref is not None
    return opened.ref


def stop_of(broker: PaperBroker, ticket: str) -> Decimal | None:
    return next(p.sl for p in broker.positions() if p.ticket == ticket)


def test_each_refusal_means_what_it_says(rig: Rig, sim: SimSource, priced: PaperBroker) -> None:  # noqa: F811
    epoch = lead(rig.pool, rig.cluster, "leader")
    bid = sim.tick("XAUUSD").bid
    ticket = gold(priced, epoch, "HXGOLD1", bid - 10)

    tighter = priced.modify(ticket, bid - 5, None, epoch)
    assert (tighter.outcome, tighter.refusal) == (Outcome.DONE, None) and stop_of(priced, ticket) == bid - 5
    same = priced.modify(ticket, bid - 5, None, epoch)
    assert (same.outcome, same.detail) == (Outcome.DONE, "no change")

    wrong_side = priced.modify(ticket, bid + 1, None, epoch)
    assert (wrong_side.outcome, wrong_side.refusal) == (Outcome.REJECTED, Refusal.INVALID_STOPS)
    too_close = priced.modify(ticket, bid - Decimal("0.30"), None, epoch)  # within 50 points (0.50)
    assert too_close.refusal is Refusal.INVALID_STOPS and "stops_level" in too_close.detail
    assert stop_of(priced, ticket) == bid - 5  # refused: unchanged

    frozen = gold(priced, epoch, "HXGOLD2", bid - Decimal("0.05"))  # booked within the freeze level
    locked = priced.modify(frozen, bid - 3, None, epoch)
    assert (locked.outcome, locked.refusal) == (Outcome.REJECTED, Refusal.FROZEN)

    closed = priced.close_position(ticket, epoch)
    assert closed.outcome is Outcome.DONE
    for gone in (priced.modify(ticket, bid - 4, None, epoch), priced.close_position(ticket, epoch)):
        assert (gone.outcome, gone.refusal) == (Outcome.REJECTED, Refusal.GONE)
    assert priced.modify("nonsense", bid - 4, None, epoch).refusal is Refusal.GONE
    assert priced.cancel_order("999999", epoch).refusal is Refusal.GONE
    assert priced.cancel_order("nonsense", epoch).refusal is Refusal.GONE
    deal = priced.closing_deal(ticket)
    assert deal is not None and deal.kind == "close" and deal.price == sim.tick("XAUUSD").bid
    assert priced.closing_deal(frozen) is None  # still open


def test_a_pending_order_within_the_freeze_level_is_not_cancelled(
    rig: Rig,  # noqa: F811
    sim: SimSource,  # noqa: F811
    priced: PaperBroker,  # noqa: F811
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    ask = sim.tick("XAUUSD").ask
    placed = priced.send(
        OrderRequest("HXGOLDLMT", "XAUUSD", Side.BUY, OrderType.LIMIT, Decimal("0.1"), ask - 5, ask - 15, None, epoch)
    )
    assert placed.outcome is Outcome.DONE and placed.ref is not None

    def move_to(price: Decimal) -> None:  # the market comes to the order (the sim's clock stands still)
        with rig.pool.connection() as conn:
            conn.execute(
                "UPDATE paper_orders SET price = %s WHERE cluster = %s AND ticket = %s",
                (price, rig.cluster, int(placed.ref or 0)),
            )

    def state() -> tuple[str, bool]:
        with rig.pool.connection() as conn:
            row = conn.execute(
                "SELECT state, done_at IS NOT NULL FROM paper_orders WHERE cluster = %s AND ticket = %s",
                (rig.cluster, int(placed.ref or 0)),
            ).fetchone()
        assert row is not None
        return row[0], row[1]

    move_to(ask - Decimal("0.05"))  # within the freeze level (10 points of 0.01): it may fill any moment
    frozen = priced.cancel_order(placed.ref, epoch)
    assert (frozen.outcome, frozen.refusal) == (Outcome.REJECTED, Refusal.FROZEN) and "freeze_level" in frozen.detail
    assert state() == ("pending", False)
    move_to(ask - 5)
    assert priced.cancel_order(placed.ref, epoch).outcome is Outcome.DONE
    assert state() == ("cancelled", True)
    assert priced.cancel_order(placed.ref, epoch).refusal is Refusal.GONE


def test_a_symbol_whose_trading_is_disabled_closes_cancels_and_modifies_nothing(
    rig: Rig,  # noqa: F811
    sim: SimSource,  # noqa: F811
    priced: PaperBroker,  # noqa: F811
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    bid, ask = sim.tick("XAUUSD").bid, sim.tick("XAUUSD").ask
    ticket = gold(priced, epoch, "HXGOLDOFF", bid - 10)
    placed = priced.send(
        OrderRequest("HXGOLDOFFL", "XAUUSD", Side.BUY, OrderType.LIMIT, Decimal("0.1"), ask - 5, ask - 15, None, epoch)
    )
    assert placed.ref is not None
    # the same book, as the venue's settings have it now: XAUUSD disabled
    off = PaperBroker(
        rig.pool,
        rig.cluster,
        "leader",
        market=priced.market,
        venue=VenueSettings(trade_modes={"XAUUSD": TradeMode.DISABLED}),
    )
    for refused in (
        off.close_position(ticket, epoch),
        off.cancel_order(placed.ref, epoch),
        off.modify(ticket, bid - 5, None, epoch),
    ):
        assert (refused.outcome, refused.refusal) == (Outcome.REJECTED, Refusal.OTHER), refused
        assert "trade_mode" in refused.detail
    assert ticket in {p.ticket for p in priced.positions()}
    # and as the venue's hours have it: XAUUSD's market closed
    shut = PaperBroker(
        rig.pool, rig.cluster, "leader", market=priced.market, venue=VenueSettings(hours=parse_hours("XAUUSD=never"))
    )
    for refused in (shut.close_position(ticket, epoch), shut.modify(ticket, bid - 5, None, epoch)):
        assert (refused.outcome, refused.refusal) == (Outcome.REJECTED, Refusal.OTHER), refused
        assert "market_closed" in refused.detail
    assert priced.close_position(ticket, epoch).outcome is Outcome.DONE  # where it trades
    assert priced.cancel_order(placed.ref, epoch).outcome is Outcome.DONE


def test_a_partial_close_books_its_part_and_leaves_the_rest_open(
    rig: Rig,  # noqa: F811
    sim: SimSource,  # noqa: F811
    priced: PaperBroker,  # noqa: F811
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    bid = sim.tick("XAUUSD").bid
    ticket = gold(priced, epoch, "HXGOLDPART", bid - 10)
    before = priced.account().balance
    part = priced.close_partial(ticket, Decimal("0.04"), epoch)
    assert part.outcome is Outcome.DONE and part.price == bid, part
    [left] = [p for p in priced.positions() if p.ticket == ticket]
    assert left.volume == Decimal("0.06") and left.sl == bid - 10
    with rig.pool.connection() as conn:
        deal = conn.execute(
            "SELECT kind, volume, price, pnl, balance FROM paper_deals WHERE cluster = %s AND ticket = %s"
            " ORDER BY id DESC LIMIT 1",
            (rig.cluster, int(ticket)),
        ).fetchone()
    assert deal is not None and deal[:3] == ("partial", Decimal("0.04"), bid)
    assert deal[4] == before + deal[3] == priced.account().balance  # the part's P&L, in the ledger
    assert priced.closing_deal(ticket) is None  # still open
    for volume in (Decimal("0.06"), Decimal("0.10"), Decimal("0"), Decimal("0.055")):
        refused = priced.close_partial(ticket, volume, epoch)
        assert (refused.outcome, refused.refusal) == (Outcome.REJECTED, Refusal.OTHER), (volume, refused)
    assert priced.close_partial("999999", Decimal("0.01"), epoch).refusal is Refusal.GONE
    lead(rig.pool, rig.cluster, "other")
    with pytest.raises(EpochSuperseded):
        priced.close_partial(ticket, Decimal("0.01"), epoch)
    [still] = [p for p in priced.positions() if p.ticket == ticket]
    assert still.volume == Decimal("0.06")


def test_a_superseded_epoch_modifies_nothing(rig: Rig, sim: SimSource, priced: PaperBroker) -> None:  # noqa: F811
    old = lead(rig.pool, rig.cluster, "leader")
    bid = sim.tick("XAUUSD").bid
    ticket = gold(priced, old, "HXGOLD3", bid - 10)
    lead(rig.pool, rig.cluster, "other")
    with pytest.raises(EpochSuperseded):
        priced.modify(ticket, bid - 5, None, old)
    assert stop_of(priced, ticket) == bid - 10


def test_many_stops_in_one_transaction_each_answered_by_meaning(
    rig: Rig,  # noqa: F811
    sim: SimSource,  # noqa: F811
    priced: PaperBroker,  # noqa: F811
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    bid = sim.tick("XAUUSD").bid
    a, b, c = (gold(priced, epoch, f"HXMANY{i}", bid - 10) for i in range(3))
    answers = priced.modify_many([(a, bid - 5), (b, bid + 1), (c, bid - 10), ("777777", bid - 5)], epoch)
    assert answers[a].outcome is Outcome.DONE and stop_of(priced, a) == bid - 5
    assert answers[b].refusal is Refusal.INVALID_STOPS and stop_of(priced, b) == bid - 10
    assert answers[c].detail == "no change"
    assert answers["777777"].refusal is Refusal.GONE
    lead(rig.pool, rig.cluster, "other")
    with pytest.raises(EpochSuperseded):
        priced.modify_many([(a, bid - 4)], epoch)
    assert stop_of(priced, a) == bid - 5
