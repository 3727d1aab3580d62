"""One thread for every call into a blocking, single-connection library (the MetaTrader5
module), each call with a deadline.

A call that misses its deadline raises and keeps the worker busy: later calls fail at once
(nothing submitted) instead of queueing behind a hung call, and a call merely in progress
is waited for within the caller's own deadline. The MT5 broker and the MT5 market source
share this; each says, through `Failures`, which of its own exceptions a refusal is.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Failures:
    """The exception each refusal raises, built from its one-line message (`stopped` from
    the name of the call refused)."""

    stopped: Callable[[str], Exception]
    busy: Callable[[str], Exception]
    spent: Callable[[str], Exception]
    timed_out: Callable[[str], Exception]


class DeadlineWorker:
    """One daemon thread that runs every call, one at a time, with deadlines. `label`
    prefixes every message (e.g. "MT5 ")."""

    def __init__(self, name: str, failures: Failures, label: str = "") -> None:
        self._failures = failures
        self._label = label
        self._cond = threading.Condition()
        self._running: str | None = None  # what is on the worker now
        self._current: Future[Any] | None = None  # and its future
        self._since = 0.0
        self._overdue = False  # the running call outlived its caller's deadline
        self._stopped = False
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        # A daemon: a call that never returns must not keep the process from exiting.
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def busy(self) -> str | None:
        with self._cond:
            return self._running

    def run(self, what: str, fn: Callable[[], Any], timeout_s: float) -> Any:
        end = time.monotonic() + timeout_s
        label = self._label
        with self._cond:
            if self._stopped:
                raise self._failures.stopped(what)
            if self._running is not None and not self._overdue:
                self._cond.wait_for(
                    lambda: self._running is None or self._overdue, timeout=max(0.0, end - time.monotonic())
                )
            if self._running is not None:
                age_ms = (time.monotonic() - self._since) * 1000
                state = "has not returned" if self._overdue else "is still running"
                raise self._failures.busy(
                    f"{label}terminal busy: {self._running} {state} after {age_ms:.0f} ms; {what} was not sent"
                )
            if end - time.monotonic() <= 0:
                raise self._failures.spent(f"{label}{what}: deadline spent before the call; it was not sent")
            fut: Future[Any] = Future()
            self._running, self._current, self._since, self._overdue = what, fut, time.monotonic(), False
            self._jobs.put((fut, fn))
        try:
            return fut.result(timeout=max(0.0, end - time.monotonic()))
        except FutureTimeout:
            with self._cond:
                if self._current is fut:  # still ours on the worker (not a later caller's job)
                    self._overdue = True
            if fut.done():  # finished in the gap: a real answer beats a timeout
                return fut.result()
            raise self._failures.timed_out(
                f"{label}{what} timed out after {timeout_s * 1000:.0f} ms (the call is still running)"
            ) from None

    def running(self) -> tuple[str, float, bool] | None:
        """(what runs now, for how many seconds, whether it outlived its caller's deadline)."""
        with self._cond:
            if self._running is None:
                return None
            return self._running, time.monotonic() - self._since, self._overdue

    def wait_idle(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._running is None, timeout=timeout_s)

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
