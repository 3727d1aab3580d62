"""What the gateway does with a call: the promise, the journal and the one MT5 adapter.

A send, in order:
1. its fence against the promise: an equal epoch from another instance is refused at once
   (CRITICAL, alert), whatever else the call is;
2. the journal: a tag already done, or with an unknown outcome, is answered from the journal
   and never sent again (the digest says whether it was the same order); a tag on the terminal
   now is answered "in flight"; a retry of a rejected order with the same digest gets that
   rejection;
3. the promise accepts the fence: a lower epoch is refused, a higher one is confirmed with the
   database and made durable first;
4. MT5Broker.send with a guard that runs on the terminal's worker immediately before each
   order_send: the fence must be exactly the promise *then* (a call that waited while a new
   leader arrived is refused there), the tag must still be free, and the write-ahead row is
   committed; after order_send returns, its answer is recorded.

A call that outlived its deadline keeps the worker: every later call is refused at once
(`Busy`, naming the tag on the terminal) until it returns, and nothing is queued behind it.
So a new leader's epoch may be promised while a send under the old one is still on the
terminal, but nothing is sent under the new epoch before that send returned (the worker is
the only way to the terminal, and a requote retry of the old send meets the new promise), and
the journal keeps the old send's tag in flight, then answered: what a drain of in-flight calls
before a new epoch gives elsewhere.

The journal's answers do not depend on the caller's epoch (an answer is a fact, not an
action); only an impostor's equal epoch is refused before the journal is read.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from common.errors import first_line
from engine.brokers.base import (
    Account,
    BrokerError,
    OrderRequest,
    OrderResult,
    Position,
    Quote,
    VenueOrder,
)
from engine.brokers.deals import ClosingDeal
from engine.brokers.gateway_wire import Fence, call_digest, order_digest, venue_order_to_json
from engine.brokers.mt5 import MT5Broker, SendRefused, TerminalBusy
from haexec.gateway.journal import Attempt, Call, Journal, JournalError
from haexec.gateway.metrics import GatewayMetrics
from haexec.gateway.promise import PromiseKeeper, PromiseWriteFailed, Reason, Refused, Unconfirmed
from haexec.gateway.terminal import Disconnected, TerminalLink, is_link_failure

log = logging.getLogger("haexec.gateway")

ALERT_EQUAL_EPOCH = "gateway_equal_epoch"
Alert = Callable[..., None]


class Busy(Exception):
    """The terminal is held by a call that outlived its deadline; nothing was sent."""

    def __init__(self, message: str, in_flight: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.in_flight = in_flight


class TagInFlight(Exception):
    """An earlier call of this tag has not returned from the terminal; nothing was sent."""

    def __init__(self, tag: str, call: Call) -> None:
        super().__init__(f"tag {tag} is in flight (journal seq {call.last.seq}, sent {call.last.sent_at})")
        self.tag = tag
        self.call = call


class Unavailable(Exception):
    """The terminal, the journal or the promise's disk failed before anything was sent."""


@dataclass(frozen=True)
class Answer:
    result: OrderResult
    replayed: bool = False
    call: str | None = None  # the journal's call id
    note: str = ""


class _GuardRefusal(SendRefused):
    """Raised on the worker by the guard; carries what the caller turns it into."""

    def __init__(self, message: str, cause: Exception | None = None, tag_taken: bool = False) -> None:
        super().__init__(message)
        self.cause = cause
        self.tag_taken = tag_taken


