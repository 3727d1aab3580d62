"""haexec.alerts: webhook delivery from one sender thread, bounded retries, a bounded queue
that drops (and counts) rather than block the caller, and URLs that never leak secrets.

A tiny stdlib HTTP receiver runs on 127.0.0.1:0 in a thread; tests wait on its condition
variable or on AlertSink.flush() with deadlines, never on a sleep."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import REGISTRY

from common.errors import ConfigError
from haexec import alerts
from haexec.alerts import AlertSink, NullSink, parse_webhook_url, redact_url

# ---- a receiver ----


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int
    received: float  # time.perf_counter() on arrival


@dataclass
class Receiver:
    """Answers POSTs with scripted statuses (then 200). `hang` holds every request until
    `release` is set."""

    script: list[int | tuple[int, dict[str, str]]] = field(default_factory=list)
    hang: bool = False
    hits: list[Hit] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                arrived = time.perf_counter()
                if receiver.hang:
                    receiver.entered.set()
                    receiver.release.wait(30)
                with receiver.cond:
                    step = receiver.script.pop(0) if receiver.script else 200
                status, extra = step if isinstance(step, tuple) else (step, {})
                # Recorded before answering: once the sender has its answer, the hit is here.
                hit = Hit(self.path, dict(self.headers.items()), json.loads(raw), status, arrived)
                with receiver.cond:
                    receiver.hits.append(hit)
                    receiver.cond.notify_all()
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True, name="receiver").start()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def delivered(self) -> list[Hit]:
        with self.cond:
            return [h for h in self.hits if 200 <= h.status < 300]

    def wait_delivered(self, n: int, timeout_s: float = 10.0) -> list[Hit]:
        with self.cond:
            ok = self.cond.wait_for(lambda: sum(200 <= h.status < 300 for h in self.hits) >= n, timeout_s)
        assert ok, f"receiver got {len(self.delivered)} of {n} alerts within {timeout_s}s"
        return self.delivered

    def close(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def closed_port() -> int:
    """A port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def dropped(reason: str) -> float:
    return sample("haexec_alerts_dropped_total", reason=reason)


def sent(kind: str) -> float:
    return sample("haexec_alerts_sent_total", kind=kind)


FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.02, "jitter_s": 0.005}


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(**kwargs: Any) -> Receiver:
        r = Receiver(**kwargs).start()
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def sink() -> Iterator[Callable[..., AlertSink]]:
    made: list[AlertSink] = []

    def make(url: str, **kwargs: Any) -> AlertSink:
        s = AlertSink(url, kwargs.pop("cluster", "unit"), kwargs.pop("instance_id", "i1"), **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop(0.5)


# ---- delivery ----


def test_delivers_the_json_body_with_the_bearer_token(
    receiver: Callable[..., Receiver], sink: Callable[..., AlertSink]
) -> None:
    r = receiver()
    s = sink(f"{r.url}/hooks/x?channel=ops", cluster="prod", instance_id="a1", token="t0ken-123")
    before = sent(alerts.SPLIT_BRAIN)
    s.emit(alerts.SPLIT_BRAIN, alerts.CRITICAL, "split brain: PostgreSQL wins", epoch=7, detail="redis=b")
    (hit,) = r.wait_delivered(1)
    assert hit.path == "/hooks/x?channel=ops"
    assert hit.headers["Authorization"] == "Bearer t0ken-123"
    assert hit.headers["Content-Type"] == "application/json"
    assert len(hit.headers["Idempotency-Key"]) == 32
    at = hit.body.pop("at")
    assert hit.body == {
        "kind": "split_brain",
        "severity": "critical",
        "message": "split brain: PostgreSQL wins",
        "cluster": "prod",
        "instance_id": "a1",
        "epoch": 7,
        "detail": "redis=b",
    }
    stamp = datetime.fromisoformat(at)
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 10
    assert s.flush(5)
    assert sent(alerts.SPLIT_BRAIN) == before + 1


def test_url_userinfo_is_sent_as_basic_auth_not_in_the_request_line(
    receiver: Callable[..., Receiver], sink: Callable[..., AlertSink]
) -> None:
    r = receiver()
    s = sink(r.url.replace("http://", "http://alice:p%40ss@") + "/hook")
    s.emit(alerts.STALE_LEADER, alerts.ERROR, "stale")
    (hit,) = r.wait_delivered(1)
    assert hit.path == "/hook"
    assert hit.headers["Authorization"] == "Basic YWxpY2U6cEBzcw=="  # alice:p@ss
    assert "alice" not in repr(s) and "p%40ss" not in repr(s)


def test_fields_cannot_override_the_envelope_and_odd_values_become_strings(
    receiver: Callable[..., Receiver], sink: Callable[..., AlertSink]
) -> None:
    r = receiver()
    s = sink(r.url, cluster="c", instance_id="me")

    class Odd:
        def __str__(self) -> str:
            return "odd!"

    s.emit(alerts.IN_DOUBT_SIGNAL, alerts.ERROR, "in doubt", instance_id="other", cluster="x", value=Odd())
    (hit,) = r.wait_delivered(1)
    assert hit.body["instance_id"] == "me" and hit.body["cluster"] == "c"
    assert hit.body["value"] == "odd!"


def test_500_twice_then_200_is_delivered_once_after_retries(
    receiver: Callable[..., Receiver], sink: Callable[..., AlertSink]
) -> None:
    r = receiver(script=[500, 503])
    s = sink(r.url, **FAST)
    before_sent, before_failed = sent(alerts.CIRCUIT_OPEN), dropped(alerts.DELIVERY_FAILED)
    s.emit(alerts.CIRCUIT_OPEN, alerts.ERROR, "breaker open", broker="paper")
    assert s.flush(10)
    assert [h.status for h in r.hits] == [500, 503, 200]
    assert len({h.headers["Idempotency-Key"] for h in r.hits}) == 1  # one alert, three attempts
    assert len(r.delivered) == 1
    assert sent(alerts.CIRCUIT_OPEN) == before_sent + 1
    assert dropped(alerts.DELIVERY_FAILED) == before_failed


@pytest.mark.parametrize(("status", "attempts"), [(400, 1), (401, 1), (404, 1), (408, 2), (429, 2)])
def test_4xx_is_final_except_408_and_429(
    receiver: Callable[..., Receiver], sink: Callable[..., AlertSink], status: int, attempts: int
) -> None:
    r = receiver(script=[status])
    s = sink(r.url, **FAST)
    before = dropped(alerts.DELIVERY_FAILED)
    s.emit(alerts.LEADERSHIP_CHANGE, alerts.INFO, "became leader", epoch=3)
    assert s.flush(10)
    assert len(r.hits) == attempts
    assert dropped(alerts.DELIVERY_FAILED) == before + (1 if attempts == 1 else 0)


def test_a_redirect_is_not_followed(receiver: Callable[..., Receiver], sink: Callable[..., AlertSink]) -> None:
    """Following it would hand the Authorization header to wherever Location points."""
    r = receiver(script=[(302, {"Location": "/elsewhere"}), (307, {"Location": "/elsewhere"})])
    s = sink(r.url, token="secret", **FAST)
    before = dropped(alerts.DELIVERY_FAILED)
    s.emit(alerts.LEADERSHIP_CHANGE, alerts.INFO, "one")
    s.emit(alerts.LEADERSHIP_CHANGE, alerts.INFO, "two")
    assert s.flush(10)
    assert [(h.path, h.status) for h in r.hits] == [("/", 302), ("/", 307)]
    assert dropped(alerts.DELIVERY_FAILED) == before + 2


def test_receiver_down_retries_then_counts_one_drop_and_logs_one_redacted_line(
    sink: Callable[..., AlertSink], caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://alice:hunter2@127.0.0.1:{closed_port()}/services/T0/B0/pathsecret?key=qsecret"
    s = sink(url, **FAST)
    before = dropped(alerts.DELIVERY_FAILED)
    with caplog.at_level(logging.DEBUG, logger="haexec.alerts"):
        s.emit(alerts.SPLIT_BRAIN, alerts.CRITICAL, "split brain")
        assert s.flush(10)
    assert dropped(alerts.DELIVERY_FAILED) == before + 1
    retries = [r for r in caplog.records if r.levelno == logging.DEBUG and "attempt" in r.getMessage()]
    assert len(retries) == 4  # attempts 1..4 failed and were retried; the 5th failure is final
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    line = warnings[0].getMessage()
    assert "after 5 attempt(s)" in line and "split_brain" in line and "\n" not in line
    assert f"http://127.0.0.1:{url.split(':')[3].split('/')[0]}/..." in line
    for text in [r.getMessage() for r in caplog.records]:
        for secret in ("alice", "hunter2", "pathsecret", "qsecret", "key="):
            assert secret not in text


def test_a_bearer_token_is_never_logged(sink: Callable[..., AlertSink], caplog: pytest.LogCaptureFixture) -> None:
    s = sink(f"http://127.0.0.1:{closed_port()}/", token="tok-SECRET", attempts=2, **FAST)
    with caplog.at_level(logging.DEBUG, logger="haexec.alerts"):
        s.emit(alerts.STALE_LEADER, alerts.ERROR, "stale")
        assert s.flush(10)
    assert caplog.records
    assert all("tok-SECRET" not in r.getMessage() for r in caplog.records)
    assert "tok-SECRET" not in repr(s)


def test_a_full_queue_drops_and_counts_without_blocking_the_caller(
    receiver: Callable[..., Receiver], sink: Callable[..., AlertSink], caplog: pytest.LogCaptureFixture
) -> None:
    r = receiver(hang=True)
    s = sink(r.url, maxsize=100, request_timeout_s=20.0)
    s.emit(alerts.LEADERSHIP_CHANGE, alerts.INFO, "in flight")
    assert r.entered.wait(5), "the sender never reached the receiver"
    before = dropped(alerts.QUEUE_FULL)

    started = time.perf_counter()
    for i in range(10_000):
        s.emit(alerts.LEADERSHIP_CHANGE, alerts.INFO, "flood", n=i)
    elapsed = time.perf_counter() - started

    assert elapsed < 1.0, f"10,000 emits took {elapsed:.3f}s"
    assert s.depth == 100
    assert sample("haexec_alert_queue_depth") >= 100
    assert dropped(alerts.QUEUE_FULL) == before + 9_900

    with caplog.at_level(logging.WARNING, logger="haexec.alerts"):
        r.release.set()
        assert s.flush(20)
    assert len(r.delivered) == 101
    assert [h.body["n"] for h in r.delivered[1:]] == list(range(100))  # FIFO, the first 100 kept
    assert any("9900 alert(s) dropped: queue full" in rec.getMessage() for rec in caplog.records)


def test_emit_returns_at_once_while_the_sender_retries(sink: Callable[..., AlertSink]) -> None:
    s = sink(f"http://127.0.0.1:{closed_port()}/", backoff_initial_s=0.5, backoff_max_s=0.5)
    started = time.perf_counter()
    for _ in range(1_000):
        s.emit(alerts.LEADERSHIP_CHANGE, alerts.INFO, "x")
    assert time.perf_counter() - started < 0.5


def test_breaker_hook_alerts_when_the_circuit_opens(
    receiver: Callable[..., Receiver], sink: Callable[..., AlertSink]
) -> None:
    r = receiver()
    s = sink(r.url)
    hook = alerts.on_breaker_change(s, "paper")
    for state in ("half_open", "closed", "open"):
        hook(state)
    assert s.flush(5)
    (hit,) = r.delivered
    assert hit.body["kind"] == "circuit_breaker_open" and hit.body["broker"] == "paper"
    assert hit.body["severity"] == "error"


# ---- stop ----


def test_stop_drains_then_stops_and_later_emits_are_counted(
    receiver: Callable[..., Receiver], sink: Callable[..., AlertSink]
) -> None:
    r = receiver()
    s = sink(r.url)
    for i in range(20):
        s.emit(alerts.LEADERSHIP_CHANGE, alerts.INFO, "m", n=i)
    s.stop(5)
    assert [h.body["n"] for h in r.delivered] == list(range(20))
    assert not s._thread.is_alive()
    before = dropped(alerts.STOPPED)
    s.emit(alerts.LEADERSHIP_CHANGE, alerts.INFO, "too late")
    assert dropped(alerts.STOPPED) == before + 1
    s.stop(1)  # idempotent


def test_stop_gives_up_at_its_deadline(receiver: Callable[..., Receiver], sink: Callable[..., AlertSink]) -> None:
    r = receiver(hang=True)
    s = sink(r.url, request_timeout_s=20.0)
    for i in range(3):
        s.emit(alerts.LEADERSHIP_CHANGE, alerts.INFO, "m", n=i)
    assert r.entered.wait(5)
    before = dropped(alerts.STOPPED)
    started = time.monotonic()
    s.stop(0.3)
    assert time.monotonic() - started < 1.5
    assert not s._thread.is_alive()
    assert dropped(alerts.STOPPED) == before + 3  # one cut off in flight, two never tried


def test_stop_on_an_idle_sink_returns_at_once(
    receiver: Callable[..., Receiver], sink: Callable[..., AlertSink]
) -> None:
    s = sink(receiver().url)
    started = time.monotonic()
    s.stop(5)
    assert time.monotonic() - started < 0.5 and not s._thread.is_alive()


# ---- configuration ----


def test_from_env_without_a_webhook_is_a_null_sink() -> None:
    threads = threading.active_count()
    for env in ({}, {"HAEXEC_ALERT_WEBHOOK": ""}, {"HAEXEC_ALERT_WEBHOOK_TOKEN": "t"}):
        null = AlertSink.from_env(env, "c", "i")
        assert isinstance(null, NullSink)
        assert null.emit(alerts.SPLIT_BRAIN, alerts.CRITICAL, "x", epoch=1) is None
        assert null.flush(0)
        null.stop(0)
    assert threading.active_count() == threads


def test_from_env_builds_a_sink_with_the_token(
    receiver: Callable[..., Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    r = receiver()
    env = {"HAEXEC_ALERT_WEBHOOK": f"{r.url}/a", "HAEXEC_ALERT_WEBHOOK_TOKEN": "abc"}
    s = AlertSink.from_env(env, "c", "i")
    try:
        assert isinstance(s, AlertSink)
        s.emit(alerts.STALE_LEADER, alerts.ERROR, "stale", db_leader="b")
        (hit,) = r.wait_delivered(1)
        assert hit.headers["Authorization"] == "Bearer abc" and hit.body["db_leader"] == "b"
    finally:
        s.stop(1)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "example.com/hook",
        "localhost:8080/hook",
        "http://",
        "http:///hook",
        "https://:443/hook",
        "http://exa mple.com/hook",
        "http://example.com/ho ok",
        "http://example.com/\nhook",
        "http://example.com:99999/",
        "http://example.com:abc/",
        "http://[::1/hook",
        "mailto:ops@example.com",
    ],
)
def test_a_malformed_webhook_is_a_one_line_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        AlertSink.from_env({"HAEXEC_ALERT_WEBHOOK": url}, "c", "i")
    assert info.value.setting == "HAEXEC_ALERT_WEBHOOK"
    assert str(info.value).startswith("HAEXEC_ALERT_WEBHOOK: ") and "\n" not in str(info.value)


def test_config_errors_do_not_echo_credentials() -> None:
    for url in ("ftp://alice:hunter2@example.com/x?k=qsecret", "http://alice:hunter2@:80/x?k=qsecret"):
        with pytest.raises(ConfigError) as info:
            AlertSink.from_env({"HAEXEC_ALERT_WEBHOOK": url}, "c", "i")
        for secret in ("alice", "hunter2", "qsecret"):
            assert secret not in str(info.value)


@pytest.mark.parametrize("token", ["two words", "line\nbreak", "tab\there"])
def test_a_token_with_blanks_is_a_config_error_that_does_not_echo_it(token: str) -> None:
    env = {"HAEXEC_ALERT_WEBHOOK": "https://example.com/hook", "HAEXEC_ALERT_WEBHOOK_TOKEN": token}
    with pytest.raises(ConfigError) as info:
        AlertSink.from_env(env, "c", "i")
    assert info.value.setting == "HAEXEC_ALERT_WEBHOOK_TOKEN" and token not in str(info.value)


def test_credentials_in_the_url_and_a_token_is_a_config_error() -> None:
    env = {"HAEXEC_ALERT_WEBHOOK": "https://u:p@example.com/hook", "HAEXEC_ALERT_WEBHOOK_TOKEN": "t"}
    with pytest.raises(ConfigError, match="use one"):
        AlertSink.from_env(env, "c", "i")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example.com/services/T0/B0/secret", "https://hooks.example.com/..."),
        ("https://u:p@example.com:8443/?token=x#frag", "https://example.com:8443/..."),
        ("http://example.com", "http://example.com"),
        ("http://example.com/", "http://example.com"),
        ("http://[::1]:9000/a", "http://[::1]:9000/..."),
        ("http://[::1/", "<malformed URL>"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_parse_webhook_url_strips_userinfo_and_fragment() -> None:
    assert parse_webhook_url("https://a:b@example.com/x?y=1#z") == (
        "https://example.com/x?y=1",
        "Basic YTpi",
    )
    assert parse_webhook_url("https://example.com/x") == ("https://example.com/x", None)


# ---- metrics ----


def test_alert_counters_are_exported_at_zero_before_the_first_alert() -> None:
    """In a fresh interpreter (this one's registry has seen other tests' alerts): what a
    replica's /metrics shows before any alert, so increase() sees the first one."""
    script = "import haexec.replica\nfrom prometheus_client import generate_latest\nprint(generate_latest().decode())\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert 'haexec_alerts_sent_total{kind="leadership_change"} 0.0' in out.stdout
    for kind in alerts.KINDS:
        assert f'haexec_alerts_sent_total{{kind="{kind}"}} 0.0' in out.stdout, kind
    for reason in (alerts.QUEUE_FULL, alerts.DELIVERY_FAILED, alerts.STOPPED):
        assert f'haexec_alerts_dropped_total{{reason="{reason}"}} 0.0' in out.stdout, reason
    # Every kind the engine emits is among the pre-created ones.
    assert {"signal_expired", "signal_in_doubt", "duplicate_order", "duplicate_order_open"} <= set(alerts.KINDS)
