"""The broker interface every venue implements (paper, mt5)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, Context, Decimal, DivisionByZero, InvalidOperation, Overflow
from typing import TYPE_CHECKING, Any, Protocol

from engine.model import OrderType, Side

if TYPE_CHECKING:  # brokers sit above market; only the annotation is needed here
    from engine.market.base import MarketSpec


class Outcome(enum.StrEnum):
    DONE = "done"  # the venue accepted and filled/placed the order
    REJECTED = "rejected"  # the venue refused; nothing was placed
    UNKNOWN = "unknown"  # no answer (timeout, None): it may have executed; reconcile, never resend blindly
    EXPIRED = "expired"  # past the signal's expires_at when the venue would have acted; nothing was placed


class Refusal(enum.StrEnum):
    """What a refused modification means, so a caller acts on the meaning, not on a venue's
    retcode. A modification that changes nothing is not a refusal: it is DONE."""

    INVALID_STOPS = "invalid_stops"  # too close to the price (stops level) or the wrong side: clamp, retry once
    FROZEN = "frozen"  # within the freeze level, or the position is locked: defer, the venue is fine
    GONE = "gone"  # no such open position: it closed; record the close from the venue's deals
    OTHER = "other"  # anything else: a failure of the call


# A cost rounds up, in a context of its own (never the caller's thread-local one).
_COST = Context(prec=60, rounding=ROUND_CEILING, traps=[InvalidOperation, DivisionByZero, Overflow])
_ZERO = Decimal(0)


@dataclass(frozen=True)
class SymbolSpec:
    """What a lot of a symbol is worth at the venue. A venue quotes `tick_value` (account
    currency per lot per `tick_size` of price, for a losing position) where it has one; a
    venue without (paper) declares `contract_size` as account currency per 1.0 of price."""

    contract_size: Decimal = Decimal("1")
    volume_step: Decimal = Decimal("0.01")
    min_volume: Decimal = Decimal("0.01")
    max_volume: Decimal | None = None  # the venue's own limit, if any
    tick_size: Decimal | None = None
    tick_value: Decimal | None = None  # in the account currency

    def __post_init__(self) -> None:
        for name in ("contract_size", "volume_step", "min_volume", "max_volume", "tick_size", "tick_value"):
            value = getattr(self, name)
            if value is None and name in ("max_volume", "tick_size", "tick_value"):
                continue
            if type(value) is not Decimal:
                raise TypeError(f"SymbolSpec.{name} must be a Decimal (got {type(value).__name__})")
            if not value.is_finite() or not value > _ZERO:
                raise ValueError(f"SymbolSpec.{name} must be a finite Decimal > 0 (got {value})")
        if (self.tick_size is None) != (self.tick_value is None):
            raise ValueError("SymbolSpec.tick_size and tick_value go together")
        if self.max_volume is not None and self.max_volume < self.min_volume:
            raise ValueError(f"SymbolSpec.max_volume must be >= min_volume ({self.max_volume} < {self.min_volume})")

    @classmethod
    def from_market(cls, spec: MarketSpec) -> SymbolSpec:
        """The risk spec of a market data spec (engine.market): its contract size, volume
        step, minimum and maximum, and its tick value per tick size (a losing position's,
        in the account currency), so the loss at a stop is priced the way the venue prices it."""
        return cls(
            contract_size=spec.contract_size,
            volume_step=spec.volume_step,
            min_volume=spec.volume_min,
            max_volume=spec.volume_max,
            tick_size=spec.tick_size,
            tick_value=spec.tick_value,
        )

    def loss_per_lot(self, distance: Decimal) -> Decimal:
        """Account currency lost per lot over a price move of `distance` (rounded up)."""
        if self.tick_size is not None and self.tick_value is not None:
            return _COST.multiply(_COST.divide(distance, self.tick_size), self.tick_value)
        return _COST.multiply(distance, self.contract_size)

    def describe(self) -> str:
        if self.tick_size is not None:
            return f"tick value {self.tick_value} per tick {self.tick_size}"
        return f"contract size {self.contract_size}"


@dataclass(frozen=True)
class Quote:
    """A symbol's spec and, at a venue with prices, its current bid and ask."""

    spec: SymbolSpec
    bid: Decimal | None = None
    ask: Decimal | None = None
    # Account currency one lot holds as margin, at the ask (the higher price: never
    # under-counted for either side), where the venue states it (the paper venue).
    margin_per_lot: Decimal | None = None

    def executable(self, side: Side, type: OrderType, price: Decimal) -> Decimal:
        """The price an order would fill at: a market buy at the ask, a sell at the bid; a
        limit order at its price; at a venue without prices, the signal's price."""
        if type is OrderType.LIMIT:
            return price
        quoted = self.ask if side is Side.BUY else self.bid
        return price if quoted is None else quoted


