"""One thread for every call into a blocking, single-connection library (the MetaTrader5
module), each call with a deadline.

The pattern of engine/brokers/mt5.py's `_Worker`, factored here (market sits below
brokers, so it cannot import the broker's; the broker can import this one): a call that
misses its deadline raises CallTimedOut and keeps the worker busy, later calls fail at
once with WorkerBusy (nothing submitted) instead of queueing behind a hung call, and a
call merely in progress is waited for within the caller's own deadline.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from engine.market.base import FeedUnavailable


class WorkerBusy(FeedUnavailable):
    """An earlier call has not returned; this one was not submitted."""


class CallTimedOut(FeedUnavailable):
    """The call missed its deadline (it may still be running)."""


class DeadlineWorker:
    def __init__(self, name: str) -> None:
        self._cond = threading.Condition()
        self._running: str | None = None
        self._current: Future[Any] | None = None
        self._since = 0.0
        self._overdue = False
        self._stopped = False
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        # A daemon: a call that never returns must not keep the process from exiting.
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def run(self, what: str, fn: Callable[[], Any], timeout_s: float) -> Any:
        end = time.monotonic() + timeout_s
        with self._cond:
            if self._stopped:
                raise FeedUnavailable(f"{what}: the worker is stopped")
            if self._running is not None and not self._overdue:
                self._cond.wait_for(
                    lambda: self._running is None or self._overdue, timeout=max(0.0, end - time.monotonic())
                )
            if self._running is not None:
                age_ms = (time.monotonic() - self._since) * 1000
                state = "has not returned" if self._overdue else "is still running"
                raise WorkerBusy(f"terminal busy: {self._running} {state} after {age_ms:.0f} ms; {what} was not sent")
            if end - time.monotonic() <= 0:
                raise WorkerBusy(f"{what}: deadline spent before the call; it was not sent")
            fut: Future[Any] = Future()
            self._running, self._current, self._since, self._overdue = what, fut, time.monotonic(), False
            self._jobs.put((fut, fn))
        try:
            return fut.result(timeout=max(0.0, end - time.monotonic()))
        except FutureTimeout:
            with self._cond:
                if self._current is fut:
                    self._overdue = True
            if fut.done():  # finished in the gap: a real answer beats a timeout
                return fut.result()
            took = f"{timeout_s * 1000:.0f} ms"
            raise CallTimedOut(f"{what} timed out after {took} (the call is still running)") from None

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            idle = self._running is None
        self._jobs.put(None)
        if idle:
            self._thread.join(timeout=1.0)

    def _loop(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            fut, fn = item
            ok, value = True, None
            if fut.set_running_or_notify_cancel():
                try:
                    value = fn()
                except BaseException as exc:  # handed to the caller
                    ok, value = False, exc
            with self._cond:
                self._running, self._current, self._overdue = None, None, False
                self._cond.notify_all()
            if fut.running():
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
