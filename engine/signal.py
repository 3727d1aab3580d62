"""Signal intake rules: validate a decoded JSON body into a `SignalIntent`, and derive the
canonical fingerprint, the intent digest and the broker order tag from it.

The fingerprint is the signal's identity for exactly-once execution: two submissions with
the same fingerprint are one signal. So the canonical form below is a contract with the
producers (docs/fingerprint.md describes it for them) and must never change silently: any
change to it re-identifies every signal in flight.
"""

from __future__ import annotations

import base64
import copy
import difflib
import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Context, Decimal, InvalidOperation
from typing import Any

from common.jsonshape import json_type
from engine.market.base import SYMBOL_RULE, symbol_name
from engine.model import OrderType, Side, SignalIntent
from engine.positions.rules import RulesError, parse_manage

__all__ = [
    "MAX_BODY_BYTES",
    "BodyTooLarge",
    "DuplicateKey",
    "SignalValidationError",
    "canonical_intent_json",
    "canonical_payload",
    "fingerprint",
    "fingerprint_preimage",
    "intent_digest",
    "intent_from_payload",
    "loads",
    "order_tag",
    "parse_signal",
]

FIELDS = frozenset(
    {
        "source",
        "signal_id",
        "symbol",
        "side",
        "type",
        "volume",
        "risk_pct",
        "price",
        "sl",
        "tp",
        "expires_at",
        "ts",
        "meta",
        "manage",
    }
)

MAX_ID_CHARS = 100  # source and signal_id: identifiers, stored and hashed verbatim

# Numbers: at most 20 significant digits with the leading digit between 1e-20 and 1e20. That
# covers every price, lot size and percentage a venue takes, keeps the canonical (no-exponent)
# string short, and means normalisation below never rounds (the context holds 40 digits).
MAX_SIGNIFICANT_DIGITS = 20
MIN_ADJUSTED_EXPONENT = -20
MAX_ADJUSTED_EXPONENT = 20
MAX_NUMBER_CHARS = 100
# Decimal() alone also takes " 1", "1_000", "NaN", "Infinity" and non-ASCII digits; the wire
# format is plain JSON-style decimals only, so the string is matched first.
NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
# A fixed context: the ambient one is thread-local and anyone may change its precision or
# traps, which must not change how a signal is parsed or hashed.
_CTX = Context(prec=40)

# Timestamps: 1970-01-01 .. 9999-12-31 (UTC). Earlier or later is a producer bug, and the
# bounds keep every value printable as a four-digit year.
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_UNIX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z
MAX_TIME_CHARS = 64

META_MAX_DEPTH = 32  # a JSON object nested deeper than this is not metadata

# A signal's JSON, however it comes in (POST /signals, `haexec signal submit`): one limit, so
# nothing stored one way is refused the other.
MAX_BODY_BYTES = 64 * 1024

# Common misspellings a producer is likely to send: named in the error so the fix is obvious.
_ALIASES = {
    "stop_loss": "sl",
    "stoploss": "sl",
    "stop": "sl",
    "take_profit": "tp",
    "takeprofit": "tp",
    "target": "tp",
    "lots": "volume",
    "lot": "volume",
    "qty": "volume",
    "quantity": "volume",
    "size": "volume",
    "risk": "risk_pct",
    "risk_percent": "risk_pct",
    "order_type": "type",
    "ordertype": "type",
    "direction": "side",
    "action": "side",
    "id": "signal_id",
    "signalid": "signal_id",
    "expiry": "expires_at",
    "expires": "expires_at",
    "expiration": "expires_at",
    "timestamp": "ts",
    "time": "ts",
    "entry": "price",
    "ticker": "symbol",
    "instrument": "symbol",
}


class SignalValidationError(Exception):
    """A signal body that is not a valid signal. `errors` maps every bad field to a one-line
    message, so a producer can fix all of them in one round trip."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = dict(errors)
        detail = "; ".join(f"{name}: {message}" for name, message in sorted(self.errors.items()))
        super().__init__(f"invalid signal: {detail}")


class _FieldError(ValueError):
    """One field's problem, collected by parse_signal instead of stopping at the first."""


