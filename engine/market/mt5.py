"""The mt5 source: market data from a MetaTrader 5 terminal (the `MetaTrader5` package).

The package is one IPC connection per process, so every call runs on ONE thread with a
deadline: the broker's, when a runner is given (`run=broker_run`, so reads and orders
queue on the same worker), or a DeadlineWorker of this source's own. A call that misses
its deadline, a busy terminal or a broken link is FeedUnavailable; a symbol the terminal
does not know is UnknownSymbol. Floats become Decimals here only, through their shortest
repr, and then exact integer points.

The terminal reports times on the trade server's clock (often UTC+2/+3) as if UTC:
`server_offset_ms` is subtracted from every time it gives (and added to every time it is
asked for), so ages are measured on one clock.

Bars: `copy_rates_from_pos(symbol, tf, 0, n)` ends with the bar forming now (pos 0),
which the terminal opens on its first tick; it is closed once its end time has passed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from types import ModuleType
from typing import Any

import numpy as np

from common.worker import DeadlineWorker
from engine.market.base import (
    Bars,
    FeedUnavailable,
    MarketDataError,
    MarketSpec,
    Tick,
    Ticks,
    Timeframe,
    TradeMode,
    UnknownSymbol,
    check_count,
    price,
)
from engine.market.sim import wall_ms
from engine.market.worker import market_worker

# The documented TIMEFRAME_* values (an hour or more is 0x4000 | hours).
TIMEFRAMES = {
    Timeframe.M1: 1,
    Timeframe.M5: 5,
    Timeframe.M15: 15,
    Timeframe.M30: 30,
    Timeframe.H1: 0x4000 | 1,
    Timeframe.H4: 0x4000 | 4,
    Timeframe.D1: 0x4000 | 24,
}
COPY_TICKS_ALL = -1
IPC_ERRORS = range(-10005, -9999)  # last_error codes of a broken link to the terminal
INSTALL_HINT = "the MetaTrader5 package is not installed (it exists for Windows only): pip install 'haexec[mt5]'"

# run(what, job, timeout_s): runs job(module) on the terminal's one thread within the deadline.
Runner = Callable[[str, Callable[[ModuleType], Any], float], Any]


def points(value: float, digits: int) -> int:
    """A venue float -> integer points, via its shortest repr (1.1 -> Decimal('1.1'))."""
    exact = Decimal(repr(float(value))).scaleb(digits)
    return int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))


def _dec(value: float) -> Decimal:
    return Decimal(repr(float(value)))


class MT5Source:
    name = "mt5"
    live = True

    def __init__(
        self,
        module: ModuleType | None = None,
        *,
        run: Runner | None = None,
        deadline_ms: int = 1000,
        symbols: Sequence[str] | None = None,
        symbol_map: Mapping[str, str] | None = None,
        server_offset_ms: int = 0,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        if deadline_ms <= 0:
            raise ValueError("deadline_ms must be > 0")
        self.deadline_ms = deadline_ms
        self.server_offset_ms = server_offset_ms
        self._clock = clock
        self._symbols = list(symbols) if symbols is not None else None
        self._to_venue = dict(symbol_map or {})
        self._digits: dict[str, int] = {}
        self._worker: DeadlineWorker | None = None
        if run is None:
            if module is None:
                try:
                    module = importlib.import_module("MetaTrader5")
                except ImportError:
                    raise FeedUnavailable(INSTALL_HINT) from None
            self._worker = market_worker("mt5-market")
            worker, mod = self._worker, module
            run = lambda what, job, timeout_s: worker.run(what, lambda: job(mod), timeout_s)  # noqa: E731
        self._run = run

    def connect(self, path: str | None = None, **initialize: Any) -> None:
        """With a worker of its own: initialize the terminal (the broker does it otherwise);
        `path` is the terminal's executable, as MetaTrader5.initialize takes it."""
        args = (path,) if path else ()

        def job(m: ModuleType) -> None:
            if not m.initialize(*args, **initialize):
                code, text = m.last_error()
                raise FeedUnavailable(f"MT5 initialize failed: last_error {code} {text}")

        self._call("initialize", job)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()

    def _call(self, what: str, job: Callable[[ModuleType], Any]) -> Any:
        try:
            return self._run(f"MT5 {what}", job, self.deadline_ms / 1000)
        except MarketDataError:
            raise
        except Exception as exc:  # the broker's runner raises its own errors (BrokerError)
            raise FeedUnavailable(f"MT5 {what}: {exc}") from exc

    @staticmethod
    def _failed(m: ModuleType, what: str, symbol: str) -> MarketDataError:
        code, text = m.last_error()
        if code in IPC_ERRORS:
            return FeedUnavailable(f"MT5 {what}({symbol}) failed: last_error {code} {text}")
        return UnknownSymbol(f"unknown symbol {symbol!r} at the MT5 terminal ({what}: last_error {code} {text})")

    def _venue(self, symbol: str) -> str:
        if self._symbols is not None and symbol not in self._symbols:
            raise UnknownSymbol(f"unknown symbol {symbol!r}: the mt5 source has {', '.join(self._symbols)}")
        return self._to_venue.get(symbol, symbol)

    def now_ms(self) -> int:
        return self._clock()

    def symbols(self) -> list[str]:
        if self._symbols is not None:
            return list(self._symbols)

        def job(m: ModuleType) -> list[str]:
            found = m.symbols_get() if hasattr(m, "symbols_get") else None
            return [s.name for s in found] if found else []

        return self._call("symbols_get", job)

    def _info(self, m: ModuleType, symbol: str, venue: str) -> Any:
        info = m.symbol_info(venue)
        if info is None:
            raise self._failed(m, "symbol_info", symbol)
        self._digits[symbol] = int(info.digits)
        return info

    def spec(self, symbol: str) -> MarketSpec:
        venue = self._venue(symbol)
        info = self._call("symbol_info", lambda m: self._info(m, symbol, venue))
        try:
            return MarketSpec(
                symbol=symbol,
                digits=int(info.digits),
                point=_dec(info.point),
                contract_size=_dec(info.trade_contract_size),
                tick_size=_dec(info.trade_tick_size),
                # A losing position's own tick value where the venue gives one (cross rates).
                tick_value=_dec(getattr(info, "trade_tick_value_loss", 0.0) or info.trade_tick_value),
                volume_min=_dec(info.volume_min),
                volume_max=_dec(info.volume_max),
                volume_step=_dec(info.volume_step),
                stops_level=int(info.trade_stops_level),
                freeze_level=int(info.trade_freeze_level),
                trade_mode=TradeMode(int(info.trade_mode)),
                currency_profit=str(info.currency_profit),
            )
        except (TypeError, ValueError) as exc:
            raise FeedUnavailable(f"MT5 symbol {venue} has no usable spec: {exc}") from None

    def _digits_of(self, m: ModuleType, symbol: str, venue: str) -> int:
        got = self._digits.get(symbol)
        return got if got is not None else int(self._info(m, symbol, venue).digits)

    def tick(self, symbol: str) -> Tick:
        venue = self._venue(symbol)

        def job(m: ModuleType) -> tuple[Any, int]:
            digits = self._digits_of(m, symbol, venue)
            t = m.symbol_info_tick(venue)
            if t is None:
                raise self._failed(m, "symbol_info_tick", symbol)
            return t, digits

        t, digits = self._call("symbol_info_tick", job)
        if not (t.bid > 0 and t.ask > 0):
            raise FeedUnavailable(f"MT5 {symbol} has no quote (bid {t.bid}, ask {t.ask})")
        at = int(t.time_msc or t.time * 1000) - self.server_offset_ms
        return Tick(
            symbol,
            at,
            price(points(t.bid, digits), digits),
            price(points(t.ask, digits), digits),
            price(points(t.last, digits), digits) if t.last else None,
            self._clock() - at,
        )

    def ticks(self, symbol: str, after_ms: int, until_ms: int, limit: int) -> Ticks:
        venue = self._venue(symbol)
        since = datetime.fromtimestamp((after_ms + 1 + self.server_offset_ms) / 1000, UTC)

        def job(m: ModuleType) -> tuple[Any, int]:
            digits = self._digits_of(m, symbol, venue)
            rows = m.copy_ticks_from(venue, since, limit, COPY_TICKS_ALL)
            if rows is None:
                raise self._failed(m, "copy_ticks_from", symbol)
            return rows, digits

        rows, digits = self._call("copy_ticks_from", job)
        times = np.asarray(rows["time_msc"], dtype=np.int64) - self.server_offset_ms
        keep = (times > after_ms) & (times <= until_ms)
        sel = rows[keep]
        last = [points(x, digits) if x else -1 for x in sel["last"].tolist()]
        return Ticks(
            symbol,
            digits,
            times[keep],
            np.array([points(x, digits) for x in sel["bid"].tolist()], dtype=np.int64),
            np.array([points(x, digits) for x in sel["ask"].tolist()], dtype=np.int64),
            np.array(last, dtype=np.int64),
        )

    def _rates(self, symbol: str, timeframe: Timeframe, count: int) -> Bars:
        """The newest `count` bars, the forming one last, all marked closed."""
        venue = self._venue(symbol)

        def job(m: ModuleType) -> tuple[Any, int]:
            digits = self._digits_of(m, symbol, venue)
            rows = m.copy_rates_from_pos(venue, TIMEFRAMES[timeframe], 0, count)
            if rows is None:
                raise self._failed(m, "copy_rates_from_pos", symbol)
            return rows, digits

        rows, digits = self._call("copy_rates_from_pos", job)
        times = np.asarray(rows["time"], dtype=np.int64) * 1000 - self.server_offset_ms
        cols = [
            np.array([points(x, digits) for x in rows[c].tolist()], dtype=np.int64)
            for c in ("open", "high", "low", "close")
        ]
        volume = np.asarray(rows["tick_volume"], dtype=np.int64)
        return Bars.of_columns(
            symbol, timeframe, digits, [times, *cols, volume, np.asarray(rows["spread"], dtype=np.int64)]
        )

    def closed_bars(self, symbol: str, timeframe: Timeframe, count: int, after_ms: int | None = None) -> Bars:
        count = check_count(count)
        bars = self._rates(symbol, timeframe, count + 1)
        now = self._clock()
        n = len(bars)
        if n and int(bars.time_ms[-1]) + timeframe.ms > now:
            n -= 1  # pos 0 is still forming
        start = max(0, n - count)
        if after_ms is not None:
            start = max(start, int(np.searchsorted(bars.time_ms[:n], after_ms, side="right")))
        return bars.slice(start, max(start, n), forming=False)

    def forming_bar(self, symbol: str, timeframe: Timeframe) -> Bars:
        bars = self._rates(symbol, timeframe, 1)
        now = self._clock()
        if not len(bars) or int(bars.time_ms[-1]) + timeframe.ms <= now:
            return Bars.empty(symbol, timeframe, bars.digits)
        return bars.slice(0, 1, forming=True).aged(now, 0)
