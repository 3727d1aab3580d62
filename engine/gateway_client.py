"""HTTP/1.1 to the MT5 gateway (`haexec gateway`), shared by the replica's gateway broker
(engine/brokers/gateway.py) and its market data source (engine/market/gateway.py): both talk
to the one process beside the terminal, with the same bearer token and CA file, and neither
may import the other (market data sits below the brokers).

A call's failure says how far the request got: `NotSent` before it was wholly written (the
gateway cannot have acted on it), `NoAnswer` after (it may have)."""

from __future__ import annotations

import http.client
import json
import select
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

MAX_IDLE_S = 2.0  # never reuse a connection idle this long: the gateway may be closing it
MAX_ANSWER_BYTES = 16 * 1024 * 1024


class NotSent(Exception):
    """The request never reached the gateway whole."""


class NoAnswer(Exception):
    """The request was written; its answer did not come."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]

    @property
    def error(self) -> str:
        detail = self.body.get("detail")
        return f"{self.body.get('error', 'HTTP ' + str(self.status))}" + (f": {detail}" if detail else "")


class Transport:
    """HTTP/1.1 keep-alive connections to one gateway, each used by one call at a time."""

    def __init__(self, url: str, token: str, ca_file: str | None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"the gateway URL must be http(s)://host:port (got {url!r})")
        self.shown = f"{parts.scheme}://{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._context = ssl.create_default_context(cafile=ca_file) if self._https else None
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []
        self._lock = threading.Lock()

    def _take(self, timeout_s: float) -> http.client.HTTPConnection:
        now = time.monotonic()
        with self._lock:
            while self._idle:
                conn, since = self._idle.pop()
                if now - since < MAX_IDLE_S and not _closed_by_peer(conn):
                    conn.timeout = timeout_s
                    if conn.sock is not None:
                        conn.sock.settimeout(timeout_s)
                    return conn
                conn.close()
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout_s, context=self._context)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout_s)

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.append((conn, time.monotonic()))

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()

    def call(self, method: str, path: str, body: dict[str, Any] | None, timeout_s: float) -> Reply:
        if timeout_s <= 0:
            raise NotSent("no time left before the deadline")
        conn = self._take(timeout_s)
        data = json.dumps(body).encode() if body is not None else None
        try:
            if conn.sock is None:
                conn.connect()
            conn.request(method, path, body=data, headers=self._headers)
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise NotSent(f"{type(e).__name__}: {e}") from None
        try:
            resp = conn.getresponse()
            raw = resp.read(MAX_ANSWER_BYTES + 1)
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise NoAnswer(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None
        if resp.will_close or len(raw) > MAX_ANSWER_BYTES:
            conn.close()
        else:
            self._give_back(conn)
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError:
            decoded = {"error": f"not JSON: {raw[:80]!r}"}
        return Reply(resp.status, decoded if isinstance(decoded, dict) else {"error": "not a JSON object"})


def _closed_by_peer(conn: http.client.HTTPConnection) -> bool:
    """An idle keep-alive socket that is readable has been closed (or sent garbage): not reusable."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
