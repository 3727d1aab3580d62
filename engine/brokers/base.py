"""The broker interface every venue implements (paper, mt5)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from engine.model import OrderType, Side


class Outcome(enum.StrEnum):
    DONE = "done"  # the venue accepted and filled/placed the order
    REJECTED = "rejected"  # the venue refused; nothing was placed
    UNKNOWN = "unknown"  # no answer (timeout, None): it may have executed; reconcile, never resend blindly


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


@dataclass(frozen=True)
class OrderResult:
    outcome: Outcome
    ref: str | None = None  # the venue's ticket
    detail: str = ""
    retcode: int | None = None
    price: Decimal | None = None  # fill price when known


@dataclass(frozen=True)
class Account:
    balance: Decimal
    equity: Decimal
    currency: str = "USD"
    daily_pnl: Decimal = Decimal(0)  # realised since 00:00 UTC; negative is a loss


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


class BrokerError(Exception):
    """The venue could not be reached or answered nonsense; nothing is known to have happened."""


class BrokerUnavailable(BrokerError):
    """Start-up or a call failed because the venue (or its library) is not available."""


# Called inside a database venue's booking transaction with one result per order, so the
# signals' outcomes commit with their orders.
InTransaction = Callable[[Any, list[OrderResult]], None]


class Broker(Protocol):
    name: str
    fencing_aware: bool  # refuses orders whose epoch is superseded (only the paper broker)
    records_in_transaction: bool  # a BookingVenue: books a batch and its outcomes in one transaction

    def connect(self) -> None: ...
    def close(self) -> None: ...
    def account(self) -> Account: ...
    def positions(self) -> list[Position]: ...
    def find_by_tag(self, tag: str) -> list[VenueOrder]: ...
    def orders(self) -> list[VenueOrder]: ...
    def send(self, req: OrderRequest) -> OrderResult: ...
    def modify(self, ticket: str, sl: Decimal | None, tp: Decimal | None) -> OrderResult: ...
    def close_position(self, ticket: str, epoch: int | None = None) -> OrderResult: ...


class BookingVenue(Broker, Protocol):
    """A venue that is the database (paper): a batch of orders under one epoch, and `within`,
    commit in one fenced transaction, or not at all."""

    def book(self, reqs: list[OrderRequest], within: InTransaction | None = None) -> list[OrderResult]: ...