def _show(value: object, limit: int = 40) -> str:
    """The offending value for a message: repr keeps it on one line (newlines are escaped),
    the limit keeps a megabyte of garbage out of logs and answers."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- parsing


def parse_signal(body: object) -> SignalIntent:
    """Validate a decoded JSON body. Raises SignalValidationError naming every bad field.

    Optional fields given as JSON null count as absent (serializers commonly emit null for
    unset values); a required field given as null is missing.
    """
    if not isinstance(body, Mapping):
        raise SignalValidationError({"body": f"must be a JSON object, got {json_type(body)}"})

    errors: dict[str, str] = {}
    for key in body:
        if key not in FIELDS:
            errors[_field_label(key)] = _unknown_field_message(key)

    def field(name: str, convert: Callable[[object], Any], required: bool) -> Any:
        value = body.get(name)
        if value is None:
            if required:
                errors[name] = "required"
            return None
        try:
            return convert(value)
        except _FieldError as exc:
            errors[name] = str(exc)
            return None

    source = field("source", _source, True)
    signal_id = field("signal_id", _signal_id, False)
    symbol = field("symbol", _symbol, True)
    side = field("side", _side, True)
    order_type = field("type", _order_type, True)
    volume = field("volume", _positive, False)
    risk_pct = field("risk_pct", _risk_pct, False)
    price = field("price", _positive, True)
    sl = field("sl", _positive, True)
    tp = field("tp", _positive, False)
    expires_at = field("expires_at", _timestamp, False)
    ts = field("ts", _timestamp, False)
    meta = field("meta", _meta, False)
    manage = _manage(body.get("manage"), errors)

    # Exactly one sizing rule. Presence is judged on the raw body, so an invalid value given
    # alongside the other one still reports "both" (joined to its own problem, one line).
    has_volume = body.get("volume") is not None
    has_risk = body.get("risk_pct") is not None
    if has_volume and has_risk:
        for name in ("volume", "risk_pct"):
            own = errors.get(name)
            both = "give exactly one of volume / risk_pct, not both"
            errors[name] = f"{own}; also {both}" if own else both
    elif not has_volume and not has_risk:
        errors["volume"] = errors["risk_pct"] = "required: give exactly one of volume / risk_pct"

    # Stops relative to the entry: only judged when side and price are themselves valid, so
    # one bad field does not drag correct ones into the error list.
    if side is not None and price is not None:
        # For a buy the stop is below the entry and the target above; for a sell, mirrored.
        buy = side is Side.BUY
        if sl is not None and not (sl < price if buy else sl > price):
            errors["sl"] = _side_message("below" if buy else "above", side, sl, price)
        if tp is not None and not (tp > price if buy else tp < price):
            errors["tp"] = _side_message("above" if buy else "below", side, tp, price)

    if errors:
        raise SignalValidationError(errors)
    return SignalIntent(
        source=source,
        symbol=symbol,
        side=side,
        type=order_type,
        price=price,
        sl=sl,
        volume=volume,
        risk_pct=risk_pct,
        tp=tp,
        signal_id=signal_id,
        expires_at=expires_at,
        ts=ts,
        meta=meta if meta is not None else {},
        manage=manage,
    )


def _manage(value: object, errors: dict[str, str]) -> dict[str, Any] | None:
    """The `manage` block in its canonical form; each bad field in it is named on its own
    (`manage.trailing.activation_rr`), like a top-level field."""
    if value is None:
        return None
    try:
        return parse_manage(value, "manage").to_json()
    except RulesError as exc:
        for where, problem in exc.fields:
            errors[where] = f"{errors[where]}; {problem}" if where in errors else problem
        return None


def _side_message(relation: str, side: Side, level: Decimal, price: Decimal) -> str:
    return f"must be {relation} price for a {side} (got {_canon(level)}, price {_canon(price)})"


def _field_label(key: object) -> str:
    """An unknown field's name as an error key: verbatim when it is a short printable name
    (the usual typo), else its shortened repr, so no key carries a newline or a megabyte."""
    if isinstance(key, str) and key.isprintable() and len(key) <= 64:
        return key
    return _show(key)


def _unknown_field_message(key: object) -> str:
    hint = None
    if isinstance(key, str):
        lowered = key.strip().lower().replace("-", "_")
        hint = _ALIASES.get(lowered)
        if hint is None and lowered in FIELDS:
            hint = lowered  # "SL", "Price": field names are case-sensitive
        if hint is None:
            close = difflib.get_close_matches(lowered, sorted(FIELDS), n=1, cutoff=0.75)
            hint = close[0] if close else None
    return f"unknown field (did you mean '{hint}'?)" if hint else "unknown field"


def _identifier(value: object, what: str) -> str:
    """source / signal_id: hashed and stored verbatim, so only refuse what cannot be stored
    or shown: control characters and line/paragraph separators (PostgreSQL text refuses NUL;
    logs are line-based) and lone surrogates (not encodable as UTF-8)."""
    if not isinstance(value, str):
        raise _FieldError(f"must be a string, got {json_type(value)}")
    if not value.strip():
        raise _FieldError(f"must be a non-empty {what}")
    if len(value) > MAX_ID_CHARS:
        raise _FieldError(f"must be at most {MAX_ID_CHARS} characters, got {len(value)}")
    if any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in value):
        raise _FieldError("must not contain control characters, line breaks or lone surrogates")
    return value


def _source(value: object) -> str:
    return _identifier(value, "string")


def _signal_id(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        # An integer id means its decimal string, so 42 and "42" are the same signal. The
        # bound is checked on the int itself: str() of a huge int is slow or refused.
        text = str(value) if abs(value) < 10**MAX_ID_CHARS else ""
        if not text or len(text) > MAX_ID_CHARS:
            raise _FieldError(f"must be at most {MAX_ID_CHARS} characters")
        return text
    return _identifier(value, "string or integer")


def _symbol(value: object) -> str:
    if not isinstance(value, str):
        raise _FieldError(f"must be a string, got {json_type(value)}")
    name = symbol_name(value)
    if name is None:
        raise _FieldError(f"must be {SYMBOL_RULE} (got {_show(value)})")
    return name


def _side(value: object) -> Side:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("buy", "sell"):
            return Side(lowered)
    raise _FieldError(f"must be 'buy' or 'sell' (got {_show(value)})")


def _order_type(value: object) -> OrderType:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("market", "limit"):
            return OrderType(lowered)
    raise _FieldError(f"must be 'market' or 'limit' (got {_show(value)})")


class JsonNumber(float):
    """A JSON number with a fraction or exponent, remembering its exact text: it behaves as a
    float everywhere (meta is stored as given) while prices keep every digit the producer sent."""

    text: str

    def __new__(cls, text: str) -> JsonNumber:
        number = super().__new__(cls, text)
        number.text = text
        return number


class BodyTooLarge(Exception):
    """A body over MAX_BODY_BYTES (HTTP 413)."""

    def __init__(self) -> None:
        super().__init__(f"body larger than {MAX_BODY_BYTES} bytes")


class DuplicateKey(Exception):
    """An object naming one key twice. json.loads would keep the last value silently, so what
    was stored could differ from what a reader of the body (or another parser) saw; refused."""

    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {_show(key)}: each key may appear once in an object")
        self.key = key


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return obj


def loads(raw: str | bytes) -> object:
    """Decode a JSON body the same way for every way in: at most MAX_BODY_BYTES (BodyTooLarge),
    no key twice in an object (DuplicateKey), exact decimals, no NaN/Infinity (ValueError, as
    for any text that is not JSON)."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > MAX_BODY_BYTES:
        raise BodyTooLarge
    return json.loads(raw, parse_float=JsonNumber, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)


