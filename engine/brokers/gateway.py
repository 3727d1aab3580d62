"""The replica's side of the fenced MT5 gateway (`haexec gateway`): the Broker protocol over
its JSON RPC.

The gateway is a fencing-aware venue: every mutating call carries (cluster, epoch, instance),
and the gateway refuses a superseded epoch before anything reaches the terminal. So, as at
the paper venue, a refusal is `EpochSuperseded` (nothing was sent; the executor leaves the
signal to the new leader), and an absent tag after a deposed epoch is final: the gateway
never sends a tag it has sent before, and its journal answers for every tag it sent.

What a call's failure means:
- before the request was wholly written (no connection, refused, reset while writing): the
  gateway cannot have acted -> `BrokerError`;
- after it was written (no answer in time, connection lost): a send is retried with the same
  tag and order, which the gateway answers from its journal if the first one got there (or
  runs, if it did not), within the deadline; failing that -> `Outcome.UNKNOWN`. A modify,
  close or cancel is not retried -> `Outcome.UNKNOWN`;
- 409 epoch superseded -> `EpochSuperseded`; 409 tag in flight -> `Outcome.UNKNOWN` (the
  earlier call of the tag is on the terminal); 503 (terminal busy, epoch not confirmed, not
  sent) and 4xx -> `BrokerError`: the gateway sent nothing.

`find_by_tag` reads the gateway's journal first: a tag in flight cannot be decided yet
(`TagInFlight`, try later); a tag the journal saw executed is found even when the terminal
no longer shows it; a tag whose only attempts got no answer, and which the terminal does not
show, is `TagInDoubt` (hold the signal: the gateway will not send it again).
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from datetime import datetime
from decimal import Decimal
from typing import Any

from coordinator.fencing import EpochSuperseded
from engine.brokers.base import (
    Account,
    BrokerError,
    BrokerUnavailable,
    OrderRequest,
    OrderResult,
    Outcome,
    Position,
    Quote,
    SymbolUnavailable,
    TagInDoubt,
    VenueOrder,
)
from engine.brokers.deals import ClosingDeal
from engine.brokers.gateway_wire import (
    WireError,
    account_from_json,
    closing_deal_from_json,
    listing,
    order_to_json,
    position_from_json,
    quote_from_json,
    result_from_json,
    venue_order_from_json,
)
from engine.gateway_client import NoAnswer as _NoAnswer
from engine.gateway_client import NotSent as _NotSent
from engine.gateway_client import Reply as _Reply
from engine.gateway_client import Transport as _Transport
from engine.model import Side

log = logging.getLogger("haexec.engine.gateway")

# Margin the replica's deadline must leave above the gateway's own (HTTP, JSON, the journal's
# fsyncs), so the gateway's answer -- even "timed out at the terminal" -- arrives in time.
DEADLINE_MARGIN_MS = 200


class TagInFlight(BrokerError):
    """The gateway has a call of this tag on the terminal now: nothing can be decided yet."""


class GatewayBroker:
    """The Broker protocol at the gateway (see the module docstring)."""

    name = "gateway"
    fencing_aware = True
    records_in_transaction = False

    def __init__(
        self,
        url: str,
        token: str,
        cluster: str,
        instance_id: str,
        deadline_ms: int,
        ca_file: str | None = None,
    ) -> None:
        self._transport = _Transport(url, token, ca_file)
        self.cluster = cluster
        self.instance_id = instance_id
        self.deadline_ms = deadline_ms
        self.gateway_deadline_ms: int | None = None

    def __repr__(self) -> str:  # never the token
        return f"GatewayBroker({self._transport.shown}, cluster={self.cluster!r}, instance={self.instance_id!r})"

    __str__ = __repr__

    # ---- plumbing ----

    def _read(self, path: str, query: dict[str, str] | None = None) -> dict[str, Any]:
        if query:
            path += "?" + urllib.parse.urlencode(query)
        try:
            reply = self._transport.call("GET", path, None, self.deadline_ms / 1000)
        except (_NotSent, _NoAnswer) as e:
            raise BrokerError(f"gateway {self._transport.shown} unreachable: {e}") from None
        if reply.status == 401:
            raise BrokerUnavailable(f"gateway {self._transport.shown} refused HAEXEC_GATEWAY_TOKEN")
        if reply.status == 404 and path.startswith("/v1/quote"):
            raise SymbolUnavailable(reply.error)
        if reply.status != 200:
            raise BrokerError(f"gateway {self._transport.shown}: {reply.error}")
        return reply.body

    def _decoded(self, what: str, decode: Any, *args: Any) -> Any:
        try:
            return decode(*args)
        except (WireError, ValueError, TypeError) as e:
            raise BrokerError(f"gateway answered a malformed {what}: {e}") from None

    def _mutate(self, path: str, body: dict[str, Any], epoch: int, retry: bool) -> OrderResult:
        """POST a fenced call and map the answer (see the module docstring)."""
        end = time.monotonic() + self.deadline_ms / 1000
        lost: str | None = None
        while True:
            try:
                reply = self._transport.call("POST", path, body, end - time.monotonic())
            except _NotSent as e:
                if lost is not None:  # the first attempt was written: its fate is unknown
                    return self._unknown(path, f"{lost}; the retry was not sent: {e}")
                raise BrokerError(f"gateway {self._transport.shown} unreachable, nothing sent: {e}") from None
            except _NoAnswer as e:
                lost = f"no answer from the gateway ({e})"
                if retry and end - time.monotonic() > 0.05:
                    log.warning("%s: %s; asking again (the journal answers a send it got)", path, lost)
                    continue
                return self._unknown(path, lost)
            return self._answer(path, reply, epoch, lost)

    def _unknown(self, path: str, why: str) -> OrderResult:
        log.error("gateway %s: outcome unknown: %s", path, why)
        return OrderResult(Outcome.UNKNOWN, detail=f"gateway {path}: {why}; it may have executed: reconcile by tag")

    def _answer(self, path: str, reply: _Reply, epoch: int, lost: str | None) -> OrderResult:
        body = reply.body
        if reply.status == 200:
            return self._decoded("result", result_from_json, body.get("result"))
        if reply.status == 409 and body.get("error") == "epoch superseded":
            if lost is not None:  # the first attempt, written before the promise moved, may have gone
                return self._unknown(path, f"{lost}; the retry was refused: {reply.error}")
            promise = body.get("promise") or {}
            raise EpochSuperseded(self.cluster, epoch, promise.get("epoch"), False)
        if reply.status == 409 and body.get("error") == "tag in flight":
            return OrderResult(Outcome.UNKNOWN, detail=f"gateway: {reply.error}; it may still execute")
        if reply.status >= 500 and reply.status != 503:
            return self._unknown(path, f"HTTP {reply.status}: {reply.error}")  # the gateway failed mid-call
        if lost is not None:
            return self._unknown(path, f"{lost}; the retry was not sent: {reply.error}")
        raise BrokerError(f"gateway {self._transport.shown}: {reply.error} (nothing sent)")

    def _fence(self, epoch: int | None, what: str) -> dict[str, Any]:
        if epoch is None:
            raise BrokerError(f"gateway {what}: refused here, nothing sent: every action at the gateway needs an epoch")
        return {"cluster": self.cluster, "epoch": epoch, "instance": self.instance_id}

    # ---- the protocol ----

    def connect(self) -> None:
        """Ask the gateway who it is: the same cluster, a deadline inside this replica's."""
        info = self._read("/v1/info")
        if info.get("cluster") != self.cluster:
            raise BrokerUnavailable(
                f"gateway {self._transport.shown} serves cluster {info.get('cluster')!r}, not {self.cluster!r}"
            )
        deadline = info.get("deadline_ms")
        if type(deadline) is not int or deadline + DEADLINE_MARGIN_MS > self.deadline_ms:
            raise BrokerUnavailable(
                f"HAEXEC_BROKER_DEADLINE_MS ({self.deadline_ms}) must be at least the gateway's deadline "
                f"({deadline} ms) + {DEADLINE_MARGIN_MS} ms, so its answers arrive in time"
            )
        self.gateway_deadline_ms = deadline
        log.info("gateway %s: cluster %s, terminal deadline %d ms", self._transport.shown, self.cluster, deadline)

    def close(self) -> None:
        self._transport.close()

    def account(self) -> Account:
        return self._decoded("account", account_from_json, self._read("/v1/account").get("account"))

    def positions(self) -> list[Position]:
        return self._decoded("position list", listing, self._read("/v1/positions"), "positions", position_from_json)

    def orders(self) -> list[VenueOrder]:
        return self._decoded("order list", listing, self._read("/v1/orders"), "orders", venue_order_from_json)

    def quote(self, symbol: str) -> Quote:
        return self._decoded("quote", quote_from_json, self._read("/v1/quote", {"symbol": symbol}).get("quote"))

    def closing_deal(self, ticket: str) -> ClosingDeal | None:
        """How a position no longer open closed, from the terminal's deals (MT5Broker.closing_deal)."""
        if not ticket.isdigit():
            return None
        deal = self._read("/v1/closing-deal", {"ticket": ticket}).get("deal")
        return None if deal is None else self._decoded("closing deal", closing_deal_from_json, deal)

    def journal(self, tag: str) -> dict[str, Any]:
        """The gateway's journal of a tag: its calls, their attempts, and what they mean."""
        return self._read("/v1/journal", {"tag": tag})

    def find_by_tag(self, tag: str) -> list[VenueOrder]:
        found = self._read("/v1/tags", {"tag": tag})
        state = found.get("state")
        calls = found.get("calls") or []
        if state == "in_flight":
            raise TagInFlight(f"gateway: a call of tag {tag} is on the terminal now; try again when it returned")
        venue_raw = found.get("venue")
        venue: list[VenueOrder] | None = None
        if isinstance(venue_raw, list):
            venue = [self._decoded("order", venue_order_from_json, v) for v in venue_raw]
        if venue:
            return venue
        if state == "done":
            return [self._from_journal(tag, calls)]  # executed, though the terminal no longer shows it
        if venue is None:
            raise BrokerError(f"gateway: tag {tag}: the terminal could not be searched: {found.get('venue_error')}")
        if state == "unknown":
            raise TagInDoubt(
                f"gateway: tag {tag} was sent without an answer and the terminal does not show it; "
                "the gateway will not send it again"
            )
        return []

    def _from_journal(self, tag: str, calls: list[dict[str, Any]]) -> VenueOrder:
        done = next(c for c in calls if c.get("outcome") == "done")
        attempt = done["attempts"][-1]
        request = attempt.get("request") or {}
        side = Side.BUY if int(request.get("type", 0)) % 2 == 0 else Side.SELL
        return VenueOrder(
            ticket=str(done.get("ref")),
            tag=tag,
            symbol=str(request.get("symbol")),
            side=side,
            volume=Decimal(str(attempt.get("volume") or request.get("volume") or "0")),
            price=Decimal(str(attempt.get("price") or request.get("price") or "0")),
            state="history",
            epoch=done.get("fence", {}).get("epoch"),
            at=datetime.fromisoformat(attempt["sent_at"]) if attempt.get("sent_at") else None,
            extra={"source": "gateway journal", "seq": attempt.get("seq"), "call": done.get("call")},
        )

    def send(self, req: OrderRequest) -> OrderResult:
        body = {"fence": self._fence(req.epoch, "send"), "order": order_to_json(req)}
        return self._mutate("/v1/send", body, req.epoch, retry=True)

    def modify(self, ticket: str, sl: Decimal | None, tp: Decimal | None, epoch: int | None = None) -> OrderResult:
        body = {
            "fence": self._fence(epoch, "modify"),
            "ticket": ticket,
            "sl": None if sl is None else str(sl),
            "tp": None if tp is None else str(tp),
        }
        assert epoch is not None
        return self._mutate("/v1/modify", body, epoch, retry=False)

    def close_position(self, ticket: str, epoch: int | None = None) -> OrderResult:
        body = {"fence": self._fence(epoch, "close"), "ticket": ticket}
        assert epoch is not None
        return self._mutate("/v1/close", body, epoch, retry=False)

    def close_partial(self, ticket: str, volume: Decimal, epoch: int | None = None) -> OrderResult:
        """Close `volume` lots of a position (MT5Broker.close_partial, at the gateway)."""
        body = {"fence": self._fence(epoch, "close"), "ticket": ticket, "volume": str(volume)}
        assert epoch is not None
        return self._mutate("/v1/close", body, epoch, retry=False)

    def cancel_order(self, ticket: str, epoch: int | None = None) -> OrderResult:
        body = {"fence": self._fence(epoch, "cancel"), "ticket": ticket}
        assert epoch is not None
        return self._mutate("/v1/cancel", body, epoch, retry=False)
