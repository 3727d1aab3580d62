"""Signal parsing, canonical fingerprint, intent digest, order tag and storage payload."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from engine.model import OrderType, Side, SignalIntent
from engine.signal import (
    FIELDS,
    SignalValidationError,
    canonical_intent_json,
    canonical_payload,
    fingerprint,
    fingerprint_preimage,
    intent_digest,
    intent_from_payload,
    order_tag,
    parse_signal,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TAG_RE = re.compile(r"^HX[A-Z2-7]{24}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


def good(**changes: Any) -> dict[str, Any]:
    """A valid buy-limit body; `changes` override fields, a value of ... removes one."""
    body: dict[str, Any] = {
        "source": "tradingview",
        "symbol": "EURUSD",
        "side": "buy",
        "type": "limit",
        "volume": "0.10",
        "price": "1.1000",
        "sl": "1.0950",
        "tp": "1.1100",
        "ts": "2024-05-01T12:00:00Z",
    }
    for name, value in changes.items():
        if value is ...:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def errors_of(body: object) -> dict[str, str]:
    with pytest.raises(SignalValidationError) as caught:
        parse_signal(body)
    errors = caught.value.errors
    assert errors, "a SignalValidationError must name at least one field"
    assert all_one_line(caught.value)
    return errors


def all_one_line(exc: SignalValidationError) -> bool:
    texts = [*exc.errors, *exc.errors.values(), str(exc)]
    return all(len(t.splitlines()) <= 1 for t in texts)


# --------------------------------------------------------------------------- strategies

# Positive decimals with few digits, in canonical form (what parse_signal stores).
positive = st.builds(lambda k, e: Decimal(k).scaleb(-e).normalize(), st.integers(1, 10**9), st.integers(0, 8))
risk = st.builds(lambda k: (Decimal(k) / 10000).normalize(), st.integers(1, 1_000_000))  # (0, 100]
moments = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.just(UTC))
sources = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=30).filter(
    lambda s: bool(s.strip())
)
symbols = st.from_regex(r"[A-Z0-9._+#-]{1,32}", fullmatch=True)
signal_ids = st.one_of(
    st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=40).filter(
        lambda s: bool(s.strip())
    ),
    st.integers(0, 10**30).map(str),
)


def json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(inner, max_size=4), st.dictionaries(jsonb_text, inner, max_size=4))


# What jsonb can store: no NUL, no lone surrogates (st.text never makes those), no NaN.
jsonb_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=10)
jsonb_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), jsonb_text
)
json_values = st.recursive(jsonb_scalars, json_containers, max_leaves=12)
metas = st.dictionaries(jsonb_text, json_values, max_size=4)


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid signal body, every value spelled canonically as a string."""
    side = draw(st.sampled_from(Side))
    low, mid, high = sorted(draw(st.lists(positive, min_size=3, max_size=3, unique=True)))
    sl, tp = (low, high) if side is Side.BUY else (high, low)
    body: dict[str, Any] = {
        "source": draw(sources),
        "symbol": draw(symbols),
        "side": str(side),
        "type": str(draw(st.sampled_from(OrderType))),
        "price": str(mid),
        "sl": str(sl),
    }
    if draw(st.booleans()):
        body["volume"] = str(draw(positive))
    else:
        body["risk_pct"] = str(draw(risk))
    if draw(st.booleans()):
        body["tp"] = str(tp)
    for name in ("expires_at", "ts"):
        if draw(st.booleans()):
            body[name] = draw(moments).isoformat()
    if draw(st.booleans()):
        body["signal_id"] = draw(signal_ids)
    if draw(st.booleans()):
        body["meta"] = draw(metas)
    return body


intents = bodies().map(parse_signal)


def decimal_spellings(value: Decimal) -> st.SearchStrategy[Any]:
    """JSON values that all mean `value`: padded, exponent, signed, float, int."""
    plain = format(value, "f")
    sign, digits, exponent = value.as_tuple()
    assert sign == 0 and isinstance(exponent, int)
    mantissa = int("".join(map(str, digits)))
    options: list[st.SearchStrategy[Any]] = [
        st.just(plain),
        st.just("+" + plain),
        st.integers(1, 3).map(lambda n: "0" * n + plain),
        st.integers(1, 5).map(lambda n: plain + ("" if "." in plain else ".") + "0" * n),
        st.integers(0, 4).map(lambda k: f"{mantissa * 10**k}E{exponent - k}"),
        st.integers(0, 4).map(lambda k: f"{mantissa * 10**k}e{exponent - k:+d}"),
    ]
    as_float = float(plain)
    if Decimal(str(as_float)) == value:
        options.append(st.just(as_float))
    if value == value.to_integral_value():
        options.append(st.just(int(value)))
    return st.one_of(options)


