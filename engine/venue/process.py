"""The paper venue's loop (`haexec venue`): one per cluster, whoever leads.

Each step:
1. reloads the rows the book's change notifications name (every booking, modify, close and
   cancel, by a replica or by the venue: engine/venue/ledger.py), and the whole book every
   `resync_ms` as a backstop;
2. reads the ticks since the last one matched, of every symbol, in time order (after a
   restart: from the cursor in paper_venue_cursor, at most `catchup_ms` back, so stops that
   a live feed crossed while the venue was down still trigger, at that tick's price);
3. matches each (engine/venue/matching.py) and applies each match in a transaction of its
   own that locks the row and decides again on it; then expiries and stop-outs;
4. publishes the ticks and the bars that closed on Redis Streams (engine/venue/streams.py):
   best effort, the database is the truth, and a Redis outage costs only publication;
5. every `mark_ms`, writes the account marked to market (paper_marks) and the tick cursor
   in one transaction.

It waits for the next tick on a deadline (the sim's 250 ms grid, else `poll_ms`), never
longer; a database error drops the connection (and with it the lock) and the next step
reconnects, takes the lock again and reloads the book before it matches anything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal

import psycopg
import redis

from common.errors import first_line
from engine.market.base import FeedUnavailable, Source, Tick, Timeframe
from engine.venue import ledger
from engine.venue.matching import Book, Permissions, stop_outs
from engine.venue.model import Action, Match, Quote
from engine.venue.pnl import Contract, Mark, mark
from engine.venue.settings import VenueSettings
from engine.venue.streams import BarClose, Publisher

log = logging.getLogger("haexec.venue")

TICK_LIMIT = 10_000  # per symbol per step; more waits for the next step
SIM_GRID_MS = 250  # the sim's tick spacing: wake just after each step of it
SUMMARY_S = 60.0


@dataclass(frozen=True)
class VenueConfig:
    cluster: str
    venue_id: str  # who writes the marks (the instance id)
    settings: VenueSettings = field(default_factory=VenueSettings)
    initial_balance: Decimal = Decimal("100000")  # the paper account's, when the venue creates it
    currency: str = "USD"
    resync_ms: int = 30_000
    poll_ms: int = 50  # a source without a tick grid is read this often
    retry_ms: int = 1000  # waiting for the lock, or to reconnect


@dataclass
class VenueStats:
    ticks: int = 0
    matches: Counter[str] = field(default_factory=Counter)
    redecided: int = 0  # matches the locked row no longer bore out (a replica got there first)
    published: int = 0
    duplicates: int = 0
    publish_errors: int = 0
    # From reading a tick to the commit of the close it triggered (ms), per stop loss, take
    # profit and stop-out; and from the tick's own time (the market's clock) to that commit.
    fill_ms: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    tick_to_fill_ms: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))


@dataclass(frozen=True)
class StepReport:
    ticks: int
    applied: list[Match]


class Venue:
    def __init__(
        self,
        cfg: VenueConfig,
        source: Source,
        connect: Callable[[], psycopg.Connection],
        publisher: Publisher | None = None,
        *,
        perf: Callable[[], float] = time.perf_counter,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self._connect = connect
        self.publisher = publisher
        self._perf = perf
        self._wall_ms = wall_ms
        self.book = Book()
        self.contracts: dict[str, Contract] = {}
        self.cursor: dict[str, int] = {}
        self._bar_cursor: dict[tuple[str, Timeframe], int] = {}
        self.balance = Decimal(0)
        self.conn: psycopg.Connection | None = None
        self.stats = VenueStats()
        self.last_mark: Mark | None = None
        # a sim or MT5 clock is the wall clock, so a row's creation time on the database's
        # clock says from which tick it exists; a replay's clock is its data's
        self._live = bool(getattr(source, "live", True))
        self._marked_at = -1e18
        self._resynced_at = 0.0
        self._publishing = True
        self._standing_by = False
        self._summary_at = perf()

    # -- holding the venue -----------------------------------------------------------------

    @property
    def holding(self) -> bool:
        return self.conn is not None

    def open(self) -> bool:
        """Connect, listen for book changes, take the venue lock, then load contracts, the
        account, the cursor and the book. False when another venue holds the lock."""
        conn = self._connect()
        try:
            conn.execute(f"LISTEN {ledger.NOTIFY_CHANNEL}")  # before the load: nothing slips between
            if not ledger.try_lock(conn, self.cfg.cluster):
                conn.close()
                if not self._standing_by:
                    log.warning(
                        "venue %s: another venue holds cluster %s; standing by", self.cfg.venue_id, self.cfg.cluster
                    )
                    self._standing_by = True
                return False
            self._standing_by = False
            ledger.ensure_account(conn, self.cfg.cluster, self.cfg.initial_balance, self.cfg.currency)
            self.conn = conn
            self._load_contracts()
            self._start_cursor(ledger.read_cursor(conn, self.cfg.cluster))
            self._reload_all()
        except BaseException:
            self.conn = None
            conn.close()
            raise
        log.info(
            "venue %s matches cluster %s: %d positions, %d pending orders, %d symbols",
            self.cfg.venue_id,
            self.cfg.cluster,
            self.book.position_count,
            self.book.order_count,
            len(self.contracts),
        )
        return True

    def _who(self) -> tuple[str, str]:
        return self.cfg.venue_id, self.cfg.cluster

    def close(self) -> None:
        """Let go of the venue (closing the session releases the lock)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    def _db(self) -> psycopg.Connection:
        if self.conn is None:
            raise RuntimeError("the venue is not open")
        return self.conn

    def _load_contracts(self) -> None:
        s = self.cfg.settings
        contracts = {}
        for symbol in self.source.symbols():
            spec = self.source.spec(symbol)
            contracts[symbol] = Contract.of(spec, self.cfg.currency, s.trade_mode(symbol, spec.trade_mode))
        self.contracts = contracts

    def _start_cursor(self, saved: dict[str, int]) -> None:
        now = self.source.now_ms()
        earliest = now - self.cfg.settings.catchup_ms
        self.cursor = {}
        for symbol in self.contracts:
            at = saved.get(symbol)
            if not self._live or at is None:
                self.cursor[symbol] = now  # a replay resumes by its own cursor
            else:
                if at < earliest:
                    log.warning(
                        "venue: %s ticks of %.1f s were missed beyond the catch-up window; they are not matched",
                        symbol,
                        (earliest - at) / 1000,
                    )
                self.cursor[symbol] = max(at, earliest)
        self._bar_cursor = {
            (symbol, tf): tf.open_of(at) - tf.ms
            for symbol, at in self.cursor.items()
            for tf in self.cfg.settings.bar_timeframes
        }

    # -- the book ------------------------------------------------------------------------------

    def _merge(self, loaded: ledger.Loaded) -> None:
        """Rows read from the database into the book. An entry already there keeps its
        `since_ms`; a new one exists from its creation time (live source) or from now."""
        now = self.source.now_ms()
        for p in loaded.positions:
            old = self.book.position(p.ticket)
            since = old.since_ms if old is not None else (p.since_ms if self._live else now)
            self.book.put_position(replace(p, since_ms=since))
        for o in loaded.orders:
            old_o = self.book.order(o.ticket)
            since = old_o.since_ms if old_o is not None else (o.since_ms if self._live else now)
            self.book.put_order(replace(o, since_ms=since))
        for t in loaded.gone_positions:
            self.book.drop_position(t)
        for t in loaded.gone_orders:
            self.book.drop_order(t)

    def _reload_all(self) -> None:
        """The whole book again (and the symbols' contracts: a trade mode may change)."""
        conn = self._db()
        if self._resynced_at:
            self._load_contracts()
        loaded = ledger.load(conn, self.cfg.cluster)
        keep_p = {p.ticket for p in loaded.positions}
        keep_o = {o.ticket for o in loaded.orders}
        for p in list(self.book.positions()):
            if p.ticket not in keep_p:
                self.book.drop_position(p.ticket)
        for o in list(self.book.orders()):
            if o.ticket not in keep_o:
                self.book.drop_order(o.ticket)
        self._merge(loaded)
        self.balance = ledger.balance(conn, self.cfg.cluster)
        self._resynced_at = self._perf()

    def _drain_notifications(self) -> None:
        conn = self._db()
        positions: set[int] = set()
        orders: set[int] = set()
        while True:  # each call returns what one read brought: read until nothing more
            batch = list(conn.notifies(timeout=0))
            if not batch:
                break
            for n in batch:
                cluster, kind, ticket = n.payload.rsplit("|", 2)  # a cluster name may hold a '|'
                if cluster != self.cfg.cluster:
                    continue
                (positions if kind == "p" else orders).add(int(ticket))
        if positions or orders:
            self._merge(ledger.load(conn, self.cfg.cluster, positions, orders))

    # -- a step --------------------------------------------------------------------------------

    def allow(self, symbol: str, time_ms: int) -> Permissions:
        contract = self.contracts[symbol]
        return Permissions(self.cfg.settings.hours.is_open(symbol, time_ms), contract.trade_mode)

    def _read_ticks(self, now: int) -> list[tuple[Tick, float]]:
        """Every symbol's ticks since its cursor, in time order, each with when it was read.
        The cursor moves only once all were read: a feed failing half-way loses none."""
        out: list[tuple[Tick, float]] = []
        advance = getattr(self.source, "advance", None)
        if advance is not None:
            advance()
        moved: dict[str, int] = {}
        for symbol in self.contracts:
            got = self.source.ticks(symbol, self.cursor.setdefault(symbol, now), now, TICK_LIMIT)
            read_at = self._perf()
            for i in range(len(got)):
                out.append((got.tick(i, age_ms=now - int(got.time_ms[i])), read_at))
            if len(got):
                moved[symbol] = int(got.time_ms[-1])
        self.cursor.update(moved)
        out.sort(key=lambda x: (x[0].time_ms, x[0].symbol))
        return out

    def _read_bars(self) -> list[BarClose]:
        out = []
        hours = self.cfg.settings.hours
        for (symbol, tf), after in self._bar_cursor.items():
            bars = self.source.closed_bars(symbol, tf, 1000, after_ms=after)
            for i in range(len(bars)):
                if hours.is_open(symbol, int(bars.time_ms[i])):
                    out.append(BarClose.of(bars, i))
            if len(bars):
                self._bar_cursor[(symbol, tf)] = int(bars.time_ms[-1])
        return out

    def _apply(self, m: Match, quote: Quote | None, read_at: float | None) -> Match | None:
        contract = self.contracts[m.symbol]
        allow = self.allow(m.symbol, m.time_ms)
        held = self.book.position(m.ticket) if m.action.closes else None
        done = ledger.apply(self._db(), self.cfg.cluster, m, quote, contract, allow, held)
        if done.match is None:
            self.stats.redecided += 1
            # the row moved under us (a replica modified, closed or cancelled it): the book
            # takes the row as it is, or loses it
            if done.position is not None:
                self.book.put_position(replace(done.position, since_ms=self._since(m.ticket, True)))
            elif done.order is not None:
                self.book.put_order(replace(done.order, since_ms=self._since(m.ticket, False)))
            else:
                self.book.drop_position(m.ticket) if m.action.closes else self.book.drop_order(m.ticket)
            return None
        booked = done.match
        self.book.apply(booked)
        self.stats.matches[booked.action.value] += 1
        if done.balance is not None:
            self.balance = done.balance
        if booked.action in (Action.STOP_LOSS, Action.TAKE_PROFIT, Action.STOP_OUT) and read_at is not None:
            self.stats.fill_ms.append((self._perf() - read_at) * 1000)
            if self._live:
                self.stats.tick_to_fill_ms.append(float(self._wall_ms() - booked.time_ms))
        return booked

    def _since(self, ticket: int, position: bool) -> int:
        old = self.book.position(ticket) if position else self.book.order(ticket)
        return old.since_ms if old is not None else 0

    def step(self) -> StepReport:
        """One pass: refresh the book, match what ticked, publish, mark. Raises psycopg.Error
        (the caller reconnects), FeedUnavailable (the caller waits)."""
        self._drain_notifications()
        if (self._perf() - self._resynced_at) * 1000 >= self.cfg.resync_ms:
            self._reload_all()
        now = self.source.now_ms()
        ticks = self._read_ticks(now)
        bars = self._read_bars() if self.publisher is not None else []
        applied: list[Match] = []
        published: list[Tick] = []
        for tick, read_at in ticks:
            contract = self.contracts[tick.symbol]
            allow = self.allow(tick.symbol, tick.time_ms)
            q = Quote.of(tick)
            if not allow.open_market:
                continue  # a closed market has no ticks: its first one after the open fills the gaps
            for m in self.book.on_quote(q, contract, allow):
                done = self._apply(m, q, read_at)
                if done is not None:
                    applied.append(done)
            published.append(tick)
        for m in self.book.expired(now):
            done = self._apply(m, None, None)
            if done is not None:
                applied.append(done)
        if ticks:
            applied.extend(self._stop_outs(now, ticks[-1][1]))
        self.stats.ticks += len(ticks)
        self._publish(published, bars)
        if (self._perf() - self._marked_at) * 1000 >= self.cfg.settings.mark_ms:
            self._mark()
        self._summary()
        return StepReport(len(ticks), applied)

    def _stop_outs(self, now: int, read_at: float) -> list[Match]:
        s = self.cfg.settings
        held = [p for p in self.book.positions() if p.symbol in self.contracts]
        out = []
        for m in stop_outs(
            self.balance,
            held,
            self.book.quotes,
            self.contracts,
            s.leverage,
            s.stop_out_pct,
            lambda sym: self.allow(sym, now),
        ):
            q = self.book.quotes[m.symbol]
            done = self._apply(m, q, read_at)
            if done is not None:
                log.warning(
                    "venue: stop-out of position %d (%s %s %s) at %s, P&L %s",
                    m.ticket,
                    m.side,
                    m.volume,
                    m.symbol,
                    m.price,
                    m.pnl,
                )
                out.append(done)
        return out

    def _publish(self, ticks: list[Tick], bars: list[BarClose]) -> None:
        if self.publisher is None or not (ticks or bars):
            return
        try:
            result = self.publisher.publish(ticks, bars)
        except redis.RedisError as e:
            self.stats.publish_errors += 1
            if self._publishing:
                log.warning("venue: ticks not published to Redis (the database is unaffected): %s", first_line(e))
                self._publishing = False
            return
        if not self._publishing:
            log.warning("venue: publishing to Redis again")
            self._publishing = True
        self.stats.published += result.added
        self.stats.duplicates += result.duplicates

    def _mark(self) -> None:
        s = self.cfg.settings
        held = [p for p in self.book.positions() if p.symbol in self.contracts]
        m = mark(self.balance, held, self.book.quotes, self.contracts, s.leverage)
        latest = max((q.time_ms for q in self.book.quotes.values()), default=None)
        conn = self._db()
        with conn.transaction():
            balance = ledger.write_mark(conn, self.cfg.cluster, m, s.leverage, latest, self.cfg.venue_id)
            ledger.write_cursor(conn, self.cfg.cluster, self.cursor)
        if balance is not None and balance != self.balance:  # a replica's close moved it: mark again next step
            self.balance = balance
            self._marked_at = -1e18
        else:
            self._marked_at = self._perf()
        self.last_mark = m

    def _summary(self) -> None:
        now = self._perf()
        if now - self._summary_at < SUMMARY_S:
            return
        self._summary_at = now
        st = self.stats
        fills = sorted(st.fill_ms)
        p99 = f"{fills[min(len(fills) - 1, int(len(fills) * 0.99))]:.2f} ms" if fills else "-"
        log.info(
            "venue: %d ticks, %s, %d redecided, %d published, tick-to-stop-fill p99 %s",
            st.ticks,
            dict(st.matches) or "no matches",
            st.redecided,
            st.published,
            p99,
        )

    # -- the loop ------------------------------------------------------------------------------

    def wait_s(self) -> float:
        """Until just after the next tick is due."""
        if self.source.name == "sim":
            now = self.source.now_ms()
            return (SIM_GRID_MS - now % SIM_GRID_MS + 1) / 1000
        return self.cfg.poll_ms / 1000

    def run(self, stop: threading.Event) -> None:
        """Match until `stop` is set: standing by while another venue holds the cluster,
        reconnecting after a database error."""
        try:
            while not stop.is_set():
                wait = self.cfg.retry_ms / 1000
                try:
                    if self.conn is None and not self.open():
                        stop.wait(wait)
                        continue
                    self.step()
                    wait = self.wait_s()
                except psycopg.Error as e:
                    log.error("venue: database: %s; reconnecting", first_line(e))
                    self.close()
                except FeedUnavailable as e:
                    log.warning("venue: market data: %s", first_line(e))
                stop.wait(wait)
        finally:
            self.close()
