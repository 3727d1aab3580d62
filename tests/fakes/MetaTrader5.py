"""A fake of the `MetaTrader5` Python package (Windows-only, so never installed here).

Module-level functions and constants follow the documented API (names, argument names,
the real numeric values, results as namedtuples with the documented field names; where a
structure has dozens of fields -- `symbol_info` -- only the ones a trading client uses).
Like the real module, everything goes through module-global state, and `last_error()` is
module-global: it describes the most recent call.

Behaviour worth knowing, copied from the real one:
- every call before `initialize()` (or after `shutdown()`) returns None, last_error
  (-10004, 'No IPC connection');
- `order_send` returns None (last_error -2) when the comment is longer than 31 characters or
  an argument has the wrong type: volume, price, sl, tp must be float (not Decimal);
- `positions_get` / `orders_get` / `history_*_get` return a tuple (empty when nothing
  matches) and cannot filter by comment.

Test controls live on a `FakeTerminal`, reachable as `MetaTrader5._fake` and replaced by
`MetaTrader5.reset()` (a fixture calls it between tests), and, when the fake runs inside
another process (the gateway, with PYTHONPATH=tests/fakes), through the Unix socket named by
FAKE_MT5_CONTROL (one JSON command per connection; see `_control` at the end; not part of the
module's API):
- `script(*replies)`: the next `order_send` calls answer these retcodes (`None` = return
  None; `Reply(retcode, execute=...)` to say whether the order really went through);
- `hang("order_send")`: the next call of that function blocks until `release()`
  (`entered` / `returned` events tell the test where it is); `hang("order_send",
  action=TRADE_ACTION_SLTP)` hangs only the next order_send of that action (a modify, not
  the entry before it); a scripted reply still decides what the hung call answers;
- `TRADE_ACTION_SLTP` as documented: the position must be open (a closed one is
  POSITION_CLOSED, an unknown ticket INVALID); the same sl and tp again is NO_CHANGES; a
  position whose current sl or tp is within `trade_freeze_level` points of the price it
  closes at is FROZEN; a new sl/tp on the wrong side of that price, closer than
  `trade_stops_level` points, or not normalised to the digits is INVALID_STOPS
  (`add_symbol(..., stops_level=, freeze_level=)`);
- `margin_mode = ACCOUNT_MARGIN_MODE_RETAIL_NETTING`: one position per symbol. A market
  order on a symbol with a position merges into it: same direction adds volume (the price
  averaged) and REPLACES the position's sl/tp with the order's -- an add-on sent without an
  sl clears the stop, the failure the stop guarantee exists for; the opposite direction
  reduces, closes or reverses it. The default is hedging (a position per order);
- `fail_next("positions_get", code, text)`: the next call returns None with that error;
- `connected`, `trade_allowed`, `init_failures`, `comment_limit` (the "broker" truncates
  stored comments to that many characters), `none_when_empty`, `now` (server time);
- market data: `add_rates(symbol, timeframe, rows)` and `add_ticks(symbol, rows)` feed
  `copy_rates_from_pos` and `copy_ticks_from`, which answer numpy structured arrays with
  the real dtypes (numpy is a dependency of haexec, as of the real package);
  `set_book(symbol, entries)` feeds `market_book_get` (after `market_book_add`).
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import threading
import time
from collections import Counter, deque, namedtuple
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

__author__ = "haexec tests (fake)"
__version__ = "5.0.45-fake"

# -- constants (values as documented by MetaQuotes) -----------------------------------------

TRADE_ACTION_DEAL = 1
TRADE_ACTION_PENDING = 5
TRADE_ACTION_SLTP = 6
TRADE_ACTION_MODIFY = 7
TRADE_ACTION_REMOVE = 8
TRADE_ACTION_CLOSE_BY = 10

ACCOUNT_MARGIN_MODE_RETAIL_NETTING = 0
ACCOUNT_MARGIN_MODE_EXCHANGE = 1
ACCOUNT_MARGIN_MODE_RETAIL_HEDGING = 2

ORDER_TYPE_BUY = 0
ORDER_TYPE_SELL = 1
ORDER_TYPE_BUY_LIMIT = 2
ORDER_TYPE_SELL_LIMIT = 3
ORDER_TYPE_BUY_STOP = 4
ORDER_TYPE_SELL_STOP = 5
ORDER_TYPE_BUY_STOP_LIMIT = 6
ORDER_TYPE_SELL_STOP_LIMIT = 7
ORDER_TYPE_CLOSE_BY = 8

ORDER_FILLING_FOK = 0
ORDER_FILLING_IOC = 1
ORDER_FILLING_RETURN = 2
ORDER_FILLING_BOC = 3

ORDER_TIME_GTC = 0
ORDER_TIME_DAY = 1
ORDER_TIME_SPECIFIED = 2
ORDER_TIME_SPECIFIED_DAY = 3

ORDER_STATE_STARTED = 0
ORDER_STATE_PLACED = 1
ORDER_STATE_CANCELED = 2
ORDER_STATE_PARTIAL = 3
ORDER_STATE_FILLED = 4
ORDER_STATE_REJECTED = 5
ORDER_STATE_EXPIRED = 6

POSITION_TYPE_BUY = 0
POSITION_TYPE_SELL = 1

DEAL_TYPE_BUY = 0
DEAL_TYPE_SELL = 1
DEAL_TYPE_BALANCE = 2
DEAL_TYPE_CREDIT = 3
DEAL_TYPE_CHARGE = 4
DEAL_TYPE_CORRECTION = 5
DEAL_TYPE_BONUS = 6
DEAL_TYPE_COMMISSION = 7

DEAL_ENTRY_IN = 0
DEAL_ENTRY_OUT = 1
DEAL_ENTRY_INOUT = 2
DEAL_ENTRY_OUT_BY = 3

DEAL_REASON_CLIENT = 0
DEAL_REASON_MOBILE = 1
DEAL_REASON_WEB = 2
DEAL_REASON_EXPERT = 3
DEAL_REASON_SL = 4
DEAL_REASON_TP = 5
DEAL_REASON_SO = 6
DEAL_REASON_ROLLOVER = 7
DEAL_REASON_VMARGIN = 8
DEAL_REASON_SPLIT = 9

SYMBOL_TRADE_MODE_DISABLED = 0
SYMBOL_TRADE_MODE_LONGONLY = 1
SYMBOL_TRADE_MODE_SHORTONLY = 2
SYMBOL_TRADE_MODE_CLOSEONLY = 3
SYMBOL_TRADE_MODE_FULL = 4

TIMEFRAME_M1 = 1
TIMEFRAME_M5 = 5
TIMEFRAME_M15 = 15
TIMEFRAME_M30 = 30
TIMEFRAME_H1 = 16385
TIMEFRAME_H4 = 16388
TIMEFRAME_D1 = 16408
_TIMEFRAME_SECONDS = {1: 60, 5: 300, 15: 900, 30: 1800, 16385: 3600, 16388: 14400, 16408: 86400}

COPY_TICKS_ALL = -1
COPY_TICKS_INFO = 1
COPY_TICKS_TRADE = 2
TICK_FLAG_BID = 2
TICK_FLAG_ASK = 4
TICK_FLAG_LAST = 8
TICK_FLAG_VOLUME = 16

BOOK_TYPE_SELL = 1
BOOK_TYPE_BUY = 2
BOOK_TYPE_SELL_MARKET = 3
BOOK_TYPE_BUY_MARKET = 4

# The dtypes the real package answers copy_rates_* and copy_ticks_* with.
RATES_DTYPE = np.dtype(
    [
        ("time", "<i8"),
        ("open", "<f8"),
        ("high", "<f8"),
        ("low", "<f8"),
        ("close", "<f8"),
        ("tick_volume", "<u8"),
        ("spread", "<i4"),
        ("real_volume", "<u8"),
    ]
)
TICKS_DTYPE = np.dtype(
    [
        ("time", "<i8"),
        ("bid", "<f8"),
        ("ask", "<f8"),
        ("last", "<f8"),
        ("volume", "<u8"),
        ("time_msc", "<i8"),
        ("flags", "<u4"),
        ("volume_real", "<f8"),
    ]
)
# SymbolInfo.filling_mode is a bit mask: 1 = FOK allowed, 2 = IOC allowed. The Python package
# does not export SYMBOL_FILLING_* names, so the fake does not either.
_FILL_FOK_BIT = 1
_FILL_IOC_BIT = 2

TRADE_RETCODE_REQUOTE = 10004
TRADE_RETCODE_REJECT = 10006
TRADE_RETCODE_CANCEL = 10007
TRADE_RETCODE_PLACED = 10008
TRADE_RETCODE_DONE = 10009
TRADE_RETCODE_DONE_PARTIAL = 10010
TRADE_RETCODE_ERROR = 10011
TRADE_RETCODE_TIMEOUT = 10012
TRADE_RETCODE_INVALID = 10013
TRADE_RETCODE_INVALID_VOLUME = 10014
TRADE_RETCODE_INVALID_PRICE = 10015
TRADE_RETCODE_INVALID_STOPS = 10016
TRADE_RETCODE_TRADE_DISABLED = 10017
TRADE_RETCODE_MARKET_CLOSED = 10018
TRADE_RETCODE_NO_MONEY = 10019
TRADE_RETCODE_PRICE_CHANGED = 10020
TRADE_RETCODE_PRICE_OFF = 10021
TRADE_RETCODE_INVALID_EXPIRATION = 10022
TRADE_RETCODE_ORDER_CHANGED = 10023
TRADE_RETCODE_TOO_MANY_REQUESTS = 10024
TRADE_RETCODE_NO_CHANGES = 10025
TRADE_RETCODE_SERVER_DISABLES_AT = 10026
TRADE_RETCODE_CLIENT_DISABLES_AT = 10027
TRADE_RETCODE_LOCKED = 10028
TRADE_RETCODE_FROZEN = 10029
TRADE_RETCODE_INVALID_FILL = 10030
TRADE_RETCODE_CONNECTION = 10031
TRADE_RETCODE_ONLY_REAL = 10032
TRADE_RETCODE_LIMIT_ORDERS = 10033
TRADE_RETCODE_LIMIT_VOLUME = 10034
TRADE_RETCODE_INVALID_ORDER = 10035
TRADE_RETCODE_POSITION_CLOSED = 10036
TRADE_RETCODE_INVALID_CLOSE_VOLUME = 10038
TRADE_RETCODE_CLOSE_ORDER_EXIST = 10039
TRADE_RETCODE_LIMIT_POSITIONS = 10040
TRADE_RETCODE_REJECT_CANCEL = 10041
TRADE_RETCODE_LONG_ONLY = 10042
TRADE_RETCODE_SHORT_ONLY = 10043
TRADE_RETCODE_CLOSE_ONLY = 10044
TRADE_RETCODE_FIFO_CLOSE = 10045
TRADE_RETCODE_HEDGE_PROHIBITED = 10046

# last_error() codes
RES_S_OK = 1
RES_E_FAIL = -1
RES_E_INVALID_PARAMS = -2
RES_E_NO_MEMORY = -3
RES_E_NOT_FOUND = -4
RES_E_INVALID_VERSION = -5
RES_E_AUTH_FAILED = -6
RES_E_UNSUPPORTED = -7
RES_E_AUTO_TRADING_DISABLED = -8
RES_E_INTERNAL_FAIL = -10000
RES_E_INTERNAL_FAIL_SEND = -10001
RES_E_INTERNAL_FAIL_RECEIVE = -10002
RES_E_INTERNAL_FAIL_INIT = -10003
RES_E_INTERNAL_FAIL_CONNECT = -10004
RES_E_INTERNAL_FAIL_TIMEOUT = -10005

# -- result structures (documented field names) ---------------------------------------------

TradePosition = namedtuple(
    "TradePosition",
    "ticket time time_msc time_update time_update_msc type magic identifier reason volume "
    "price_open sl tp price_current swap profit symbol comment external_id",
)
TradeOrder = namedtuple(
    "TradeOrder",
    "ticket time_setup time_setup_msc time_done time_done_msc time_expiration type type_time "
    "type_filling state magic position_id position_by_id reason volume_initial volume_current "
    "price_open sl tp price_current price_stoplimit symbol comment external_id",
)
TradeDeal = namedtuple(
    "TradeDeal",
    "ticket order time time_msc type entry magic position_id reason volume price commission "
    "swap profit fee symbol comment external_id",
)
TradeRequest = namedtuple(
    "TradeRequest",
    "action magic order symbol volume price stoplimit sl tp deviation type type_filling "
    "type_time expiration comment position position_by",
)
OrderSendResult = namedtuple(
    "OrderSendResult",
    "retcode deal order volume price bid ask comment request_id retcode_external request",
)
OrderCheckResult = namedtuple(
    "OrderCheckResult",
    "retcode balance equity profit margin margin_free margin_level comment request",
)
Tick = namedtuple("Tick", "time bid ask last volume time_msc flags volume_real")
BookInfo = namedtuple("BookInfo", "type price volume volume_dbl")
ACCOUNT_LEVERAGE = 100
AccountInfo = namedtuple(
    "AccountInfo",
    "login trade_mode leverage limit_orders margin_so_mode trade_allowed trade_expert "
    "margin_mode currency_digits fifo_close balance credit profit equity margin margin_free "
    "margin_level margin_so_call margin_so_so margin_initial margin_maintenance assets "
    "liabilities commission_blocked name server currency company",
)
TerminalInfo = namedtuple(
    "TerminalInfo",
    "community_account community_connection connected dlls_allowed trade_allowed "
    "tradeapi_disabled email_enabled ftp_enabled notifications_enabled mqid build maxbars "
    "codepage ping_last community_balance retransmission company name language path "
    "data_path commondata_path",
)
SymbolInfo = namedtuple(  # a subset of the ~100 documented fields
    "SymbolInfo",
    "custom select visible digits spread trade_mode trade_stops_level trade_freeze_level "
    "filling_mode order_mode expiration_mode bid ask last point trade_tick_size "
    "trade_tick_value trade_tick_value_profit trade_tick_value_loss trade_contract_size volume_min "
    "volume_max volume_step currency_base "
    "currency_profit currency_margin description name path",
)

_RETCODE_TEXT = {
    TRADE_RETCODE_REQUOTE: "Requote",
    TRADE_RETCODE_INVALID: "Invalid request",
    TRADE_RETCODE_REJECT: "Request rejected",
    TRADE_RETCODE_PLACED: "Order placed",
    TRADE_RETCODE_DONE: "Request executed",
    TRADE_RETCODE_DONE_PARTIAL: "Request executed partially",
    TRADE_RETCODE_PRICE_OFF: "No prices",
    TRADE_RETCODE_NO_MONEY: "No money",
    TRADE_RETCODE_MARKET_CLOSED: "Market closed",
    TRADE_RETCODE_INVALID_FILL: "Unsupported filling mode",
    TRADE_RETCODE_CONNECTION: "No connection",
    TRADE_RETCODE_CLIENT_DISABLES_AT: "AutoTrading disabled by client",
    TRADE_RETCODE_INVALID_STOPS: "Invalid stops",
    TRADE_RETCODE_NO_CHANGES: "No changes",
    TRADE_RETCODE_LOCKED: "Locked",
    TRADE_RETCODE_FROZEN: "Frozen",
    TRADE_RETCODE_POSITION_CLOSED: "Position already closed",
}

_OK = (RES_S_OK, "Success")
_NO_IPC = (RES_E_INTERNAL_FAIL_CONNECT, "No IPC connection")


@dataclass
class Reply:
    """A scripted answer of `order_send`. retcode None: order_send returns None.
    execute: whether the order really reaches the market (default: for DONE/PLACED/PARTIAL)."""

    retcode: int | None
    execute: bool | None = None
    error: tuple[int, str] = (RES_E_INTERNAL_FAIL_RECEIVE, "IPC recv failed")
    move: tuple[float, float] | None = None  # the market moves to (bid, ask) after this answer

    @property
    def executes(self) -> bool:
        if self.execute is not None:
            return self.execute
        return self.retcode in (TRADE_RETCODE_DONE, TRADE_RETCODE_PLACED, TRADE_RETCODE_DONE_PARTIAL)


class FakeTerminal:
    """The state behind the fake module, and the knobs tests turn."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.initialized = False
        self.connected = True
        self.trade_allowed = True
        self.login = 5012345
        self.password = "s3cret-Pa55"  # what initialize(login, password=...) must match
        self.server = "FakeBroker-Demo"
        self.currency = "USD"
        self.balance = 10_000.0
        self.equity = 10_000.0
        self.margin_mode = ACCOUNT_MARGIN_MODE_RETAIL_HEDGING
        self.init_failures = 0  # the next N initialize() calls fail (IPC)
        self.init_calls: list[dict[str, Any]] = []
        self.symbols: dict[str, dict[str, Any]] = {}
        self.positions: list[Any] = []
        self.orders: list[Any] = []
        self.history_orders: list[Any] = []
        self.history_deals: list[Any] = []
        self.replies: deque[Reply] = deque()
        self.comment_limit: int | None = None  # the broker truncates stored comments
        self.none_when_empty = False  # history getters answer None + RES_S_OK when empty
        self.calls: Counter[str] = Counter()
        self.call_log: list[tuple[str, str]] = []  # (function, name of the calling thread)
        self.requests: list[dict[str, Any]] = []  # every order_send request as received
        self.error: tuple[int, str] = _OK
        self.now: Callable[[], float] = time.time  # server time, seconds
        self._tickets = itertools.count(700_001)
        self._request_ids = itertools.count(1)
        self._fail: dict[str, tuple[int, str]] = {}
        self._hang_on: str | None = None
        self._hang_action: int | None = None  # hang only an order_send of this action
        self.entered = threading.Event()  # the hung call has started
        self.returned = threading.Event()  # the hung call has returned
        self.release_event = threading.Event()
        self.hang_limit_s = 10.0  # a forgotten hang unblocks itself
        self.rates: dict[tuple[str, int], list[tuple[Any, ...]]] = {}  # oldest first
        self.tick_log: dict[str, list[tuple[Any, ...]]] = {}  # oldest first
        self.books: dict[str, list[Any]] = {}
        self.book_subscriptions: set[str] = set()
        # Realistic specs for a USD account: a standard FX lot, a 100 oz gold lot, and an EUR
        # index whose tick value is converted to USD (1 EUR per point per lot at 1.08 USD).
        self.add_symbol("EURUSD", bid=1.10000, ask=1.10010, digits=5)
        self.add_symbol(
            "XAUUSD",
            bid=2400.10,
            ask=2400.40,
            digits=2,
            filling_mode=_FILL_FOK_BIT,
            contract_size=100.0,
            tick_value=1.0,
        )
        self.add_symbol(
            "GER40",
            bid=18000.0,
            ask=18001.0,
            digits=1,
            contract_size=1.0,
            tick_value=0.108,
            volume_min=0.1,
            volume_step=0.1,
            volume_max=50.0,
            currency_base="EUR",
            currency_profit="EUR",
            path="Indices\\GER40",
        )

    # -- knobs --------------------------------------------------------------------------------

    def script(self, *replies: int | Reply | None) -> None:
        for r in replies:
            self.replies.append(r if isinstance(r, Reply) else Reply(r))

    def hang(self, function: str, action: int | None = None) -> None:
        self.entered.clear()
        self.returned.clear()
        self.release_event.clear()
        self._hang_on = function
        self._hang_action = action

    def release(self) -> None:
        self.release_event.set()

    def fail_next(self, function: str, code: int = RES_E_INTERNAL_FAIL_RECEIVE, text: str = "IPC recv failed") -> None:
        self._fail[function] = (code, text)

    def add_symbol(
        self,
        name: str,
        *,
        bid: float,
        ask: float,
        digits: int,
        filling_mode: int = _FILL_FOK_BIT | _FILL_IOC_BIT,
        visible: bool = True,
        contract_size: float = 100_000.0,
        tick_size: float | None = None,  # default: the point
        tick_value: float = 1.0,  # account currency per tick per lot
        tick_value_loss: float | None = None,  # default: tick_value
        volume_min: float = 0.01,
        volume_max: float = 100.0,
        volume_step: float = 0.01,
        currency_base: str | None = None,
        currency_profit: str | None = None,
        path: str | None = None,
        stops_level: int = 0,  # points
        freeze_level: int = 0,  # points
    ) -> None:
        self.symbols[name] = {
            "stops_level": stops_level,
            "freeze_level": freeze_level,
            "bid": bid,
            "ask": ask,
            "digits": digits,
            "filling_mode": filling_mode,
            "visible": visible,
            "contract_size": contract_size,
            "tick_size": 10.0**-digits if tick_size is None else tick_size,
            "tick_value": tick_value,
            "tick_value_loss": tick_value if tick_value_loss is None else tick_value_loss,
            "volume_min": volume_min,
            "volume_max": volume_max,
            "volume_step": volume_step,
            "currency_base": currency_base or name[:3],
            "currency_profit": currency_profit or name[3:],
            "path": path or f"Forex\\{name}",
        }

    def add_rates(self, symbol: str, timeframe: int, rows: list[tuple[Any, ...]]) -> None:
        """rows: (time seconds, open, high, low, close, tick_volume, spread, real_volume)."""
        self.rates.setdefault((symbol, timeframe), []).extend(rows)
        self.rates[(symbol, timeframe)].sort(key=lambda r: r[0])

    def add_ticks(self, symbol: str, rows: list[tuple[Any, ...]]) -> None:
        """rows: (time_msc, bid, ask[, last, volume, flags]); the latest is also the quote."""
        for r in rows:
            time_msc, bid, ask = r[0], r[1], r[2]
            last = r[3] if len(r) > 3 else 0.0
            volume = r[4] if len(r) > 4 else 0
            flags = r[5] if len(r) > 5 else TICK_FLAG_BID | TICK_FLAG_ASK
            self.tick_log.setdefault(symbol, []).append(
                (time_msc // 1000, bid, ask, last, volume, time_msc, flags, float(volume))
            )
        self.tick_log[symbol].sort(key=lambda r: r[5])

    def set_book(self, symbol: str, entries: list[tuple[int, float, float]]) -> None:
        """entries: (BOOK_TYPE_*, price, volume), best first as the terminal lists them."""
        self.books[symbol] = [BookInfo(t, p, int(v), float(v)) for t, p, v in entries]

    def set_tick(self, symbol: str, bid: float, ask: float) -> None:
        self.symbols[symbol].update(bid=bid, ask=ask)

    def ticket(self) -> int:
        return next(self._tickets)

    def add_position(self, **kw: Any) -> Any:
        t = kw.pop("ticket", None) or self.ticket()
        now = int(self.now())
        fields = dict(
            ticket=t,
            time=now,
            time_msc=now * 1000,
            time_update=now,
            time_update_msc=now * 1000,
            type=POSITION_TYPE_BUY,
            magic=0,
            identifier=t,
            reason=3,
            volume=0.1,
            price_open=1.1,
            sl=0.0,
            tp=0.0,
            price_current=1.1,
            swap=0.0,
            profit=0.0,
            symbol="EURUSD",
            comment="",
            external_id="",
        )
        fields.update(kw)
        pos = TradePosition(**fields)
        self.positions.append(pos)
        return pos

    def add_order(self, *, history: bool = False, **kw: Any) -> Any:
        t = kw.pop("ticket", None) or self.ticket()
        now = int(self.now())
        fields = dict(
            ticket=t,
            time_setup=now,
            time_setup_msc=now * 1000,
            time_done=now if history else 0,
            time_done_msc=now * 1000 if history else 0,
            time_expiration=0,
            type=ORDER_TYPE_BUY_LIMIT,
            type_time=ORDER_TIME_GTC,
            type_filling=ORDER_FILLING_RETURN,
            state=ORDER_STATE_FILLED if history else ORDER_STATE_PLACED,
            magic=0,
            position_id=0,
            position_by_id=0,
            reason=3,
            volume_initial=0.1,
            volume_current=0.0 if history else 0.1,
            price_open=1.1,
            sl=0.0,
            tp=0.0,
            price_current=1.1,
            price_stoplimit=0.0,
            symbol="EURUSD",
            comment="",
            external_id="",
        )
        fields.update(kw)
        order = TradeOrder(**fields)
        (self.history_orders if history else self.orders).append(order)
        return order

    def add_deal(self, **kw: Any) -> Any:
        t = kw.pop("ticket", None) or self.ticket()
        now = int(self.now())
        fields = dict(
            ticket=t,
            order=0,
            time=now,
            time_msc=now * 1000,
            type=DEAL_TYPE_BUY,
            entry=DEAL_ENTRY_IN,
            magic=0,
            position_id=0,
            reason=3,
            volume=0.1,
            price=1.1,
            commission=0.0,
            swap=0.0,
            profit=0.0,
            fee=0.0,
            symbol="EURUSD",
            comment="",
            external_id="",
        )
        fields.update(kw)
        deal = TradeDeal(**fields)
        self.history_deals.append(deal)
        return deal

    def trigger(self, ticket: int, reason: int = DEAL_REASON_SL) -> Any:
        """The trade server closes a position at its stop (DEAL_REASON_SL), its take profit
        (DEAL_REASON_TP) or the market (DEAL_REASON_SO, a stop-out): the position goes, an
        exit deal with that reason takes its place in the history. The deal."""
        with self.lock:
            pos = next(p for p in self.positions if p.ticket == ticket)
            s = self.symbols[pos.symbol]
            long = pos.type == POSITION_TYPE_BUY
            level = {DEAL_REASON_SL: pos.sl, DEAL_REASON_TP: pos.tp}.get(reason) or (s["bid"] if long else s["ask"])
            profit = _profit(self, pos, level, pos.volume)
            deal = self.add_deal(
                type=DEAL_TYPE_SELL if long else DEAL_TYPE_BUY,
                entry=DEAL_ENTRY_OUT,
                magic=pos.magic,
                position_id=pos.identifier,
                reason=reason,
                volume=pos.volume,
                price=level,
                profit=profit,
                symbol=pos.symbol,
                comment=f"[sl {level}]" if reason == DEAL_REASON_SL else "",
            )
            self.positions.remove(pos)
            self.balance += profit
            return deal

    # -- plumbing -----------------------------------------------------------------------------

    def _take_hang(self, function: str, args: tuple[Any, ...]) -> bool:
        with self.lock:
            if self._hang_on != function:
                return False
            if self._hang_action is not None:
                request = args[0] if args and isinstance(args[0], dict) else {}
                if request.get("action") != self._hang_action:
                    return False
            self._hang_on = self._hang_action = None
            return True

    def _take_failure(self, function: str) -> tuple[int, str] | None:
        with self.lock:
            return self._fail.pop(function, None)

    def _stored_comment(self, comment: str) -> str:
        return comment if self.comment_limit is None else comment[: self.comment_limit]

    def _tick(self, symbol: str) -> Any:
        log = self.tick_log.get(symbol)
        if log:  # the latest recorded tick is the quote
            return Tick(*log[-1])
        s = self.symbols[symbol]
        now = self.now()
        return Tick(int(now), s["bid"], s["ask"], 0.0, 0, int(now * 1000), 6, 0.0)


_fake = FakeTerminal()


def reset() -> FakeTerminal:
    """A fresh terminal (any call still hung on the old one is released)."""
    global _fake
    _fake.release()
    _fake = FakeTerminal()
    return _fake


def _api(*, needs_init: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = fn.__name__

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = _fake
            with t.lock:
                t.calls[name] += 1
                t.call_log.append((name, threading.current_thread().name))
            hung = t._take_hang(name, args)
            if hung:
                t.entered.set()
                t.release_event.wait(t.hang_limit_s)
            try:
                with t.lock:
                    failure = t._take_failure(name)
                    if failure is not None:
                        t.error = failure
                        return None
                    if needs_init and not t.initialized:
                        t.error = _NO_IPC
                        return None
                    return fn(t, *args, **kwargs)
            finally:
                if hung:
                    t.returned.set()

        return wrapper

    return deco


def _epoch_s(value: datetime | int | float) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    return float(value)


# -- connection -------------------------------------------------------------------------------


@_api(needs_init=False)
def initialize(
    t: FakeTerminal,
    path: str | None = None,
    *,
    login: int | None = None,
    password: str | None = None,
    server: str | None = None,
    timeout: int = 60_000,
    portable: bool = False,
) -> bool:
    t.init_calls.append({"path": path, "login": login, "password": password, "server": server, "timeout": timeout})
    if t.init_failures > 0:
        t.init_failures -= 1
        t.error = (RES_E_INTERNAL_FAIL_INIT, "IPC initialize failed, MetaTrader 5 x64 not found")
        return False
    if login is not None and (login != t.login or password != t.password or server not in (None, t.server)):
        t.error = (RES_E_AUTH_FAILED, "Terminal: Authorization failed")
        return False
    t.initialized = True
    t.error = _OK
    return True


@_api()
def login(
    t: FakeTerminal,
    login: int,
    *,
    password: str | None = None,
    server: str | None = None,
    timeout: int = 60_000,
) -> bool:
    if login != t.login or password != t.password:
        t.error = (RES_E_AUTH_FAILED, "Terminal: Authorization failed")
        return False
    t.error = _OK
    return True


@_api(needs_init=False)
def shutdown(t: FakeTerminal) -> None:
    t.initialized = False
    t.error = _OK
    return None


def last_error() -> tuple[int, str]:
    with _fake.lock:
        _fake.calls["last_error"] += 1
        _fake.call_log.append(("last_error", threading.current_thread().name))
        return _fake.error


# -- information ------------------------------------------------------------------------------


@_api()
def terminal_info(t: FakeTerminal) -> Any:
    t.error = _OK
    return TerminalInfo(
        False,
        False,
        t.connected,
        False,
        t.trade_allowed,
        False,
        False,
        False,
        False,
        False,
        4620,
        100_000,
        0,
        20_000 if t.connected else 0,
        0.0,
        0.0,
        "Fake Broker Ltd",
        "MetaTrader 5",
        "English",
        "C:\\Program Files\\MetaTrader 5",
        "C:\\data",
        "C:\\common",
    )


@_api()
def account_info(t: FakeTerminal) -> Any:
    t.error = _OK
    return AccountInfo(
        t.login,
        0,
        ACCOUNT_LEVERAGE,
        200,
        0,
        True,
        True,
        t.margin_mode,
        2,
        False,
        t.balance,
        0.0,
        t.equity - t.balance,
        t.equity,
        0.0,
        t.equity,
        0.0,
        50.0,
        30.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        "Fake Trader",
        t.server,
        t.currency,
        "Fake Broker Ltd",
    )


@_api()
def symbol_info(t: FakeTerminal, symbol: str) -> Any:
    s = t.symbols.get(symbol)
    if s is None:
        t.error = (RES_E_NOT_FOUND, "Terminal: Not found")
        return None
    t.error = _OK
    point = 10.0 ** -s["digits"]
    return SymbolInfo(
        False,
        s["visible"],
        s["visible"],
        s["digits"],
        10,
        SYMBOL_TRADE_MODE_FULL,
        s["stops_level"],
        s["freeze_level"],
        s["filling_mode"],
        127,
        15,
        s["bid"],
        s["ask"],
        0.0,
        point,
        s["tick_size"],
        s["tick_value"],
        s["tick_value"],
        s["tick_value_loss"],
        s["contract_size"],
        s["volume_min"],
        s["volume_max"],
        s["volume_step"],
        s["currency_base"],
        s["currency_profit"],
        s["currency_base"],
        symbol,
        symbol,
        s["path"],
    )


@_api()
def symbols_get(t: FakeTerminal, group: str | None = None) -> Any:
    """Every symbol, or those `group` selects: comma-separated patterns with `*`, a pattern
    starting with `!` excludes (the documented filter, e.g. "*,!*USD*")."""
    names = sorted(t.symbols)
    if group:
        chosen: list[str] = []
        for pattern in (p.strip() for p in group.split(",")):
            if pattern.startswith("!"):
                chosen = [n for n in chosen if not fnmatch.fnmatchcase(n, pattern[1:])]
            else:
                chosen += [n for n in names if fnmatch.fnmatchcase(n, pattern) and n not in chosen]
        names = chosen
    infos = [symbol_info.__wrapped__(t, n) for n in names]  # not a call of its own
    t.error = _OK
    return tuple(infos)


@_api()
def order_calc_margin(t: FakeTerminal, action: int, symbol: str, volume: float, price: float) -> Any:
    """The margin `volume` lots of `symbol` hold at `price` (account currency), as the
    terminal computes it for a plain FX/CFD account: notional over the leverage."""
    s = t.symbols.get(symbol)
    if s is None:
        t.error = (RES_E_NOT_FOUND, "Terminal: Not found")
        return None
    t.error = _OK
    return volume * s["contract_size"] * price / ACCOUNT_LEVERAGE


@_api()
def symbol_select(t: FakeTerminal, symbol: str, enable: bool = True) -> bool:
    if symbol not in t.symbols:
        t.error = (RES_E_NOT_FOUND, "Terminal: Not found")
        return False
    t.symbols[symbol]["visible"] = enable
    t.error = _OK
    return True


@_api()
def symbol_info_tick(t: FakeTerminal, symbol: str) -> Any:
    s = t.symbols.get(symbol)
    if s is None or not s["visible"]:
        t.error = (RES_E_NOT_FOUND, "Terminal: Not found")
        return None
    t.error = _OK
    return t._tick(symbol)


def _listing(t: FakeTerminal, items: list[Any]) -> Any:
    if not items and t.none_when_empty:
        t.error = _OK
        return None
    t.error = _OK
    return tuple(items)


@_api()
def positions_get(
    t: FakeTerminal, *, symbol: str | None = None, group: str | None = None, ticket: int | None = None
) -> Any:
    items = [
        p for p in t.positions if (symbol is None or p.symbol == symbol) and (ticket is None or p.ticket == ticket)
    ]
    return _listing(t, items)


@_api()
def orders_get(
    t: FakeTerminal, *, symbol: str | None = None, group: str | None = None, ticket: int | None = None
) -> Any:
    items = [o for o in t.orders if (symbol is None or o.symbol == symbol) and (ticket is None or o.ticket == ticket)]
    return _listing(t, items)


@_api()
def history_orders_get(
    t: FakeTerminal,
    date_from: datetime | int | None = None,
    date_to: datetime | int | None = None,
    *,
    group: str | None = None,
    ticket: int | None = None,
    position: int | None = None,
) -> Any:
    if ticket is not None:
        items = [o for o in t.history_orders if o.ticket == ticket]
    elif position is not None:
        items = [o for o in t.history_orders if o.position_id == position]
    else:
        if date_from is None or date_to is None:
            t.error = (RES_E_INVALID_PARAMS, "Invalid arguments")
            return None
        lo, hi = _epoch_s(date_from), _epoch_s(date_to)
        items = [o for o in t.history_orders if lo <= o.time_setup <= hi]
    return _listing(t, items)


@_api()
def history_deals_get(
    t: FakeTerminal,
    date_from: datetime | int | None = None,
    date_to: datetime | int | None = None,
    *,
    group: str | None = None,
    ticket: int | None = None,
    position: int | None = None,
) -> Any:
    if ticket is not None:
        items = [d for d in t.history_deals if d.order == ticket]
    elif position is not None:
        items = [d for d in t.history_deals if d.position_id == position]
    else:
        if date_from is None or date_to is None:
            t.error = (RES_E_INVALID_PARAMS, "Invalid arguments")
            return None
        lo, hi = _epoch_s(date_from), _epoch_s(date_to)
        items = [d for d in t.history_deals if lo <= d.time <= hi]
    return _listing(t, items)


# -- trading ----------------------------------------------------------------------------------

_FLOAT_FIELDS = ("volume", "price", "stoplimit", "sl", "tp")
_INT_FIELDS = ("action", "magic", "order", "deviation", "type", "type_filling", "type_time", "position")


def _invalid(request: dict[str, Any]) -> str | None:
    for f in _FLOAT_FIELDS:
        if f in request and not (isinstance(request[f], float)):
            return f'Invalid "{f}" argument'
    for f in _INT_FIELDS:
        if f in request and (not isinstance(request[f], int) or isinstance(request[f], bool)):
            return f'Invalid "{f}" argument'
    comment = request.get("comment", "")
    if not isinstance(comment, str) or len(comment) > 31:
        return 'Invalid "comment" argument'
    if "action" not in request:
        return 'Invalid "action" argument'
    return None


def _trade_request(r: dict[str, Any]) -> Any:
    return TradeRequest(
        r.get("action", 0),
        r.get("magic", 0),
        r.get("order", 0),
        r.get("symbol", ""),
        r.get("volume", 0.0),
        r.get("price", 0.0),
        r.get("stoplimit", 0.0),
        r.get("sl", 0.0),
        r.get("tp", 0.0),
        r.get("deviation", 0),
        r.get("type", 0),
        r.get("type_filling", 0),
        r.get("type_time", 0),
        r.get("expiration", 0),
        r.get("comment", ""),
        r.get("position", 0),
        r.get("position_by", 0),
    )


def _check_filling(t: FakeTerminal, r: dict[str, Any]) -> bool:
    if r["action"] != TRADE_ACTION_DEAL:
        return True
    mask = t.symbols[r["symbol"]]["filling_mode"]
    fill = r.get("type_filling", ORDER_FILLING_FOK)
    if fill == ORDER_FILLING_FOK:
        return bool(mask & _FILL_FOK_BIT)
    if fill == ORDER_FILLING_IOC:
        return bool(mask & _FILL_IOC_BIT)
    return fill == ORDER_FILLING_RETURN


def _execute(t: FakeTerminal, r: dict[str, Any], volume: float) -> tuple[int, int, float]:
    """Let the request reach the market: returns (deal, order, price)."""
    now = int(t.now())
    action = r["action"]
    comment = t._stored_comment(r.get("comment", ""))
    if action == TRADE_ACTION_PENDING:
        order = t.add_order(
            type=r["type"],
            magic=r.get("magic", 0),
            volume_initial=volume,
            volume_current=volume,
            price_open=r["price"],
            sl=r.get("sl", 0.0),
            tp=r.get("tp", 0.0),
            symbol=r["symbol"],
            comment=comment,
            type_filling=r.get("type_filling", 0),
        )
        return 0, order.ticket, 0.0
    if action == TRADE_ACTION_REMOVE:
        pending = next(o for o in t.orders if o.ticket == r.get("order"))
        t.orders.remove(pending)
        t.history_orders.append(pending._replace(state=ORDER_STATE_CANCELED, time_done=now, time_done_msc=now * 1000))
        return 0, pending.ticket, 0.0
    if action == TRADE_ACTION_SLTP:
        for i, p in enumerate(t.positions):
            if p.ticket == r.get("position"):
                t.positions[i] = p._replace(sl=r.get("sl", 0.0), tp=r.get("tp", 0.0), time_update=now)
        return 0, 0, 0.0
    # TRADE_ACTION_DEAL: open, or close when `position` is given
    price = r["price"]
    side = DEAL_TYPE_BUY if r["type"] == ORDER_TYPE_BUY else DEAL_TYPE_SELL
    closing = r.get("position", 0)
    if closing:
        pos = next(p for p in t.positions if p.ticket == closing)
        order = t.add_order(
            history=True,
            type=r["type"],
            magic=r.get("magic", 0),
            position_id=pos.identifier,
            volume_initial=volume,
            price_open=price,
            symbol=r["symbol"],
            comment=comment,
        )
        profit = _profit(t, pos, price, volume)
        deal = t.add_deal(
            order=order.ticket,
            type=side,
            entry=DEAL_ENTRY_OUT,
            magic=r.get("magic", 0),
            position_id=pos.identifier,
            volume=volume,
            price=price,
            profit=profit,
            symbol=r["symbol"],
            comment=comment,
        )
        left = round(pos.volume - volume, 8)
        if left > 0:  # a partial close: the rest stays open under the same ticket
            t.positions[t.positions.index(pos)] = pos._replace(volume=left, time_update=now)
        else:
            t.positions.remove(pos)
        t.balance += profit
        return deal.ticket, order.ticket, price
    held = next((p for p in t.positions if p.symbol == r["symbol"]), None)
    if held is not None and t.margin_mode == ACCOUNT_MARGIN_MODE_RETAIL_NETTING:
        return _net(t, r, held, volume, price, comment)
    order = t.add_order(
        history=True,
        type=r["type"],
        magic=r.get("magic", 0),
        volume_initial=volume,
        price_open=price,
        sl=r.get("sl", 0.0),
        tp=r.get("tp", 0.0),
        symbol=r["symbol"],
        comment=comment,
    )
    t.history_orders[-1] = order = order._replace(position_id=order.ticket)
    deal = t.add_deal(
        order=order.ticket,
        type=side,
        entry=DEAL_ENTRY_IN,
        magic=r.get("magic", 0),
        position_id=order.ticket,
        volume=volume,
        price=price,
        symbol=r["symbol"],
        comment=comment,
    )
    t.add_position(
        ticket=order.ticket,
        type=POSITION_TYPE_BUY if side == DEAL_TYPE_BUY else POSITION_TYPE_SELL,
        magic=r.get("magic", 0),
        identifier=order.ticket,
        volume=volume,
        price_open=price,
        sl=r.get("sl", 0.0),
        tp=r.get("tp", 0.0),
        price_current=price,
        symbol=r["symbol"],
        comment=comment,
    )
    return deal.ticket, order.ticket, price


def _profit(t: FakeTerminal, pos: Any, price: float, volume: float) -> float:
    sign = 1.0 if pos.type == POSITION_TYPE_BUY else -1.0
    spec = t.symbols[pos.symbol]
    ticks = (price - pos.price_open) * sign / spec["tick_size"]
    return round(ticks * (spec["tick_value"] if ticks > 0 else spec["tick_value_loss"]) * volume, 2)


def _net(
    t: FakeTerminal, r: dict[str, Any], pos: Any, volume: float, price: float, comment: str
) -> tuple[int, int, float]:
    """A market deal on a netting account's symbol that already has its one position."""
    now = int(t.now())
    buy = r["type"] == ORDER_TYPE_BUY
    same = buy == (pos.type == POSITION_TYPE_BUY)
    order = t.add_order(
        history=True,
        type=r["type"],
        magic=r.get("magic", 0),
        position_id=pos.identifier,
        volume_initial=volume,
        price_open=price,
        sl=r.get("sl", 0.0),
        tp=r.get("tp", 0.0),
        symbol=r["symbol"],
        comment=comment,
    )
    digits = t.symbols[pos.symbol]["digits"]
    index = t.positions.index(pos)
    if same:  # an add-on: the order's sl/tp replace the position's, 0 included
        total = round(pos.volume + volume, 8)
        entry, profit = DEAL_ENTRY_IN, 0.0
        t.positions[index] = pos._replace(
            volume=total,
            price_open=round((pos.price_open * pos.volume + price * volume) / total, digits + 3),
            sl=r.get("sl", 0.0),
            tp=r.get("tp", 0.0),
            time_update=now,
            time_update_msc=now * 1000,
        )
    else:
        closed = min(volume, pos.volume)
        profit = _profit(t, pos, price, closed)
        left = round(pos.volume - volume, 8)
        if left > 0:
            entry = DEAL_ENTRY_OUT
            t.positions[index] = pos._replace(volume=left, time_update=now, time_update_msc=now * 1000)
        elif left == 0:
            entry = DEAL_ENTRY_OUT
            t.positions.remove(pos)
        else:  # reversed: the rest opens the other way under the same identifier
            entry = DEAL_ENTRY_INOUT
            t.positions[index] = pos._replace(
                type=POSITION_TYPE_BUY if buy else POSITION_TYPE_SELL,
                volume=-left,
                price_open=price,
                sl=r.get("sl", 0.0),
                tp=r.get("tp", 0.0),
                time_update=now,
                time_update_msc=now * 1000,
            )
        t.balance += profit
    deal = t.add_deal(
        order=order.ticket,
        type=DEAL_TYPE_BUY if buy else DEAL_TYPE_SELL,
        entry=entry,
        magic=r.get("magic", 0),
        position_id=pos.identifier,
        volume=volume,
        price=price,
        profit=profit,
        symbol=r["symbol"],
        comment=comment,
    )
    return deal.ticket, order.ticket, price


def _points(a: float, b: float, point: float) -> float:
    return round((a - b) / point, 3)


def _sltp_refusal(t: FakeTerminal, r: dict[str, Any]) -> int | None:
    """What the trade server refuses a TRADE_ACTION_SLTP with, or None when it is fine."""
    ticket = r.get("position", 0)
    pos = next((p for p in t.positions if p.ticket == ticket), None)
    if pos is None:
        closed = any(d.position_id == ticket for d in t.history_deals)
        return TRADE_RETCODE_POSITION_CLOSED if closed else TRADE_RETCODE_INVALID
    if pos.symbol != r.get("symbol"):
        return TRADE_RETCODE_INVALID
    sl, tp = r.get("sl", 0.0), r.get("tp", 0.0)
    if sl == pos.sl and tp == pos.tp:
        return TRADE_RETCODE_NO_CHANGES
    s = t.symbols[pos.symbol]
    point = 10.0 ** -s["digits"]
    long = pos.type == POSITION_TYPE_BUY
    price = s["bid"] if long else s["ask"]  # what the position closes at
    if s["freeze_level"] and any(
        level and abs(_points(price, level, point)) <= s["freeze_level"] for level in (pos.sl, pos.tp)
    ):
        return TRADE_RETCODE_FROZEN
    for level, below in ((sl, long), (tp, not long)):
        if not level:
            continue
        if round(level, s["digits"]) != level:
            return TRADE_RETCODE_INVALID_STOPS
        away = _points(price, level, point) if below else _points(level, price, point)
        if away <= 0 or away < s["stops_level"]:
            return TRADE_RETCODE_INVALID_STOPS
    return None


def _over_volume(t: FakeTerminal, r: dict[str, Any]) -> bool:
    """A closing deal for more than the position holds (the server refuses it)."""
    pos = next((p for p in t.positions if p.ticket == r["position"]), None)
    return pos is not None and r.get("volume", 0.0) > pos.volume + 1e-9


@_api()
def order_check(t: FakeTerminal, request: dict[str, Any]) -> Any:
    bad = _invalid(dict(request))
    if bad:
        t.error = (RES_E_INVALID_PARAMS, bad)
        return None
    t.error = _OK
    return OrderCheckResult(0, t.balance, t.equity, 0.0, 0.0, t.equity, 0.0, "Done", _trade_request(request))


def _remove(t: FakeTerminal, r: dict[str, Any]) -> Any:
    """TRADE_ACTION_REMOVE of a pending order: DONE, or INVALID when there is no such order."""
    reply = t.replies.popleft() if t.replies else None
    known = any(o.ticket == r.get("order") for o in t.orders)
    if reply is not None:
        retcode, executes = reply.retcode, reply.executes and known
    else:
        retcode, executes = (TRADE_RETCODE_DONE, True) if known else (TRADE_RETCODE_INVALID, False)
    if executes:
        _execute(t, r, 0.0)
    if retcode is None:
        t.error = reply.error if reply is not None else _OK
        return None
    t.error = _OK
    return OrderSendResult(
        retcode,
        0,
        r.get("order", 0) if executes else 0,
        0.0,
        0.0,
        0.0,
        0.0,
        _RETCODE_TEXT.get(retcode, f"retcode {retcode}"),
        next(t._request_ids),
        0,
        _trade_request(r),
    )


@_api()
def order_send(t: FakeTerminal, request: dict[str, Any]) -> Any:
    r = dict(request)
    t.requests.append(r)
    bad = _invalid(r)
    if bad:
        t.error = (RES_E_INVALID_PARAMS, bad)
        return None
    if r["action"] == TRADE_ACTION_REMOVE and "symbol" not in r:  # documented as {action, order}
        return _remove(t, r)
    if r.get("symbol") not in t.symbols:
        t.error = (RES_E_INVALID_PARAMS, 'Invalid "symbol" argument')
        return None
    reply = t.replies.popleft() if t.replies else None
    volume = r.get("volume", 0.0)
    if reply is not None and reply.retcode is None:  # no answer; maybe it went through anyway
        if reply.executes:
            _execute(t, r, volume)
        t.error = reply.error
        return None
    if reply is not None and reply.move is not None:
        t.set_tick(r["symbol"], *reply.move)
    if reply is not None:
        retcode = reply.retcode
        executes = reply.executes
    elif not t.connected:
        retcode, executes = TRADE_RETCODE_CONNECTION, False
    elif not t.trade_allowed:
        retcode, executes = TRADE_RETCODE_CLIENT_DISABLES_AT, False
    elif not _check_filling(t, r):
        retcode, executes = TRADE_RETCODE_INVALID_FILL, False
    elif r["action"] == TRADE_ACTION_SLTP and (refused := _sltp_refusal(t, r)) is not None:
        retcode, executes = refused, False
    elif r["action"] == TRADE_ACTION_DEAL and r.get("position") and _over_volume(t, r):
        retcode, executes = TRADE_RETCODE_INVALID_VOLUME, False
    else:
        retcode = TRADE_RETCODE_PLACED if r["action"] == TRADE_ACTION_PENDING else TRADE_RETCODE_DONE
        executes = True
    if retcode == TRADE_RETCODE_DONE_PARTIAL:
        volume = round(volume / 2, 2)
    deal = order = 0
    price = 0.0
    if executes:
        deal, order, price = _execute(t, r, volume)
    s = t.symbols[r["symbol"]]
    t.error = _OK
    return OrderSendResult(
        retcode,
        deal,
        order,
        volume if executes else 0.0,
        price,
        s["bid"],
        s["ask"],
        _RETCODE_TEXT.get(retcode, f"retcode {retcode}"),
        next(t._request_ids),
        0,
        _trade_request(r),
    )


# -- market data ------------------------------------------------------------------------------


@_api()
def copy_rates_from_pos(t: FakeTerminal, symbol: str, timeframe: int, start_pos: int, count: int) -> Any:
    """Bars from `start_pos` (0 = the bar forming now) back, `count` of them, oldest first:
    a numpy structured array (RATES_DTYPE), or None with last_error."""
    if symbol not in t.symbols or timeframe not in _TIMEFRAME_SECONDS or start_pos < 0 or count <= 0:
        t.error = (RES_E_INVALID_PARAMS, "Terminal: Invalid params")
        return None
    rows = t.rates.get((symbol, timeframe), [])
    end = len(rows) - start_pos
    picked = rows[max(0, end - count) : max(0, end)]
    t.error = _OK
    return np.array([tuple(r) for r in picked], dtype=RATES_DTYPE)


@_api()
def copy_ticks_from(t: FakeTerminal, symbol: str, date_from: datetime | int | float, count: int, flags: int) -> Any:
    """Up to `count` ticks at or after `date_from` (datetime, or seconds since 1970), oldest
    first: a numpy structured array (TICKS_DTYPE), or None with last_error."""
    if symbol not in t.symbols or count <= 0 or flags not in (COPY_TICKS_ALL, COPY_TICKS_INFO, COPY_TICKS_TRADE):
        t.error = (RES_E_INVALID_PARAMS, "Terminal: Invalid params")
        return None
    since_ms = int(_epoch_s(date_from) * 1000)
    out = []
    for r in t.tick_log.get(symbol, []):
        if r[5] < since_ms:
            continue
        if flags == COPY_TICKS_INFO and not r[6] & (TICK_FLAG_BID | TICK_FLAG_ASK):
            continue
        if flags == COPY_TICKS_TRADE and not r[6] & (TICK_FLAG_LAST | TICK_FLAG_VOLUME):
            continue
        out.append(r)
        if len(out) == count:
            break
    t.error = _OK
    return np.array(out, dtype=TICKS_DTYPE)


@_api()
def market_book_add(t: FakeTerminal, symbol: str) -> bool:
    if symbol not in t.symbols:
        t.error = (RES_E_NOT_FOUND, "Terminal: Not found")
        return False
    t.book_subscriptions.add(symbol)
    t.error = _OK
    return True


@_api()
def market_book_get(t: FakeTerminal, symbol: str) -> Any:
    """A tuple of BookInfo(type, price, volume, volume_dbl), or None when not subscribed."""
    if symbol not in t.book_subscriptions:
        t.error = (RES_E_FAIL, "Terminal: Call failed")
        return None
    t.error = _OK
    return tuple(t.books.get(symbol, []))


@_api()
def market_book_release(t: FakeTerminal, symbol: str) -> bool:
    t.book_subscriptions.discard(symbol)
    t.error = _OK
    return True


# -- control from another process (tests only; not part of the MetaTrader5 API) ---------------


def _control(cmd: dict[str, Any]) -> Any:
    """One command of a test driving the fake inside another process."""
    t = _fake
    op = cmd.get("op")
    if op == "script":
        t.script(*[Reply(r["retcode"], r.get("execute")) if isinstance(r, dict) else r for r in cmd["replies"]])
    elif op == "hang":
        t.hang(cmd["function"], cmd.get("action"))
    elif op == "release":
        t.release()
    elif op == "set":
        setattr(t, cmd["field"], cmd["value"])
    elif op == "set_tick":
        t.set_tick(cmd["symbol"], cmd["bid"], cmd["ask"])
    elif op == "add_rates":
        t.add_rates(cmd["symbol"], cmd["timeframe"], [tuple(r) for r in cmd["rows"]])
    elif op == "add_ticks":
        t.add_ticks(cmd["symbol"], [tuple(r) for r in cmd["rows"]])
    elif op == "fail_next":
        t.fail_next(cmd["function"], cmd["code"], cmd["text"])
    elif op == "add_position":
        t.add_position(**cmd["fields"])
    elif op == "trigger":
        t.trigger(cmd["ticket"], cmd.get("reason", DEAL_REASON_SL))
    elif op == "state":
        with t.lock:
            return {
                "calls": dict(t.calls),
                "requests": list(t.requests),
                "positions": [p._asdict() for p in t.positions],
                "orders": [o._asdict() for o in t.orders],
                "entered": t.entered.is_set(),
                "returned": t.returned.is_set(),
                "initialized": t.initialized,
                "threads": {fn: sorted({th for f, th in t.call_log if f == fn}) for fn in t.calls},
            }
    else:
        raise ValueError(f"unknown control op {op!r}")
    return None


def _serve_control(path: str) -> None:
    import json
    import os
    import socket

    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)

    def loop() -> None:
        while True:
            conn, _ = server.accept()
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                try:
                    answer = {"ok": True, "value": _control(json.loads(data))}
                except Exception as e:  # the test sees the error; the fake keeps serving
                    answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                conn.sendall(json.dumps(answer, default=str).encode() + b"\n")

    threading.Thread(target=loop, name="fake-mt5-control", daemon=True).start()


def _from_environment() -> None:
    import os

    failures = os.environ.get("FAKE_MT5_INIT_FAILURES")
    if failures:
        _fake.init_failures = int(failures)
    path = os.environ.get("FAKE_MT5_CONTROL")
    if path:
        _serve_control(path)


_from_environment()