class _Guard:
    """Runs on the terminal's worker around each order_send of one call."""

    def __init__(
        self,
        gateway: Gateway,
        op: str,
        fence: Fence,
        digest: str,
        tag: str | None = None,
        target: str | None = None,
    ) -> None:
        self.gw = gateway
        self.op = op
        self.fence = fence
        self.digest = digest
        self.tag = tag
        self.target = target
        self.call = uuid.uuid4().hex
        self.attempts = 0
        self.seq: int | None = None

    def before(self, request: dict[str, Any]) -> None:
        try:
            self.gw.link.check()  # the link may have dropped while this call waited for the worker
        except Disconnected as e:
            raise _GuardRefusal(str(e), e) from None
        try:
            self.gw.promise.check(self.fence)
        except Refused as e:
            raise _GuardRefusal(str(e), e) from None
        if self.tag is not None and self.attempts == 0:
            try:
                state = self.gw.journal.tag_state(self.tag)
            except JournalError as e:
                raise _GuardRefusal(str(e), e) from None
            # Only after rejections may the tag go again, and only as another order (the same
            # one gets its rejection back from the journal).
            other_order = state.call is not None and state.call.first.digest != self.digest
            if state.kind != "none" and not (state.kind == "rejected" and other_order):
                raise _GuardRefusal(f"tag {self.tag} was taken while this call waited", tag_taken=True)
        try:
            self.seq = self.gw.journal.begin(
                self.call, self.attempts + 1, self.op, self.fence, self.digest, request, self.tag, self.target
            )
        except JournalError as e:
            raise _GuardRefusal(str(e), e) from None
        self.attempts += 1

    def after(self, request: dict[str, Any], result: Any, error: tuple[int, str] | None, raised: Any) -> None:
        assert self.seq is not None
        try:
            self.gw.journal.answered(self.seq, result, error, raised)
        except JournalError as e:
            # The order went (or not) either way; the row stays `sending` and reads as in
            # flight, then `interrupted` (unknown) after a restart: never as "not sent".
            log.critical("journal: the answer of seq %d was not recorded: %s", self.seq, e)
            self.gw.journal_failed(str(e))


