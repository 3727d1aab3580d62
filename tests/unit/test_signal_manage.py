"""The optional `manage` block on a signal: validated by the rules' parser with each bad
field named like a top-level one, carried canonically on the intent, stored and read back,
hashed only when given, so every fingerprint from before the block existed is unchanged."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.positions.rules import parse_manage
from engine.signal import (
    SignalValidationError,
    canonical_intent_json,
    canonical_payload,
    fingerprint,
    intent_digest,
    intent_from_payload,
    order_tag,
    parse_signal,
)

BODY: dict[str, Any] = {
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
MANAGE = {
    "breakeven": {"at_rr": 1},
    "trailing": {"distance_points": 150, "activation_rr": 1.5},
    "lock": [[2, 1], [3, 2]],
}

# (body, fingerprint, intent digest) computed by engine/signal.py as it was before `manage`
# existed (commit 501586f): a signal without the block must keep its identity.
BEFORE = [
    (
        BODY,
        "5e16be42360d680ad4fe6612d694e8df2998ab1b4bffa2c39639379d242e5de0",
        "5e16be42360d680ad4fe6612d694e8df2998ab1b4bffa2c39639379d242e5de0",
    ),
    (
        {
            "source": "tv",
            "signal_id": "abc-1",
            "symbol": "XAUUSD",
            "side": "sell",
            "type": "market",
            "risk_pct": "1",
            "price": "2400.5",
            "sl": "2410",
            "expires_at": "2030-01-01T00:00:00Z",
            "meta": {"k": 1},
        },
        "b8f250ccc154668b54bf2c7368a6bf9774017a3cb899bd855db67edf6462ee11",
        "50c7c86c58a76ef4cb5533fdb0b999aeaddbfa3b0ef844973448db623930b342",
    ),
    (
        {"source": "bot", "symbol": "US30", "side": "buy", "type": "market", "volume": 2, "price": 39000, "sl": 38800},
        "c3520baf4efac3914ad56b06ab26ed379d1857ed33e20f696666ed8eb1882cdc",
        "c3520baf4efac3914ad56b06ab26ed379d1857ed33e20f696666ed8eb1882cdc",
    ),
]


@pytest.mark.parametrize(("body", "fp", "digest"), BEFORE)
def test_fingerprints_from_before_the_block_are_unchanged(body: dict[str, Any], fp: str, digest: str) -> None:
    for spelled in (body, {**body, "manage": None}):  # null is absent, as for every optional
        intent = parse_signal(spelled)
        assert intent.manage is None
        assert (fingerprint(intent), intent_digest(intent)) == (fp, digest)
        assert "manage" not in canonical_payload(intent)


def test_the_block_is_carried_canonically_and_read_back() -> None:
    intent = parse_signal({**BODY, "manage": MANAGE})
    assert intent.manage == parse_manage(MANAGE).to_json()
    assert parse_manage(intent.manage) == parse_manage(MANAGE)
    stored = json.loads(json.dumps(canonical_payload(intent)))  # as through jsonb
    assert stored["manage"] == intent.manage
    assert intent_from_payload(stored) == intent
    assert parse_signal(stored) == intent


def test_the_block_is_part_of_the_trade_intent() -> None:
    plain = parse_signal(BODY)
    managed = parse_signal({**BODY, "manage": MANAGE})
    respelled = parse_signal(
        {
            **BODY,
            "manage": {
                "lock": [["2.0", "1"], [3, "2"]],
                "trailing": {"activation_rr": "1.50", "distance_points": "150"},
                "breakeven": {"at_rr": "1"},
            },
        }
    )
    assert fingerprint(managed) == fingerprint(respelled)  # however it is spelled
    assert fingerprint(managed) != fingerprint(plain)
    # {} (manage explicitly: nothing) is not the same as no block (the cluster default).
    assert fingerprint(parse_signal({**BODY, "manage": {}})) not in (fingerprint(plain), fingerprint(managed))
    # A reused signal_id with other rules is another trade: its digest differs (409).
    with_id = parse_signal({**BODY, "signal_id": "x", "manage": MANAGE})
    other = parse_signal({**BODY, "signal_id": "x", "manage": {"breakeven": {"at_rr": 2}}})
    assert fingerprint(with_id) == fingerprint(other) and intent_digest(with_id) != intent_digest(other)
    assert '"manage":{"breakeven":{"at_rr":"1","offset_points":"0"}' in canonical_intent_json(with_id)


def test_each_bad_field_in_the_block_is_named_beside_the_others() -> None:
    with pytest.raises(SignalValidationError) as caught:
        parse_signal(
            {
                **BODY,
                "sl": "x",
                "manage": {"trailing": {"distance_points": -5, "activation_rr": "y"}, "lock": [[1, 2]], "stop": 1},
            }
        )
    errors = caught.value.errors
    assert set(errors) == {
        "sl",
        "manage.trailing.distance_points",
        "manage.trailing.activation_rr",
        "manage.lock[0]",
        "manage.stop",
    }, errors
    assert errors["manage.trailing.distance_points"] == "must be > 0 (got -5)"
    assert errors["manage.lock[0]"] == "lock 2 R must be below its at 1 R"
    with pytest.raises(SignalValidationError) as caught:
        parse_signal({**BODY, "manage": [1]})
    assert caught.value.errors == {"manage": "must be an object, got an array"}


def test_a_stored_block_loads_as_stored() -> None:
    """Like the rest of the payload, a stored block is not re-validated: rules that tighten
    later must not make a stored signal unreadable."""
    payload = {**canonical_payload(parse_signal(BODY)), "manage": {"breakeven": {"at_rr": "0"}}}
    assert intent_from_payload(payload).manage == {"breakeven": {"at_rr": "0"}}
    with pytest.raises(ValueError, match="manage"):
        intent_from_payload({**payload, "manage": [1]})


def test_known_answer_with_manage_matches_docs() -> None:
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
        "manage": {"breakeven": {"at_rr": 1}, "lock": [[2, "1.0"]]},
    }
    intent = parse_signal(body)
    canonical = canonical_intent_json(intent)
    assert canonical == (
        '{"manage":{"breakeven":{"at_rr":"1","offset_points":"0"},"lock":[["2","1"]]},"price":"1.1","side":"buy",'
        '"sl":"1.095","source":"tradingview","symbol":"EURUSD","tp":"1.11","ts":"2024-05-01T12:00:00.000000Z",'
        '"type":"limit","volume":"0.1"}'
    )
    assert len(canonical.encode()) == 235
    assert fingerprint(intent) == "2af8981dea26ef989394ee6fb0e56110e054ef8ce52ff82598242b0c54e6993d"
    assert order_tag(fingerprint(intent)) == "HXFL4JQHPKE3XZRE4U5ZX3BZLB"
