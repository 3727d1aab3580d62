"""The JSON the MT5 gateway and its replica-side client exchange (one module, both ends).

Money and prices are decimal strings, never JSON numbers (a float would lose digits); times
are ISO 8601 with a UTC offset. Decoding is strict where the gateway reads a request (a
missing, unknown or malformed field is a `WireError` naming it, answered 422) and tolerant
of unknown keys where the client reads an answer, so a newer gateway can add fields.

A mutating call carries a `Fence`: the cluster, the epoch it is sent under and the instance
sending it. The gateway's promise compares exactly these three.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Any, TypeVar

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
from engine.model import OrderType, Side

TAG = re.compile(r"[A-Za-z0-9]{1,31}")  # the MT5 comment a tag travels in
NAME = re.compile(r"[^\s|:]{1,200}")  # a cluster or instance name (coordinator.config's rule, bounded)
TICKET = re.compile(r"[0-9]{1,20}")
SYMBOL = re.compile(r"[^\s]{1,64}")
MAX_EPOCH = 2**63 - 1  # leader_record.epoch is a bigint
MAX_DIGITS = 30  # a price or volume spelled with more digits than this is nonsense (and costly to print)

E = TypeVar("E", bound=Enum)


class WireError(ValueError):
    """A field is missing, unknown or malformed. The message names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclass(frozen=True)
class Fence:
    """What a mutating call is sent under: the gatekeeper compares exactly this."""

    cluster: str
    epoch: int
    instance: str

    def as_json(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "epoch": self.epoch, "instance": self.instance}

    def __str__(self) -> str:
        return f"epoch {self.epoch} of {self.instance} (cluster {self.cluster})"


class Reader:
    """Reads one JSON object field by field, naming the field in every error."""

    def __init__(self, obj: Any, where: str, strict: bool = True) -> None:
        if not isinstance(obj, dict):
            raise WireError(where, "must be a JSON object")
        self._obj = obj
        self._where = where
        self._strict = strict
        self._seen: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self._where}.{key}" if self._where else key

    def raw(self, key: str, optional: bool = False) -> Any:
        self._seen.add(key)
        if key not in self._obj or (optional and self._obj[key] is None):
            if optional:
                return None
            raise WireError(self._name(key), "is required")
        return self._obj[key]

    def text(self, key: str, pattern: re.Pattern[str] | None = None, optional: bool = False) -> Any:
        value = self.raw(key, optional)
        if value is None:
            return None
        if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
            want = f"a string matching {pattern.pattern}" if pattern is not None else "a string"
            raise WireError(self._name(key), f"must be {want}")
        return value

    def integer(self, key: str, low: int = 0, high: int = MAX_EPOCH, optional: bool = False) -> Any:
        value = self.raw(key, optional)
        if value is None:
            return None
        if type(value) is not int or not low <= value <= high:
            raise WireError(self._name(key), f"must be an integer from {low} to {high}")
        return value

    def flag(self, key: str) -> bool:
        value = self.raw(key)
        if type(value) is not bool:
            raise WireError(self._name(key), "must be true or false")
        return value

    def decimal(self, key: str, optional: bool = False, positive: bool = False) -> Any:
        value = self.raw(key, optional)
        if value is None:
            return None
        if not isinstance(value, str):
            raise WireError(self._name(key), "must be a decimal string (money never travels as a JSON number)")
        try:
            d = Decimal(value)
        except InvalidOperation:
            raise WireError(self._name(key), f"is not a decimal number ({value[:40]!r})") from None
        if not d.is_finite() or (positive and d <= 0):
            raise WireError(self._name(key), "must be a finite decimal" + (" > 0" if positive else ""))
        if d and not -MAX_DIGITS <= d.adjusted() <= MAX_DIGITS:
            raise WireError(
                self._name(key), f"is out of range (more than {MAX_DIGITS} digits either side of the point)"
            )
        return d

    def choice(self, key: str, kind: type[E]) -> E:
        value = self.raw(key)
        try:
            return kind(value)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in kind)
            raise WireError(self._name(key), f"must be one of {allowed}") from None

    def when(self, key: str, optional: bool = False) -> Any:
        value = self.text(key, optional=optional)
        if value is None:
            return None
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            raise WireError(self._name(key), "must be an ISO 8601 time") from None
        if t.tzinfo is None:
            raise WireError(self._name(key), "must carry a UTC offset")
        return t

    def mapping(self, key: str, optional: bool = False) -> Any:
        value = self.raw(key, optional)
        if value is not None and not isinstance(value, dict):
            raise WireError(self._name(key), "must be a JSON object")
        return value

    def done(self) -> None:
        """Refuse keys nobody read (strict readers only): a field the gateway does not know
        must not be silently ignored on a call that moves money."""
        extra = sorted(set(self._obj) - self._seen)
        if self._strict and extra:
            raise WireError(self._name(extra[0]), "is not a known field")