def time_spellings(moment: datetime) -> st.SearchStrategy[Any]:
    """JSON values that all mean the instant `moment`: offsets, Z, space separator, unix."""
    utc = moment.astimezone(UTC)
    offsets = st.integers(-12 * 4, 14 * 4).map(lambda q: timezone(timedelta(minutes=15 * q)))
    options: list[st.SearchStrategy[Any]] = [
        st.just(utc.isoformat().replace("+00:00", "Z")),
        st.just(utc.isoformat(sep=" ")),
        offsets.map(lambda tz: utc.astimezone(tz).isoformat()),
    ]
    if utc.microsecond == 0:
        options.append(st.just((utc - EPOCH) // timedelta(seconds=1)))
    if utc.microsecond % 1000 == 0:
        options.append(st.just(utc.isoformat(timespec="milliseconds")))
    return st.one_of(options)


def case_spellings(text: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(text), max_size=len(text)).map(
        lambda flips: "".join(c.lower() if f else c.upper() for c, f in zip(text, flips, strict=True))
    )


@st.composite
def respelled(draw: st.DrawFn, body: dict[str, Any]) -> dict[str, Any]:
    """The same signal spelled differently, key order shuffled, meta replaced."""
    out: dict[str, Any] = {}
    for name, value in body.items():
        if name in ("volume", "risk_pct", "price", "sl", "tp"):
            out[name] = draw(decimal_spellings(Decimal(value)))
        elif name in ("expires_at", "ts"):
            out[name] = draw(time_spellings(datetime.fromisoformat(value)))
        elif name == "symbol":
            pad = st.sampled_from(["", " ", "  ", "\t", "\n"])
            out[name] = draw(pad) + draw(case_spellings(value)) + draw(pad)
        elif name in ("side", "type"):
            out[name] = draw(case_spellings(value))
        elif name == "signal_id" and value.isdigit() and str(int(value)) == value:
            out[name] = draw(st.sampled_from([value, int(value)]))
        else:
            out[name] = value
    out["meta"] = draw(metas)  # meta never counts
    items = draw(st.permutations(list(out.items())))
    return dict(items)


def without_meta(intent: SignalIntent) -> SignalIntent:
    return dataclasses.replace(intent, meta={})


def is_valid(intent: SignalIntent) -> bool:
    try:
        parse_signal(canonical_payload(intent))
    except SignalValidationError:
        return False
    return True


# --------------------------------------------------------------------------- fingerprint properties


# No deadline where values are drawn inside the test: drawing counts against it and a busy CI
# machine would turn that into flakes.
@settings(deadline=None)
@given(st.data())
def test_equal_intents_spelled_differently_have_equal_fingerprints(data: st.DataObject) -> None:
    body = data.draw(bodies())
    original = parse_signal(body)
    again = parse_signal(data.draw(respelled(body)))
    assert without_meta(again) == without_meta(original)
    assert fingerprint(again) == fingerprint(original)
    assert intent_digest(again) == intent_digest(original)
    assert canonical_intent_json(again) == canonical_intent_json(original)


FINGERPRINTED = ["source", "symbol", "side", "type", "sizing", "price", "sl", "tp", "expires_at", "ts"]


def mutation(field: str, intent: SignalIntent) -> st.SearchStrategy[dict[str, Any]]:
    """A change of one fingerprinted field to another value of the right kind."""
    maybe_moment = st.none() | moments
    return {
        "source": sources.map(lambda v: {"source": v}),
        "symbol": symbols.map(lambda v: {"symbol": v}),
        "side": st.just({"side": Side.SELL if intent.side is Side.BUY else Side.BUY}),
        "type": st.just({"type": OrderType.LIMIT if intent.type is OrderType.MARKET else OrderType.MARKET}),
        # the same size expressed the other way, or another size the same way
        "sizing": st.one_of(
            positive.map(lambda v: {"volume": v, "risk_pct": None}),
            risk.map(lambda v: {"volume": None, "risk_pct": v}),
        ),
        "price": positive.map(lambda v: {"price": v}),
        "sl": positive.map(lambda v: {"sl": v}),
        "tp": (st.none() | positive).map(lambda v: {"tp": v}),
        "expires_at": maybe_moment.map(lambda v: {"expires_at": v}),
        "ts": maybe_moment.map(lambda v: {"ts": v}),
    }[field]


@settings(deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.data(), intents, st.sampled_from(FINGERPRINTED))
def test_any_change_of_a_fingerprinted_field_changes_the_fingerprint(
    data: st.DataObject, intent: SignalIntent, field: str
) -> None:
    changes = data.draw(mutation(field, intent))
    changed = dataclasses.replace(intent, **changes)
    assume(any(getattr(changed, k) != getattr(intent, k) for k in changes))
    # A flipped side can never keep sl on the losing side, so only it skips the validity check;
    # the fingerprint is a pure function of the fields either way.
    if field != "side":
        assume(is_valid(changed))
    assert intent_digest(changed) != intent_digest(intent)
    if intent.signal_id is None:
        assert fingerprint(changed) != fingerprint(intent)
    elif field == "source":
        assert fingerprint(changed) != fingerprint(intent)
    else:
        assert fingerprint(changed) == fingerprint(intent)


@given(intents, signal_ids)
def test_signal_id_change_changes_fingerprint_not_digest(intent: SignalIntent, new_id: str) -> None:
    assume(new_id != intent.signal_id)
    changed = dataclasses.replace(intent, signal_id=new_id)
    assert fingerprint(changed) != fingerprint(intent)
    assert intent_digest(changed) == intent_digest(intent)


@given(intents, metas)
def test_meta_never_counts(intent: SignalIntent, meta: dict[str, Any]) -> None:
    changed = dataclasses.replace(intent, meta=meta)
    assert fingerprint(changed) == fingerprint(intent)
    assert intent_digest(changed) == intent_digest(intent)


def test_signal_id_fingerprint_ignores_trade_fields_but_digest_does_not() -> None:
    first = parse_signal(good(signal_id="abc-1"))
    other_trade = parse_signal(good(signal_id="abc-1", price="1.2", sl="1.1", tp=..., ts=...))
    assert fingerprint(first) == fingerprint(other_trade)
    assert intent_digest(first) != intent_digest(other_trade)  # -> 409 at the API
    assert fingerprint_preimage(first) == '{"signal_id":"abc-1","source":"tradingview"}'
    assert fingerprint(first) == hashlib.sha256(b'{"signal_id":"abc-1","source":"tradingview"}').hexdigest()
    # the id is scoped by the source
    assert fingerprint(parse_signal(good(signal_id="abc-1", source="other"))) != fingerprint(first)


def test_integer_signal_id_is_its_decimal_string() -> None:
    as_int = parse_signal(good(signal_id=42))
    assert as_int.signal_id == "42"
    assert fingerprint(as_int) == fingerprint(parse_signal(good(signal_id="42")))


def test_without_signal_id_fingerprint_is_the_intent_digest() -> None:
    intent = parse_signal(good())
    assert fingerprint(intent) == intent_digest(intent)
    assert HEX64_RE.match(fingerprint(intent))


def test_producer_timestamp_distinguishes_repeated_trades() -> None:
    first = parse_signal(good(ts="2024-05-01T12:00:00Z"))
    second = parse_signal(good(ts="2024-05-01T12:00:00.000001Z"))
    assert fingerprint(first) != fingerprint(second)


def test_known_answer_matches_docs() -> None:
    """The worked example of docs/fingerprint.md: the canonical form is a contract with
    producers, so any change to it must fail here first."""
    body = {
        "source": "tradingview",
        "symbol": " eurusd ",
        "side": "BUY",
        "type": "limit",
        "volume": 0.1,
        "price": "1.10",
        "sl": "1.0950",
        "tp": "11.1E-1",
        "ts": "2024-05-01T14:00:00+02:00",
        "meta": {"note": "ignored"},
    }
    intent = parse_signal(body)
    expected = (
        '{"price":"1.1","side":"buy","sl":"1.095","source":"tradingview","symbol":"EURUSD",'
        '"tp":"1.11","ts":"2024-05-01T12:00:00.000000Z","type":"limit","volume":"0.1"}'
    )
    assert canonical_intent_json(intent) == expected
    assert fingerprint(intent) == "5e16be42360d680ad4fe6612d694e8df2998ab1b4bffa2c39639379d242e5de0"
    assert order_tag(fingerprint(intent)) == "HXLYLL4QRWBVUAVVH6MYJNNFHI"


def test_decimal_canonical_forms() -> None:
    def price_of(value: object) -> str:
        intent = parse_signal(good(price=value, sl="1e-15", tp=...))
        return json.loads(canonical_intent_json(intent))["price"]

    assert price_of("1.10") == price_of("1.1") == price_of(1.1) == price_of("11E-1") == "1.1"
    assert price_of("100") == price_of("1E+2") == price_of(100) == price_of(100.0) == "100"
    assert price_of("0.00000001") == "0.00000001"  # never an exponent
    assert price_of("12345678901234567890") == "12345678901234567890"


def test_non_ascii_source_is_hashed_as_utf8() -> None:
    intent = parse_signal(good(source='Stratégie "α"\\', signal_id="7"))
    preimage = '{"signal_id":"7","source":"Stratégie \\"α\\"\\\\"}'
    assert fingerprint_preimage(intent) == preimage
    assert fingerprint(intent) == hashlib.sha256(preimage.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- order tag


@given(st.binary(min_size=32, max_size=32))
def test_order_tag_shape_and_injective_on_120_bits(raw: bytes) -> None:
    tag = order_tag(raw.hex())
    assert len(tag) == 26 and TAG_RE.match(tag) and tag.isalnum()
    assert order_tag(raw.hex().upper()) == tag
    # decodes back to the fingerprint's first 15 bytes: distinct prefixes, distinct tags
    assert base64.b32decode(tag[2:]) == raw[:15]


@given(st.lists(intents, min_size=2, max_size=8))
def test_distinct_fingerprints_give_distinct_tags(batch: list[SignalIntent]) -> None:
    prints = {fingerprint(i) for i in batch}
    assert len({order_tag(p) for p in prints}) == len(prints)


@pytest.mark.parametrize("bad", ["", "abc", "g" * 64, "a" * 63, "a" * 65, " " + "a" * 63])
def test_order_tag_refuses_non_fingerprints(bad: str) -> None:
    with pytest.raises(ValueError):
        order_tag(bad)


# --------------------------------------------------------------------------- storage payload


@given(intents)
def test_payload_round_trip(intent: SignalIntent) -> None:
    payload = canonical_payload(intent)
    stored = json.loads(json.dumps(payload, allow_nan=False))  # as through jsonb
    rebuilt = intent_from_payload(stored)
    assert rebuilt == intent
    assert canonical_payload(rebuilt) == payload
    assert fingerprint(rebuilt) == fingerprint(intent)
    # the payload is also a valid signal body, meaning the same signal
    assert parse_signal(stored) == intent


def test_payload_shape() -> None:
    payload = canonical_payload(parse_signal(good(meta={"a": [1, 2.5]})))
    assert payload == {
        "source": "tradingview",
        "signal_id": None,
        "symbol": "EURUSD",
        "side": "buy",
        "type": "limit",
        "volume": "0.1",
        "risk_pct": None,
        "price": "1.1",
        "sl": "1.095",
        "tp": "1.11",
        "expires_at": None,
        "ts": "2024-05-01T12:00:00.000000Z",
        "meta": {"a": [1, 2.5]},
    }


@pytest.mark.parametrize(
    "payload",
    [{}, {"source": "s"}, {**canonical_payload(parse_signal(good())), "price": "x"}, {"side": "up"}],
)
def test_intent_from_payload_refuses_garbage(payload: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        intent_from_payload(payload)


def test_intent_does_not_alias_the_body_meta() -> None:
    meta: dict[str, Any] = {"a": [1]}
    intent = parse_signal(good(meta=meta))
    meta["a"].append(2)
    assert intent.meta == {"a": [1]}


# --------------------------------------------------------------------------- parsing: accepted values


def test_parses_and_normalises() -> None:
    intent = parse_signal(good(symbol="  xauusd.m ", side="Sell", type="MARKET", price=2300, sl="2310.5", tp=2250.25))
    assert intent.symbol == "XAUUSD.M"
    assert intent.side is Side.SELL and intent.type is OrderType.MARKET
    assert (intent.price, intent.sl, intent.tp) == (Decimal(2300), Decimal("2310.5"), Decimal("2250.25"))


def test_floats_are_exact() -> None:
    intent = parse_signal(good(volume=0.1, price=1.1, sl=1.09, tp=1.2))
    assert intent.volume == Decimal("0.1") and str(intent.volume) == "0.1"
    assert intent.price == Decimal("1.1") and intent.sl == Decimal("1.09")
    risk_intent = parse_signal(good(volume=..., risk_pct=0.3))
    assert risk_intent.risk_pct == Decimal("0.3")
    assert risk_intent.volume is None


def test_timestamps_normalised_to_utc() -> None:
    expected = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    for spelling in ["2024-05-01T12:00:00Z", "2024-05-01T14:00:00+02:00", "2024-05-01T07:00:00-05:00", 1714564800]:
        intent = parse_signal(good(expires_at=spelling, ts=spelling))
        assert intent.expires_at == expected and intent.ts == expected
        assert intent.ts is not None and intent.ts.utcoffset() == timedelta(0)


def test_sub_microsecond_digits_truncate_in_both_spellings() -> None:
    iso = parse_signal(good(ts="2023-11-14T22:13:20.1234567Z")).ts
    number = parse_signal(good(ts=1700000000.1234567)).ts
    assert iso == number == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)


def test_null_optionals_are_absent() -> None:
    intent = parse_signal(good(tp=None, signal_id=None, expires_at=None, ts=None, meta=None, risk_pct=None))
    assert intent.tp is None and intent.signal_id is None and intent.meta == {}
    assert intent == parse_signal(good(tp=..., ts=...))


@pytest.mark.parametrize(
    ("written", "symbol"),
    [("GER40+", "GER40+"), ("XAUUSD.m", "XAUUSD.M"), ("US30.cash", "US30.CASH"), ("EURUSD#", "EURUSD#")],
)
def test_broker_spellings_with_a_suffix_are_symbols_upper_cased_like_any(written: str, symbol: str) -> None:
    assert parse_signal(good(symbol=written)).symbol == symbol
    # One symbol, one fingerprint, however the case is written.
    assert fingerprint(parse_signal(good(symbol=written.lower()))) == fingerprint(parse_signal(good(symbol=symbol)))


def test_limits_are_inclusive() -> None:
    assert parse_signal(good(volume=..., risk_pct="100")).risk_pct == Decimal(100)
    assert parse_signal(good(source="s" * 100, signal_id="i" * 100)).signal_id == "i" * 100
    assert parse_signal(good(symbol="A" * 32)).symbol == "A" * 32
    assert parse_signal(good(volume="1234567890.1234567890")).volume == Decimal("1234567890.123456789")


# --------------------------------------------------------------------------- parsing: refused values

LONG = "x" * 101


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source", ...),
        ("source", ""),
        ("source", "   "),
        ("source", 5),
        ("source", LONG),
        ("source", "a\nb"),
        ("source", "a\u2028b"),
        ("source", "a\x00b"),
        ("source", "\ud800"),
        ("signal_id", ""),
        ("signal_id", 1.5),
        ("signal_id", True),
        ("signal_id", LONG),
        ("signal_id", 10**100),
        ("signal_id", []),
        ("symbol", ...),
        ("symbol", ""),
        ("symbol", "EUR/USD"),
        ("symbol", "EUR USD"),
        ("symbol", "A" * 33),
        ("symbol", "ß"),  # upper() would make it "SS"
        ("symbol", 5),
        ("side", ...),
        ("side", "long"),
        ("side", 1),
        ("type", ...),
        ("type", "stop"),
        ("type", ["market"]),
        ("price", ...),
        ("price", 0),
        ("price", "-1"),
        ("price", "abc"),
        ("price", "NaN"),
        ("price", "Infinity"),
        ("price", "-inf"),
        ("price", float("nan")),
        ("price", float("inf")),
        ("price", True),
        ("price", False),
        ("price", "1" * 21),  # 21 significant digits
        ("price", "1e30"),
        ("price", "1e-30"),
        ("price", 1e300),
        ("price", " 1.1"),
        ("price", "1_000"),
        ("price", "\uff11"),  # fullwidth 1: Decimal() takes it, the wire format does not
        ("price", "0x10"),
        ("price", "0E+999999999"),
        ("price", {"value": 1}),
        ("sl", ...),
        ("sl", 0),
        ("sl", "x"),
        ("tp", 0),
        ("tp", "x"),
        ("volume", 0),
        ("volume", "-0.1"),
        ("volume", "x"),
        ("expires_at", "2024-01-01T00:00:00"),  # naive
        ("expires_at", "2024-01-01"),  # naive
        ("expires_at", "tomorrow"),
        ("expires_at", True),
        ("expires_at", -1),
        ("expires_at", 1e20),
        ("expires_at", float("nan")),
        ("expires_at", "1969-12-31T23:59:59Z"),
        ("expires_at", "0001-01-01T00:00:00+01:00"),
        ("expires_at", []),
        ("ts", "2024-05-01T12:00:00"),  # naive
        ("ts", "2024-05-01 12:00"),  # naive
        ("meta", []),
        ("meta", "x"),
        ("meta", {"a": float("nan")}),
        ("meta", {"a": ["\x00"]}),
        ("meta", {"\ud800": 1}),
        ("meta", {"a": object()}),
        ("meta", {1: 1}),
    ],
)
def test_each_bad_field_is_named(field: str, value: object) -> None:
    errors = errors_of(good(**{field: value}))
    assert set(errors) == {field}, errors


@pytest.mark.parametrize("value", ["0", "100.0001", 101, -5])
def test_risk_pct_range(value: object) -> None:
    assert set(errors_of(good(volume=..., risk_pct=value))) == {"risk_pct"}


def test_deep_meta_refused() -> None:
    meta: dict[str, Any] = {}
    node = meta
    for _ in range(40):
        node["a"] = {}
        node = node["a"]
    assert set(errors_of(good(meta=meta))) == {"meta"}


def test_several_bad_fields_all_named() -> None:
    body = good(source="", symbol="EUR/USD", side="up", price="abc", sl=..., ts="2024-01-01T00:00:00")
    body["stop_loss"] = "1.09"
    errors = errors_of(body)
    assert set(errors) == {"source", "symbol", "side", "price", "sl", "ts", "stop_loss"}
    assert "'sl'" in errors["stop_loss"]  # a hint to the right name


@pytest.mark.parametrize("body", [None, [], [good()], "signal", 1, 1.5, True])
def test_body_must_be_an_object(body: object) -> None:
    assert set(errors_of(body)) == {"body"}


def test_unknown_fields_named() -> None:
    body = good()
    body.update({"stop_loss": "1.09", "Price": "1", "comment": "x"})
    errors = errors_of(body)
    assert set(errors) == {"stop_loss", "Price", "comment"}
    assert "unknown field" in errors["comment"]
    assert "'price'" in errors["Price"]


def test_empty_object_names_every_required_field() -> None:
    assert set(errors_of({})) == {"source", "symbol", "side", "type", "price", "sl", "volume", "risk_pct"}


@pytest.mark.parametrize(
    ("side", "sl", "tp", "bad"),
    [
        ("buy", "1.2", "1.3", {"sl"}),  # buy: stop above entry
        ("buy", "1.1", "1.3", {"sl"}),  # equal is not below
        ("buy", "1.0", "1.05", {"tp"}),  # buy: target below entry
        ("buy", "1.0", "1.1", {"tp"}),
        ("buy", "1.2", "1.0", {"sl", "tp"}),  # a sell's levels on a buy
        ("sell", "1.0", "0.9", {"sl"}),  # sell: stop below entry
        ("sell", "1.2", "1.15", {"tp"}),  # sell: target above entry
        ("sell", "1.0", "1.2", {"sl", "tp"}),
    ],
)
def test_sl_tp_on_the_wrong_side(side: str, sl: str, tp: str, bad: set[str]) -> None:
    errors = errors_of(good(side=side, price="1.1", sl=sl, tp=tp))
    assert set(errors) == bad
    assert all("price" in errors[name] for name in bad)


def test_right_side_sell_accepted() -> None:
    intent = parse_signal(good(side="sell", price="1.1", sl="1.2", tp="1.0"))
    assert intent.side is Side.SELL


def test_relation_not_judged_when_its_inputs_are_bad() -> None:
    assert set(errors_of(good(side="up", sl="5"))) == {"side"}
    assert set(errors_of(good(price="x", sl="5"))) == {"price"}


def test_volume_and_risk_pct_both_or_neither() -> None:
    both = errors_of(good(risk_pct="1"))
    assert set(both) == {"volume", "risk_pct"}
    neither = errors_of(good(volume=...))
    assert set(neither) == {"volume", "risk_pct"}
    # an invalid one alongside the other: both named, the own problem kept
    errors = errors_of(good(volume=True, risk_pct="1"))
    assert set(errors) == {"volume", "risk_pct"}
    assert "boolean" in errors["volume"] and "both" in errors["volume"]


def test_naive_timestamps_rejected() -> None:
    errors = errors_of(good(ts="2024-05-01T12:00:00", expires_at="2024-05-02T12:00:00.5"))
    assert set(errors) == {"ts", "expires_at"}
    assert "timezone" in errors["ts"]


def test_messages_do_not_echo_raw_newlines_or_huge_values() -> None:
    errors = errors_of(good(side="x\n" * 10_000, symbol="y" * 100_000))
    assert all(len(m) < 200 for m in errors.values())


# --------------------------------------------------------------------------- fuzz


def any_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(), inner, max_size=5))


