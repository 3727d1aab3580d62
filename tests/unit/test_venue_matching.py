"""The matching core on short fixed price paths, every figure computed by hand.

EURUSD: 1 lot is 100,000, so 0.00001 of price is 1.00 USD per lot."""

from __future__ import annotations

from decimal import Decimal

from engine.market.base import TradeMode
from engine.model import Side
from engine.venue.matching import OPEN, Book, Permissions, match_quote, stop_outs
from engine.venue.model import Action, Kind, Match, Quote
from tests.unit.venue_fixtures import buy, contract, pending, q, sell

D = Decimal
EURUSD = contract("EURUSD")


def run(book: Book, path: list[Quote], allow: Permissions = OPEN) -> list[Match]:
    """Every quote in turn, each match applied to the book before the next quote."""
    out = []
    for quote in path:
        for m in book.on_quote(quote, EURUSD, allow):
            book.apply(m)
            out.append(m)
    return out


def book_of(*entries: object) -> Book:
    book = Book()
    for e in entries:
        (book.put_order if hasattr(e, "kind") else book.put_position)(e)  # type: ignore[operator]
    return book


def test_a_buy_is_stopped_out_on_the_bid_not_the_ask() -> None:
    # bought at 1.10000, stop 1.09900. At t=2 the ask (1.09905) is still above the stop but
    # the bid (1.09895) is below it: a buy sells at the bid, so it is stopped there.
    book = book_of(buy(1, "1.10000", sl="1.09900", tp="1.10300"))
    path = [q(1, "1.09950", "1.09960"), q(2, "1.09895", "1.09905"), q(3, "1.09800", "1.09810")]
    [m] = run(book, path)
    assert (m.action, m.time_ms, m.price, m.level) == (Action.STOP_LOSS, 2, D("1.09895"), D("1.09900"))
    assert m.pnl == D("-105.00")  # (1.09895 - 1.10000) x 1 lot x 100,000
    assert book.position_count == 0


def test_a_sell_is_stopped_out_on_the_ask_not_the_bid() -> None:
    # sold 0.5 at 1.10000, stop 1.10100. At t=1 the bid (1.10095) is below the stop, the ask
    # (1.10105) above it: a sell buys back at the ask, so it is stopped there.
    book = book_of(sell(1, "1.10000", sl="1.10100", volume="0.5"))
    [m] = run(book, [q(1, "1.10095", "1.10105")])
    assert (m.action, m.price) == (Action.STOP_LOSS, D("1.10105"))
    assert m.pnl == D("-52.50")  # -(1.10105 - 1.10000) x 0.5 x 100,000


def test_the_same_quote_stops_the_sell_and_spares_the_buy() -> None:
    # one quote straddling both stops: bid 1.10095 (> the buy's 1.10090), ask 1.10105 (>= the sell's 1.10100)
    book = book_of(buy(1, "1.10200", sl="1.10090"), sell(2, "1.10000", sl="1.10100"))
    [m] = run(book, [q(1, "1.10095", "1.10105")])
    assert m.ticket == 2 and m.side is Side.SELL and book.position(1) is not None


def test_a_gap_through_the_stop_fills_at_the_first_price_beyond_it() -> None:
    book = book_of(buy(1, "1.10000", sl="1.09900"))
    [m] = run(book, [q(1, "1.09950", "1.09960"), q(2, "1.09700", "1.09712")])  # a gap of 25 pips
    assert (m.price, m.level) == (D("1.09700"), D("1.09900"))  # not the stop
    assert m.pnl == D("-300.00")
    # a sell gapped through its stop: filled at the ask beyond it
    book = book_of(sell(2, "1.10000", sl="1.10100", volume="0.3"))
    [m] = run(book, [q(1, "1.10300", "1.10312")])
    assert m.price == D("1.10312") and m.pnl == D("-93.60")  # -(0.00312) x 0.3 x 100,000


def test_a_take_profit_closes_on_the_correct_side() -> None:
    book = book_of(buy(1, "1.10000", tp="1.10200", volume="0.10"), sell(2, "1.10000", tp="1.09800", volume="0.10"))
    path = [
        q(1, "1.10199", "1.10209"),  # the buy's bid is 1 point short; the ask beyond is no use to it
        q(2, "1.10200", "1.10210"),  # the buy's take profit
        q(3, "1.09795", "1.09805"),  # the sell's ask is still above 1.09800
        q(4, "1.09780", "1.09790"),  # and now below: filled at 1.09790, 1 pip better than its level
    ]
    first, second = run(book, path)
    assert (first.ticket, first.action, first.time_ms, first.price, first.pnl) == (
        1,
        Action.TAKE_PROFIT,
        2,
        D("1.10200"),
        D("20.00"),
    )
    assert (second.ticket, second.time_ms, second.price, second.pnl) == (2, 4, D("1.09790"), D("21.00"))


def test_a_stop_and_a_take_profit_both_crossed_by_one_quote_take_the_stop() -> None:
    # a stop above the take profit can only come from a hand edit; the stop is the safe reading
    [m] = match_quote(q(1, "1.10000", "1.10010"), [buy(1, "1.09000", sl="1.10050", tp="1.09500")], [], EURUSD)
    assert m.action is Action.STOP_LOSS


