"""The replay cursor in PostgreSQL (migration 0003): a restarted replay resumes where it
stopped, the cursor never moves back, the database going away does not stop playing, and
0003 downgrades to 0002 and upgrades again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from db import migrate
from db.urls import libpq_url
from engine.market.base import FeedUnavailable
from engine.market.cursor import PgCursorStore
from engine.market.replay import Cursor, ReplaySource, load
from tests.conftest import create_database, drop_database
from tests.market_support import MarketClock as Clock

TICKS = "time,symbol,bid,ask\n" + "".join(
    f"2026-01-05T10:{m:02d}:{s:02d}Z,EURUSD,1.1{m:02d}{s:02d},1.1{m:02d}{s + 1:02d}\n"
    for m in range(3)
    for s in (0, 30)
)


def tables(url: str) -> set[str]:
    with psycopg.connect(libpq_url(url)) as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


@pytest.fixture
def empty_db(server_urls: tuple[str, str]) -> Iterator[str]:
    url = create_database(server_urls[1], prefix="haexec_mk")
    yield url
    drop_database(server_urls[1], url)


def test_0003_creates_the_cursor_table_and_downgrades(empty_db: str) -> None:
    migrate.upgrade(empty_db, "0002")
    assert "market_replay_cursor" not in tables(empty_db)
    migrate.upgrade(empty_db, "0003")  # 0003 itself: later revisions stack on it
    assert migrate.current_revision(empty_db) == "0003" and "market_replay_cursor" in tables(empty_db)
    migrate.downgrade(empty_db, "0002")
    assert migrate.current_revision(empty_db) == "0002" and "market_replay_cursor" not in tables(empty_db)
    assert "signals" in tables(empty_db)  # 0002's tables are untouched
    migrate.upgrade(empty_db)
    assert "market_replay_cursor" in tables(empty_db)


def test_a_restart_resumes_where_the_replay_stopped(database_url: str, cluster: str, tmp_path: Path) -> None:
    path = tmp_path / "ticks.csv"
    path.write_text(TICKS)
    store = PgCursorStore(database_url, cluster)
    clock = Clock(5_000_000)
    first = ReplaySource(load(path), speed=1.0, clock=clock, store=store, save_every_ms=1000)
    clock.ms += 65_000  # 10:01:05 of the file
    first.advance()  # the pump persists it (a second has passed since the start)
    data = load(path)
    assert store.load(data.digest) == Cursor(3, data.release_ms[0] + 65_000)
    clock.ms += 10_000_000  # the process died; much later a new one starts
    again = ReplaySource(load(path), speed=1.0, clock=clock, store=store)
    assert again.now_ms() == data.release_ms[0] + 65_000
    assert str(again.tick("EURUSD").bid) == "1.10100"  # the 10:01:00 tick, not the file's first
    other = PgCursorStore(database_url, cluster + "x")
    assert other.load(data.digest) is None  # per cluster


def test_the_cursor_never_moves_back(database_url: str, cluster: str) -> None:
    store = PgCursorStore(database_url, cluster)
    feed = "a" * 64
    store.save(feed, "/x.csv", Cursor(10, 2_000))
    store.save(feed, "/x.csv", Cursor(4, 1_000))  # a slower replica saving late
    assert store.load(feed) == Cursor(10, 2_000)


def test_a_database_outage_is_reported_and_playing_goes_on(tmp_path: Path, cluster: str) -> None:
    path = tmp_path / "ticks.csv"
    path.write_text(TICKS)
    down = PgCursorStore("postgresql://postgres@127.0.0.1:1/none", cluster, timeout_ms=500)
    with pytest.raises(FeedUnavailable, match="^replay cursor could not be read: "):
        down.load("b" * 64)

    class SaveFails(PgCursorStore):
        def load(self, feed: str) -> Cursor | None:
            return None

    clock = Clock(5_000_000)
    src = ReplaySource(load(path), speed=1.0, clock=clock, store=SaveFails(down.url, cluster, 500))
    clock.ms += 31_000
    src.advance()  # logs and carries on
    assert str(src.tick("EURUSD").bid) == "1.10030"
