"""Operational alerts POSTed as JSON to a webhook (``HAEXEC_ALERT_WEBHOOK``).

``emit()`` never blocks and never raises: it puts the alert on a bounded queue and returns
(a full queue drops the alert and counts it). One daemon thread POSTs each alert, retrying
transient failures with bounded, jittered exponential backoff through tenacity. Delivery is
at least once per attempt series: every alert carries an ``Idempotency-Key`` header, the same
on each retry, so a receiver can drop duplicates.

Wiring is one line per event source, e.g.::

    alerts = AlertSink.from_env(os.environ, cfg.cluster, cfg.instance_id)   # at start-up
    alerts.emit(SPLIT_BRAIN, CRITICAL, "split brain: PostgreSQL wins", epoch=7, detail="redis=b db=self")
    alerts.stop(2.0)                                                         # at shutdown

The webhook URL is never logged with its userinfo, query or path (Slack-style webhooks keep
their secret in the path), and the bearer token never at all.
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import weakref
from base64 import b64encode
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from prometheus_client import Counter, Gauge
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    stop_before_delay,
    wait_exponential_jitter,
)

from common.errors import ConfigError, first_line
from common.retry import stop_when
from common.timefmt import now_iso

log = logging.getLogger("haexec.alerts")

ENV_WEBHOOK = "HAEXEC_ALERT_WEBHOOK"
ENV_TOKEN = "HAEXEC_ALERT_WEBHOOK_TOKEN"

# Kinds: the event sources the replica wires in (one emit() call each). The engine's
# executor already emits the signal_* / duplicate_order kinds through its `alert` callable,
# whose signature is emit()'s.
LEADERSHIP_CHANGE = "leadership_change"
SPLIT_BRAIN = "split_brain"
STALE_LEADER = "stale_leader"
IN_DOUBT_SIGNAL = "signal_in_doubt"
SIGNAL_EXPIRED = "signal_expired"
DUPLICATE_ORDER = "duplicate_order"
DUPLICATE_ORDER_OPEN = "duplicate_order_open"  # a duplicate whose close or removal keeps failing
CIRCUIT_OPEN = "circuit_breaker_open"
LOOP_RESTARTED = "loop_restarted"  # a supervised loop's thread replaced (engine/supervision.py)
LOOP_FAILED = "loop_failed"  # its restart budget spent: the replica gives up leadership
KINDS = (
    LEADERSHIP_CHANGE,
    SPLIT_BRAIN,
    STALE_LEADER,
    IN_DOUBT_SIGNAL,
    SIGNAL_EXPIRED,
    DUPLICATE_ORDER,
    DUPLICATE_ORDER_OPEN,
    CIRCUIT_OPEN,
    LOOP_RESTARTED,
    LOOP_FAILED,
)

# Severities, as in the log lines these alerts accompany.
INFO = "info"
WARNING = "warning"
ERROR = "error"
CRITICAL = "critical"

# Reasons an alert was not delivered.
QUEUE_FULL = "queue_full"
DELIVERY_FAILED = "delivery_failed"
STOPPED = "stopped"  # still queued (or emitted) when stop() gave up on it

SENT = Counter("haexec_alerts_sent_total", "Alerts the webhook accepted (2xx)", ["kind"])
DROPPED = Counter("haexec_alerts_dropped_total", "Alerts never delivered", ["reason"])
QUEUE_DEPTH = Gauge("haexec_alert_queue_depth", "Alerts waiting for the sender thread")
# A labelled series exists only once touched: create every known one at 0, so /metrics shows
# it from the start and increase() over the first real alert sees a change, not a new series.
for _kind in KINDS:
    SENT.labels(_kind)
for _reason in (QUEUE_FULL, DELIVERY_FAILED, STOPPED):
    DROPPED.labels(_reason)

_LIVE: weakref.WeakSet[AlertSink] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


def _queue_depth() -> float:
    with _LIVE_LOCK:
        sinks = list(_LIVE)
    return float(sum(s.depth for s in sinks))


QUEUE_DEPTH.set_function(_queue_depth)

_STOP = object()


class Alerts(Protocol):
    """What the replica holds: an AlertSink, or a NullSink when no webhook is configured."""

    def emit(self, kind: str, severity: str, message: str, **fields: Any) -> None: ...

    def flush(self, timeout_s: float) -> bool: ...

    def stop(self, timeout_s: float = 2.0) -> None: ...


class NullSink:
    """No webhook configured: alerts go nowhere (the log lines they accompany still exist)."""

    def emit(self, kind: str, severity: str, message: str, **fields: Any) -> None:
        return None

    def flush(self, timeout_s: float) -> bool:
        return True

    def stop(self, timeout_s: float = 2.0) -> None:
        return None


def on_breaker_change(sink: Alerts, broker: str) -> Callable[[str], None]:
    """A CircuitBreaker ``on_change`` callback: alerts when the circuit opens."""

    def changed(state: str) -> None:
        if state == "open":
            sink.emit(CIRCUIT_OPEN, ERROR, f"broker {broker} circuit opened", broker=broker)

    return changed


# ---- URLs ----


def redact_url(url: str) -> str:
    """scheme://host[:port] and nothing else: no userinfo, no path, no query, no fragment."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<malformed URL>"
    if ":" in host:
        host = f"[{host}]"
    shown = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        shown += "/..."
    return shown


