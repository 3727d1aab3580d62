"""common/: strict number parsing and the one timestamp form."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from common.numbers import ascii_decimal, ascii_int
from common.timefmt import iso_utc


@pytest.mark.parametrize("text", ["１０", "٣", " 10", "10 ", "1_000", "", "+", "0x10", "1.0"])
def test_ascii_int_refuses_what_int_would_take_or_bend(text: str) -> None:
    with pytest.raises(ValueError):
        ascii_int(text)


@pytest.mark.parametrize("text", ["１.５", "NaN", "Infinity", "-inf", " 1", "1,5", "", "."])
def test_ascii_decimal_refuses_non_ascii_and_non_finite(text: str) -> None:
    with pytest.raises(ValueError):
        ascii_decimal(text)


def test_plain_numbers_pass() -> None:
    assert [ascii_int(t) for t in ("10", "-3", "+7", "007")] == [10, -3, 7, 7]
    assert [ascii_decimal(t) for t in ("1.5", ".5", "5.", "-2", "1e3")] == [
        Decimal("1.5"),
        Decimal(".5"),
        Decimal("5."),
        Decimal(-2),
        Decimal("1e3"),
    ]


def test_one_timestamp_form_whatever_the_zone() -> None:
    at = datetime(2026, 12, 4, 1, 31, 2, 123456, tzinfo=UTC)
    assert iso_utc(at) == "2026-12-04T01:31:02.123Z"
    berlin = at.astimezone(timezone(timedelta(hours=1)))
    assert iso_utc(berlin) == "2026-12-04T01:31:02.123Z"
    with pytest.raises(ValueError, match="naive"):
        iso_utc(datetime(2026, 12, 4))
