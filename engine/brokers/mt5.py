"""The MetaTrader 5 broker: the `MetaTrader5` package (Windows only) behind the Broker protocol.

How it talks to the terminal
----------------------------
The package is a thin IPC client of a running terminal; its calls block, can hang, and
report errors through one module-global `last_error()`. So:

- Every call into the module runs on ONE dedicated worker thread (a daemon thread: a call
  that never returns must not keep the process from exiting at shutdown), and
  `last_error()` is read inside the same submitted job, right after the call that failed.
- Every submission has a deadline. A read that misses it raises `CallTimedOut`
  (a `BrokerError`). An `order_send` that misses it answers `Outcome.UNKNOWN`: the call is
  still running on the worker and may yet execute -- it is never retried blindly; the
  executor reconciles by tag.
- A call that outlived its deadline keeps the worker busy. Later calls do not queue behind
  it: they fail at once with `TerminalBusy` (nothing was submitted), until it returns.
  A call that is merely in progress (another thread's) is waited for, within the caller's
  own deadline.
- `send()` as a whole (symbol and tick reads, order_send, requote retries) stays within
  `deadline_ms`: the executor checks that the lease outlives "broker deadline + drift
  margin" before it sends, so no order_send may be *issued* after that budget is spent.

Outcomes of `send` / `modify` / `close_position` / `cancel_order`
----------------------------------------------------------------
- 10009 DONE, 10008 PLACED, 10010 DONE_PARTIAL -> `Outcome.DONE`, ref = order ticket
  (or deal ticket), price = fill price (the limit price for a placed pending order).
- 10004 REQUOTE, 10021 PRICE_OFF -> retried (fresh tick, bounded attempts, still within the
  deadline), then `Outcome.REJECTED`.
- 10011 ERROR and 10012 TIMEOUT -> `Outcome.UNKNOWN`: the server's answer does not say that
  nothing was placed, so the signal goes to reconciliation instead of being closed as
  rejected (a live order behind a "rejected" signal would be a silent failure).
- `order_send` returned None, timed out, or raised -> `Outcome.UNKNOWN` (never resent).
- Every other retcode -> `Outcome.REJECTED`, detail "retcode <n> <NAME>: <meaning>".
- A modify, close or cancel is answered by meaning, so its caller acts on the meaning and
  never on a retcode: 10025 NO_CHANGES is `DONE` with detail "no change" (the stops already
  are what was asked); a refusal carries `OrderResult.refusal` -- 10016 INVALID_STOPS ->
  `INVALID_STOPS`, 10028 LOCKED and 10029 FROZEN -> `FROZEN`, 10036 POSITION_CLOSED or no such
  open position (pending order, for a cancel) -> `GONE`, anything else `OTHER`.
- A modify is ONE `TRADE_ACTION_SLTP` request (position, symbol, sl, tp): the stop is
  replaced at the trade server, never cancelled and re-placed, and it has its own deadline
  (`modify_deadline_ms`, at most the broker's). Its stop is rounded to the symbol's digits
  towards the price (up for a long, down for a short), so rounding never loosens it; so is
  the stop an entry order carries.
- `BrokerError` is raised only when nothing was submitted (not connected, terminal busy,
  reads failed before the order was built); `ValueError` for a malformed tag.

A `SendGuard` (the gateway's fence and write-ahead journal) may wrap each `order_send` of a
call: `before(request)` runs on the worker immediately before it and may refuse
(`SendRefused`: nothing is sent, and the call raises it even after a requote), `after(...)`
runs on the worker as soon as it returned. Nothing else runs between the two and the send.

Money crosses the boundary here only: Decimal -> float in the request dicts (prices
rounded to the symbol's digits), float -> Decimal (via the float's shortest repr) in
everything returned.

Finding an order by tag
-----------------------
MT5 has no client order id: the tag travels in `comment` (<= 31 chars, alphanumeric) next to
`magic`. The API cannot filter by comment, so `find_by_tag` reads positions, pending orders
and 7 days of history orders and deals, and filters in code on magic AND comment. Some
brokers truncate comments (or reserve part of the field); a venue comment that is a
non-empty prefix of the tag of at least 20 characters also matches: a tag carries >= 96
fingerprint bits in base32, so 20 characters keep ~90 bits -- collisions stay negligible,
while a shorter remainder would not be safe to match. Records are grouped per order ticket
(the position identifier is the ticket of the order that opened it; deals carry their
order), so one execution is one `VenueOrder`, and a tag executed twice shows as two.

Times from the venue are the trade server's clock (often UTC+2/+3), reported as if UTC.
"""

from __future__ import annotations

import importlib
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from types import ModuleType
from typing import Any, Protocol

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_any,
    wait_exponential,
)

from common.retry import stop_when
from common.timefmt import iso_utc
from common.worker import DeadlineWorker, Failures
from engine.brokers.base import (
    Account,
    BrokerError,
    BrokerUnavailable,
    OrderRequest,
    OrderResult,
    Outcome,
    Position,
    Quote,
    Refusal,
    SymbolSpec,
    SymbolUnavailable,
    VenueOrder,
)
from engine.brokers.deals import ClosingDeal
from engine.model import OrderType, Side

log = logging.getLogger("haexec.engine.mt5")

INSTALL_HINT = (
    "the MetaTrader5 package is not installed (it exists for Windows only): pip install 'haexec[mt5]' on Windows"
)

