"""The paper venue process on real PostgreSQL and Redis: orders booked by the replica's
paper broker, a scripted price path, the matches in the database (positions, orders,
deals, the balance, the marks), the lock that makes one venue the only one, a replica's
modify racing a stop-out, a restart that matches what it missed, the feed on Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest
import redis
from psycopg_pool import ConnectionPool

from coordinator.lease import redis_client
from db.session import SessionLimits, connect, make_pool
from db.urls import libpq_url
from engine import store
from engine.brokers.base import OrderRequest, Outcome
from engine.brokers.paper import PaperBroker
from engine.market.base import TradeMode
from engine.model import OrderType, Side
from engine.venue import ledger
from engine.venue.model import Action, Quote
from engine.venue.process import Venue, VenueConfig
from engine.venue.settings import VenueSettings
from engine.venue.streams import Publisher, ticks_after, ticks_key
from tests.integration.test_paper import lead
from tests.support import wait_for
from tests.venue_support import ScriptedSource

D = Decimal
VENUE_APP = "test-venue"


@pytest.fixture
def pool(database_url: str) -> Iterator[ConnectionPool]:
    p = make_pool(database_url, SessionLimits(2000, "test-venue-broker"), name="test-venue-broker", max_size=3)
    p.open(wait=True, timeout=10)
    yield p
    p.close()


@pytest.fixture
def broker(pool: ConnectionPool, cluster: str) -> PaperBroker:
    b = PaperBroker(pool, cluster, "replica-a")
    b.connect()
    return b


@pytest.fixture
def epoch(pool: ConnectionPool, cluster: str) -> int:
    return lead(pool, cluster, "replica-a")


@pytest.fixture
def rds(redis_url: str) -> Iterator[redis.Redis]:
    client = redis_client(redis_url, 2.0)
    yield client
    client.close()


Make = Callable[..., Venue]


@pytest.fixture
def make(database_url: str, cluster: str) -> Iterator[Make]:
    made: list[Venue] = []

    def _make(
        source: ScriptedSource,
        settings: VenueSettings | None = None,
        publisher: Publisher | None = None,
        name: str = "venue-1",
    ) -> Venue:
        cfg = VenueConfig(cluster, name, settings or VenueSettings())
        v = Venue(cfg, source, lambda: connect(database_url, SessionLimits(2000, VENUE_APP)), publisher)
        made.append(v)
        return v

    yield _make
    for v in made:
        v.close()


def base_ms() -> int:
    """A market time ahead of every row's creation time (rows exist from when they were
    booked, on the database's clock), on a 250 ms grid."""
    now = time.time_ns() // 1_000_000 + 1000
    return now - now % 250


def market(
    tag: str, epoch: int, side: Side, price: str, sl: str | None, tp: str | None = None, volume: str = "1"
) -> OrderRequest:
    return OrderRequest(
        tag, "EURUSD", side, OrderType.MARKET, D(volume), D(price), D(sl) if sl else None, D(tp) if tp else None, epoch
    )  # type: ignore[arg-type]


def deals(database_url: str, ticket: str | int) -> list[tuple[object, ...]]:
    with psycopg.connect(libpq_url(database_url)) as conn:
        return conn.execute(
            "SELECT kind, price, pnl, balance, quote_ms FROM paper_deals WHERE ticket = %s ORDER BY id", (int(ticket),)
        ).fetchall()


def one(database_url: str, sql: str, *args: object) -> tuple[object, ...] | None:
    with psycopg.connect(libpq_url(database_url)) as conn:
        return conn.execute(sql, args).fetchone()


