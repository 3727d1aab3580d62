"""The protocol's Redis names and wire formats (coordinator/keys.py)."""

from __future__ import annotations

from coordinator.keys import (
    Event,
    handoff_event,
    holder_instance,
    lease_value,
    parse_event,
    released_event,
    reserved_value,
)


def test_events_round_trip_and_junk_is_not_an_error() -> None:
    assert parse_event(handoff_event("r1", 7, "r2")) == Event("handoff", "r1", "r2")
    assert parse_event(released_event("r1", 7)) == Event("released", "r1", None)
    assert parse_event("") == Event("", None, None)
    assert parse_event("handoff|r1") == Event("handoff", "r1", None)


def test_key_values_name_their_holder() -> None:
    assert holder_instance(lease_value("r1", "abc")) == "r1"
    assert holder_instance(reserved_value("r2")) == "reserved:r2"
    assert holder_instance(None) is None and holder_instance("") is None
