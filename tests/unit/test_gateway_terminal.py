"""The gateway's terminal link (haexec/gateway/terminal.py) on an injected clock: down at once,
mutating calls refused while down, reconnect attempts with a doubling wait bounded by the
maximum, up again after the first attempt that logs in."""

from __future__ import annotations

import pytest

from engine.brokers.base import BrokerUnavailable
from engine.brokers.mt5 import CallFailed
from haexec.gateway.terminal import Disconnected, TerminalLink, is_link_failure


class Clock:
    def __init__(self) -> None:
        self.s = 100.0

    def __call__(self) -> float:
        return self.s


def test_backoff_doubles_to_its_bound_and_the_link_comes_back() -> None:
    clock = Clock()
    failures = [True] * 6
    calls: list[float] = []

    def reconnect() -> None:
        calls.append(clock.s)
        if failures.pop(0) if failures else False:
            raise BrokerUnavailable("MT5 terminal is not connected to trade server X")

    link = TerminalLink(reconnect, clock, first_wait_s=0.2, max_wait_s=1.0)
    link.check()  # up: nothing refused
    assert link.due_in() == float("inf") and link.attempt()
    link.lost("MT5 terminal_info failed: last_error -10004 No IPC connection")
    link.lost("a second report changes nothing")
    with pytest.raises(Disconnected, match="No IPC connection"):
        link.check()
    waits = []
    while link.down:
        assert not link.attempt() or not link.down
        if link.down:
            waits.append(round(link.due_in(), 6))
            assert not link.attempt()  # not due yet: no call
            clock.s += link.due_in()
    assert waits == [0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert len(calls) == 7 and "connected" == link.describe()
    link.check()


def test_only_ipc_errors_are_a_lost_link() -> None:
    assert is_link_failure(CallFailed("positions_get", -10004, "No IPC connection"))
    assert not is_link_failure(CallFailed("positions_get", -2, "Invalid params"))
    assert not is_link_failure(BrokerUnavailable("x"))