def _decimal(value: object) -> Decimal:
    """A JSON number or decimal string as an exact, canonical Decimal (see _canon)."""
    if isinstance(value, bool):  # bool is an int subclass: true must not mean 1
        raise _FieldError("must be a number, got a boolean")
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _FieldError("must be a finite number")
        # str() is the shortest decimal that reads back as this float, i.e. what the JSON
        # text said: 0.1 stays 0.1, not 0.1000000000000000055511151231257827.
        number = Decimal(value.text if isinstance(value, JsonNumber) else str(value))
    elif isinstance(value, str):
        if len(value) > MAX_NUMBER_CHARS or not NUMBER_RE.fullmatch(value):
            raise _FieldError(f"must be a decimal number (got {_show(value)})")
        try:
            number = Decimal(value)
        except InvalidOperation:  # the pattern should make this unreachable
            raise _FieldError(f"must be a decimal number (got {_show(value)})") from None
    else:
        raise _FieldError(f"must be a number or decimal string, got {json_type(value)}")

    if number.is_zero():
        # Before the range checks: 0E+999999 is zero with a giant exponent, and must not be
        # formatted as a million zeros anywhere.
        return Decimal(0)
    # Trailing zeros are not significant ("1.10" is as precise a value as "1.1"); Decimal
    # already drops leading ones.
    significant = len("".join(map(str, number.as_tuple().digits)).rstrip("0"))
    if significant > MAX_SIGNIFICANT_DIGITS:
        raise _FieldError(f"must have at most {MAX_SIGNIFICANT_DIGITS} significant digits")
    if not MIN_ADJUSTED_EXPONENT <= number.adjusted() <= MAX_ADJUSTED_EXPONENT:
        raise _FieldError(f"must be between 1e{MIN_ADJUSTED_EXPONENT} and 1e{MAX_ADJUSTED_EXPONENT + 1}")
    return Decimal(_canon(number))


