"""The MT5 market source's own terminal worker (common.worker) when it has no broker's to
share: a call that misses its deadline raises CallTimedOut, later calls WorkerBusy."""

from __future__ import annotations

from common.worker import DeadlineWorker, Failures
from engine.market.base import FeedUnavailable


class WorkerBusy(FeedUnavailable):
    """An earlier call has not returned; this one was not submitted."""


class CallTimedOut(FeedUnavailable):
    """The call missed its deadline (it may still be running)."""


FAILURES = Failures(
    stopped=lambda what: FeedUnavailable(f"{what}: the worker is stopped"),
    busy=WorkerBusy,
    spent=WorkerBusy,
    timed_out=CallTimedOut,
)


def market_worker(name: str) -> DeadlineWorker:
    """A worker whose refusals are market data's own (FeedUnavailable)."""
    return DeadlineWorker(name, FAILURES)
