"""Duplicates at a venue that cannot fence (MT5): found, compensated, and escalated while open.

One signal is one order under one tag. A second order under a tag is a duplicate: a paused
ex-leader's send that landed late, possibly after the signal was settled or re-executed. The
leader looks for them twice: when it settles an attempt from the venue (`compensate`, from the
in-doubt path) and on every housekeeping sweep across the whole open book (`scan`), so a late
duplicate is found for as long as it is open, not only while its signal is unsettled. A
pending duplicate is removed, a position closed; a compensation that fails is retried at the
next sweep and escalated, and every alert says what really happened.

Every compensation is a venue action, so it is fenced like a send: only while the lease
outlives the call, under the leader's epoch.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from psycopg_pool import ConnectionPool

from engine import metrics
from engine.brokers.base import Broker, BrokerError, OrderResult, Outcome, VenueOrder

log = logging.getLogger("haexec.engine")

Alert = Callable[..., None]

# Signals by tag, with the ticket each was settled with (the one to keep).
SIGNALS_BY_TAG_SQL = """
SELECT tag, fingerprint, status, broker_ref FROM signals WHERE cluster = %s AND tag = ANY(%s)
"""


class DuplicateGuard:
    def __init__(
        self,
        cluster: str,
        pool: ConnectionPool,
        broker: Broker,
        alert: Alert,
        lease_allows_send: Callable[[int], bool],
    ) -> None:
        self._cluster = cluster
        self._pool = pool
        self._broker = broker
        self._alert = alert
        self._lease_allows_send = lease_allows_send
        self._attempts: dict[str, int] = defaultdict(int)  # duplicate ticket -> failed compensations
        self._reported: set[str] = set()  # closed-already duplicates alerted once

    def compensate(self, fingerprint: str, kept: str, dupe: VenueOrder, epoch: int) -> None:
        """Undo `dupe`, a second order of the signal whose order `kept` stands."""
        tickets = [kept, dupe.ticket]
        if dupe.state == "history":  # it filled and closed already: nothing to undo, say so once
            if dupe.ticket not in self._reported:
                self._reported.add(dupe.ticket)
                metrics.DUPLICATES.inc()
                log.critical(
                    "DUPLICATE order for signal %s: ticket %s (kept %s), already closed", fingerprint, dupe.ticket, kept
                )
                self._alert(
                    "duplicate_order",
                    "critical",
                    f"signal {fingerprint} executed twice: tickets {kept} and {dupe.ticket};"
                    f" {dupe.ticket} already closed",
                    fingerprint=fingerprint,
                    tickets=tickets,
                )
            return
        if not self._lease_allows_send(epoch):
            log.warning("duplicate %s of signal %s left for the leader: lease too short", dupe.ticket, fingerprint)
            return
        pending = dupe.state == "pending"
        verb = "removed" if pending else "closed"
        try:
            result = (self._broker.cancel_order if pending else self._broker.close_position)(dupe.ticket, epoch)
        except BrokerError as e:
            result = OrderResult(Outcome.UNKNOWN, detail=f"broker unavailable: {e}")
        first = dupe.ticket not in self._attempts
        if first:
            metrics.DUPLICATES.inc()
        if result.outcome is Outcome.DONE:
            self._attempts.pop(dupe.ticket, None)
            log.critical("DUPLICATE order for signal %s: ticket %s (kept %s) %s", fingerprint, dupe.ticket, kept, verb)
            self._alert(
                "duplicate_order",
                "critical",
                f"signal {fingerprint} executed twice: tickets {kept} and {dupe.ticket}; {verb} {dupe.ticket}",
                fingerprint=fingerprint,
                tickets=tickets,
            )
            return
        self._attempts[dupe.ticket] += 1
        n = self._attempts[dupe.ticket]
        log.critical(
            "DUPLICATE order for signal %s: ticket %s (kept %s) still open; %s failed (attempt %d): %s",
            fingerprint,
            dupe.ticket,
            kept,
            "remove" if pending else "close",
            n,
            result.detail,
        )
        if n & (n - 1) == 0:  # attempts 1, 2, 4, 8, ...: escalates without an alert per sweep
            self._alert(
                "duplicate_order_open",
                "critical",
                f"signal {fingerprint} executed twice: tickets {kept} and {dupe.ticket}; {dupe.ticket} is STILL OPEN"
                f" after {n} attempt(s) to {'remove' if pending else 'close'} it: {result.detail}",
                fingerprint=fingerprint,
                tickets=tickets,
                attempts=n,
            )

    def scan(self, epoch: int) -> None:
        """Every tag on two or more open orders or positions of this venue, among signals
        already settled: keep the order the signal was settled with, undo the others."""
        open_: dict[str, list[VenueOrder]] = defaultdict(list)
        for p in self._broker.positions():
            if p.tag:
                open_[p.tag].append(VenueOrder(p.ticket, p.tag, p.symbol, p.side, p.volume, p.price, "position"))
        for o in self._broker.orders():
            if o.tag and o.state == "pending":
                open_[o.tag].append(o)
        twice = {tag: found for tag, found in open_.items() if len(found) > 1}
        if not twice:
            return
        with self._pool.connection() as conn:
            rows: list[Any] = conn.execute(SIGNALS_BY_TAG_SQL, (self._cluster, list(twice))).fetchall()
        for tag, fingerprint, status, ref in rows:
            if status != "executed":
                continue  # an unsettled attempt is the in-doubt path's to settle first
            found = sorted(twice[tag], key=lambda o: (o.ticket != ref, int(o.ticket) if o.ticket.isdigit() else 0))
            kept, *dupes = found
            for d in dupes:
                self.compensate(fingerprint, kept.ticket, d, epoch)