# Anything json.loads can return and then some (NaN, Infinity, NUL, huge ints).
json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text()), any_containers, max_leaves=10
)
# Bodies with the real field names and arbitrary values reach deeper than random keys do.
near_bodies = st.dictionaries(st.sampled_from(sorted(FIELDS)) | st.text(max_size=8), json_like, max_size=14)
mixed_bodies = st.builds(
    lambda base, extra: {**base, **extra},
    bodies(),
    st.dictionaries(st.sampled_from(sorted(FIELDS)), json_like, max_size=3),
)


def check_total(body: object) -> None:
    try:
        intent = parse_signal(body)
    except SignalValidationError as exc:
        assert exc.errors and all_one_line(exc)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in exc.errors.items())
        return
    assert isinstance(intent, SignalIntent)
    # whatever is accepted can be hashed, tagged and stored
    assert TAG_RE.match(order_tag(fingerprint(intent)))
    stored = json.loads(json.dumps(canonical_payload(intent), allow_nan=False))
    stored_text = json.dumps(stored, ensure_ascii=False)
    assert "\x00" not in stored_text
    stored_text.encode("utf-8")
    assert intent_from_payload(stored) == intent


@given(json_like)
def test_fuzz_arbitrary_json(body: object) -> None:
    check_total(body)