# The documented trade server return codes (MqlTradeResult.retcode): name, meaning.
RETCODES: dict[int, tuple[str, str]] = {
    10004: ("REQUOTE", "requote"),
    10006: ("REJECT", "request rejected"),
    10007: ("CANCEL", "request canceled by trader"),
    10008: ("PLACED", "order placed"),
    10009: ("DONE", "request completed"),
    10010: ("DONE_PARTIAL", "only part of the request was completed"),
    10011: ("ERROR", "request processing error"),
    10012: ("TIMEOUT", "request canceled by timeout"),
    10013: ("INVALID", "invalid request"),
    10014: ("INVALID_VOLUME", "invalid volume in the request"),
    10015: ("INVALID_PRICE", "invalid price in the request"),
    10016: ("INVALID_STOPS", "invalid stops in the request"),
    10017: ("TRADE_DISABLED", "trade is disabled"),
    10018: ("MARKET_CLOSED", "market is closed"),
    10019: ("NO_MONEY", "there is not enough money to complete the request"),
    10020: ("PRICE_CHANGED", "prices changed"),
    10021: ("PRICE_OFF", "there are no quotes to process the request"),
    10022: ("INVALID_EXPIRATION", "invalid order expiration date in the request"),
    10023: ("ORDER_CHANGED", "order state changed"),
    10024: ("TOO_MANY_REQUESTS", "too frequent requests"),
    10025: ("NO_CHANGES", "no changes in request"),
    10026: ("SERVER_DISABLES_AT", "autotrading disabled by server"),
    10027: ("CLIENT_DISABLES_AT", "autotrading disabled by client terminal"),
    10028: ("LOCKED", "request locked for processing"),
    10029: ("FROZEN", "order or position frozen"),
    10030: ("INVALID_FILL", "invalid order filling type"),
    10031: ("CONNECTION", "no connection with the trade server"),
    10032: ("ONLY_REAL", "operation is allowed only for live accounts"),
    10033: ("LIMIT_ORDERS", "the number of pending orders has reached the limit"),
    10034: ("LIMIT_VOLUME", "the volume of orders and positions for the symbol has reached the limit"),
    10035: ("INVALID_ORDER", "incorrect or prohibited order type"),
    10036: ("POSITION_CLOSED", "position with the specified POSITION_IDENTIFIER has already been closed"),
    10038: ("INVALID_CLOSE_VOLUME", "a close volume exceeds the current position volume"),
    10039: ("CLOSE_ORDER_EXIST", "a close order already exists for the specified position"),
    10040: ("LIMIT_POSITIONS", "the number of open positions on the account has reached the server's limit"),
    10041: ("REJECT_CANCEL", "the pending order activation request is rejected, the order is canceled"),
    10042: ("LONG_ONLY", "the symbol allows only long positions"),
    10043: ("SHORT_ONLY", "the symbol allows only short positions"),
    10044: ("CLOSE_ONLY", "the symbol allows only closing existing positions"),
    10045: ("FIFO_CLOSE", "the account allows closing positions only by the FIFO rule"),
    10046: ("HEDGE_PROHIBITED", "the account prohibits opposite positions on a single symbol"),
}
DONE_RETCODES = frozenset({10008, 10009, 10010})
NO_CHANGES = 10025
MODIFY_DONE_RETCODES = DONE_RETCODES | {NO_CHANGES}  # the stops are already what was asked
# What a refused modify / close / cancel means; any other refusal is Refusal.OTHER.
REFUSALS: dict[int, Refusal] = {
    10016: Refusal.INVALID_STOPS,
    10028: Refusal.FROZEN,  # LOCKED: the request is being processed
    10029: Refusal.FROZEN,
    10036: Refusal.GONE,
}
MODIFY_DEADLINE_MS = 1500  # the manager's per-call deadline at MT5 (issue 12)
RETRY_RETCODES = frozenset({10004, 10021})  # MetaQuotes' own helpers retry only these
AMBIGUOUS_RETCODES = frozenset({10011, 10012})  # answered, but not "nothing was placed"

# The documented values of the module's constants. Requests are built from these; `connect()`
# checks that the loaded module agrees (a module that disagrees is refused, not trusted).
TRADE_ACTION_DEAL = 1
TRADE_ACTION_PENDING = 5
TRADE_ACTION_SLTP = 6
TRADE_ACTION_REMOVE = 8
ORDER_TYPE_BUY, ORDER_TYPE_SELL, ORDER_TYPE_BUY_LIMIT, ORDER_TYPE_SELL_LIMIT = 0, 1, 2, 3
ORDER_TYPE_CLOSE_BY = 8
ORDER_FILLING_FOK, ORDER_FILLING_IOC, ORDER_FILLING_RETURN = 0, 1, 2
ORDER_TIME_GTC = 0
POSITION_TYPE_BUY = 0
DEAL_TYPE_BUY, DEAL_TYPE_SELL = 0, 1
DEAL_ENTRY_IN, DEAL_ENTRY_OUT, DEAL_ENTRY_INOUT, DEAL_ENTRY_OUT_BY = 0, 1, 2, 3
# ENUM_DEAL_REASON, as the journal names a close (the paper venue's close_reason words)
DEAL_REASON_SL, DEAL_REASON_TP, DEAL_REASON_SO = 4, 5, 6
CLOSE_KINDS = {DEAL_REASON_SL: "sl", DEAL_REASON_TP: "tp", DEAL_REASON_SO: "stop_out"}
SYMBOL_FILLING_FOK_BIT, SYMBOL_FILLING_IOC_BIT = 1, 2  # SymbolInfo.filling_mode bit mask
RES_S_OK = 1  # last_error() code for "no error"
_CONSTANTS = {
    "TRADE_ACTION_DEAL": TRADE_ACTION_DEAL,
    "TRADE_ACTION_PENDING": TRADE_ACTION_PENDING,
    "TRADE_ACTION_SLTP": TRADE_ACTION_SLTP,
    "TRADE_ACTION_REMOVE": TRADE_ACTION_REMOVE,
    "ORDER_TYPE_BUY": ORDER_TYPE_BUY,
    "ORDER_TYPE_SELL": ORDER_TYPE_SELL,
    "ORDER_TYPE_BUY_LIMIT": ORDER_TYPE_BUY_LIMIT,
    "ORDER_TYPE_SELL_LIMIT": ORDER_TYPE_SELL_LIMIT,
    "ORDER_FILLING_FOK": ORDER_FILLING_FOK,
    "ORDER_FILLING_IOC": ORDER_FILLING_IOC,
    "ORDER_FILLING_RETURN": ORDER_FILLING_RETURN,
    "ORDER_TIME_GTC": ORDER_TIME_GTC,
    "POSITION_TYPE_BUY": POSITION_TYPE_BUY,
    "DEAL_TYPE_BUY": DEAL_TYPE_BUY,
    "DEAL_TYPE_SELL": DEAL_TYPE_SELL,
    "DEAL_ENTRY_IN": DEAL_ENTRY_IN,
    "DEAL_ENTRY_OUT": DEAL_ENTRY_OUT,
    "DEAL_ENTRY_INOUT": DEAL_ENTRY_INOUT,
    "DEAL_ENTRY_OUT_BY": DEAL_ENTRY_OUT_BY,
    "DEAL_REASON_SL": DEAL_REASON_SL,
    "DEAL_REASON_TP": DEAL_REASON_TP,
    "DEAL_REASON_SO": DEAL_REASON_SO,
    **{f"TRADE_RETCODE_{name}": code for code, (name, _) in RETCODES.items()},
}
IPC_ERRORS = range(-10005, -9999)  # last_error codes of a broken link to the terminal
ORDER_STATES = {
    0: "started",
    1: "placed",
    2: "canceled",
    3: "partial",
    4: "filled",
    5: "rejected",
    6: "expired",
    7: "request_add",
    8: "request_modify",
    9: "request_cancel",
}

MAX_COMMENT = 31
MIN_TRUNCATED_TAG = 20  # see "Finding an order by tag" above
_TAG = re.compile(r"[A-Za-z0-9]{1,31}")