def test_a_limit_fills_at_its_price_or_better_and_its_stops_act_from_the_next_quote() -> None:
    order = pending(7, Side.BUY, Kind.LIMIT, "1.09800", volume="0.20", sl="1.09700", tp="1.10000")
    book = book_of(order)
    path = [
        q(1, "1.09800", "1.09810"),  # the ask is 1 point above the limit: nothing
        q(2, "1.09680", "1.09790"),  # ask 1.09790 <= 1.09800: filled there; this bid is below the
        # position's stop, but the position did not exist before this quote
        q(3, "1.09760", "1.09770"),
        q(4, "1.10000", "1.10010"),  # take profit on the bid
    ]
    fill, tp = run(book, path)
    assert (fill.action, fill.ticket, fill.time_ms, fill.price, fill.level) == (
        Action.FILL,
        7,
        2,
        D("1.09790"),
        D("1.09800"),
    )
    assert fill.pnl == 0
    assert (tp.action, tp.time_ms, tp.price, tp.pnl) == (Action.TAKE_PROFIT, 4, D("1.10000"), D("42.00"))


def test_a_limit_that_expires_before_it_fills() -> None:
    order = pending(8, Side.SELL, Kind.LIMIT, "1.10100", expires=3000)
    book = book_of(order)
    path = [q(1000, "1.10050", "1.10060"), q(2000, "1.10090", "1.10100"), q(3000, "1.10150", "1.10160")]
    [m] = run(book, path)
    # at 3000 the bid (1.10150) would fill it, but it expired at that moment
    assert (m.action, m.ticket, m.time_ms, m.price) == (Action.EXPIRE, 8, 3000, None)
    assert book.order_count == 0
    # without a quote, the book's clock runs orders out all the same
    book = book_of(pending(9, Side.BUY, Kind.LIMIT, "1.0", expires=5000))
    assert book.expired(4999) == []
    [m] = book.expired(5000)
    assert m.action is Action.EXPIRE and m.ticket == 9


def test_stop_orders_fill_at_the_first_price_at_or_beyond_them() -> None:
    book = book_of(pending(1, Side.BUY, Kind.STOP, "1.10100"), pending(2, Side.SELL, Kind.STOP, "1.09900"))
    path = [q(1, "1.10000", "1.10010"), q(2, "1.10110", "1.10120"), q(3, "1.09850", "1.09860")]
    up, down = run(book, path)
    assert (up.ticket, up.price, up.time_ms) == (1, D("1.10120"), 2)  # the ask, past 1.10100
    assert (down.ticket, down.price, down.time_ms) == (2, D("1.09850"), 3)  # the bid, past 1.09900


def test_nothing_acts_on_a_ticket_before_it_existed() -> None:
    book = book_of(buy(1, "1.10000", sl="1.09900", since=5000))
    assert run(book, [q(4000, "1.09000", "1.09010"), q(5000, "1.09000", "1.09010")]) == []
    [m] = run(book, [q(5001, "1.09000", "1.09010")])
    assert m.action is Action.STOP_LOSS


def test_a_close_only_symbol_closes_positions_and_fills_no_order() -> None:
    close_only = Permissions(trade_mode=TradeMode.CLOSE_ONLY)
    book = book_of(buy(1, "1.10000", sl="1.09900"), pending(2, Side.BUY, Kind.LIMIT, "1.09950"))
    [m] = run(book, [q(1, "1.09890", "1.09900")], close_only)
    assert (m.action, m.ticket, m.pnl) == (Action.STOP_LOSS, 1, D("-110.00"))
    assert book.order(2) is not None  # the limit's price was reached, but it would open a position
    # long-only fills buys only; a disabled symbol or a closed market does nothing at all
    assert [m.ticket for m in run(book, [q(2, "1.09890", "1.09900")], Permissions(trade_mode=TradeMode.LONG_ONLY))] == [
        2
    ]
    book = book_of(buy(1, "1.10000", sl="1.09900"))
    assert run(book, [q(3, "1.0", "1.0")], Permissions(trade_mode=TradeMode.DISABLED)) == []
    assert run(book, [q(4, "1.0", "1.0")], Permissions(open_market=False)) == []
    [m] = run(book, [q(5, "1.09500", "1.09510")])  # the market opens: the gap is filled at its first price
    assert m.price == D("1.09500") and m.pnl == D("-500.00")


def test_a_stop_out_closes_the_worst_loser_until_the_margin_level_recovers() -> None:
    eur = {"EURUSD": EURUSD}
    # leverage 100: 1 lot at 1.10000 holds 1,100.00 of margin; three lots 3,300.00
    held = [buy(1, "1.10000"), buy(2, "1.10000"), sell(3, "1.09000")]
    quotes = {"EURUSD": q(9, "1.09000", "1.09010")}
    # floating: -1,000.00, -1,000.00, -10.00; balance 3,700 -> equity 1,690.00, margin 3,290.00
    # (the sell's margin is 1,090.00), level 51.37 % -> above 50 %: nothing
    assert stop_outs(D("3700"), held, quotes, eur, 100, D("50")) == []
    # balance 3,500 -> equity 1,490.00, level 45.29 %: the worst loser goes (the lower ticket of
    # the two equal ones), freeing 1,100.00: level 1,490 / 2,190 = 68.0 % -> done
    [m] = stop_outs(D("3500"), held, quotes, eur, 100, D("50"))
    assert (m.action, m.ticket, m.price, m.pnl) == (Action.STOP_OUT, 1, D("1.09000"), D("-1000.00"))
    assert stop_outs(D("3500"), held, quotes, eur, 100, D("0")) == []  # 0: never