@given(near_bodies)
def test_fuzz_field_names_with_arbitrary_values(body: dict[str, Any]) -> None:
    check_total(body)


@given(mixed_bodies)
def test_fuzz_valid_bodies_with_some_fields_garbled(body: dict[str, Any]) -> None:
    check_total(body)


def test_json_numbers_keep_every_digit_the_producer_sent() -> None:
    from engine.signal import loads

    body = loads(
        b'{"source": "s", "symbol": "X", "side": "buy", "type": "market", "volume": 0.1,'
        b' "price": 1.23456789012345678, "sl": 1.2, "meta": {"f": 0.5}}'
    )
    intent = parse_signal(body)
    assert intent.price == Decimal("1.23456789012345678")  # a float would round the last digits
    assert intent.volume == Decimal("0.1")
    assert intent.meta == {"f": 0.5}
    with pytest.raises(ValueError):
        loads(b'{"price": NaN}')


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b'{"volume": "0.1", "volume": "5"}', "volume"),
        (b'{"source": "s", "meta": {"a": 1, "b": 2, "a": 3}}', "a"),
        (b'[{"x": 1}, {"y": 1, "y": 1}]', "y"),
    ],
)
def test_loads_refuses_a_key_given_twice_naming_it(raw: bytes, key: str) -> None:
    """json.loads alone keeps the last value: "volume": "0.1" would silently become 5 lots."""
    from engine.signal import DuplicateKey, loads

    with pytest.raises(DuplicateKey) as info:
        loads(raw)
    assert info.value.key == key and repr(key) in str(info.value)


def test_loads_takes_at_most_the_body_limit_as_bytes_or_text() -> None:
    from engine.signal import MAX_BODY_BYTES, BodyTooLarge, loads

    fits = b'{"meta": "' + b"x" * (MAX_BODY_BYTES - 12) + b'"}'
    assert len(fits) == MAX_BODY_BYTES and loads(fits) == {"meta": "x" * (MAX_BODY_BYTES - 12)}
    with pytest.raises(BodyTooLarge):
        loads(fits[:-2] + b'x"}')
    # Text is measured in UTF-8 bytes, as it would arrive over HTTP: 2 bytes per "é".
    text = '{"meta": "' + "é" * (MAX_BODY_BYTES // 2) + '"}'
    assert len(text) < MAX_BODY_BYTES
    with pytest.raises(BodyTooLarge):
        loads(text)