class NotSent(BrokerError):
    """The call was never submitted to the terminal: nothing can have happened."""


class TerminalBusy(NotSent):
    """An earlier call is still running on the terminal's worker; nothing was submitted."""


class DeadlineSpent(NotSent):
    """The deadline ran out before the call could be submitted; nothing was submitted."""


class SendRefused(NotSent):
    """A SendGuard refused the order_send on the worker, before it was issued: nothing was sent."""


class SendGuard(Protocol):
    """Wraps each order_send of one call, on the worker thread (see the module docstring)."""

    def before(self, request: dict[str, Any]) -> None:
        """Immediately before order_send; raise SendRefused to refuse it."""

    def after(
        self, request: dict[str, Any], result: Any, error: tuple[int, str] | None, raised: BaseException | None
    ) -> None:
        """As soon as order_send returned (result, or None with last_error `error`) or raised."""


class CallTimedOut(BrokerError):
    """A call missed its deadline; it may still be running (and may still take effect)."""


class CallFailed(BrokerError):
    """The module answered None/False; `code` and `text` come from `last_error()`."""

    def __init__(self, what: str, code: int, text: str) -> None:
        super().__init__(f"MT5 {what} failed: last_error {code} {text}")
        self.code = code
        self.text = text


class _Refused(BrokerError):
    """Not sendable for a definite reason (unknown symbol, no such position): REJECTED."""


class _Gone(_Refused):
    """No such open position (or pending order): it closed, or never was."""


class _Expired(BrokerError):
    """Past the order's expires_at when it would go: nothing is sent, EXPIRED."""


class _Secret:
    """Holds the password; never shows it in repr/str/logs/tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value

    def reveal(self) -> str | None:
        return self._value

    def as_kwargs(self, wanted: bool = True) -> dict[str, str]:
        return {"password": self._value} if wanted and self._value is not None else {}

    def __repr__(self) -> str:
        return "<redacted>" if self._value else "None"

    __str__ = __repr__


class _Budget:
    def __init__(self, ms: float) -> None:
        self.ms = ms
        self._end = time.monotonic() + ms / 1000.0

    def left(self) -> float:
        """Seconds left (may be <= 0)."""
        return self._end - time.monotonic()


# The terminal worker's refusals as this broker's errors (BrokerError: nothing is known to
# have happened, or, for a timeout, it may still).
_WORKER_FAILURES = Failures(
    stopped=lambda what: BrokerError("MT5 broker is closed"),
    busy=TerminalBusy,
    spent=DeadlineSpent,
    timed_out=CallTimedOut,
)


def _dec(value: float) -> Decimal:
    """float from the venue -> Decimal, through the float's shortest repr (1.1 -> Decimal('1.1'))."""
    return Decimal(repr(float(value)))


def _price(value: Decimal, digits: int, rounding: str = ROUND_HALF_EVEN) -> float:
    """Decimal -> float for a request, rounded to the symbol's digits (unrounded prices are refused)."""
    return float(value.quantize(Decimal(1).scaleb(-digits), rounding=rounding))


def _stop(value: Decimal, digits: int, long: bool) -> float:
    """A stop for a request: rounded towards the price (up below a long, down above a short),
    so that rounding never widens the risk."""
    return _price(value, digits, ROUND_CEILING if long else ROUND_FLOOR)


def _at_digits(value: float, digits: int | None) -> Decimal | None:
    """sl / tp read back from the venue: 0.0 means none; else the Decimal of the symbol's
    digits (a float such as 1.0950000000000002 reads as 1.09500)."""
    if not value:
        return None
    d = _dec(value)
    return d if digits is None else d.quantize(Decimal(1).scaleb(-digits))


def _spec(info: Any) -> SymbolSpec:
    """SymbolInfo -> SymbolSpec. MT5 quotes tick values in the account currency; a losing
    position's own tick value where the venue gives one (it differs for cross rates)."""
    tick_value = getattr(info, "trade_tick_value_loss", 0.0) or info.trade_tick_value
    return SymbolSpec(
        contract_size=_dec(info.trade_contract_size),
        volume_step=_dec(info.volume_step),
        min_volume=_dec(info.volume_min),
        max_volume=_dec(info.volume_max),
        tick_size=_dec(info.trade_tick_size),
        tick_value=_dec(tick_value),
    )


def _check_loss(req: OrderRequest, info: Any, at: Decimal) -> None:
    """Refuse an order whose stop is on the wrong side of the price it goes at, or whose loss
    at the stop from that price exceeds `req.max_loss`."""
    buy = req.side is Side.BUY
    if not (req.sl < at if buy else req.sl > at):
        raise _Refused(f"{req.side.value} stop {req.sl} is not {'below' if buy else 'above'} the price {at}")
    if req.max_loss is None:
        return
    try:
        loss = _spec(info).loss_per_lot(abs(at - req.sl)) * req.volume
    except (TypeError, ValueError) as exc:
        raise _Refused(f"symbol {info.name} has no usable spec at the venue: {exc}") from None
    if loss > req.max_loss:
        raise _Refused(f"loss at the stop from {at} would be {loss:.2f}, above the cap {req.max_loss}")


def _side_of_order_type(t: int) -> Side | None:
    if t == ORDER_TYPE_CLOSE_BY or t < 0 or t > 7:
        return None
    return Side.BUY if t % 2 == 0 else Side.SELL


def _at(seconds: float, msc: int = 0) -> datetime:
    return datetime.fromtimestamp(msc / 1000.0 if msc else seconds, UTC)


def _retcode_detail(retcode: int, server_comment: str = "") -> str:
    name, meaning = RETCODES.get(retcode, ("UNDOCUMENTED", "not a documented trade server return code"))
    detail = f"retcode {retcode} {name}: {meaning}"
    if server_comment:
        detail += f" (server: {server_comment})"
    return detail


@dataclass
class _Group:
    """Everything at the venue that belongs to one order (one execution)."""

    order: int
    positions: list[Any] = field(default_factory=list)
    pending: list[Any] = field(default_factory=list)
    history: list[Any] = field(default_factory=list)
    deals: list[Any] = field(default_factory=list)