class Gateway:
    def __init__(
        self,
        cluster: str,
        broker: MT5Broker,
        promise: PromiseKeeper,
        journal: Journal,
        metrics: GatewayMetrics,
        alert: Alert | None = None,
    ) -> None:
        self.cluster = cluster
        self.broker = broker
        self.promise = promise
        self.journal = journal
        self.metrics = metrics
        self._alert = alert or (lambda *a, **k: None)
        self._in_progress = 0
        self._count_lock = threading.Lock()
        self.journal_error: str | None = None
        self.terminal = TerminalView()  # rebound whole by the prober thread
        self.link = TerminalLink()  # main.py gives it the reconnect
        metrics.promise_epoch.set_function(lambda: float(self.promise.current.epoch))
        metrics.journal_entries.set_function(lambda: float(self.journal.rows))
        metrics.journal_bytes.set_function(lambda: float(self.journal.size_bytes()))
        metrics.in_progress.set_function(lambda: float(self._in_progress))

    # ---- bookkeeping ----

    @contextmanager
    def _timed(self, call: str) -> Iterator[None]:
        started = time.monotonic()
        with self._count_lock:
            self._in_progress += 1
        try:
            yield
        finally:
            with self._count_lock:
                self._in_progress -= 1
            self.metrics.seconds.labels(call).observe(time.monotonic() - started)

    def count(self, call: str, outcome: str) -> None:
        self.metrics.calls.labels(call, outcome).inc()

    def journal_failed(self, error: str) -> None:
        self.journal_error = error

    def _refusal(self, call: str, reason: str, message: str, fence: Fence | None = None) -> None:
        self.metrics.refusals.labels(reason).inc()
        self.count(call, {"tag_in_flight": "in_flight", "terminal_busy": "busy"}.get(reason, "refused"))
        if reason == Reason.EQUAL_EPOCH_OTHER_INSTANCE:
            log.critical("REFUSED %s: %s", call, message)
            self._alert(
                ALERT_EQUAL_EPOCH,
                "critical",
                f"gateway refused {call} under an equal epoch from another instance: {message}",
                epoch=fence.epoch if fence else None,
                instance=fence.instance if fence else None,
                promised_to=self.promise.current.instance,
            )
        else:
            log.warning("refused %s: %s", call, message)

    def _busy(self, exc: TerminalBusy) -> Busy:
        in_flight = None
        try:
            sending = self.journal.sending()
        except JournalError:
            sending = None
        if sending is not None:
            in_flight = _in_flight_json(sending)
            message = (
                f"{exc}; on the terminal: {sending.op} of {sending.tag or sending.target} (journal seq {sending.seq})"
            )
        else:
            message = str(exc)
        return Busy(message, in_flight)

    @contextmanager
    def _terminal(self, call: str) -> Iterator[None]:
        """A broker call: a busy terminal and a failed one become Busy and Unavailable."""
        try:
            yield
        except _GuardRefusal:
            raise  # the caller knows what it means
        except TerminalBusy as e:
            self.metrics.refusals.labels("terminal_busy").inc()
            self.count(call, "busy")
            raise self._busy(e) from None
        except BrokerError as e:
            self.count(call, "error")
            if is_link_failure(e):
                self.link.lost(first_line(e))
            raise Unavailable(first_line(e)) from None

    # ---- reads ----

    def account(self) -> Account:
        with self._timed("account"), self._terminal("account"):
            out = self.broker.account()
        self.count("account", "ok")
        return out

    def positions(self) -> list[Position]:
        with self._timed("positions"), self._terminal("positions"):
            out = self.broker.positions()
        self.count("positions", "ok")
        return out

    def orders(self) -> list[VenueOrder]:
        with self._timed("orders"), self._terminal("orders"):
            out = self.broker.orders()
        self.count("orders", "ok")
        return out

    def quote(self, symbol: str) -> Quote:
        """Raises SymbolUnavailable for a symbol the terminal cannot trade."""
        with self._timed("quote"), self._terminal("quote"):
            out = self.broker.quote(symbol)
        self.count("quote", "ok")
        return out

    def closing_deal(self, ticket: str) -> ClosingDeal | None:
        with self._timed("closing_deal"), self._terminal("closing_deal"):
            out = self.broker.closing_deal(ticket)
        self.count("closing_deal", "ok")
        return out

    def journal_of(self, tag: str) -> dict[str, Any]:
        with self._timed("journal"):
            try:
                state = self.journal.tag_state(tag)
            except JournalError as e:
                self.count("journal", "error")
                raise Unavailable(str(e)) from None
        self.count("journal", "ok")
        return {"tag": tag, "state": state.kind, "calls": [c.as_json() for c in state.calls]}

    def find_by_tag(self, tag: str) -> dict[str, Any]:
        """The journal first, then the terminal's positions, orders and history (unless the tag
        is on the terminal now: then the journal is all there is to say)."""
        out = self.journal_of(tag)
        out["venue"] = None
        out["venue_error"] = None
        if out["state"] == "in_flight":
            return out
        with self._timed("find_by_tag"):
            try:
                out["venue"] = [venue_order_to_json(v) for v in self.broker.find_by_tag(tag)]
                self.count("find_by_tag", "ok")
            except BrokerError as e:
                self.count("find_by_tag", "busy" if isinstance(e, TerminalBusy) else "error")
                out["venue_error"] = first_line(e)
        return out

    # ---- mutating calls ----

    def _from_journal(self, tag: str, digest: str) -> Answer | None:
        """The journal's answer to a send of `tag`, if it has one (raises TagInFlight)."""
        try:
            state = self.journal.tag_state(tag)
        except JournalError as e:
            raise Unavailable(str(e)) from None
        if state.kind == "none":
            return None
        call = state.call
        assert call is not None
        if state.kind == "in_flight":
            raise TagInFlight(tag, call)
        result = call.result()
        assert result is not None
        same = call.first.digest == digest
        if state.kind == "rejected" and not same:
            return None  # nothing was placed under the tag, and this is another order: it may go
        if not same:
            log.error(
                "send of tag %s with another digest than its %s call %s: answered from the journal, not sent",
                tag,
                result.outcome.value,
                call.first.call,
            )
        note = f"from the journal (seq {call.last.seq}): not sent again"
        if state.kind == "unknown":
            note = (
                f"an earlier order_send of this tag has no known outcome (journal seq {call.last.seq}): not sent again"
            )
        replayed = OrderResult(result.outcome, result.ref, f"{result.detail}; {note}", result.retcode, result.price)
        return Answer(replayed, replayed=True, call=call.first.call, note=note)

    def _accept(self, call: str, fence: Fence) -> None:
        try:
            self.promise.accept(fence)
        except Refused as e:
            self._refusal(call, e.reason, str(e), fence)
            raise
        except Unconfirmed as e:
            self._refusal(call, "unconfirmed", str(e), fence)
            raise
        except PromiseWriteFailed as e:
            self.count(call, "error")
            log.error("%s refused: %s", call, e)
            raise Unavailable(str(e)) from None

    def _first_check(self, call: str, fence: Fence) -> None:
        """Before anything else: a wrong cluster, or an equal epoch from another instance; then
        a terminal that lost its connection."""
        reason = self.promise.verdict(fence)
        if reason in (Reason.WRONG_CLUSTER, Reason.EQUAL_EPOCH_OTHER_INSTANCE):
            assert reason is not None
            refused = self.promise.refusal(reason, fence)
            self._refusal(call, reason, str(refused), fence)
            raise refused
        try:
            self.link.check()
        except Disconnected as e:
            self._refusal(call, "terminal_disconnected", str(e), fence)
            raise

    def _guard_refused(self, call: str, fence: Fence, e: _GuardRefusal) -> Exception:
        """What a refusal on the worker becomes for the caller (nothing was sent)."""
        if isinstance(e.cause, Refused):
            self._refusal(call, e.cause.reason, str(e.cause), fence)
            return e.cause
        if isinstance(e.cause, Disconnected):
            self._refusal(call, "terminal_disconnected", str(e.cause), fence)
            return e.cause
        self.count(call, "error")
        log.error("%s not sent: %s", call, e)
        return Unavailable(str(e))

    def _replay(self, tag: str, digest: str) -> Answer | None:
        try:
            replay = self._from_journal(tag, digest)
        except TagInFlight as e:
            self._refusal("send", "tag_in_flight", str(e))
            raise
        if replay is not None:
            self.count("send", "replayed")
            log.warning("send of tag %s answered from the journal: %s", tag, replay.result.outcome.value)
        return replay

    def send(self, fence: Fence, req: OrderRequest) -> Answer:
        digest = order_digest(req)
        with self._timed("send"):
            self._first_check("send", fence)
            replay = self._replay(req.tag, digest)
            if replay is not None:
                return replay
            self._accept("send", fence)
            guard = _Guard(self, "send", fence, digest, tag=req.tag)
            try:
                with self._terminal("send"):
                    result = self.broker.send(req, guard=guard)
            except _GuardRefusal as e:
                if e.tag_taken:  # another call of this tag reached the terminal while this one waited
                    replay = self._replay(req.tag, digest)
                    if replay is not None:
                        return replay
                raise self._guard_refused("send", fence, e) from None
        self.count("send", result.outcome.value)
        return Answer(result, call=guard.call if guard.attempts else None)

    def _mutate(
        self, op: str, fence: Fence, target: str, fields: dict[str, Any], run: Callable[[_Guard], OrderResult]
    ) -> Answer:
        with self._timed(op):
            self._first_check(op, fence)
            self._accept(op, fence)
            guard = _Guard(self, op, fence, call_digest(op, {"ticket": target, **fields}), target=target)
            try:
                with self._terminal(op):
                    result = run(guard)
            except _GuardRefusal as e:
                raise self._guard_refused(op, fence, e) from None
        self.count(op, result.outcome.value)
        return Answer(result, call=guard.call if guard.attempts else None)

    def modify(self, fence: Fence, ticket: str, sl: Decimal | None, tp: Decimal | None) -> Answer:
        return self._mutate(
            "modify",
            fence,
            ticket,
            {"sl": sl, "tp": tp},
            lambda g: self.broker.modify(ticket, sl, tp, fence.epoch, guard=g),
        )

    def close(self, fence: Fence, ticket: str, volume: Decimal | None = None) -> Answer:
        """The whole position, or `volume` lots of it."""
        if volume is None:
            return self._mutate(
                "close", fence, ticket, {}, lambda g: self.broker.close_position(ticket, fence.epoch, guard=g)
            )
        return self._mutate(
            "close",
            fence,
            ticket,
            {"volume": volume},
            lambda g: self.broker.close_partial(ticket, volume, fence.epoch, guard=g),
        )

    def cancel(self, fence: Fence, ticket: str) -> Answer:
        return self._mutate(
            "cancel", fence, ticket, {}, lambda g: self.broker.cancel_order(ticket, fence.epoch, guard=g)
        )


def _in_flight_json(a: Attempt) -> dict[str, Any]:
    return {"op": a.op, "tag": a.tag, "target": a.target, "seq": a.seq, "sent_at": a.sent_at, "epoch": a.epoch}


@dataclass(frozen=True)
class TerminalView:
    """The terminal as the prober last saw it."""

    connected: bool | None = None  # None: never read yet
    trade_allowed: bool | None = None
    error: str | None = None
    at: float = 0.0  # monotonic time of the reading


def probe(gw: Gateway, timeout_s: float) -> TerminalView:
    """Read the terminal's connection once, unless a call holds it past its deadline (then
    the reading stands and the hang is what the metrics say)."""
    running = gw.broker.in_flight()
    overdue = running is not None and running[2]
    gw.metrics.terminal_busy.set(running[1] if running is not None and overdue else 0.0)
    if overdue:
        return gw.terminal
    try:
        connected, allowed = gw.broker.terminal_state(timeout_s)
        view = TerminalView(connected, allowed, None, time.monotonic())
    except TerminalBusy:
        return gw.terminal
    except BrokerError as e:
        view = TerminalView(False, None, first_line(e), time.monotonic())
    gw.metrics.terminal_connected.set(1.0 if view.connected else 0.0)
    return view
