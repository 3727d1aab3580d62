"""What the position manager tests share: a fencing on a claimed epoch, prices a test moves,
simple stand-in rules (until the rules work lands, and wherever the rules do not matter),
and a manager on the paper broker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry

from common.clock import FakeClock
from coordinator.elector import Fence
from coordinator.fencing import fenced
from engine.brokers.base import OrderRequest, Outcome
from engine.brokers.paper import PaperBroker
from engine.market.base import MarketSpec, Tick
from engine.market.sim import SimSource
from engine.model import OrderType, Side
from engine.positions import failsafe, rules
from engine.positions.manager import ManagerConfig, PositionManager, Rules
from engine.positions.metrics import PositionMetrics
from engine.risk import RiskLimits
from tests.market_support import MarketClock

D = Decimal
SIM = SimSource(0, clock=MarketClock(1_772_632_807_120))


class EpochFencing:
    """The Fencing protocol on an epoch a test claimed (tests.integration.test_paper.lead)."""

    def __init__(self, cluster: str, epoch: int) -> None:
        self.cluster = cluster
        self.epoch = epoch

    def fence(self, min_remaining_ms: float = 0.0) -> Fence:
        return Fence(self.epoch, 10_000.0)

    @contextmanager
    def fenced(self, conn: psycopg.Connection) -> Iterator[tuple[psycopg.Cursor, Fence]]:
        with fenced(conn, self.cluster, self.epoch) as cur:
            yield cur, Fence(self.epoch, 10_000.0)


class Prices:
    """Ticks a test sets; the sim's specs (EURUSD: point 0.00001, stops level 10 points)."""

    def __init__(self) -> None:
        self.quotes: dict[str, tuple[Decimal, Decimal]] = {}

    def set(self, symbol: str, bid: str, spread: str = "0.00010") -> None:
        self.quotes[symbol] = (D(bid), D(bid) + D(spread))

    def tick(self, symbol: str, *, max_age_ms: int) -> Tick:
        bid, ask = self.quotes[symbol]
        return Tick(symbol, 0, bid, ask, None, 0)

    def spec(self, symbol: str) -> MarketSpec:
        return SIM.spec(symbol)


@dataclass
class TrailRules:
    """Stand-in rules: trail `distance` behind the best price seen; the fail-safe refuses a
    looser stop and any stop past `refuse_beyond` (to test a refusal)."""

    distance: Decimal = D("0.00500")
    refuse_beyond: Decimal | None = None
    states_seen: list[rules.TrailState] = field(default_factory=list)

    def decide(
        self,
        held: rules.Held,
        _rules: Any,
        state: rules.TrailState,
        price: Decimal,
        current_sl: Decimal,
        atr: Any = None,
        swing: Any = None,
    ) -> rules.Decision:
        self.states_seen.append(state)
        sign = 1 if held.side is Side.BUY else -1
        best = price if state.high_water is None else (max if sign > 0 else min)(state.high_water, price)
        stop = best - sign * self.distance
        tighter = stop > current_sl if sign > 0 else stop < current_sl
        new = rules.TrailState(high_water=best, trailing_active=True)
        return rules.Decision(stop if tighter else current_sl, new, ("trailing 500 points",) if tighter else ())

    def check(
        self,
        side: Side,
        entry: Decimal,
        volume: Decimal,
        current_sl: Decimal | None,
        new_sl: Decimal,
        spec: Any,
        max_loss: Decimal,
    ) -> failsafe.Verdict:
        if self.refuse_beyond is not None and new_sl > self.refuse_beyond:
            return failsafe.Verdict(False, f"stand-in: {new_sl} beyond {self.refuse_beyond}")
        if current_sl is not None and (new_sl < current_sl if side is Side.BUY else new_sl > current_sl):
            return failsafe.Verdict(False, f"would widen: {new_sl} from {current_sl}")
        return failsafe.Verdict(True, "")

    def api(self) -> Rules:
        return Rules(
            decide=self.decide,
            check=self.check,
            parse=lambda obj: rules.ManageRules(),
            load_state=lambda obj: rules.TrailState(high_water=D(obj["high_water"]) if obj.get("high_water") else None),
            dump_state=lambda s: {"high_water": None if s.high_water is None else str(s.high_water)},
        )


def manager(
    broker: PaperBroker,
    fencing: EpochFencing,
    prices: Prices,
    trail: TrailRules,
    clock: FakeClock | None = None,
    alerts: list[tuple[str, str, str]] | None = None,
    **cfg: Any,
) -> PositionManager:
    sink = alerts if alerts is not None else []
    return PositionManager(
        ManagerConfig(fencing.cluster, "leader", "paper", max_in_flight=cfg.pop("max_in_flight", 1), **cfg),
        fencing,
        broker._pool,
        broker,
        prices,
        RiskLimits(),
        alert=lambda kind, severity, message, **f: sink.append((kind, severity, message)),
        rules_api=trail.api(),
        clock=clock or FakeClock(),
        metrics=PositionMetrics(CollectorRegistry()),
    )


def open_buy(
    broker: PaperBroker, epoch: int, tag: str, sl: str | None, symbol: str = "EURUSD", price: str = "1.10000"
) -> str:
    """A bought position booked at `price` (the broker's market set to None around the booking,
    so it books at the given price and stop)."""
    market, broker.market = broker.market, None
    try:
        result = broker.send(
            OrderRequest(
                tag, symbol, Side.BUY, OrderType.MARKET, D("0.10"), D(price), D(sl) if sl else D(0), None, epoch
            )
        )
    finally:
        broker.market = market
    assert result.outcome is Outcome.DONE and result.ref is not None
    if sl is None:  # a market-execution venue that dropped the stop
        with broker._pool.connection() as conn:
            conn.execute("UPDATE paper_positions SET sl = NULL WHERE ticket = %s", (int(result.ref),))
    return result.ref


def venue_sl(broker: PaperBroker, ticket: str) -> Decimal | None:
    return next(p.sl for p in broker.positions() if p.ticket == ticket)


def journal_kinds(broker: PaperBroker, cluster: str, ticket: str) -> list[str]:
    with broker._pool.connection() as conn:
        rows = conn.execute(
            "SELECT kind FROM trade_journal WHERE cluster = %s AND ticket = %s ORDER BY id", (cluster, ticket)
        ).fetchall()
    return [r[0] for r in rows]