def _s(d: Decimal | None) -> str | None:
    return None if d is None else str(d)


def _t(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


# ---- fence ----


def fence_from_json(obj: Any) -> Fence:
    r = Reader(obj, "fence")
    fence = Fence(r.text("cluster", NAME), r.integer("epoch", low=1), r.text("instance", NAME))
    r.done()
    return fence


# ---- orders ----


def order_to_json(req: OrderRequest) -> dict[str, Any]:
    return {
        "tag": req.tag,
        "symbol": req.symbol,
        "side": req.side.value,
        "type": req.type.value,
        "volume": str(req.volume),
        "price": str(req.price),
        "sl": str(req.sl),
        "tp": _s(req.tp),
        "epoch": req.epoch,
        "expires_at": _t(req.expires_at),
        "max_loss": _s(req.max_loss),
    }


def order_from_json(obj: Any) -> OrderRequest:
    r = Reader(obj, "order")
    req = OrderRequest(
        tag=r.text("tag", TAG),
        symbol=r.text("symbol", SYMBOL),
        side=r.choice("side", Side),
        type=r.choice("type", OrderType),
        volume=r.decimal("volume", positive=True),
        price=r.decimal("price", positive=True),
        sl=r.decimal("sl", positive=True),
        tp=r.decimal("tp", optional=True, positive=True),
        epoch=r.integer("epoch", low=1),
        expires_at=r.when("expires_at", optional=True),
        max_loss=r.decimal("max_loss", optional=True, positive=True),
    )
    r.done()
    return req


def _canonical(d: Decimal | None) -> str | None:
    """One spelling per number: 0.10 and 0.1 are the same order (the Reader bounds the digits)."""
    return None if d is None else format(d.normalize(), "f")


def order_digest(req: OrderRequest) -> str:
    """SHA-256 of what the order is, without the epoch it is sent under: a retry of the same
    order by a new leader has the same digest."""
    canon = {
        "tag": req.tag,
        "symbol": req.symbol,
        "side": req.side.value,
        "type": req.type.value,
        "volume": _canonical(req.volume),
        "price": _canonical(req.price),
        "sl": _canonical(req.sl),
        "tp": _canonical(req.tp),
        "expires_at": _t(req.expires_at),
        "max_loss": _canonical(req.max_loss),
    }
    return hashlib.sha256(json.dumps(canon, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def call_digest(op: str, fields: Mapping[str, Any]) -> str:
    """SHA-256 of a modify / close / cancel: the operation and its arguments."""
    body = {"op": op, **{k: _canonical(v) if isinstance(v, Decimal) else v for k, v in fields.items()}}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---- answers ----


def result_to_json(r: OrderResult) -> dict[str, Any]:
    return {
        "outcome": r.outcome.value,
        "ref": r.ref,
        "detail": r.detail,
        "retcode": r.retcode,
        "price": _s(r.price),
        "refusal": None if r.refusal is None else r.refusal.value,
    }


def result_from_json(obj: Any) -> OrderResult:
    r = Reader(obj, "result", strict=False)
    return OrderResult(
        outcome=r.choice("outcome", Outcome),
        ref=r.text("ref", optional=True),
        detail=r.text("detail", optional=True) or "",
        retcode=r.integer("retcode", low=-(2**31), high=2**31, optional=True),
        price=r.decimal("price", optional=True),
        refusal=_refusal(r.raw("refusal", optional=True)),
    )


def _refusal(value: Any) -> Refusal | None:
    """A refusal's meaning; one this side does not know (a newer gateway's) is OTHER, never
    a malformed answer: the call was refused either way."""
    if value is None:
        return None
    try:
        return Refusal(value)
    except ValueError:
        return Refusal.OTHER


def account_to_json(a: Account) -> dict[str, Any]:
    return {
        "balance": str(a.balance),
        "equity": str(a.equity),
        "currency": a.currency,
        "daily_pnl": str(a.daily_pnl),
        "margin": _s(a.margin),
        "free_margin": _s(a.free_margin),
    }


def account_from_json(obj: Any) -> Account:
    r = Reader(obj, "account", strict=False)
    return Account(
        r.decimal("balance"),
        r.decimal("equity"),
        r.text("currency"),
        r.decimal("daily_pnl"),
        margin=r.decimal("margin", optional=True),
        free_margin=r.decimal("free_margin", optional=True),
    )


def position_to_json(p: Position) -> dict[str, Any]:
    return {
        "ticket": p.ticket,
        "symbol": p.symbol,
        "side": p.side.value,
        "volume": str(p.volume),
        "price": str(p.price),
        "sl": _s(p.sl),
        "tp": _s(p.tp),
        "tag": p.tag,
    }


def position_from_json(obj: Any) -> Position:
    r = Reader(obj, "position", strict=False)
    return Position(
        ticket=r.text("ticket"),
        symbol=r.text("symbol"),
        side=r.choice("side", Side),
        volume=r.decimal("volume"),
        price=r.decimal("price"),
        sl=r.decimal("sl", optional=True),
        tp=r.decimal("tp", optional=True),
        tag=r.text("tag", optional=True),
    )


def closing_deal_to_json(d: ClosingDeal) -> dict[str, Any]:
    return {
        "ticket": d.ticket,
        "kind": d.kind,
        "volume": str(d.volume),
        "price": str(d.price),
        "pnl": str(d.pnl),
        "at": _t(d.at),
    }


def closing_deal_from_json(obj: Any) -> ClosingDeal:
    r = Reader(obj, "deal", strict=False)
    return ClosingDeal(
        ticket=r.text("ticket", TICKET),
        kind=r.text("kind"),
        volume=r.decimal("volume"),
        price=r.decimal("price"),
        pnl=r.decimal("pnl"),
        at=r.when("at"),
    )


def venue_order_to_json(v: VenueOrder) -> dict[str, Any]:
    return {
        "ticket": v.ticket,
        "tag": v.tag,
        "symbol": v.symbol,
        "side": v.side.value,
        "volume": str(v.volume),
        "price": str(v.price),
        "state": v.state,
        "epoch": v.epoch,
        "at": _t(v.at),
        "extra": v.extra,
    }


def venue_order_from_json(obj: Any) -> VenueOrder:
    r = Reader(obj, "venue_order", strict=False)
    return VenueOrder(
        ticket=r.text("ticket"),
        tag=r.text("tag", optional=True),
        symbol=r.text("symbol"),
        side=r.choice("side", Side),
        volume=r.decimal("volume"),
        price=r.decimal("price"),
        state=r.text("state"),
        epoch=r.integer("epoch", optional=True),
        at=r.when("at", optional=True),
        extra=r.mapping("extra", optional=True),
    )


def quote_to_json(q: Quote) -> dict[str, Any]:
    s = q.spec
    return {
        "spec": {
            "contract_size": str(s.contract_size),
            "volume_step": str(s.volume_step),
            "min_volume": str(s.min_volume),
            "max_volume": _s(s.max_volume),
            "tick_size": _s(s.tick_size),
            "tick_value": _s(s.tick_value),
        },
        "bid": _s(q.bid),
        "ask": _s(q.ask),
        "margin_per_lot": _s(q.margin_per_lot),
    }


def quote_from_json(obj: Any) -> Quote:
    r = Reader(obj, "quote", strict=False)
    s = Reader(r.mapping("spec"), "quote.spec", strict=False)
    spec = SymbolSpec(
        contract_size=s.decimal("contract_size"),
        volume_step=s.decimal("volume_step"),
        min_volume=s.decimal("min_volume"),
        max_volume=s.decimal("max_volume", optional=True),
        tick_size=s.decimal("tick_size", optional=True),
        tick_value=s.decimal("tick_value", optional=True),
    )
    return Quote(
        spec=spec,
        bid=r.decimal("bid", optional=True),
        ask=r.decimal("ask", optional=True),
        margin_per_lot=r.decimal("margin_per_lot", optional=True),
    )


def listing(obj: Any, key: str, item: Callable[[Any], Any]) -> list[Any]:
    """`obj[key]` as a list of decoded items."""
    r = Reader(obj, "", strict=False)
    values = r.raw(key)
    if not isinstance(values, list):
        raise WireError(key, "must be a JSON array")
    return [item(v) for v in values]