def _positive(value: object) -> Decimal:
    number = _decimal(value)
    if number <= 0:
        raise _FieldError(f"must be > 0 (got {_canon(number)})")
    return number


def _risk_pct(value: object) -> Decimal:
    number = _decimal(value)
    if not 0 < number <= 100:
        raise _FieldError(f"must be in (0, 100] (got {_canon(number)})")
    return number


def _timestamp(value: object) -> datetime:
    """ISO 8601 with an offset, or unix seconds; always returned in UTC, whole microseconds.

    Sub-microsecond digits are dropped (truncated) for both spellings: datetime cannot hold
    them, and fromisoformat already truncates, so the number path does the same.
    """
    if isinstance(value, bool):
        raise _FieldError("must be an ISO 8601 string or unix seconds, got a boolean")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise _FieldError("must be a finite number of unix seconds")
        if isinstance(value, int) and not 0 <= value <= MAX_UNIX_SECONDS:
            raise _FieldError("unix seconds out of range (1970..9999)")
        seconds = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
        if not 0 <= seconds <= MAX_UNIX_SECONDS:
            raise _FieldError("unix seconds out of range (1970..9999)")
        micros = int(_CTX.multiply(seconds, Decimal(1_000_000)).to_integral_value(rounding=ROUND_FLOOR))
        return MIN_TIME + timedelta(microseconds=micros)
    if not isinstance(value, str):
        raise _FieldError(f"must be an ISO 8601 string or unix seconds, got {json_type(value)}")
    if len(value) > MAX_TIME_CHARS:
        raise _FieldError("must be an ISO 8601 timestamp")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _FieldError(f"must be an ISO 8601 timestamp (got {_show(value)})") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise _FieldError(f"must include a timezone, e.g. Z or +00:00 (got {_show(value)})")
    try:
        utc = parsed.astimezone(UTC)
    except OverflowError:
        raise _FieldError("out of range (1970..9999)") from None
    if utc < MIN_TIME:
        raise _FieldError("out of range (1970..9999)")
    return utc


