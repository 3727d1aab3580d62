"""Journal pruning in the background: settled calls older than HAEXEC_GATEWAY_JOURNAL_DAYS
go (Journal.prune); a call whose outcome is unknown stays for good, as do the calls under the
journal's highest epoch. Once at start and then every PRUNE_EVERY_S, on a thread of its own;
a failure is logged and tried again next round (the journal's own writes are unaffected)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from haexec.gateway.journal import Journal, JournalError
from haexec.gateway.metrics import GatewayMetrics

log = logging.getLogger("haexec.gateway.prune")

PRUNE_EVERY_S = 3600.0


class JournalPruner:
    def __init__(
        self,
        journal: Journal,
        days: int,
        metrics: GatewayMetrics,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        every_s: float = PRUNE_EVERY_S,
    ) -> None:
        self._journal = journal
        self._keep = timedelta(days=days)
        self._metrics = metrics
        self._now = now
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """Prune now; how many rows went (0 after a failure, which is logged)."""
        try:
            gone = self._journal.prune(self._now() - self._keep)
        except JournalError as e:
            log.error("journal prune: %s; trying again in %.0fs", e, self._every_s)
            return 0
        if gone:
            self._metrics.journal_pruned.inc(gone)
            log.info("journal: pruned %d settled row(s) older than %d days", gone, self._keep.days)
        return gone

    def start(self) -> None:
        def loop() -> None:
            while True:
                self.run_once()
                if self._stop.wait(self._every_s):
                    return

        self._thread = threading.Thread(target=loop, name="gateway-journal-prune", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
