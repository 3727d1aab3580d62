"""Pre-trade risk checks and position sizing. Pure functions over Decimal: no I/O, no floats.

`size_order` turns a validated SignalIntent into a volume, or refuses it with RiskRejected
naming the first rule it breaks. The rules, in order:

0. the venue has the symbol with a usable spec, and a quote    -> "symbol_spec", "quote" (executor)
1. equity must be > 0                                          -> "equity"
2. realised daily loss below max_daily_loss_pct of the balance -> "max_daily_loss"
3. fewer than max_open_positions positions + pending orders    -> "max_open_positions"
4. the executable price (a market order's ask or bid) within max_price_deviation_pct of the
   signal's price                                              -> "price_tolerance"
5. stop distance |executable price - sl| > 0                   -> "stop_distance"
   and the stop below it for a buy, above it for a sell        -> "stop_side"
6. volume: the intent's own, or sized from risk_pct (capped at max_risk_pct, times the
   safety margin) over the loss per lot at the stop (the venue's tick value per tick size,
   in the account currency) and rounded DOWN to a multiple of the symbol's volume step
7. volume >= min_volume                                        -> "min_volume"
   volume <= min(limits.max_volume, spec.max_volume)           -> "max_volume"
   (an explicit volume is never changed, only refused; a risk-sized one is capped to the
   largest step multiple within the maximum, then checked against min_volume again)
8. risk (volume x loss per lot at the stop) <= max_risk_pct of equity -> "risk_cap"
9. margin (volume x the venue's margin per lot) <= free margin, where the venue states
   both (the paper venue; the rest of a batch sees the margin earlier orders hold) -> "margin"

Everything is priced at the executable price, never the producer's: a signal priced far from
the market would otherwise be sized for a stop distance it does not have.

Arithmetic runs in explicit contexts (never the caller's thread-local one), rounded the safe
way wherever a result could be inexact: an allowance rounds down, a cost rounds up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import (
    ROUND_CEILING,
    ROUND_FLOOR,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
)
from typing import Literal

from common.errors import ConfigError
from common.numbers import ascii_decimal, ascii_int
from engine.brokers.base import Account, SymbolSpec
from engine.model import SignalIntent

Rule = Literal[
    "symbol_spec",
    "quote",
    "price_tolerance",
    "stop_side",
    "stop_distance",
    "risk_cap",
    "max_volume",
    "min_volume",
    "max_open_positions",
    "max_daily_loss",
    "equity",
    "margin",
]
# The rules size_order checks, in order; "symbol_spec" and "quote" are the executor's, before it.
RULES: tuple[Rule, ...] = (
    "equity",
    "max_daily_loss",
    "max_open_positions",
    "price_tolerance",
    "stop_distance",
    "stop_side",
    "min_volume",
    "max_volume",
    "risk_cap",
    "margin",
)

# RiskLimits field -> the environment variable that sets it.
LIMIT_ENV = {
    "safety_margin": "HAEXEC_RISK_SAFETY_MARGIN",
    "max_risk_pct": "HAEXEC_RISK_MAX_RISK_PCT",
    "max_volume": "HAEXEC_RISK_MAX_VOLUME",
    "max_open_positions": "HAEXEC_RISK_MAX_OPEN_POSITIONS",
    "max_daily_loss_pct": "HAEXEC_RISK_MAX_DAILY_LOSS_PCT",
    "max_price_deviation_pct": "HAEXEC_RISK_MAX_PRICE_DEVIATION_PCT",
}

# A cap, not a target: far beyond any account this sizes for, and still a number SQL counts.
MAX_OPEN_POSITIONS = 1_000_000_000

_HUNDRED = Decimal(100)
_ZERO = Decimal(0)
_ONE = Decimal(1)


def _ctx(rounding: str, prec: int = 60) -> Context:
    """A fresh context: wide enough that sane inputs are exact, trapping anything undefined."""
    return Context(prec=prec, rounding=rounding, traps=[InvalidOperation, DivisionByZero, Overflow])


def _dec(name: str, value: object) -> Decimal:
    if type(value) is not Decimal:
        raise TypeError(f"{name} must be a Decimal (got {type(value).__name__} {value!r})")
    if not value.is_finite():
        raise ValueError(f"{name} must be finite (got {value})")
    return value


# ---- configuration ----


@dataclass(frozen=True)
class RiskLimits:
    safety_margin: Decimal = Decimal("0.95")  # risk-based sizing uses only this fraction of the allowed risk
    max_risk_pct: Decimal = Decimal("2")  # per-trade risk cap, % of equity
    max_volume: Decimal = Decimal("100")  # lots
    max_open_positions: int = 20
    max_daily_loss_pct: Decimal = Decimal("5")  # % of balance; realised daily loss stops new trades
    max_price_deviation_pct: Decimal = Decimal("0.5")  # executable price vs the signal's, % of the signal's

    def __post_init__(self) -> None:
        for name in ("safety_margin", "max_risk_pct", "max_volume", "max_daily_loss_pct", "max_price_deviation_pct"):
            value = getattr(self, name)
            if type(value) is not Decimal or not value.is_finite():
                raise ConfigError(name, f"must be a finite Decimal (got {value!r})")
        if not _ZERO < self.safety_margin <= _ONE:
            raise ConfigError("safety_margin", f"must be in (0, 1] (got {self.safety_margin})")
        for name in ("max_risk_pct", "max_daily_loss_pct", "max_price_deviation_pct"):
            value = getattr(self, name)
            if not _ZERO < value <= _HUNDRED:
                raise ConfigError(name, f"must be a percentage in (0, 100] (got {value})")
        if not self.max_volume > _ZERO:
            raise ConfigError("max_volume", f"must be > 0 lots (got {self.max_volume})")
        if type(self.max_open_positions) is not int or not 1 <= self.max_open_positions <= MAX_OPEN_POSITIONS:
            raise ConfigError(
                "max_open_positions", f"must be an integer 1..{MAX_OPEN_POSITIONS} (got {self.max_open_positions!r})"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RiskLimits:
        """Defaults, overridden by the HAEXEC_RISK_* variables that are set and non-empty.
        A broken value is a ConfigError naming the variable."""
        values: dict[str, object] = {}
        for f in fields(cls):
            name = LIMIT_ENV[f.name]
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                continue
            if f.name == "max_open_positions":
                try:
                    values[f.name] = ascii_int(raw.strip())
                except ValueError:
                    raise ConfigError(name, f"must be an integer >= 1 (got {raw!r})") from None
            else:
                try:
                    values[f.name] = ascii_decimal(raw.strip())
                except ValueError:
                    raise ConfigError(name, f"must be a decimal number (got {raw!r})") from None
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ConfigError as e:
            raise ConfigError(LIMIT_ENV[e.setting], e.rule) from None


# ---- results ----


class RiskRejected(Exception):
    """The order breaks a risk rule; nothing should be sent."""

    def __init__(self, rule: Rule, detail: str) -> None:
        super().__init__(f"{rule}: {detail}")
        self.rule: Rule = rule
        self.detail = detail  # one line with the numbers


@dataclass(frozen=True)
class SizedOrder:
    volume: Decimal
    risk_amount: Decimal  # volume * stop distance * contract size (account currency)
    risk_pct: Decimal  # risk_amount / equity * 100
    margin: Decimal | None = None  # the margin it holds once open, where the venue states it


# ---- sizing ----


def floor_to_step(value: Decimal, step: Decimal) -> Decimal:
    """The largest multiple of `step` that is <= value (never rounds up)."""
    ctx = _ctx(ROUND_FLOOR)
    units = ctx.divide(value, step).to_integral_value(rounding=ROUND_FLOOR, context=ctx)
    return ctx.multiply(units, step).quantize(step, context=ctx)


def size_order(
    intent: SignalIntent,
    account: Account,
    open_positions: int,
    spec: SymbolSpec,
    limits: RiskLimits,
    market: Decimal | None = None,
    margin_per_lot: Decimal | None = None,
) -> SizedOrder:
    """The order's volume and risk, or RiskRejected naming the first rule broken (see module doc).
    `market` is the price the order would fill at (a market order's ask or bid); None: the
    signal's own price (a venue without prices). `margin_per_lot`: what one lot holds at the
    venue, checked against the account's free margin where both are known."""
    down, up = _ctx(ROUND_FLOOR), _ctx(ROUND_CEILING)
    equity = _dec("account.equity", account.equity)
    balance = _dec("account.balance", account.balance)
    daily_pnl = _dec("account.daily_pnl", account.daily_pnl)
    quoted = _dec("intent.price", intent.price)
    price = quoted if market is None else _dec("market", market)
    sl = _dec("intent.sl", intent.sl)
    if (intent.volume is None) == (intent.risk_pct is None):
        raise ValueError("intent must carry exactly one of volume / risk_pct")

    # 1. equity
    if not equity > _ZERO:
        raise RiskRejected("equity", f"equity {equity} {account.currency} is not positive")

    # 2. daily loss
    loss = down.minus(daily_pnl)
    loss_limit = down.divide(down.multiply(balance, limits.max_daily_loss_pct), _HUNDRED)
    if loss >= loss_limit:
        raise RiskRejected(
            "max_daily_loss",
            f"realised daily loss {loss} >= {limits.max_daily_loss_pct}% of balance {balance}"
            f" = {loss_limit} {account.currency}",
        )

    # 3. open exposure
    if open_positions >= limits.max_open_positions:
        raise RiskRejected(
            "max_open_positions",
            f"{open_positions} positions and pending orders open, limit {limits.max_open_positions}",
        )

    # 4 & 5. the executable price near the signal's; the stop apart from it, on the right side
    deviation = up.multiply(up.divide(up.subtract(max(price, quoted), min(price, quoted)), quoted), _HUNDRED)
    if deviation > limits.max_price_deviation_pct:
        raise RiskRejected(
            "price_tolerance",
            f"executable price {price} is {_ctx(ROUND_CEILING, prec=6).plus(deviation)}% from the signal's"
            f" {quoted}, limit {limits.max_price_deviation_pct}%",
        )
    stop = up.subtract(max(price, sl), min(price, sl))
    if not stop > _ZERO:
        raise RiskRejected("stop_distance", f"stop distance |{price} - {sl}| = {stop} is not positive")
    buy = intent.side.value == "buy"
    if not (sl < price if buy else sl > price):
        where = "below" if buy else "above"
        raise RiskRejected("stop_side", f"{intent.side.value} stop {sl} is not {where} the executable price {price}")
    per_lot = spec.loss_per_lot(stop)  # account currency risked per lot

    # 6 & 7. volume and its bounds
    max_volume = limits.max_volume if spec.max_volume is None else min(limits.max_volume, spec.max_volume)
    if intent.volume is not None:
        volume = _dec("intent.volume", intent.volume)
        if volume < spec.min_volume:
            raise RiskRejected("min_volume", f"volume {volume} < min_volume {spec.min_volume}")
        if volume > max_volume:
            raise RiskRejected("max_volume", f"volume {volume} > max_volume {max_volume}")
    else:
        requested = _dec("intent.risk_pct", intent.risk_pct)
        pct = min(requested, limits.max_risk_pct)
        allowed = down.multiply(down.divide(down.multiply(equity, pct), _HUNDRED), limits.safety_margin)
        unrounded = down.divide(allowed, per_lot)
        volume = floor_to_step(unrounded, spec.volume_step)
        clipped = f" (requested {requested}%)" if pct != requested else ""
        sized = (
            f"{pct}%{clipped} x {limits.safety_margin} of equity {equity} = {allowed} / {per_lot} per lot"
            f" ({stop} at {spec.describe()}) = {_ctx(ROUND_FLOOR, prec=12).plus(unrounded)}, step {spec.volume_step}"
        )
        capped = ""
        if volume > max_volume:
            volume = floor_to_step(max_volume, spec.volume_step)
            capped = f", capped to max_volume {max_volume}"
        if volume < spec.min_volume:
            raise RiskRejected(
                "min_volume", f"risk-sized volume {volume} < min_volume {spec.min_volume} ({sized}{capped})"
            )

    # 8. per-trade risk cap
    risk_amount = up.multiply(volume, per_lot)
    cap = risk_cap(account, limits)
    if risk_amount > cap:
        raise RiskRejected(
            "risk_cap",
            f"risk {volume} x {per_lot} per lot ({stop} at {spec.describe()}) = {risk_amount} >"
            f" {limits.max_risk_pct}% of equity {equity} = {cap} {account.currency}",
        )

    # 9. margin
    margin = None
    if margin_per_lot is not None and account.free_margin is not None:
        margin = up.multiply(volume, _dec("margin_per_lot", margin_per_lot))
        free = _dec("account.free_margin", account.free_margin)
        if margin > free:
            raise RiskRejected(
                "margin",
                f"margin {volume} x {margin_per_lot} per lot = {margin} > free margin {free} {account.currency}",
            )
    report = _ctx(ROUND_HALF_EVEN, prec=28)
    risk_pct = report.multiply(report.divide(risk_amount, equity), _HUNDRED)
    return SizedOrder(volume=volume, risk_amount=risk_amount, risk_pct=risk_pct, margin=margin)


def risk_cap(account: Account, limits: RiskLimits) -> Decimal:
    """The most one trade may lose at its stop, in account currency (rounded down)."""
    down = _ctx(ROUND_FLOOR)
    return down.divide(down.multiply(_dec("account.equity", account.equity), limits.max_risk_pct), _HUNDRED)