def test_a_booked_buy_is_stopped_out_on_the_bid_and_the_account_is_marked(
    broker: PaperBroker, epoch: int, make: Make, database_url: str, cluster: str
) -> None:
    booked = broker.send(market("HXSTOP1", epoch, Side.BUY, "1.10000", sl="1.09900", tp="1.10300"))
    other = broker.send(market("HXOPEN1", epoch, Side.SELL, "1.10000", sl="1.10500", volume="0.5"))
    assert booked.ref and other.ref
    t0 = base_ms()
    src = ScriptedSource(t0)
    venue = make(src)
    assert venue.open() and venue.book.position_count == 2
    src.add("EURUSD", t0 + 250, "1.09950", "1.09960")
    src.add("EURUSD", t0 + 500, "1.09895", "1.09905")  # the bid under the stop, the ask above it
    src.now = t0 + 500
    report = venue.step()
    assert report.ticks == 2
    assert [(m.action, m.ticket, m.price, m.pnl) for m in report.applied] == [
        (Action.STOP_LOSS, int(booked.ref), D("1.09895"), D("-105.00"))
    ]
    closed = one(
        database_url, "SELECT close_price, pnl, close_reason FROM paper_positions WHERE ticket = %s", booked.ref
    )
    assert closed == (D("1.09895"), D("-105.00"), "sl")
    assert deals(database_url, booked.ref) == [
        ("open", D("1.10000"), 0, None, None),
        ("sl", D("1.09895"), D("-105.00"), D("99895.00"), t0 + 500),
    ]
    account = broker.account()
    assert account.balance == D("99895.00")
    assert [p.tag for p in broker.positions()] == ["HXOPEN1"]
    # the snapshot: the sell, 0.5 at 1.10000, marked at the ask 1.09905: +47.50
    with psycopg.connect(libpq_url(database_url)) as conn:
        mark = ledger.read_mark(conn, cluster)
    assert mark is not None
    assert (mark.balance, mark.floating, mark.equity) == (D("99895.00"), D("47.50"), D("99942.50"))
    assert (mark.margin, mark.free_margin, mark.margin_level) == (D("550.00"), D("99392.50"), D("18171.36"))
    assert (mark.positions, mark.leverage, mark.quote_ms, mark.venue) == (1, 100, t0 + 500, "venue-1")
    assert mark.age_ms < 5000


def test_a_limit_fills_then_takes_profit_and_orders_expire_by_their_own_or_their_signals_expiry(
    broker: PaperBroker, epoch: int, make: Make, database_url: str, cluster: str, pool: ConnectionPool
) -> None:
    t0 = base_ms()

    def limit(tag: str, side: Side, price: str, **kw: object) -> str:
        req = replace(market(tag, epoch, side, price, None), type=OrderType.LIMIT, **kw)  # type: ignore[arg-type]
        result = broker.send(req)
        assert result.outcome is Outcome.DONE and result.ref
        return result.ref

    fills = limit("HXLIMIT", Side.BUY, "1.09800", sl=D("1.09700"), tp=D("1.10000"), volume=D("0.20"))
    own = limit("HXOWNEXP", Side.SELL, "1.10100")
    by_signal = limit("HXSIGEXP", Side.SELL, "1.10120")
    with pool.connection() as conn:
        # the order's own expiry (what PaperBroker is to book: the hook), and a signal's
        conn.execute("UPDATE paper_orders SET expires_at = %s WHERE ticket = %s", (utc(t0 + 750), int(own)))
        store.accept(conn, cluster, "a", "e" * 64, "d", "HXSIGEXP", {}, "src", None, utc(t0 + 750))
    src = ScriptedSource(t0)
    venue = make(src)
    assert venue.open() and venue.book.order_count == 3
    src.add("EURUSD", t0 + 250, "1.09800", "1.09810")  # 1 point above the limit
    src.add("EURUSD", t0 + 500, "1.09680", "1.09790")  # filled at 1.09790
    src.add("EURUSD", t0 + 750, "1.10150", "1.10160")  # both sells would fill; they expired
    src.now = t0 + 750
    applied = venue.step().applied
    # the fill at 1.09790; at t0 + 750 the position's take profit (a gap through 1.10000:
    # the better price) and both sells, which that bid would fill, expired instead
    fill, tp, *expired = applied
    assert (fill.action, fill.ticket, fill.price) == (Action.FILL, int(fills), D("1.09790"))
    assert (tp.action, tp.ticket, tp.price) == (Action.TAKE_PROFIT, int(fills), D("1.10150"))
    assert {(m.action, m.ticket) for m in expired} == {(Action.EXPIRE, int(own)), (Action.EXPIRE, int(by_signal))}
    by_kind = {m.action: m for m in applied}
    assert by_kind[Action.TAKE_PROFIT].pnl == D("72.00")  # (1.10150 - 1.09790) x 0.2 x 100,000
    sql = "SELECT state, fill_price FROM paper_orders WHERE ticket = %s"
    states = {t: one(database_url, sql, int(t)) for t in (fills, own, by_signal)}
    assert states == {fills: ("filled", D("1.09790")), own: ("expired", None), by_signal: ("expired", None)}
    assert [d[0] for d in deals(database_url, fills)] == ["fill", "tp"]
    assert [o.state for o in broker.find_by_tag("HXLIMIT")] == ["history"]
    assert broker.account().balance == D("100072.00")
    assert broker.open_exposure() == 0


def utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def test_a_replicas_modify_and_a_stop_out_serialise_on_the_row(
    broker: PaperBroker, epoch: int, make: Make, database_url: str
) -> None:
    booked = broker.send(market("HXRACE", epoch, Side.BUY, "1.10000", sl="1.09900"))
    assert booked.ref
    ticket = int(booked.ref)
    t0 = base_ms()
    src = ScriptedSource(t0)
    venue = make(src)
    assert venue.open()
    src.add("EURUSD", t0 + 250, "1.09850", "1.09860")  # through the stop
    src.now = t0 + 250
    # a replica's modify that has the row and has not committed yet (PaperBroker.modify is one
    # UPDATE; here it is held open so the venue must meet it)
    with psycopg.connect(libpq_url(database_url)) as replica:
        replica.execute("UPDATE paper_positions SET sl = 1.09000, tp = tp WHERE ticket = %s", (ticket,))
        done: list[object] = []
        stepping = threading.Thread(target=lambda: done.append(venue.step()))
        stepping.start()
        wait_for(lambda: waiting_on_a_lock(database_url), 5, "the venue waiting for the position's row")
        replica.commit()  # the modify wins: the stop is now 1.09000
    stepping.join(10)
    assert done and done[0].applied == []  # type: ignore[attr-defined]
    assert venue.stats.redecided == 1
    assert one(database_url, "SELECT closed_at, sl FROM paper_positions WHERE ticket = %s", ticket) == (
        None,
        D("1.09000"),
    )
    book = venue.book.position(ticket)
    assert book is not None and book.sl == D("1.09000")
    # and the other way round: the stop-out commits first, the replica's modify finds it closed
    src.add("EURUSD", t0 + 500, "1.08990", "1.09000")
    src.now = t0 + 500
    [m] = venue.step().applied
    assert (m.action, m.price, m.pnl) == (Action.STOP_LOSS, D("1.08990"), D("-1010.00"))
    assert broker.modify(booked.ref, D("1.08000"), None).outcome is Outcome.REJECTED
    assert [d[0] for d in deals(database_url, ticket)] == ["open", "modify", "sl"]


def waiting_on_a_lock(database_url: str) -> bool:
    row = one(
        database_url,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
        VENUE_APP,
    )
    return bool(row and row[0])


def test_the_rest_of_a_partly_closed_position_is_stopped_out_for_what_is_left(
    broker: PaperBroker, epoch: int, make: Make, database_url: str, cluster: str
) -> None:
    booked = broker.send(market("HXPARTSTOP", epoch, Side.BUY, "1.10000", sl="1.09900"))
    assert booked.ref
    t0 = base_ms()
    src = ScriptedSource(t0)
    venue = make(src)
    assert venue.open()
    # a replica closes 0.4 of the lot at 1.10050 (PaperBroker.close_partial's transaction)
    with psycopg.connect(libpq_url(database_url)) as conn, conn.cursor() as cur:
        quote = Quote("EURUSD", t0, D("1.10050"), D("1.10060"))
        done = ledger.close_part(cur, cluster, int(booked.ref), D("0.4"), quote, venue.contracts["EURUSD"])
        assert done is not None and done[0].pnl == D("20.00")
    src.add("EURUSD", t0 + 250, "1.09895", "1.09905")
    src.now = t0 + 250
    [m] = venue.step().applied  # the venue's book has heard of the partial by then
    assert (m.action, m.volume, m.price, m.pnl) == (Action.STOP_LOSS, D("0.6"), D("1.09895"), D("-63.00"))
    assert [(d[0], d[2]) for d in deals(database_url, booked.ref)] == [
        ("open", 0),
        ("partial", D("20.00")),
        ("sl", D("-63.00")),
    ]
    assert broker.account().balance == D("100000") + D("20.00") - D("63.00")