def _meta(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _FieldError(f"must be a JSON object, got {json_type(value)}")
    _check_json(value, "meta", 0)
    # A deep copy: the intent is frozen and must not change when the caller reuses the body.
    return copy.deepcopy(dict(value))


def _check_json(value: object, path: str, depth: int) -> None:
    """meta is stored as jsonb: refuse what PostgreSQL or the JSON encoder would refuse later
    (NaN, NUL characters, lone surrogates, non-JSON types), so an accepted signal is always
    storable and the failure is a 422 now, not a 500 after validation."""
    if depth > META_MAX_DEPTH:
        raise _FieldError(f"nested deeper than {META_MAX_DEPTH} levels at {path}")
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _FieldError(f"NaN/Infinity are not JSON, at {path}")
        return
    if isinstance(value, str):
        _check_text(value, path)
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _FieldError(f"object keys must be strings, at {path}")
            _check_text(key, path)
            _check_json(item, f"{path}.{_show(key, 20)}", depth + 1)
        return
    raise _FieldError(f"{type(value).__name__} is not JSON, at {path}")


def _check_text(text: str, path: str) -> None:
    if "\x00" in text:
        raise _FieldError(f"NUL character (not storable in jsonb) at {path}")
    if any("\ud800" <= c <= "\udfff" for c in text):
        raise _FieldError(f"lone surrogate (not valid UTF-8) at {path}")


# --------------------------------------------------------------------------- canonical form


def _canon(number: Decimal) -> str:
    """The one spelling of a decimal value: normalize() drops trailing zeros, 'f' forbids the
    exponent, so 1.10, 1.1, 11E-1 and 0.11E1 all give "1.1", and 1E+2 gives "100"."""
    if number.is_zero():
        return "0"  # also maps -0 to 0; never reached for validated fields (all > 0)
    return format(number.normalize(_CTX), "f")


def _canon_time(moment: datetime) -> str:
    """UTC, always six fractional digits, always 'Z': one spelling per instant."""
    utc = moment.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond:06d}Z"


def _dumps(obj: dict[str, Any]) -> str:
    # Sorted keys, no whitespace, UTF-8 (not \u escapes). With string-only leaves (the
    # manage block's are strings too) this is exactly RFC 8785 (JCS), so producers may use
    # any JCS library to reproduce it.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_intent_json(intent: SignalIntent) -> str:
    """The canonical trade intent: what is hashed when there is no signal_id, and always for
    intent_digest. Absent optionals are omitted; signal_id and meta never appear. `manage`
    appears only when given, so every signal without one keeps the fingerprint it had
    before the block existed."""
    fields: dict[str, Any] = {
        "source": intent.source,
        "symbol": intent.symbol,
        "side": str(intent.side),
        "type": str(intent.type),
        "price": _canon(intent.price),
        "sl": _canon(intent.sl),
    }
    if intent.volume is not None:
        fields["volume"] = _canon(intent.volume)
    if intent.risk_pct is not None:
        fields["risk_pct"] = _canon(intent.risk_pct)
    if intent.tp is not None:
        fields["tp"] = _canon(intent.tp)
    if intent.expires_at is not None:
        fields["expires_at"] = _canon_time(intent.expires_at)
    if intent.ts is not None:
        fields["ts"] = _canon_time(intent.ts)
    if intent.manage is not None:
        fields["manage"] = intent.manage
    return _dumps(fields)


def fingerprint_preimage(intent: SignalIntent) -> str:
    """The exact string fingerprint() hashes (UTF-8): the producer's (source, signal_id) when
    there is a signal_id, else the canonical trade intent."""
    if intent.signal_id is not None:
        return _dumps({"signal_id": intent.signal_id, "source": intent.source})
    return canonical_intent_json(intent)


def fingerprint(intent: SignalIntent) -> str:
    """The signal's identity: 64 lowercase hex digits of sha256(fingerprint_preimage)."""
    return _sha256(fingerprint_preimage(intent))


