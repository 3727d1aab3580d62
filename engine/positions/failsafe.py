"""The last check before any stop change is sent: a stop only ever tightens, and the loss
at the new stop never exceeds the per-trade cap. Decimal throughout.

A position at MetaTrader 5 without a stop reports sl = 0.0: a current stop that is not a
finite positive price is no stop, so any valid stop tightens it (refusing a sell its first
stop because 0 is "below" it would leave the position naked).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Context, Decimal

from engine.brokers.base import SymbolSpec
from engine.model import Side

_ZERO = Decimal(0)
# A cost rounds up, in its own context (the ambient one is anyone's to change).
_COST = Context(prec=60, rounding=ROUND_CEILING)


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
    if not new_sl.is_finite() or new_sl <= _ZERO:
        return Verdict(False, f"not a stop: {new_sl} is not a finite positive price")
    buy = side is Side.BUY
    if current_sl is not None and current_sl.is_finite() and current_sl > _ZERO:
        if new_sl < current_sl if buy else new_sl > current_sl:
            relation = "below" if buy else "above"
            return Verdict(False, f"would widen: {new_sl} {relation} {current_sl} for a {side}")
    # The loss if the stop is hit: only a stop on the losing side of entry loses anything.
    distance = _COST.subtract(entry, new_sl) if buy else _COST.subtract(new_sl, entry)
    loss = _COST.multiply(spec.loss_per_lot(distance), volume) if distance > _ZERO else _ZERO
    if loss > max_loss:
        return Verdict(False, f"loss at the stop {new_sl} would be {loss:f}, above the cap {max_loss:f}")
    return Verdict(True, "")