def parse_webhook_url(url: str, setting: str = ENV_WEBHOOK) -> tuple[str, str | None]:
    """Validate a webhook URL. Returns (the URL without userinfo, a Basic auth header or None)."""
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError(setting, "must be an http(s) URL without spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as e:
        raise ConfigError(setting, f"is not a valid URL ({first_line(e)})") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(setting, f"must be an http:// or https:// URL (got scheme {parts.scheme!r})")
    if not host:
        raise ConfigError(setting, f"must name a host (got {redact_url(url)!r})")
    basic: str | None = None
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
        basic = "Basic " + b64encode(pair.encode()).decode("ascii")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, fragment="")), basic


# ---- delivery ----


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: following it would resend the Authorization header elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Tracking:
    """Handler mixin: reports each connection's socket, so stop() can cut a request short."""

    on_connect: Callable[[socket.socket], None]

    def do_open(self, http_class: Any, req: urllib.request.Request, **kwargs: Any) -> Any:
        def connection(*args: Any, **kw: Any) -> http.client.HTTPConnection:
            conn = http_class(*args, **kw)
            connect = conn.connect

            def connect_and_report() -> None:
                connect()
                self.on_connect(conn.sock)

            conn.connect = connect_and_report
            return conn

        return super().do_open(connection, req, **kwargs)  # type: ignore[misc]


class _HTTPHandler(_Tracking, urllib.request.HTTPHandler):
    pass


class _HTTPSHandler(_Tracking, urllib.request.HTTPSHandler):
    pass


class _OutOfTime(Exception):
    """No time left for another attempt (the per-alert budget or stop()'s deadline)."""

    def __init__(self, stopping: bool) -> None:
        super().__init__("stop() deadline passed" if stopping else "retry budget spent")
        self.stopping = stopping


def _retryable(e: BaseException) -> bool:
    if isinstance(e, urllib.error.HTTPError):
        return e.code >= 500 or e.code in (408, 429)
    return isinstance(e, urllib.error.URLError | OSError | http.client.HTTPException)


