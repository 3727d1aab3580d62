"""`haexec gateway`: the process beside one MetaTrader 5 terminal.

Start-up is all or nothing, like a replica's: the state directory locked (one gateway per
directory, so one writer of its promise and journal), the journal opened (rows a dead process
left mid-send become `interrupted`), the promise read (never below the journal's highest
epoch), the terminal initialized and logged in (retried for HAEXEC_STARTUP_TIMEOUT_S, then
exit 1 with one line; the password is never logged), the port bound and served. Only then
does it say it is ready. SIGTERM stops serving, lets a call on the terminal finish (up to
the deadline), shuts the terminal connection down and exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from filelock import FileLock, Timeout
from prometheus_client import disable_created_metrics

from common.errors import first_line
from coordinator.fencing import check_granted
from db.session import SessionLimits, make_pool
from db.urls import redact
from engine.brokers.base import BrokerError, BrokerUnavailable
from engine.brokers.gateway_wire import Fence
from engine.brokers.mt5 import INSTALL_HINT, MT5Broker
from haexec.alerts import Alerts, AlertSink
from haexec.gateway import settings as gateway_settings
from haexec.gateway.app import build_app
from haexec.gateway.journal import Journal, JournalError
from haexec.gateway.market import market_routes, market_source
from haexec.gateway.metrics import GatewayMetrics
from haexec.gateway.promise import Promise, PromiseFileError, PromiseKeeper, Unconfirmed
from haexec.gateway.prune import JournalPruner
from haexec.gateway.service import Gateway, probe
from haexec.gateway.terminal import TerminalLink
from haexec.http import HttpServer

log = logging.getLogger("haexec.gateway")

EXIT_FAILED = 1


class StartupError(Exception):
    """Start-up failed for an expected reason; the message is the one line to print."""


def _connect(broker: MT5Broker, timeout_s: float) -> None:
    """initialize + login, retried with backoff until the start-up timeout."""
    deadline = time.monotonic() + timeout_s
    wait = 0.2
    attempt = 0
    while True:
        attempt += 1
        try:
            broker.connect()
            return
        except BrokerUnavailable as e:
            if str(e) == INSTALL_HINT:
                raise StartupError(f"MT5 terminal: {e}") from None
            error = first_line(e)
        except BrokerError as e:
            error = first_line(e)
        left = deadline - time.monotonic()
        if left <= 0:
            raise StartupError(f"MT5 terminal not ready after {timeout_s:g}s ({attempt} attempts): {error}")
        log.warning("MT5 terminal not ready (attempt %d): %s; retrying", attempt, error)
        time.sleep(min(wait, left))
        wait = min(wait * 2, 5.0)


@dataclass
class Running:
    """What a started gateway holds, and what a stop (or a failed start) must close, in order."""

    closers: list[Callable[[], object]] = field(default_factory=list)
    gateway: Gateway | None = None
    http: HttpServer | None = None

    def close(self) -> None:
        for closer in reversed(self.closers):
            try:
                closer()
            except Exception as e:  # closing everything else matters more than one failure
                log.warning("gateway stop: %s", first_line(e))


def run(env: Mapping[str, str]) -> int:
    cfg = gateway_settings.load(env)  # ConfigError: exit 2 at the CLI
    alerts = AlertSink.from_env(env, cfg.cluster, f"gateway-{socket.gethostname()}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    running = Running([lambda: alerts.stop(2.0)])
    try:
        _start(cfg, alerts, running)
    except StartupError as e:
        running.close()
        print(f"haexec gateway: {e}", file=sys.stderr)
        return EXIT_FAILED
    assert running.gateway is not None
    prober = threading.Thread(
        target=_probe_loop, args=(running.gateway, cfg.probe_ms / 1000, stop), name="gateway-probe", daemon=True
    )
    prober.start()
    stop.wait()
    log.warning("gateway stopping: a call on the terminal gets up to %d ms to finish", cfg.deadline_ms)
    running.close()
    return 0


def _start(cfg: gateway_settings.GatewaySettings, alerts: Alerts, running: Running) -> None:
    cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = FileLock(str(cfg.state_dir / "gateway.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise StartupError(f"another gateway holds {cfg.state_dir} (one gateway per state directory)") from None
    running.closers.append(lock.release)
    journal = Journal(cfg.state_dir)
    try:
        interrupted = journal.open()
    except JournalError as e:
        raise StartupError(str(e)) from None
    running.closers.append(journal.close)
    if interrupted:
        log.critical(
            "journal: %d order_send(s) were on the terminal when the last gateway stopped: outcome unknown, "
            "their tags are not sent again (see GET /v1/journal)",
            interrupted,
        )
    floor = journal.highest_fence()
    pool = make_pool(
        cfg.database_url, SessionLimits(cfg.db_timeout_ms, "haexec-gateway"), "haexec-gateway", min_size=0, max_size=2
    )
    pool.open(wait=False)  # the database is needed only when the promise moves up
    running.closers.append(lambda: pool.close(timeout=1.0))

    def confirm(fence: Fence) -> None:
        import psycopg
        import psycopg_pool

        try:
            with pool.connection(timeout=cfg.db_timeout_ms / 1000) as conn:
                check_granted(conn, fence.cluster, fence.epoch, fence.instance)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
            raise Unconfirmed(f"database at {redact(cfg.database_url)} unreachable: {first_line(e)}") from None

    try:
        promise = PromiseKeeper(
            cfg.state_dir, cfg.cluster, confirm, Promise(floor[0], floor[1]) if floor is not None else None
        )
    except PromiseFileError as e:
        raise StartupError(str(e)) from None
    broker = MT5Broker(
        login=cfg.mt5_login,
        password=cfg.mt5_password,
        server=cfg.mt5_server,
        path=cfg.mt5_path,
        magic=cfg.mt5_magic,
        deadline_ms=cfg.deadline_ms,
        connect_timeout_ms=max(cfg.deadline_ms, 10_000),
        connect_attempts=1,  # the retries are _connect's, bounded by the start-up timeout
    )
    running.closers.append(broker.close)
    _connect(broker, cfg.startup_timeout_s)
    # On the way out, after HTTP stopped taking calls: the call on the terminal may finish.
    running.closers.append(lambda: broker.wait_idle(cfg.deadline_ms / 1000))
    disable_created_metrics()  # this process serves only its own registry: no *_created series
    metrics = GatewayMetrics()
    gateway = Gateway(cfg.cluster, broker, promise, journal, metrics, alerts.emit)
    gateway.link = TerminalLink(broker.connect)
    pruner = JournalPruner(journal, cfg.journal_days, metrics)
    pruner.start()
    running.closers.append(pruner.stop)
    running.gateway = gateway
    gateway.terminal = probe(gateway, cfg.deadline_ms / 1000)

    def info() -> dict[str, object]:
        return {
            "cluster": cfg.cluster,
            "deadline_ms": cfg.deadline_ms,
            "magic": cfg.mt5_magic,
            "login": cfg.mt5_login,
            "server": cfg.mt5_server,
        }

    try:
        app = build_app(gateway, cfg.token, cfg.http_limits, info)
        app.router.routes.extend(market_routes(market_source(broker, cfg.deadline_ms), cfg.token, metrics))
        http = HttpServer(app, cfg.host, cfg.port, cfg.http_limits, tls=cfg.tls)
    except OSError as e:
        raise StartupError(str(e)) from None
    http.start()
    running.http = http
    running.closers.append(http.stop)
    deadline = time.monotonic() + 10
    while not http.started:
        if time.monotonic() > deadline:
            raise StartupError(f"HTTP server on {cfg.host}:{http.port} did not start")
        time.sleep(0.01)
    if cfg.exposed_in_plaintext:
        log.critical(
            "PLAINTEXT: the gateway serves %s:%d without TLS (HAEXEC_GATEWAY_ALLOW_PLAINTEXT): the bearer token "
            "and every order cross the network in clear",
            cfg.host,
            http.port,
        )
    p = promise.current
    log.info(
        "gateway ready: cluster=%s %s://%s:%d promise=epoch %d of %s journal=%d rows terminal=%s",
        cfg.cluster,
        cfg.scheme,
        cfg.host,
        http.port,
        p.epoch,
        p.instance,
        journal.rows,
        "connected" if gateway.terminal.connected else (gateway.terminal.error or "not connected"),
    )


def _probe_loop(gateway: Gateway, every_s: float, stop: threading.Event) -> None:
    """Read the terminal every `every_s`; when it lost its connection, reconnect (terminal.py)."""
    link = gateway.link
    while not stop.wait(min(every_s, link.due_in())):
        try:
            link.attempt()
            view = probe(gateway, min(every_s, gateway.broker.deadline_ms / 1000))
            gateway.terminal = view
            if view.error is not None or view.connected is False:
                link.lost(view.error or "the terminal is not connected to the trade server")
        except Exception:  # the prober must outlive any one failure; the next reading replaces this
            log.exception("terminal probe failed")


def main(env: Mapping[str, str] | None = None) -> int:
    return run(os.environ if env is None else env)
