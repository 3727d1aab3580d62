"""The trade intent a signal carries, in the form every part of the engine shares."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(enum.StrEnum):
    MARKET = "market"
    LIMIT = "limit"


class SignalStatus(enum.StrEnum):
    RECEIVED = "received"
    EXECUTING = "executing"
    EXECUTED = "executed"
    FAILED = "failed"
    REJECTED = "rejected"
    IN_DOUBT = "in_doubt"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset(
    {
        SignalStatus.EXECUTED,
        SignalStatus.FAILED,
        SignalStatus.REJECTED,
        SignalStatus.EXPIRED,
        SignalStatus.CANCELLED,
    }
)


@dataclass(frozen=True)
class SignalIntent:
    """A validated signal. Money and prices are Decimal; times are timezone-aware UTC."""

    source: str
    symbol: str  # normalised: stripped, upper case
    side: Side
    type: OrderType
    price: Decimal  # entry (limit) or reference price (market)
    sl: Decimal  # no trade without a stop
    volume: Decimal | None = None  # exactly one of volume / risk_pct
    risk_pct: Decimal | None = None
    tp: Decimal | None = None
    signal_id: str | None = None
    expires_at: datetime | None = None
    ts: datetime | None = None  # the producer's timestamp, part of the fingerprint
    meta: dict[str, Any] = field(default_factory=dict)  # kept, never fingerprinted
    # The position's management rules, in their canonical JSON (engine.positions.rules
    # ManageRules.to_json); None: none given, the cluster default applies; {}: none at all.
    manage: dict[str, Any] | None = None
