"""Numbers as people type them into settings and command lines: ASCII only.

`int()` and `Decimal()` accept any Unicode digit ('１０', '٣') and surrounding whitespace, so a
value copied from a chat window can pass for something nobody meant; these refuse it."""

from __future__ import annotations

import re
from decimal import Decimal

_INT = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def ascii_int(text: str) -> int:
    """An integer in ASCII digits, optionally signed; ValueError for anything else."""
    if not _INT.fullmatch(text):
        raise ValueError(f"not an integer in ASCII digits: {text!r}")
    return int(text)


def ascii_decimal(text: str) -> Decimal:
    """A finite decimal in ASCII digits; ValueError for anything else (NaN and Infinity too)."""
    if not _DECIMAL.fullmatch(text):
        raise ValueError(f"not a decimal number in ASCII digits: {text!r}")
    return Decimal(text)
