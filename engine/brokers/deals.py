"""How a position that is no longer open closed, as a venue that keeps deals tells it.

Not every venue can say (the Broker protocol does not require it): the manager asks a
broker that has `closing_deal` and treats one without it as a venue with no deal found.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol


@dataclass(frozen=True)
class ClosingDeal:
    ticket: str
    kind: str  # close (on request), sl, tp, stop_out, ...
    volume: Decimal
    price: Decimal
    pnl: Decimal
    at: datetime


class KeepsDeals(Protocol):
    def closing_deal(self, ticket: str) -> ClosingDeal | None: ...
