"""What `haexec reconcile` reports of the managed positions: the recovery table read from the
book and the venue, without acting (acting is the leader's manager's, every loop)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import ConnectionPool

from engine.brokers.base import Broker
from engine.positions import store
from engine.positions.manager import tighter


@dataclass
class Survey:
    managed: int = 0
    closed_at_venue: list[str] = field(default_factory=list)  # the manager records the close from its deal
    vanished: list[str] = field(default_factory=list)  # no deal: the manager holds the symbol (CRITICAL)
    to_adopt: list[str] = field(default_factory=list)  # a signal's tag, not in the book: the manager adopts it
    foreign: list[str] = field(default_factory=list)  # reported only (unless HAEXEC_MANAGE_EXTERNAL)
    without_stop: list[str] = field(default_factory=list)
    volume_differs: list[dict[str, Any]] = field(default_factory=list)  # the venue wins
    stop_looser: list[dict[str, Any]] = field(default_factory=list)  # the database wins: reasserted

    @property
    def ok(self) -> bool:
        return not (self.vanished or self.without_stop or self.stop_looser)


def survey(pool: ConnectionPool, broker: Broker, cluster: str, account: str) -> Survey:
    out = Survey()
    with pool.connection() as conn:
        book = {r.ticket: r for r in store.load_changed(conn, cluster, account, {})}
        known = store.known_tickets(conn, cluster, account)
        venue = {p.ticket: p for p in broker.positions()}
        unknown = [p for t, p in venue.items() if t not in known]
        signals = store.signals_by_tag(conn, cluster, [p.tag for p in unknown if p.tag])
    out.managed = len(book)
    deals = getattr(broker, "closing_deal", None)
    for ticket, row in sorted(book.items()):
        pos = venue.get(ticket)
        if pos is None:
            found = deals(ticket) if deals is not None else None
            (out.closed_at_venue if found is not None else out.vanished).append(ticket)
            continue
        if pos.sl is None:
            out.without_stop.append(ticket)
        elif row.verified_sl is not None and tighter(row.side, pos.sl, row.verified_sl) != pos.sl:
            out.stop_looser.append({"ticket": ticket, "venue": str(pos.sl), "database": str(row.verified_sl)})
        if pos.volume != row.volume:
            out.volume_differs.append({"ticket": ticket, "venue": str(pos.volume), "database": str(row.volume)})
    for p in sorted(unknown, key=lambda p: p.ticket):
        (out.to_adopt if p.tag in signals else out.foreign).append(p.ticket)
    return out
