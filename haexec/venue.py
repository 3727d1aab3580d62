"""`haexec venue`: the paper venue as a process of its own, one per cluster, beside the
replicas and independent of which one leads (engine/venue/process.py does the matching).

Start-up is all or nothing, like a replica's: settings (exit 2 with one line naming the
setting), then Redis and PostgreSQL (retried for HAEXEC_STARTUP_TIMEOUT_S, then exit 1
naming the store; the database must be at this release's schema), then the market source.
After that, losing a store is survived: the database is retried (the venue holds its lock
only while its session lives), Redis only costs publication. SIGTERM or SIGINT: the step
under way finishes, the session closes (releasing the lock to a standby venue), exit 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping

import redis

from common.errors import ConfigError, first_line
from coordinator.lease import redis_client
from coordinator.redis_url import redact_redis_url
from db.session import SessionLimits, connect
from engine.market import BadInput, FeedUnavailable, UnknownSymbol, market_settings, open_source
from engine.market.cursor import PgCursorStore
from engine.venue.process import Venue, VenueConfig
from engine.venue.settings import venue_settings
from engine.venue.streams import Publisher
from haexec import settings as settings_mod
from haexec.replica import StartupError, check_database, resolve_urls

log = logging.getLogger("haexec.venue")


def _wait_for_redis(client: redis.Redis, url: str, timeout_s: float, stop: threading.Event) -> None:
    deadline = time.monotonic() + timeout_s
    pause = 0.1
    while True:
        try:
            client.ping()
            return
        except redis.RedisError as e:
            if time.monotonic() + pause > deadline or stop.is_set():
                raise StartupError(
                    f"redis at {redact_redis_url(url)} unreachable after {timeout_s:g}s: {first_line(e)}"
                ) from None
        stop.wait(pause)
        pause = min(pause * 2, 2.0)


def build(env: Mapping[str, str], stop: threading.Event) -> Venue:
    """The venue the environment describes, its stores checked: ConfigError (exit 2) or
    StartupError (exit 1)."""
    cfg = settings_mod.load(env)
    venue_cfg = venue_settings(env)
    chosen = market_settings(env)
    redis_url, database_url = resolve_urls(cfg)
    check_database(database_url, cfg.startup_timeout_s)
    cluster = cfg.election.cluster
    instance = cfg.election.instance_id
    client = redis_client(redis_url, cfg.election.db_timeout_ms / 1000, name=f"haexec-venue-{instance}")
    _wait_for_redis(client, redis_url, cfg.startup_timeout_s, stop)
    store = PgCursorStore(database_url, cluster) if chosen.source == "replay" else None
    try:
        source = open_source(chosen, cursor_store=store)
    except (BadInput, UnknownSymbol) as e:
        raise ConfigError("HAEXEC_MARKET", first_line(e)) from None
    except FeedUnavailable as e:
        raise StartupError(f"market data ({chosen.source}): {first_line(e)}") from None
    limits = SessionLimits(cfg.election.db_timeout_ms, application_name=f"haexec-venue-{instance}")
    return Venue(
        VenueConfig(cluster, instance, venue_cfg, cfg.engine.paper_balance),
        source,
        lambda: connect(database_url, limits),
        Publisher(client, cluster, venue_cfg.stream_maxlen),
    )


def run_venue(env: Mapping[str, str], setup_logging: Callable[[str], None]) -> int:
    """ConfigError and StartupError propagate (the CLI turns them into exit 2 and 1)."""
    level = settings_mod.log_level(env)
    setup_logging(level)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    venue = build(env, stop)
    log.info("venue %s of cluster %s starting on %s", venue.cfg.venue_id, venue.cfg.cluster, venue.source.name)
    try:
        venue.run(stop)
    finally:
        close = getattr(venue.source, "close", None)
        if close is not None:
            close()  # a replay saves its cursor
    log.info("venue %s stopped", venue.cfg.venue_id)
    return 0
