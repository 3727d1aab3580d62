"""Release announcements on `haexec:{cluster}:events`. They only shorten a follower's
wait: pub/sub is fire-and-forget, so nothing here is trusted for leadership."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis
from tenacity import Retrying, retry_if_exception_type, wait_exponential_jitter

from coordinator.keys import events_channel

log = logging.getLogger("haexec.coordinator.events")


class EventListener:
    def __init__(self, client: redis.Redis, cluster: str, on_event: Callable[[str], None]) -> None:
        self._client = client
        self._channel = events_channel(cluster)
        self._on_event = on_event
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="haexec-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        retrying = Retrying(
            retry=retry_if_exception_type(redis.RedisError),
            wait=wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.1),
            before_sleep=lambda rs: log.debug(
                "events subscription lost: %s", rs.outcome.exception() if rs.outcome else None
            ),
        )
        for attempt in retrying:
            with attempt:
                self._listen()

    def _listen(self) -> None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self._channel)
            # A release may have been announced while we were not subscribed.
            self._on_event("subscribed")
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message and message.get("type") == "message":
                    self._on_event(str(message.get("data")))
        finally:
            pubsub.close()
