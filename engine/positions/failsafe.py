"""The last check before any stop change is sent: a stop only ever tightens, and the loss
at the new stop never exceeds the per-trade cap. Decimal throughout.

(Interface fixed first; the rules work fills the body.)
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from engine.brokers.base import SymbolSpec
from engine.model import Side


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str  # why it was refused, one line ("would widen: 1.0950 below 1.0960 for a buy")


def check(
    side: Side,
    entry: Decimal,
    volume: Decimal,
    current_sl: Decimal | None,  # None: the position has no stop at the venue (any stop tightens)
    new_sl: Decimal,
    spec: SymbolSpec,
    max_loss: Decimal,  # the per-trade cap in account currency (already x the safety margin)
) -> Verdict:
    raise NotImplementedError