class AlertSink:
    """Posts alerts to one webhook from one daemon thread; emit() only enqueues."""

    def __init__(
        self,
        url: str,
        cluster: str,
        instance_id: str,
        *,
        token: str | None = None,
        maxsize: int = 1000,
        request_timeout_s: float = 2.0,
        attempts: int = 5,
        budget_s: float = 5.0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 1.0,
        jitter_s: float = 0.1,
    ) -> None:
        self._url, basic = parse_webhook_url(url)
        if token is not None and basic is not None:
            raise ConfigError(ENV_WEBHOOK, f"has credentials in the URL and {ENV_TOKEN} is set: use one")
        self.cluster = cluster
        self.instance_id = instance_id
        self.shown_url = redact_url(url)
        raw = urllib.parse.urlsplit(url)
        secrets = (url, self._url, token, raw.query, raw.password, raw.path if raw.path != "/" else None)
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        self._headers = {"Content-Type": "application/json", "User-Agent": "haexec-alerts"}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        elif basic is not None:
            self._headers["Authorization"] = basic
        self._request_timeout_s = request_timeout_s
        self._attempts = attempts
        self._budget_s = budget_s
        self._wait = wait_exponential_jitter(multiplier=backoff_initial_s, max=backoff_max_s, jitter=jitter_s)
        handlers: list[Any] = [_NoRedirect(), _HTTPHandler(), _HTTPSHandler()]
        for handler in handlers[1:]:
            handler.on_connect = self._connected
        self._opener = urllib.request.build_opener(*handlers)
        self._inflight: socket.socket | None = None
        self._inflight_lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self._closing = threading.Event()
        self._stop_deadline: float | None = None
        self._full_drops = 0  # not yet reported in the log (the sender reports them)
        self._full_lock = threading.Lock()
        with _LIVE_LOCK:
            _LIVE.add(self)
        self._thread = threading.Thread(target=self._run, name="haexec-alerts", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(cls, env: Mapping[str, str], cluster: str, instance_id: str) -> AlertSink | NullSink:
        """An AlertSink when HAEXEC_ALERT_WEBHOOK is set (non-empty), else a NullSink.
        Raises ConfigError (one line, exit 2 at the CLI) for a malformed URL or token."""
        url = env.get(ENV_WEBHOOK, "").strip()
        if not url:
            return NullSink()
        token = env.get(ENV_TOKEN) or None
        if token is not None and (any(c.isspace() or not c.isprintable() for c in token)):
            raise ConfigError(ENV_TOKEN, "must be printable without spaces or line breaks")
        sink = cls(url, cluster, instance_id, token=token)
        log.info("alerts: posting to %s", sink.shown_url)
        return sink

    def __repr__(self) -> str:  # never the URL's secrets, never the token
        return f"AlertSink({self.shown_url}, cluster={self.cluster!r}, instance={self.instance_id!r})"

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    # ---- caller side: never blocks, never raises ----

    def emit(self, kind: str, severity: str, message: str, **fields: Any) -> None:
        """Queue one alert and return at once. Body: kind, severity, message, cluster,
        instance_id, at (ISO 8601 UTC, time of emit), then the extra fields (which cannot
        override those six). Values that are not JSON are sent as str()."""
        if self._closing.is_set():
            DROPPED.labels(STOPPED).inc()
            return
        body: dict[str, Any] = {
            "kind": kind,
            "severity": severity,
            "message": message,
            "cluster": self.cluster,
            "instance_id": self.instance_id,
            "at": now_iso(),
        }
        for key, value in fields.items():
            body.setdefault(key, value)
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            DROPPED.labels(QUEUE_FULL).inc()
            with self._full_lock:
                self._full_drops += 1

    def flush(self, timeout_s: float) -> bool:
        """Wait until every alert queued so far was delivered or dropped. False on timeout."""
        q = self._queue
        with q.all_tasks_done:
            return q.all_tasks_done.wait_for(lambda: q.unfinished_tasks == 0, timeout_s)

    def stop(self, timeout_s: float = 2.0) -> None:
        """Deliver what can be delivered within timeout_s, then stop the thread. Whatever is
        left is counted as dropped{reason="stopped"}. Idempotent."""
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + max(0.0, timeout_s)
            self._closing.set()
            try:
                self._queue.put_nowait(_STOP)  # wakes a sender idle on an empty queue
            except queue.Full:
                pass  # not idle, then: it checks _closing after every alert
        self._thread.join(max(0.0, self._stop_deadline - time.monotonic()))
        if self._thread.is_alive():
            self._abort_inflight()  # a request begun before stop() may have a longer timeout
            self._thread.join(0.5)
        if self._thread.is_alive():
            log.warning("alerts: sender thread still busy after stop(%gs)", timeout_s)
            return
        left = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            self._queue.task_done()
            if item is not _STOP:
                left += 1
        if left:
            DROPPED.labels(STOPPED).inc(left)
            log.warning("alerts: %d alert(s) not delivered before stop", left)
        with _LIVE_LOCK:
            _LIVE.discard(self)

    # ---- sender thread ----

    def _run(self) -> None:
        q = self._queue
        while True:
            if self._closing.is_set() and (q.empty() or self._past_stop_deadline()):
                return
            item = q.get()
            try:
                if item is not _STOP:
                    self._deliver(item)
            except Exception:  # a bug here must not kill the thread
                DROPPED.labels(DELIVERY_FAILED).inc()
                log.warning("alerts: %s alert dropped: unexpected error", item.get("kind"), exc_info=True)
            finally:
                q.task_done()
            self._report_full_drops()

    def _report_full_drops(self) -> None:
        if not self._full_drops:
            return
        with self._full_lock:
            count, self._full_drops = self._full_drops, 0
        log.warning("alerts: %d alert(s) dropped: queue full (%d)", count, self._queue.maxsize)

    def _connected(self, sock: socket.socket) -> None:
        with self._inflight_lock:
            self._inflight = sock

    def _abort_inflight(self) -> None:
        with self._inflight_lock:
            sock, self._inflight = self._inflight, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

    def _past_stop_deadline(self, _: RetryCallState | None = None) -> bool:
        return self._stop_deadline is not None and time.monotonic() >= self._stop_deadline

    def _sleep(self, seconds: float) -> None:
        """Backoff that stop() cuts short at its deadline."""
        end = time.monotonic() + seconds
        if not self._closing.wait(seconds):
            return
        assert self._stop_deadline is not None
        remaining = min(end, self._stop_deadline) - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

    def _deliver(self, alert: dict[str, Any]) -> None:
        kind = str(alert["kind"])
        data = json.dumps(alert, default=str, separators=(",", ":")).encode()
        headers = {**self._headers, "Idempotency-Key": uuid.uuid4().hex}
        budget_end = time.monotonic() + self._budget_s
        tried = 0

        def attempt() -> None:
            nonlocal tried
            now = time.monotonic()
            limit = min(self._request_timeout_s, budget_end - now)
            stopping = self._stop_deadline is not None and self._stop_deadline - now < limit
            if stopping:
                assert self._stop_deadline is not None
                limit = self._stop_deadline - now
            if limit <= 0.01:
                raise _OutOfTime(stopping)
            tried += 1
            request = urllib.request.Request(self._url, data=data, headers=headers, method="POST")
            try:
                with self._opener.open(request, timeout=limit) as response:
                    response.read(65536)
            except urllib.error.HTTPError as e:
                e.close()
                raise
            finally:
                with self._inflight_lock:
                    self._inflight = None

        retrying = Retrying(
            stop=stop_any(
                stop_after_attempt(self._attempts),
                stop_before_delay(self._budget_s),
                stop_when(self._past_stop_deadline),
            ),
            wait=self._wait,
            retry=retry_if_exception(_retryable),
            sleep=self._sleep,
            before_sleep=lambda rs: log.debug(
                "alerts: %s attempt %d failed: %s", kind, rs.attempt_number, self._describe(rs)
            ),
            reraise=True,
        )
        try:
            retrying(attempt)
        except Exception as e:
            if isinstance(e, _OutOfTime):
                stopped = e.stopping
            else:  # a retryable failure with no time left because stop() was called
                stopped = _retryable(e) and self._past_stop_deadline()
            DROPPED.labels(STOPPED if stopped else DELIVERY_FAILED).inc()
            if isinstance(e, urllib.error.HTTPError) and not _retryable(e):
                outcome = "rejected, not retried"
            else:
                outcome = f"after {tried} attempt(s)"
            log.warning("alerts: %s alert to %s dropped %s: %s", kind, self.shown_url, outcome, self._scrub(e))
            return
        SENT.labels(kind).inc()

    def _describe(self, rs: RetryCallState) -> str:
        e = rs.outcome.exception() if rs.outcome else None
        return self._scrub(e) if e else "?"

    def _scrub(self, e: BaseException) -> str:
        """One line about the failure, without the URL's secrets or the token."""
        if isinstance(e, urllib.error.HTTPError):
            text = f"HTTP {e.code}"
        elif isinstance(e, urllib.error.URLError):
            reason = e.reason
            text = first_line(reason) if isinstance(reason, BaseException) else str(reason)
            if isinstance(reason, BaseException) and type(reason).__name__ not in text:
                text = f"{type(reason).__name__}: {text}"
        elif isinstance(e, TimeoutError):
            text = "timed out"
        else:
            text = f"{type(e).__name__}: {first_line(e)}"
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text