class MT5Broker:
    """The Broker protocol on a MetaTrader 5 terminal. See the module docstring."""

    name = "mt5"
    fencing_aware = False
    records_in_transaction = False

    def __init__(
        self,
        login: int | None,
        password: str | None,
        server: str | None,
        path: str | None,
        magic: int,
        deadline_ms: int,
        symbol_map: Mapping[str, str] | None = None,
        module: ModuleType | None = None,
        *,
        deviation: int = 20,
        connect_timeout_ms: int = 60_000,
        connect_attempts: int = 3,
        connect_backoff_s: float = 1.0,
        requote_attempts: int = 3,
        requote_backoff_s: float = 0.05,
        history_days: int = 7,
        modify_deadline_ms: int = MODIFY_DEADLINE_MS,
        utcnow: Callable[[], datetime] | None = None,
    ) -> None:
        if deadline_ms <= 0 or modify_deadline_ms <= 0:
            raise ValueError("deadline_ms and modify_deadline_ms must be > 0")
        self.login = login
        self._password = _Secret(password)
        self.server = server
        self.path = path
        self.magic = magic
        self.deadline_ms = deadline_ms
        self.deviation = deviation
        self.connect_timeout_ms = connect_timeout_ms
        self.connect_attempts = connect_attempts
        self.connect_backoff_s = connect_backoff_s
        self.requote_attempts = requote_attempts
        self.requote_backoff_s = requote_backoff_s
        self.history_days = history_days
        self.modify_deadline_ms = modify_deadline_ms
        self._utcnow = utcnow or (lambda: datetime.now(UTC))
        self._to_venue = dict(symbol_map or {})
        self._from_venue = {v: k for k, v in self._to_venue.items()}
        self._module = module
        self._worker: DeadlineWorker | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"MT5Broker(login={self.login!r}, server={self.server!r}, path={self.path!r}, "
            f"magic={self.magic}, deadline_ms={self.deadline_ms})"
        )

    __str__ = __repr__

    # -- plumbing -----------------------------------------------------------------------------

    def _load(self) -> ModuleType:
        if self._module is None:
            try:
                self._module = importlib.import_module("MetaTrader5")
            except ImportError as exc:
                raise BrokerUnavailable(INSTALL_HINT) from exc
        return self._module

    def run_on_terminal(self, what: str, job: Callable[[ModuleType], Any], timeout_s: float | None = None) -> Any:
        """Run `job(module)` on the terminal's one worker thread within `timeout_s` (default:
        the deadline). Public so that market data reads share the thread with the orders
        (`engine.market.mt5.MT5Source(run=broker.run_on_terminal)`): the package is one
        connection per process, and a read queued behind a hung order_send fails at once
        (TerminalBusy) instead of waiting. BrokerError when not connected."""
        worker, module = self._worker, self._module
        if worker is None or module is None:
            raise BrokerError("MT5 broker is not connected")
        if timeout_s is None:
            timeout_s = self.deadline_ms / 1000.0
        return worker.run(what, lambda: job(module), timeout_s)

    @property
    def busy(self) -> str | None:
        """The call the worker is running now (e.g. a hung order_send), or None."""
        return self._worker.busy if self._worker else None

    def in_flight(self) -> tuple[str, float, bool] | None:
        """The call on the worker: (name, seconds running, past its caller's deadline), or None."""
        return self._worker.running() if self._worker else None

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no call is in flight (release path: let in-flight calls finish)."""
        return self._worker.wait_idle(timeout_s) if self._worker else True

    def _venue_symbol(self, symbol: str) -> str:
        return self._to_venue.get(symbol, symbol)

    def _engine_symbol(self, symbol: str) -> str:
        return self._from_venue.get(symbol, symbol)

    @staticmethod
    def _listing(m: ModuleType, what: str, value: Any) -> tuple[Any, ...]:
        """A getter's tuple; None is an error unless last_error says success (nothing found)."""
        if value is None:
            code, text = m.last_error()
            if code != RES_S_OK:
                raise CallFailed(what, code, text)
            return ()
        return tuple(value)

    # -- connection ---------------------------------------------------------------------------

    def connect(self) -> None:
        m = self._load()
        wrong = sorted(k for k, v in _CONSTANTS.items() if getattr(m, k, v) != v)
        if wrong:
            raise BrokerUnavailable(f"the MetaTrader5 module disagrees with the documented constants: {wrong}")
        with self._lock:
            if self._worker is None:
                self._worker = DeadlineWorker(f"mt5-terminal-{self.magic}", _WORKER_FAILURES, label="MT5 ")
        retrying = Retrying(
            stop=stop_after_attempt(self.connect_attempts),
            wait=wait_exponential(multiplier=self.connect_backoff_s, max=30),
            retry=retry_if_exception_type(BrokerError),
            reraise=True,
            before_sleep=self._log_connect_retry,
        )
        try:
            retrying(self._connect_once)
        except BrokerError as exc:
            raise BrokerUnavailable(f"MT5 connect failed after {self.connect_attempts} attempt(s): {exc}") from exc

    def _log_connect_retry(self, rs: RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome else None
        log.warning(
            "MT5 connect attempt %d (login %s, server %s) failed: %s; retrying",
            rs.attempt_number,
            self.login,
            self.server,
            exc,
        )

    def _connect_once(self) -> None:
        timeout_ms = self.connect_timeout_ms

        def job(m: ModuleType) -> tuple[Any, Any, list[str]]:
            kwargs: dict[str, Any] = {"timeout": int(timeout_ms)}
            if self.login is not None:
                kwargs["login"] = int(self.login)
                if self.server is not None:
                    kwargs["server"] = self.server
            # the password is passed inline, never bound to a local a traceback could print
            args = (self.path,) if self.path else ()
            ok = m.initialize(*args, **kwargs, **self._password.as_kwargs(self.login is not None))
            if not ok:
                raise CallFailed("initialize", *m.last_error())
            term = m.terminal_info()
            if term is None:
                raise CallFailed("terminal_info", *m.last_error())
            acct = m.account_info()
            if acct is None:
                raise CallFailed("account_info", *m.last_error())
            names = self._listing(m, "symbols_get", m.symbols_get())
            return term, acct, [str(n.name) for n in names]

        term, acct, names = self.run_on_terminal("initialize", job, timeout_ms / 1000.0 + self.deadline_ms / 1000.0)
        if not term.connected:
            raise BrokerUnavailable(f"MT5 terminal is not connected to trade server {self.server or '?'}")
        if not term.trade_allowed:
            raise BrokerUnavailable("MT5 terminal has algorithmic trading disabled (enable Algo Trading)")
        if self.login is not None and int(acct.login) != int(self.login):
            raise BrokerUnavailable(f"MT5 terminal is logged in to account {acct.login}, not {self.login}")
        if not acct.trade_allowed or not acct.trade_expert:
            raise BrokerUnavailable(f"MT5 account {acct.login} does not allow automated trading")
        self._learn_spellings(names)
        log.info("MT5 connected: account %s on %s, magic %s", acct.login, acct.server, self.magic)

    def _learn_spellings(self, names: list[str]) -> None:
        """A signal's symbol is upper-cased (engine/signal.py); a broker may spell it with a
        lower-case suffix (XAUUSD.m, US30.cash). Each terminal name whose upper-case form is
        not already its own name maps to it, unless two names share that form (then neither:
        which one was meant cannot be told, and the order is refused as an unknown symbol)."""
        by_upper: dict[str, list[str]] = {}
        for name in names:
            by_upper.setdefault(name.upper(), []).append(name)
        for upper, spelled in by_upper.items():
            if upper in spelled or upper in self._to_venue or spelled[0] in self._from_venue:
                continue  # its own name already, or mapped explicitly
            if len(spelled) > 1:
                log.warning("MT5 symbols %s differ only in case: %s is not mapped to either", spelled, upper)
                continue
            self._to_venue[upper] = spelled[0]
            self._from_venue[spelled[0]] = upper

    def close(self) -> None:
        worker = self._worker
        if worker is None:
            return
        try:
            self.run_on_terminal("shutdown", lambda m: m.shutdown())
        except BrokerError as exc:
            log.warning("MT5 shutdown skipped: %s", exc)
        worker.stop()
        self._worker = None

    # -- reads --------------------------------------------------------------------------------

    def terminal_state(self, timeout_s: float | None = None) -> tuple[bool, bool]:
        """(connected to the trade server, algorithmic trading allowed), from terminal_info."""

        def job(m: ModuleType) -> Any:
            term = m.terminal_info()
            if term is None:
                raise CallFailed("terminal_info", *m.last_error())
            return term

        term = self.run_on_terminal("terminal_info", job, timeout_s)
        return bool(term.connected), bool(term.trade_allowed)

    def account(self) -> Account:
        now = self._utcnow()
        day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        lo, hi = int(day_start.timestamp()), int((now + timedelta(days=1)).timestamp())

        def job(m: ModuleType) -> tuple[Any, tuple[Any, ...]]:
            acct = m.account_info()
            if acct is None:
                raise CallFailed("account_info", *m.last_error())
            deals = self._listing(m, "history_deals_get", m.history_deals_get(lo, hi))
            return acct, deals

        acct, deals = self.run_on_terminal("account_info", job)
        pnl = Decimal(0)
        for d in deals:
            # trades only: balance/credit/bonus deals carry deposits in `profit`
            if d.type in (DEAL_TYPE_BUY, DEAL_TYPE_SELL) and d.time >= lo:
                pnl += _dec(d.profit) + _dec(d.swap) + _dec(d.commission) + _dec(getattr(d, "fee", 0.0))
        return Account(
            balance=_dec(acct.balance),
            equity=_dec(acct.equity),
            currency=acct.currency,
            daily_pnl=pnl,
            margin=_dec(acct.margin),
            free_margin=_dec(acct.margin_free),
        )

    def positions(self) -> list[Position]:
        """All open positions of the account (risk needs the whole exposure); `tag` is set only
        for positions carrying this broker's magic. sl / tp read back in the symbol's digits,
        so a stop compares exactly with the one that was sent."""

        def job(m: ModuleType) -> tuple[tuple[Any, ...], dict[str, int | None]]:
            rows = self._listing(m, "positions_get", m.positions_get())
            digits: dict[str, int | None] = {}
            for symbol in {p.symbol for p in rows}:
                info = m.symbol_info(symbol)  # None (a symbol gone from the terminal): the float as it is
                digits[symbol] = int(info.digits) if info is not None else None
            return rows, digits

        rows, digits = self.run_on_terminal("positions_get", job)
        return [
            Position(
                ticket=str(p.ticket),
                symbol=self._engine_symbol(p.symbol),
                side=Side.BUY if p.type == POSITION_TYPE_BUY else Side.SELL,
                volume=_dec(p.volume),
                price=_dec(p.price_open),
                sl=_at_digits(p.sl, digits.get(p.symbol)),
                tp=_at_digits(p.tp, digits.get(p.symbol)),
                tag=(p.comment or None) if p.magic == self.magic else None,
            )
            for p in rows
        ]

    def orders(self) -> list[VenueOrder]:
        """All pending orders of the account; `tag` only for this broker's magic."""
        rows = self.run_on_terminal("orders_get", lambda m: self._listing(m, "orders_get", m.orders_get()))
        out = []
        for o in rows:
            side = _side_of_order_type(o.type)
            if side is None:
                continue
            out.append(
                VenueOrder(
                    ticket=str(o.ticket),
                    tag=(o.comment or None) if o.magic == self.magic else None,
                    symbol=self._engine_symbol(o.symbol),
                    side=side,
                    volume=_dec(o.volume_current),
                    price=_dec(o.price_open),
                    state="pending",
                    at=_at(o.time_setup, o.time_setup_msc),
                    extra={"magic": o.magic, "type": o.type, "comment": o.comment},
                )
            )
        return out

    def _tag_matches(self, comment: str, tag: str) -> bool:
        if not comment:
            return False
        return comment == tag or (len(comment) >= MIN_TRUNCATED_TAG and tag.startswith(comment))

    def find_by_tag(self, tag: str) -> list[VenueOrder]:
        """Every execution of `tag` at the venue, one `VenueOrder` per order ticket (which is
        what `send` returned as ref). state: "position" (open), "pending", or "history"
        (closed, filled, or canceled: see extra["filled"] and extra["order_state"])."""
        now = self._utcnow()
        lo = int((now - timedelta(days=self.history_days)).timestamp())
        hi = int((now + timedelta(days=1)).timestamp())

        def job(m: ModuleType) -> dict[str, tuple[Any, ...]]:
            return {
                "positions": self._listing(m, "positions_get", m.positions_get()),
                "pending": self._listing(m, "orders_get", m.orders_get()),
                "history": self._listing(m, "history_orders_get", m.history_orders_get(lo, hi)),
                "deals": self._listing(m, "history_deals_get", m.history_deals_get(lo, hi)),
            }

        found = self.run_on_terminal("find_by_tag", job)
        groups: dict[int, _Group] = {}

        def ours(row: Any) -> bool:
            return row.magic == self.magic and self._tag_matches(row.comment, tag)

        def group(order: int) -> _Group:
            return groups.setdefault(order, _Group(order))

        for p in found["positions"]:
            if ours(p):
                group(p.identifier or p.ticket).positions.append(p)
        for o in found["pending"]:
            if ours(o):
                group(o.ticket).pending.append(o)
        for o in found["history"]:
            if ours(o):
                group(o.ticket).history.append(o)
        for d in found["deals"]:
            if ours(d) and d.type in (DEAL_TYPE_BUY, DEAL_TYPE_SELL):
                group(d.order or d.position_id).deals.append(d)
        out = [v for v in (self._venue_order(g, tag) for g in groups.values()) if v is not None]
        out.sort(key=lambda v: (v.at or datetime.min.replace(tzinfo=UTC), v.ticket))
        return out

    def closing_deal(self, ticket: str) -> ClosingDeal | None:
        """How a position that is no longer open closed: its last deal that took volume out
        (history_deals_get(position=...), which needs no date range), its reason as the kind
        (sl, tp, stop_out; anything else is a close), its P&L the deal's profit, swap,
        commission and fee. None when the terminal has no such deal: never opened, still
        open, or a history the terminal has not synchronised yet (the manager then holds the
        symbol and asks again next loop)."""
        if not ticket.isdigit():
            return None

        def job(m: ModuleType) -> tuple[Any, ...]:
            if self._listing(m, "positions_get", m.positions_get(ticket=int(ticket))):
                return ()  # still open: a partial close's deal is not how it closed
            return self._listing(m, "history_deals_get", m.history_deals_get(position=int(ticket)))

        deals = self.run_on_terminal("history_deals_get", job)
        outs = [
            d
            for d in deals
            if d.type in (DEAL_TYPE_BUY, DEAL_TYPE_SELL)
            and d.entry in (DEAL_ENTRY_OUT, DEAL_ENTRY_INOUT, DEAL_ENTRY_OUT_BY)
        ]
        if not outs:
            return None
        last = max(outs, key=lambda d: (d.time_msc or d.time * 1000, d.ticket))
        pnl = _dec(last.profit) + _dec(last.swap) + _dec(last.commission) + _dec(getattr(last, "fee", 0.0))
        return ClosingDeal(
            ticket=ticket,
            kind=CLOSE_KINDS.get(last.reason, "close"),
            volume=_dec(last.volume),
            price=_dec(last.price),
            pnl=pnl,
            at=_at(last.time, last.time_msc),
        )

    def _venue_order(self, g: _Group, tag: str) -> VenueOrder | None:
        entry_deals = [d for d in g.deals if d.entry == DEAL_ENTRY_IN] or g.deals
        rec: Any
        side: Side | None
        if g.positions:
            p = g.positions[0]
            state, rec = "position", p
            side = Side.BUY if p.type == POSITION_TYPE_BUY else Side.SELL
            volume, price, at = _dec(p.volume), _dec(p.price_open), _at(p.time, p.time_msc)
        elif g.pending:
            o = g.pending[0]
            side = _side_of_order_type(o.type)
            state, rec = "pending", o
            volume, price, at = _dec(o.volume_current), _dec(o.price_open), _at(o.time_setup, o.time_setup_msc)
        elif entry_deals:
            d = entry_deals[0]
            state, rec = "history", d
            side = Side.BUY if d.type == DEAL_TYPE_BUY else Side.SELL
            volume = sum((_dec(x.volume) for x in entry_deals), Decimal(0))
            price, at = _dec(d.price), _at(d.time, d.time_msc)
        else:
            o = g.history[0]
            side = _side_of_order_type(o.type)
            state, rec = "history", o
            volume, price, at = _dec(o.volume_initial), _dec(o.price_open), _at(o.time_setup, o.time_setup_msc)
        if side is None:
            return None
        order_state = ORDER_STATES.get(g.history[0].state) if g.history else None
        return VenueOrder(
            ticket=str(g.order),
            tag=tag,
            symbol=self._engine_symbol(rec.symbol),
            side=side,
            volume=volume,
            price=price,
            state=state,
            at=at,
            extra={
                "magic": rec.magic,
                "comment": rec.comment,
                "exact": rec.comment == tag,
                "position_ticket": g.positions[0].ticket if g.positions else None,
                "deals": [d.ticket for d in g.deals],
                "order_state": order_state,
                "filled": bool(g.positions or g.deals or order_state in ("filled", "partial")),
            },
        )

    def quote(self, symbol: str) -> Quote:
        """The symbol's spec and current bid/ask. Raises SymbolUnavailable for an unknown
        symbol, a spec the risk rules cannot use, or no price: such a symbol is never traded
        with defaults. A broken link to the terminal is a BrokerError."""
        venue = self._venue_symbol(symbol)

        def job(m: ModuleType) -> tuple[Any, Any, Any]:
            try:
                info, tick = self._symbol(m, venue, tick=True)
            except _Refused as exc:
                raise SymbolUnavailable(str(exc)) from None
            # The terminal's own margin of a lot at the ask; None (it cannot say) is no check.
            margin = m.order_calc_margin(ORDER_TYPE_BUY, venue, 1.0, float(tick.ask))
            return info, tick, margin

        info, tick, margin = self.run_on_terminal("quote", job)
        try:
            per_lot = None if margin is None or not margin > 0 else _dec(margin)
            return Quote(spec=_spec(info), bid=_dec(tick.bid), ask=_dec(tick.ask), margin_per_lot=per_lot)
        except (TypeError, ValueError) as exc:
            raise SymbolUnavailable(f"symbol {venue} has no usable spec at the venue: {exc}") from None

    # -- trading ------------------------------------------------------------------------------

    def _filling(self, info: Any) -> int:
        mask = int(getattr(info, "filling_mode", 0) or 0)
        if mask & SYMBOL_FILLING_IOC_BIT:
            return ORDER_FILLING_IOC
        if mask & SYMBOL_FILLING_FOK_BIT:
            return ORDER_FILLING_FOK
        return ORDER_FILLING_RETURN

    def _symbol(self, m: ModuleType, symbol: str, tick: bool) -> tuple[Any, Any]:
        """symbol_info (+ the tick) on the worker; an unknown symbol is a refusal."""
        info = m.symbol_info(symbol)
        if info is None:
            code, text = m.last_error()
            if code in IPC_ERRORS:
                raise CallFailed("symbol_info", code, text)
            raise _Refused(f"symbol {symbol} is not available at the venue (last_error {code} {text})")
        if not info.visible and not m.symbol_select(symbol, True):
            raise CallFailed("symbol_select", *m.last_error())
        if not tick:
            return info, None
        t = m.symbol_info_tick(symbol)
        if t is None:
            code, text = m.last_error()
            if code in IPC_ERRORS:
                raise CallFailed(f"symbol_info_tick({symbol})", code, text)
            raise _Refused(f"symbol {symbol} has no quote (last_error {code} {text})")
        if not (t.bid > 0 and t.ask > 0):
            raise _Refused(f"symbol {symbol} has no quote (bid {t.bid}, ask {t.ask})")
        return info, t

    def send(self, req: OrderRequest, *, guard: SendGuard | None = None) -> OrderResult:
        """Place `req` (the executor records the outcome after). The venue cannot check
        `req.epoch` (fencing_aware is False); a `guard` can (see the module docstring)."""
        if not isinstance(req.tag, str) or not _TAG.fullmatch(req.tag):
            raise ValueError(f"tag must be 1..{MAX_COMMENT} ASCII letters or digits, got {req.tag!r}")
        symbol = self._venue_symbol(req.symbol)
        buy = req.side is Side.BUY
        limit = req.type is OrderType.LIMIT

        def build(m: ModuleType) -> dict[str, Any]:
            # The last moment before order_send: re-check expiry and what the order risks at
            # the price it goes at now, which may have moved since it was sized.
            if req.expires_at is not None and self._utcnow() >= req.expires_at:
                raise _Expired(f"expired at {iso_utc(req.expires_at)} before it was sent")
            info, tick = self._symbol(m, symbol, tick=not limit)
            digits = int(info.digits)
            if limit:
                action = TRADE_ACTION_PENDING
                otype = ORDER_TYPE_BUY_LIMIT if buy else ORDER_TYPE_SELL_LIMIT
                price = _price(req.price, digits)
                at = req.price
            else:
                action = TRADE_ACTION_DEAL
                otype = ORDER_TYPE_BUY if buy else ORDER_TYPE_SELL
                price = float(tick.ask if buy else tick.bid)
                at = _dec(price)
            _check_loss(req, info, at)
            return {
                "action": action,
                "symbol": symbol,
                "volume": float(req.volume),
                "type": otype,
                "price": price,
                "sl": _stop(req.sl, digits, buy),
                "tp": _price(req.tp, digits) if req.tp is not None else 0.0,
                "deviation": int(self.deviation),
                "magic": int(self.magic),
                "comment": req.tag,
                "type_time": ORDER_TIME_GTC,
                "type_filling": self._filling(info),
            }

        result = self._trade("send", build, attempts=self.requote_attempts, guard=guard)
        level = {Outcome.DONE: logging.INFO, Outcome.REJECTED: logging.WARNING}.get(result.outcome, logging.ERROR)
        log.log(
            level,
            "MT5 send %s %s %s %s tag=%s epoch=%s: %s ref=%s %s",
            req.type.value,
            req.side.value,
            req.volume,
            req.symbol,
            req.tag,
            req.epoch,
            result.outcome.value,
            result.ref,
            result.detail,
        )
        return result

    def modify(
        self,
        ticket: str,
        sl: Decimal | None,
        tp: Decimal | None,
        epoch: int | None = None,
        *,
        guard: SendGuard | None = None,
    ) -> OrderResult:
        """Replace a position's stops with one TRADE_ACTION_SLTP request; None keeps the
        current value (never drops a stop by accident). Answered by meaning (see the module
        docstring). The terminal cannot check `epoch`; a `guard` can."""

        def build(m: ModuleType) -> dict[str, Any]:
            p = self._position(m, ticket)
            info, _ = self._symbol(m, p.symbol, tick=False)
            digits = int(info.digits)
            return {
                "action": TRADE_ACTION_SLTP,
                "position": int(p.ticket),
                "symbol": p.symbol,
                "sl": _stop(sl, digits, p.type == POSITION_TYPE_BUY) if sl is not None else float(p.sl),
                "tp": _price(tp, digits) if tp is not None else float(p.tp),
                "magic": int(self.magic),
            }

        result = self._trade(
            "modify",
            build,
            attempts=1,
            done=MODIFY_DONE_RETCODES,
            guard=guard,
            deadline_ms=min(self.deadline_ms, self.modify_deadline_ms),
            refusals=True,
        )
        level = logging.INFO if result.outcome is Outcome.DONE else logging.WARNING
        log.log(
            level,
            "MT5 modify %s sl=%s tp=%s (epoch %s): %s %s",
            ticket,
            sl,
            tp,
            epoch,
            result.outcome.value,
            result.detail,
        )
        return result

    def close_position(self, ticket: str, epoch: int | None = None, *, guard: SendGuard | None = None) -> OrderResult:
        """Close a whole position by an opposite market deal with `position=ticket`."""

        def build(m: ModuleType) -> dict[str, Any]:
            p = self._position(m, ticket)
            return self._closing(m, p, float(p.volume))

        result = self._trade("close_position", build, attempts=self.requote_attempts, guard=guard, refusals=True)
        log.warning("MT5 close position %s (epoch %s): %s %s", ticket, epoch, result.outcome.value, result.detail)
        return result

    def close_partial(
        self, ticket: str, volume: Decimal, epoch: int | None = None, *, guard: SendGuard | None = None
    ) -> OrderResult:
        """Close `volume` lots of a position by an opposite market deal with `position=ticket`
        (a hedging account reduces it; the rest keeps its ticket and stops). REJECTED, nothing
        sent, for a volume that would not leave some open: a partial never closes the whole
        position. One attempt: a requote is not retried (whether to take part of a position
        off at another price is the caller's decision)."""

        def build(m: ModuleType) -> dict[str, Any]:
            p = self._position(m, ticket)
            if not 0 < volume < _dec(p.volume):
                raise _Refused(
                    f"a partial close of {volume} of position {ticket} must leave some of its {p.volume} open"
                )
            return self._closing(m, p, float(volume))

        result = self._trade("close_partial", build, attempts=1, guard=guard, refusals=True)
        log.warning(
            "MT5 close %s of position %s (epoch %s): %s %s", volume, ticket, epoch, result.outcome.value, result.detail
        )
        return result

    def _closing(self, m: ModuleType, p: Any, volume: float) -> dict[str, Any]:
        """The opposite market deal that takes `volume` off position `p`, at the current price."""
        info, tick = self._symbol(m, p.symbol, tick=True)
        long = p.type == POSITION_TYPE_BUY
        return {
            "action": TRADE_ACTION_DEAL,
            "position": int(p.ticket),
            "symbol": p.symbol,
            "volume": volume,
            "type": ORDER_TYPE_SELL if long else ORDER_TYPE_BUY,
            "price": float(tick.bid if long else tick.ask),
            "deviation": int(self.deviation),
            "magic": int(self.magic),
            "type_time": ORDER_TIME_GTC,
            "type_filling": self._filling(info),
        }

    def cancel_order(self, ticket: str, epoch: int | None = None, *, guard: SendGuard | None = None) -> OrderResult:
        """Remove a pending order (TRADE_ACTION_REMOVE): REJECTED when there is no such order."""

        def build(m: ModuleType) -> dict[str, Any]:
            if not str(ticket).isdigit():
                raise _Gone(f"no pending order with ticket {ticket!r}")
            if not self._listing(m, "orders_get", m.orders_get(ticket=int(ticket))):
                raise _Gone(f"no pending order with ticket {ticket}")
            return {"action": TRADE_ACTION_REMOVE, "order": int(ticket)}

        result = self._trade("cancel_order", build, attempts=1, guard=guard, refusals=True)
        log.warning("MT5 remove order %s (epoch %s): %s %s", ticket, epoch, result.outcome.value, result.detail)
        return result

    def _position(self, m: ModuleType, ticket: str) -> Any:
        """The open position with this ticket -- or with this identifier: `send` and
        `find_by_tag` report the opening order's ticket, which is the position's identifier
        (and usually, not always, its ticket)."""
        if not str(ticket).isdigit():
            raise _Gone(f"no open position with ticket {ticket!r}")
        rows = self._listing(m, "positions_get", m.positions_get(ticket=int(ticket)))
        if not rows:
            every = self._listing(m, "positions_get", m.positions_get())
            rows = tuple(p for p in every if p.identifier == int(ticket))
        if not rows:
            raise _Gone(f"no open position with ticket {ticket}")
        return rows[0]

    def _trade(
        self,
        what: str,
        build: Callable[[ModuleType], dict[str, Any]],
        *,
        attempts: int,
        done: frozenset[int] = DONE_RETCODES,
        guard: SendGuard | None = None,
        deadline_ms: int | None = None,
        refusals: bool = False,
    ) -> OrderResult:
        """build + order_send within one deadline (default the broker's); REQUOTE / PRICE_OFF
        retried with a fresh request (bounded by `attempts` and the deadline). With `refusals`
        (a modify, close or cancel) a REJECTED answer says what it means. Raises BrokerError
        only when nothing was ever submitted, and SendRefused whenever the guard refused
        (nothing was placed: every earlier attempt was a requote)."""
        budget = _Budget(deadline_ms or self.deadline_ms)
        tries: list[OrderResult] = []
        gave_up = False

        def attempt() -> OrderResult:
            nonlocal gave_up
            try:
                request = self.run_on_terminal(f"{what} (prepare)", build, budget.left())
                result = self._order_send(request, budget, done, guard, refusals)
            except SendRefused:
                raise  # the guard's verdict stands, whatever came before
            except _Refused as exc:
                gone = Refusal.GONE if isinstance(exc, _Gone) else Refusal.OTHER
                result = OrderResult(Outcome.REJECTED, detail=str(exc), refusal=gone if refusals else None)
            except _Expired as exc:
                result = OrderResult(Outcome.EXPIRED, detail=str(exc))
            except BrokerError as exc:  # nothing was submitted in this attempt
                if not tries:
                    raise
                gave_up = True  # the last answer at the venue was a requote: nothing placed
                last = tries[-1]
                result = replace(last, outcome=Outcome.REJECTED, detail=f"{last.detail}; the retry was not sent: {exc}")
            tries.append(result)
            return result

        def retry_on(result: OrderResult) -> bool:
            return result.retcode in RETRY_RETCODES and not gave_up

        def out_of_time(rs: RetryCallState) -> bool:  # the next wait would leave no time to send
            return budget.left() <= (getattr(rs, "upcoming_sleep", 0.0) or 0.0) + 0.001

        retrying = Retrying(
            stop=stop_any(stop_after_attempt(max(1, attempts)), stop_when(out_of_time)),
            wait=wait_exponential(multiplier=self.requote_backoff_s, max=1.0),
            retry=retry_if_result(retry_on),
            retry_error_callback=lambda rs: rs.outcome.result() if rs.outcome else tries[-1],
        )
        result: OrderResult = retrying(attempt)
        if len(tries) > 1:
            result = replace(result, detail=f"{result.detail} (attempt {len(tries)} of {attempts})")
        return result

    def _order_send(
        self,
        request: dict[str, Any],
        budget: _Budget,
        done: frozenset[int],
        guard: SendGuard | None = None,
        refusals: bool = False,
    ) -> OrderResult:
        def job(m: ModuleType) -> tuple[Any, tuple[int, str] | None]:
            if guard is not None:
                guard.before(request)  # on the worker: nothing runs between this check and the send
            try:
                res = m.order_send(request)
                err = m.last_error() if res is None else None
            except BaseException as exc:
                _after(guard, request, None, None, exc)
                raise
            _after(guard, request, res, err, None)
            return res, err

        log.debug("MT5 order_send %s", request)
        wait_ms = budget.left() * 1000
        try:
            res, err = self.run_on_terminal("order_send", job, budget.left())
        except CallTimedOut:
            return OrderResult(
                Outcome.UNKNOWN,
                detail=f"order_send timed out after {wait_ms:.0f} ms; it may still execute: "
                "reconcile by tag, never resend blindly",
            )
        except BrokerError:
            raise  # NotSent (busy, deadline spent, refused by the guard) or closed: nothing was submitted
        except Exception as exc:  # the module raised inside order_send: unknown
            return OrderResult(Outcome.UNKNOWN, detail=f"order_send raised {type(exc).__name__}: {exc}")
        return send_result(res, err, request, done, refusals=refusals)


def _after(
    guard: SendGuard | None,
    request: dict[str, Any],
    res: Any,
    err: tuple[int, str] | None,
    raised: BaseException | None,
) -> None:
    """The guard's `after`, which must never turn a sent order into an exception."""
    if guard is None:
        return
    try:
        guard.after(request, res, err, raised)
    except Exception:
        log.critical("MT5 send guard failed after order_send returned", exc_info=True)


def send_result(
    res: Any, err: tuple[int, str] | None, request: dict[str, Any], done: frozenset[int], *, refusals: bool = False
) -> OrderResult:
    """What order_send's answer (`res`, or None with last_error `err`) means for the call;
    with `refusals` (a modify, close or cancel), what a refusal means. Shared with the
    gateway's journal, which rebuilds answers from the fields it recorded."""
    if res is None:
        code, text = err or (0, "")
        return OrderResult(
            Outcome.UNKNOWN,
            detail=f"order_send returned None (last_error {code} {text}); it may have executed",
        )
    rc = int(res.retcode)
    detail = _retcode_detail(rc, getattr(res, "comment", "") or "")
    if rc == NO_CHANGES and rc in done:
        return OrderResult(Outcome.DONE, detail="no change", retcode=rc)
    if rc in done:
        ref = res.order or res.deal
        price = _dec(res.price) if res.price else (_dec(request["price"]) if request.get("price") else None)
        if rc == 10010:
            detail += f"; filled {res.volume} of {request.get('volume')}"
        return OrderResult(Outcome.DONE, ref=str(ref) if ref else None, detail=detail, retcode=rc, price=price)
    if rc in AMBIGUOUS_RETCODES:
        return OrderResult(Outcome.UNKNOWN, detail=f"{detail}; it may have executed: reconcile by tag", retcode=rc)
    refusal = REFUSALS.get(rc, Refusal.OTHER) if refusals else None
    return OrderResult(Outcome.REJECTED, detail=detail, retcode=rc, refusal=refusal)