class SymbolUnavailable(Exception):
    """The venue has no such symbol, no usable spec for it, or no quote: refuse, never default."""


@dataclass(frozen=True)
class OrderRequest:
    tag: str  # the signal's tag: alphanumeric, <= 31 characters (MT5 comment)
    symbol: str
    side: Side
    type: OrderType
    volume: Decimal
    price: Decimal
    sl: Decimal
    tp: Decimal | None
    epoch: int  # the leader epoch this order is sent under (a fencing-aware venue checks it)
    expires_at: datetime | None = None  # the venue refuses to act past this moment (Outcome.EXPIRED)
    max_loss: Decimal | None = None  # account currency: a venue that prices at send refuses a larger loss at the stop
    # The executable price the risk rules priced the order at (a market order's ask or bid in
    # the venue's quote). A venue that fills at the price it is given (paper, with a market)
    # books a market order there; MT5 fills at its own price at send.
    quoted: Decimal | None = None


@dataclass(frozen=True)
class OrderResult:
    outcome: Outcome
    ref: str | None = None  # the venue's ticket
    detail: str = ""
    retcode: int | None = None
    price: Decimal | None = None  # fill price when known
    refusal: Refusal | None = None  # a REJECTED modify/close/cancel: what the refusal means


@dataclass(frozen=True)
class Account:
    balance: Decimal
    equity: Decimal
    currency: str = "USD"
    daily_pnl: Decimal = Decimal(0)  # realised since 00:00 UTC; negative is a loss
    margin: Decimal | None = None  # used by open positions, where the venue says
    free_margin: Decimal | None = None


@dataclass(frozen=True)
class Position:
    ticket: str
    symbol: str
    side: Side
    volume: Decimal
    price: Decimal
    sl: Decimal | None
    tp: Decimal | None
    tag: str | None  # the comment / tag it was opened with, if any


@dataclass(frozen=True)
class VenueOrder:
    """An order or deal at the venue, found by tag (open orders, positions or history)."""

    ticket: str
    tag: str | None
    symbol: str
    side: Side
    volume: Decimal
    price: Decimal
    state: str  # "position", "pending", "history"
    epoch: int | None = None  # known only at a venue that records it (paper)
    at: datetime | None = None
    extra: dict[str, Any] | None = None


@dataclass(frozen=True)
class PositionDiff:
    """The venue's open positions against what broker_positions holds as open."""

    count: int  # open positions at the venue
    new: list[Position]  # at the venue, not known as open
    changed: list[tuple[Position, tuple[str, str, Decimal]]]  # with the known (symbol, side, volume)
    vanished: list[str]  # known as open, gone from the venue
    duplicate_tags: dict[str, list[str]]  # a tag on more than one open position


class BrokerError(Exception):
    """The venue could not be reached or answered nonsense; nothing is known to have happened."""


class BrokerUnavailable(BrokerError):
    """Start-up or a call failed because the venue (or its library) is not available."""


class TagInDoubt(BrokerError):
    """A fencing-aware venue cannot say whether an order under this tag was placed (an
    attempt reached the terminal and got no answer): hold the signal, never re-execute it."""


# Called inside a database venue's booking transaction with one result per order, so the
# signals' outcomes commit with their orders.
InTransaction = Callable[[Any, list[OrderResult]], None]


class Broker(Protocol):
    name: str
    fencing_aware: bool  # refuses orders whose epoch is superseded (paper, gateway)
    records_in_transaction: bool  # a BookingVenue: books a batch and its outcomes in one transaction

    def connect(self) -> None: ...
    def close(self) -> None: ...
    def account(self) -> Account: ...
    def positions(self) -> list[Position]: ...
    def find_by_tag(self, tag: str) -> list[VenueOrder]: ...
    def orders(self) -> list[VenueOrder]: ...
    def quote(self, symbol: str) -> Quote: ...
    def send(self, req: OrderRequest) -> OrderResult: ...
    def modify(self, ticket: str, sl: Decimal | None, tp: Decimal | None, epoch: int | None = None) -> OrderResult: ...
    def close_position(self, ticket: str, epoch: int | None = None) -> OrderResult: ...
    def cancel_order(self, ticket: str, epoch: int | None = None) -> OrderResult: ...


class BookingVenue(Broker, Protocol):
    """A venue that is the database (paper): a batch of orders under one epoch, and `within`,
    commit in one fenced transaction, or not at all."""

    def book(self, reqs: list[OrderRequest], within: InTransaction | None = None) -> list[OrderResult]: ...
