"""Trade registration (POST /trades, `haexec trades register`): a venue position put under
management with its rules, idempotent on (account, ticket).

Any replica registers (a registration is recorded like an accepted signal, not a leader's
action); the unique constraint makes concurrent identical requests one row, and the
leader's manager picks the row up at its next loop. Unregistering stops the management
only: the stop stays at the venue.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from psycopg_pool import ConnectionPool

from engine import audit
from engine.brokers.base import Broker
from engine.positions import rules, store


class RegistrationError(ValueError):
    """Bad input: one message per bad field (HTTP 422)."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


class NoSuchPosition(LookupError):
    """No open position with that ticket at the venue (HTTP 404)."""


def canonical_rules(obj: Any) -> dict[str, Any]:
    """The manage block as stored: parsed (every bad field named) and written back, so the
    same rules spelt two ways are the same registration."""
    return rules.parse_manage(obj).to_json()


@dataclass(frozen=True)
class Registrar:
    pool: ConnectionPool
    broker: Broker
    cluster: str
    account: str
    instance_id: str
    default_rules: Mapping[str, Any]
    canonical: Callable[[Any], dict[str, Any]] = canonical_rules

    def register(self, body: Any, actor: str) -> tuple[store.Managed, bool]:
        """(the row, created). RegistrationError, NoSuchPosition or store.Registered (409). A
        new registration is an operator action: audited by `actor`, in its transaction."""
        errors: dict[str, str] = {}
        if not isinstance(body, dict):
            raise RegistrationError({"body": "must be a JSON object"})
        unknown = sorted(set(body) - {"ticket", "manage", "sl"})
        for key in unknown:
            errors[key] = "unknown field"
        ticket = body.get("ticket")
        if isinstance(ticket, int) and not isinstance(ticket, bool):
            ticket = str(ticket)
        if not isinstance(ticket, str) or not ticket or len(ticket) > 64 or not ticket.isascii():
            errors["ticket"] = "required: the venue's ticket, a string of at most 64 ASCII characters"
        manage: dict[str, Any] = {}
        try:
            manage = self.canonical(body["manage"]) if "manage" in body else dict(self.default_rules)
        except rules.RulesError as e:
            errors.update(dict(e.fields))
        sl = None
        if body.get("sl") is not None:
            try:
                sl = Decimal(str(body["sl"]))
                if not sl.is_finite() or sl <= 0:
                    raise InvalidOperation
            except InvalidOperation:
                errors["sl"] = "must be a positive number"
        if errors:
            raise RegistrationError(errors)
        assert isinstance(ticket, str)
        position = next((p for p in self.broker.positions() if p.ticket == ticket), None)
        if position is None:
            raise NoSuchPosition(f"no open position {ticket} at the {self.broker.name} venue")
        initial = position.sl if position.sl is not None else sl
        if initial is None:
            raise RegistrationError(
                {"sl": "the position has no stop at the venue: give the stop that defines its risk"}
            )
        new = store.NewPosition(
            ticket=ticket,
            symbol=position.symbol,
            side=position.side,
            entry=position.price,
            initial_sl=initial,
            volume=position.volume,
            source="api",
            rules=manage,
        )
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            row, created = store.register(cur, self.cluster, self.account, new, (None, self.instance_id, "registered"))
            if created:  # the same request again is no new action
                audit.record(cur, self.cluster, "register", actor, None, {"ticket": ticket, "account": self.account})
        return row, created

    def unregister(self, ticket: str, actor: str) -> bool:
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            done = store.unregister(cur, self.cluster, self.account, ticket, None, self.instance_id)
            if done:
                audit.record(cur, self.cluster, "unregister", actor, None, {"ticket": ticket, "account": self.account})
        return done

    def show(self, ticket: str) -> dict[str, Any] | None:
        with self.pool.connection() as conn:
            row = store.one(conn, self.cluster, self.account, ticket)
            if row is None:
                return None
            return {**row.as_json(), "journal": store.journal(conn, self.cluster, ticket)}

    def listing(self, include_closed: bool = False) -> list[dict[str, Any]]:
        with self.pool.connection() as conn:
            return [r.as_json() for r in store.listing(conn, self.cluster, self.account, include_closed)]
