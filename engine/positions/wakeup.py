"""Wake the position manager when the paper venue books an order, so a fill's stop is
checked at once instead of at the end of the manager's period.

The paper book notifies every change on `haexec_paper_book` (migration 0004) as
`cluster|o|ticket` for orders and `cluster|p|ticket` for positions. Only orders wake the
manager: its own stop changes are position updates and must not wake it in a loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

from common.errors import first_line
from db.session import SessionLimits, connect

log = logging.getLogger("haexec.engine.positions")

CHANNEL = "haexec_paper_book"
LISTEN_SQL = f"LISTEN {CHANNEL}"


class BookListener:
    def __init__(self, database_url: str, cluster: str, instance_id: str, wake: Callable[[], None]) -> None:
        self._url = database_url
        self._prefix = f"{cluster}|o|"
        self._limits = SessionLimits(5000, f"haexec-positions-listen-{instance_id}")
        self._wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="haexec-positions-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn = connect(self._url, self._limits)
            except psycopg.Error as e:
                log.warning("position wake-up listener cannot connect: %s", first_line(e))
                self._stop.wait(1.0)
                continue
            try:
                conn.execute(LISTEN_SQL)
                self._wake()  # anything booked while not listening
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=1.0):
                        if note.payload.startswith(self._prefix):
                            self._wake()
            except psycopg.Error as e:
                log.warning("position wake-up listener lost its connection: %s", first_line(e))
            finally:
                conn.close()
