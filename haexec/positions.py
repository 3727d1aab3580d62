"""The position manager and trade registration, built from a replica's settings: the one
place that names the account a position belongs to and the rules a position gets when its
signal or request carries none."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg_pool import ConnectionPool

from engine.brokers.base import Broker
from engine.positions.manager import Fencing, ManagerConfig, PositionManager, Prices
from engine.positions.registration import Registrar
from haexec.settings import Settings


def account_of(settings: Settings) -> str:
    """Positions are registered per account: the paper venue's cluster account, or the MT5
    login (through the terminal or the gateway)."""
    engine = settings.engine
    if engine.broker == "paper":
        return "paper"
    return f"mt5:{engine.mt5_login}" if engine.mt5_login is not None else engine.broker


def default_rules(settings: Settings) -> dict[str, Any]:
    """HAEXEC_MANAGE_DEFAULT (settings.engine.manage_default, from the rules work) as stored."""
    rules = getattr(settings.engine, "manage_default", None)
    return {} if rules is None else rules.to_json()


def build_registrar(settings: Settings, pool: ConnectionPool, broker: Broker) -> Registrar:
    election = settings.election
    return Registrar(
        pool, broker, election.cluster, account_of(settings), election.instance_id, default_rules(settings)
    )


def build_manager(
    settings: Settings,
    fencing: Fencing,
    pool: ConnectionPool,
    broker: Broker,
    market: Prices | None,
    alert: Callable[..., None],
) -> PositionManager:
    election, engine = settings.election, settings.engine
    positions = engine.positions
    return PositionManager(
        ManagerConfig(
            cluster=election.cluster,
            instance_id=election.instance_id,
            account=account_of(settings),
            period_ms=positions.period_ms,
            call_deadline_ms=engine.broker_deadline_ms,
            sl_deadline_ms=positions.sl_deadline_ms,
            naked_policy=positions.naked_policy,
            manage_external=positions.manage_external,
            reconcile_s=positions.reconcile_s,
            # The MT5 terminal serialises every call; the paper venue takes them side by side.
            max_in_flight=3 if engine.broker == "paper" else 1,
            max_tick_age_ms=engine.market_max_age_ms,
            default_rules=default_rules(settings),
            fallback_path=settings.state_dir / f"journal-fallback-{election.instance_id}.jsonl",
        ),
        fencing,
        pool,
        broker,
        market,
        engine.risk,
        alert=alert,
    )