def test_one_venue_matches_a_cluster_and_a_second_takes_over_when_its_session_ends(
    broker: PaperBroker, epoch: int, make: Make, database_url: str
) -> None:
    t0 = base_ms()
    src = ScriptedSource(t0)
    first, second = make(src, name="venue-1"), make(src, name="venue-2")
    assert first.open()
    assert not second.open() and not second.holding  # standing by
    booked = broker.send(market("HXTAKEOVER", epoch, Side.SELL, "1.10000", sl="1.10100"))
    # the first venue's session dies (a crash, a partition the server noticed): its lock goes
    # with it, and so does every write it could still attempt
    assert first.conn is not None
    pid = first.conn.info.backend_pid
    with psycopg.connect(libpq_url(database_url), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.OperationalError):
        first.step()
    assert wait_for(second.open, 5, "the standby taking the lock")
    src.add("EURUSD", t0 + 250, "1.10095", "1.10105")
    src.now = t0 + 250
    [m] = second.step().applied
    assert (m.action, m.ticket, m.price) == (Action.STOP_LOSS, int(booked.ref or 0), D("1.10105"))


def test_a_restarted_venue_matches_the_ticks_it_missed_at_their_prices(
    broker: PaperBroker, epoch: int, make: Make, database_url: str
) -> None:
    booked = broker.send(market("HXCATCHUP", epoch, Side.BUY, "1.10000", sl="1.09900"))
    t0 = base_ms()
    src = ScriptedSource(t0)
    before = make(src, name="venue-1")
    assert before.open()
    src.add("EURUSD", t0 + 250, "1.09950", "1.09960")
    src.now = t0 + 250
    assert before.step().applied == []  # and the cursor (t0 + 250) is saved with the mark
    before.close()
    # while no venue runs: the bid dips through the stop and comes back
    src.add("EURUSD", t0 + 500, "1.09850", "1.09860")
    src.add("EURUSD", t0 + 750, "1.10000", "1.10010")
    src.now = t0 + 1000
    after = make(src, name="venue-2")
    assert after.open()
    [m] = after.step().applied
    assert (m.action, m.time_ms, m.price, m.pnl) == (Action.STOP_LOSS, t0 + 500, D("1.09850"), D("-150.00"))
    assert deals(database_url, booked.ref or 0)[-1][4] == t0 + 500


def test_a_close_only_symbol_stops_out_and_fills_nothing(
    broker: PaperBroker, epoch: int, make: Make, database_url: str
) -> None:
    booked = broker.send(market("HXCLOSEONLY", epoch, Side.BUY, "1.10000", sl="1.09900"))
    pending = broker.send(replace(market("HXCOLIMIT", epoch, Side.BUY, "1.09950", None), type=OrderType.LIMIT))
    t0 = base_ms()
    src = ScriptedSource(t0)
    venue = make(src, VenueSettings(trade_modes={"EURUSD": TradeMode.CLOSE_ONLY}))
    assert venue.open()
    src.add("EURUSD", t0 + 250, "1.09890", "1.09900")
    src.now = t0 + 250
    [m] = venue.step().applied
    assert (m.action, m.ticket) == (Action.STOP_LOSS, int(booked.ref or 0))
    assert one(database_url, "SELECT state FROM paper_orders WHERE ticket = %s", int(pending.ref or 0)) == ("pending",)


