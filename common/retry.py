"""A tenacity stop condition from any predicate: a deadline the caller keeps, say."""

from __future__ import annotations

from collections.abc import Callable

from tenacity import RetryCallState
from tenacity.stop import stop_base


class stop_when(stop_base):
    """Stop retrying once `predicate(retry_state)` is true."""

    def __init__(self, predicate: Callable[[RetryCallState], bool]) -> None:
        self._predicate = predicate

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._predicate(retry_state)