def intent_digest(intent: SignalIntent) -> str:
    """sha256 of the canonical trade intent whatever the signal_id: a reused signal_id with a
    different digest is a different trade under the same id (the API answers 409). Equal to
    fingerprint() for a signal without signal_id."""
    return _sha256(canonical_intent_json(intent))


_HEX64 = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)


def order_tag(fingerprint: str) -> str:
    """The tag an order carries to the venue: "HX" + base32 of the fingerprint's first 15
    bytes (120 bits, >= the 96 the design asks). 26 characters of A-Z2-7, within MT5's
    31-character comment, and no padding since 15 bytes are exactly 24 base32 digits."""
    if not _HEX64.fullmatch(fingerprint):
        raise ValueError("fingerprint must be 64 hex digits")
    return "HX" + base64.b32encode(bytes.fromhex(fingerprint)[:15]).decode("ascii")


# --------------------------------------------------------------------------- storage form

_PAYLOAD_DECIMALS = ("volume", "risk_pct", "price", "sl", "tp")
_PAYLOAD_TIMES = ("expires_at", "ts")


def canonical_payload(intent: SignalIntent) -> dict[str, Any]:
    """The intent as a JSON-serialisable dict for storage (jsonb): every field present (null
    when absent), decimals as canonical strings, times as canonical UTC strings, meta as is;
    `manage` (canonical) only when given, so a payload without one is what it always was.
    It is also a valid signal body: parse_signal(canonical_payload(i)) == i."""
    payload: dict[str, Any] = {
        "source": intent.source,
        "signal_id": intent.signal_id,
        "symbol": intent.symbol,
        "side": str(intent.side),
        "type": str(intent.type),
    }
    for name in _PAYLOAD_DECIMALS:
        value = getattr(intent, name)
        payload[name] = None if value is None else _canon(value)
    for name in _PAYLOAD_TIMES:
        value = getattr(intent, name)
        payload[name] = None if value is None else _canon_time(value)
    payload["meta"] = copy.deepcopy(intent.meta)
    if intent.manage is not None:
        payload["manage"] = copy.deepcopy(intent.manage)
    return payload


def intent_from_payload(payload: Mapping[str, Any]) -> SignalIntent:
    """Rebuild a stored intent exactly. Deliberately not parse_signal: a row accepted under
    today's rules must still load if the rules tighten later. Raises ValueError on a payload
    that canonical_payload cannot have produced."""
    try:

        def decimal(name: str) -> Decimal | None:
            raw = payload.get(name)
            return None if raw is None else Decimal(str(raw))

        def moment(name: str) -> datetime | None:
            raw = payload.get(name)
            if raw is None:
                return None
            parsed = datetime.fromisoformat(raw)
            if parsed.tzinfo is None:
                raise ValueError(f"{name} has no timezone")
            return parsed.astimezone(UTC)

        price, sl = decimal("price"), decimal("sl")
        if price is None or sl is None:
            raise ValueError("price and sl are required")
        signal_id = payload.get("signal_id")
        manage = payload.get("manage")
        if manage is not None and not isinstance(manage, Mapping):
            raise ValueError("manage is not an object")
        return SignalIntent(
            source=str(payload["source"]),
            symbol=str(payload["symbol"]),
            side=Side(payload["side"]),
            type=OrderType(payload["type"]),
            price=price,
            sl=sl,
            volume=decimal("volume"),
            risk_pct=decimal("risk_pct"),
            tp=decimal("tp"),
            signal_id=None if signal_id is None else str(signal_id),
            expires_at=moment("expires_at"),
            ts=moment("ts"),
            meta=copy.deepcopy(dict(payload.get("meta") or {})),
            manage=None if manage is None else copy.deepcopy(dict(manage)),
        )
    except (KeyError, TypeError, InvalidOperation) as exc:
        raise ValueError(f"not a stored signal payload: {exc!r}") from exc
