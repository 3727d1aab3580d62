"""The matching core on random price paths with random orders (hypothesis): at every tick
equity is balance + the floating P&L of every open position, no position closes on the
wrong side of the book (nor any order fills there), and the deals' P&L sums to the change
in the balance. Two symbols with different P&L rules (EURUSD in USD, USDJPY in JPY
converted at the closing price), gaps, stop-outs and expiries included."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from hypothesis import event, given, settings
from hypothesis import strategies as st

from engine.model import Side
from engine.venue.matching import Book, close_match, stop_outs
from engine.venue.model import Action, Kind, Match, Order, Position, Quote
from engine.venue.pnl import floating, mark
from tests.unit.venue_fixtures import contract

D = Decimal
CONTRACTS = {"EURUSD": contract("EURUSD"), "USDJPY": contract("USDJPY")}
START = {"EURUSD": 110_000, "USDJPY": 150_000}  # mid in points
DIGITS = {"EURUSD": 5, "USDJPY": 3}
INITIAL = D("10000")
LEVERAGE = 50


@dataclass(frozen=True)
class Step:
    symbol: str
    move: int  # points
    spread: int  # points
    side: Side | None  # an order arrives after this tick
    kind: Kind | None  # None: a market order
    volume: int  # hundredths of a lot
    offset: int  # a pending order's distance from the market, points
    sl: int | None  # distance of the stop from the entry, points
    tp: int | None
    expires_in: int | None  # steps


moves = st.one_of(st.integers(-40, 40), st.integers(-3000, 3000))  # mostly small, sometimes a gap
steps = st.builds(
    Step,
    symbol=st.sampled_from(sorted(START)),
    move=moves,
    spread=st.integers(1, 40),
    side=st.one_of(st.none(), st.sampled_from(Side)),
    kind=st.one_of(st.none(), st.sampled_from(Kind)),
    volume=st.integers(1, 300),
    offset=st.integers(0, 300),
    sl=st.one_of(st.none(), st.integers(1, 500)),
    tp=st.one_of(st.none(), st.integers(1, 500)),
    expires_in=st.one_of(st.none(), st.integers(1, 20)),
)


def price(points: int, symbol: str) -> Decimal:
    return D(points).scaleb(-DIGITS[symbol])


def check_side(m: Match, q: Quote, before: Position | Order) -> None:
    """A close trades on the side its position would (a buy sells at the bid), at or beyond
    its trigger; a fill at the side its order would, at or better than a limit."""
    if m.action.closes:
        assert isinstance(before, Position)
        assert m.price == q.exit_price(m.side), m
        buy = m.side is Side.BUY
        if m.action is Action.STOP_LOSS:
            assert before.sl is not None and (m.price <= before.sl if buy else m.price >= before.sl), m
        elif m.action is Action.TAKE_PROFIT:
            assert before.tp is not None and (m.price >= before.tp if buy else m.price <= before.tp), m
    elif m.action is Action.FILL:
        assert isinstance(before, Order)
        assert m.price == q.entry_price(m.side), m
        below = (m.side is Side.BUY) == (before.kind is Kind.LIMIT)
        assert m.price <= before.price if below else m.price >= before.price, m
    assert m.time_ms > before.since_ms, "acted on before it existed"


def settle(book: Book, m: Match, q: Quote) -> None:
    before = book.position(m.ticket) if m.action.closes else book.order(m.ticket)
    assert before is not None, f"{m} matched a ticket the book does not hold"
    if m.action is not Action.EXPIRE:
        check_side(m, q, before)
    event(m.action.value)  # --hypothesis-show-statistics: how often each kind of match was exercised
    book.apply(m)


@settings(max_examples=300, deadline=None)
@given(st.lists(steps, min_size=1, max_size=60))
def test_equity_sides_and_the_ledger_hold_on_random_paths(path: list[Step]) -> None:
    book = Book()
    balance = INITIAL
    realised: list[Decimal] = []
    mid = dict(START)
    ticket = 0
    for n, step in enumerate(path, start=1):
        t = n * 250
        s = step.symbol
        mid[s] = max(mid[s] + step.move, 1000)
        bid = mid[s] - step.spread // 2
        quote = Quote(s, t, price(bid, s), price(bid + step.spread, s))
        # the quote's matches, then the orders whose time ran out (on any symbol), then stop-outs
        matches = book.on_quote(quote, CONTRACTS[s])
        for m in matches:
            settle(book, m, quote)
        expiries = book.expired(t)
        for m in expiries:
            settle(book, m, quote)
        outs = stop_outs(balance, list(book.positions()), book.quotes, CONTRACTS, LEVERAGE, D(50))
        for m in outs:
            settle(book, m, book.quotes[m.symbol])
        for m in matches + outs:
            if m.action.closes:
                balance += m.pnl
                realised.append(m.pnl)

        # the invariants, at every tick
        open_positions = list(book.positions())
        marked = mark(balance, open_positions, book.quotes, CONTRACTS, LEVERAGE)
        quoted = [p for p in open_positions if p.symbol in book.quotes]
        assert marked.equity == balance + sum(
            (floating(p, book.quotes[p.symbol], CONTRACTS[p.symbol]) for p in quoted), D(0)
        )
        assert marked.free_margin == marked.equity - marked.margin
        assert sum(realised, D(0)) == balance - INITIAL
        closing_all = [close_match(p, book.quotes[p.symbol], CONTRACTS[p.symbol]) for p in quoted]
        assert balance + sum((c.pnl for c in closing_all), D(0)) == marked.equity
        for c in closing_all:
            assert c.price == book.quotes[c.symbol].exit_price(c.side)

        # an order arrives after the tick: it is there from the next quote on
        if step.side is not None:
            ticket += 1
            side = step.side
            sign = 1 if side is Side.BUY else -1
            volume = D(step.volume).scaleb(-2)
            if step.kind is None:  # a market order fills now at the ask (buy) or the bid (sell)
                entry = quote.entry_price(side)
            else:
                below = (side is Side.BUY) == (step.kind is Kind.LIMIT)
                entry = quote.entry_price(side) + (-1 if below else 1) * price(step.offset, s)
            sl = None if step.sl is None else entry - sign * price(step.sl, s)
            tp = None if step.tp is None else entry + sign * price(step.tp, s)
            if step.kind is None:
                book.put_position(Position(ticket, s, side, volume, entry, sl, tp, since_ms=t))
            else:
                expires = None if step.expires_in is None else t + step.expires_in * 250
                book.put_order(Order(ticket, s, side, step.kind, volume, entry, sl, tp, since_ms=t, expires_ms=expires))