def test_the_ticks_go_to_redis_streams_bounded_and_once(
    broker: PaperBroker, make: Make, rds: redis.Redis, cluster: str
) -> None:
    t0 = base_ms()
    src = ScriptedSource(t0)
    for i in range(1, 401):
        src.add("EURUSD", t0 + 250 * i, "1.10000", "1.10010")
    venue = make(src, publisher=Publisher(rds, cluster, maxlen=100))
    assert venue.open()
    src.now = t0 + 250 * 200
    venue.step()
    key = ticks_key(cluster, "EURUSD")
    try:
        assert 100 <= rds.xlen(key) < 200  # MAXLEN ~ 100
        assert ticks_after(rds, cluster, "EURUSD", t0 + 250 * 199, now_ms=src.now)[0].bid == D("1.10000")
        venue.close()
        # a restart resumes from the saved cursor: the ticks it publishes again are refused by id
        again = make(src, publisher=Publisher(rds, cluster, maxlen=100), name="venue-2")
        assert again.open()
        src.now = t0 + 250 * 400
        again.step()
        stream = rds.xrange(key)
        times = [int(i.split("-")[0]) for i, _ in stream]
        assert times == sorted(set(times)) and times[-1] == t0 + 250 * 400
        assert again.stats.published == 200 and again.stats.duplicates == 0
    finally:
        rds.delete(key)


def test_a_stop_decided_on_a_stale_copy_is_decided_again_on_the_row(
    broker: PaperBroker, epoch: int, make: Make, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    moved_away = broker.send(market("HXSTALE1", epoch, Side.BUY, "1.10000", sl="1.09900"))
    moved_up = broker.send(market("HXSTALE2", epoch, Side.BUY, "1.10000", sl="1.09900"))
    t0 = base_ms()
    src = ScriptedSource(t0)
    venue = make(src)
    assert venue.open()
    # the replica moves both stops; the venue has not heard yet (its notifications wait)
    assert broker.modify(moved_away.ref or "", D("1.09000"), None).outcome is Outcome.DONE
    assert broker.modify(moved_up.ref or "", D("1.09950"), None).outcome is Outcome.DONE
    monkeypatch.setattr(venue, "_drain_notifications", lambda: None)
    src.add("EURUSD", t0 + 250, "1.09880", "1.09890")  # through 1.09900, not through 1.09000
    src.now = t0 + 250
    [m] = venue.step().applied
    # the one whose stop went away stays open; the other closes at the same price, its P&L
    # from the row, the stop in its deal the one it had
    assert (m.action, m.ticket, m.price, m.pnl) == (
        Action.STOP_LOSS,
        int(moved_up.ref or 0),
        D("1.09880"),
        D("-120.00"),
    )
    assert venue.stats.redecided == 1
    kept = venue.book.position(int(moved_away.ref or 0))
    assert kept is not None and kept.sl == D("1.09000")
    assert one(database_url, "SELECT closed_at FROM paper_positions WHERE ticket = %s", int(moved_away.ref or 0)) == (
        None,
    )


def test_the_sim_feed_is_published_tick_by_tick_with_its_bar_closes(make: Make, rds: redis.Redis, cluster: str) -> None:
    from engine.market.sim import SimSource
    from engine.venue.streams import bars_after, bars_key

    minute = (time.time_ns() // 1_000_000 // 60_000 + 1) * 60_000
    clock = [minute + 1000]
    sim = SimSource(3, ["EURUSD"], clock=lambda: clock[0])
    venue = make(sim, publisher=Publisher(rds, cluster, maxlen=10_000))  # type: ignore[arg-type]
    try:
        assert venue.open()
        clock[0] += 130_000  # two minutes and ten seconds of the sim, read in one step
        assert venue.step().ticks == 520
        ticks = ticks_after(rds, cluster, "EURUSD", 0, clock[0], count=10_000)
        assert len(ticks) == 520 and [t.time_ms for t in ticks] == list(range(minute + 1250, clock[0] + 1, 250))
        assert ticks[0] == replace(sim.tick_at("EURUSD", minute + 1250), age_ms=ticks[0].age_ms)  # the sim's own
        bars = bars_after(rds, cluster, "EURUSD", 0)
        assert [(b.timeframe.name, b.time_ms) for b in bars] == [("M1", minute), ("M1", minute + 60_000)]
        second = [t.bid for t in ticks if minute + 60_000 <= t.time_ms < minute + 120_000]
        assert bars[1].close == second[-1] and bars[1].high == max(second) and bars[1].low == min(second)
    finally:
        rds.delete(ticks_key(cluster, "EURUSD"), bars_key(cluster, "EURUSD"))
