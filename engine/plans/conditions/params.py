"""Reading a condition's JSON object field by field, collecting every bad field, so a plan's
author fixes them all in one round trip. Shared by the families; registers nothing."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from engine.market.base import SYMBOL_RULE, Timeframe, UnknownTimeframe, symbol_name
from engine.plans.conditions.base import ConditionError

# Plain decimals only: Decimal() alone also takes "NaN", "1_000" and non-ASCII digits.
NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)
DURATION_RE = re.compile(r"([0-9]{1,6})(s|m|h|d)", re.ASCII)
DURATION_UNITS_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
MAX_AGE_LIMIT_MS = 86_400_000  # a day, like every other timer
COMMON = frozenset({"type", "max_age_ms"})


class Params:
    """`obj` at `path` with the keys `allowed` (plus type and max_age_ms). Each reader returns
    the value or None after recording the field's problem; `done()` raises them all."""

    def __init__(self, obj: Mapping[str, Any], path: str, allowed: Iterable[str]) -> None:
        self.obj = obj
        self.path = path
        self.errors: list[str] = []
        known = COMMON | frozenset(allowed)
        for key in obj:
            if key not in known:
                self.errors.append(f"{self.at(str(key))}: unknown parameter (known: {', '.join(sorted(known))})")

    def at(self, name: str) -> str:
        return f"{self.path}.{name}"

    def bad(self, name: str, message: str) -> None:
        self.errors.append(f"{self.at(name)}: {message}")

    def _get(self, name: str, required: bool) -> Any:
        value = self.obj.get(name)
        if value is None and required:
            self.bad(name, "required")
        return value

    def symbol(self, name: str = "symbol") -> str:
        value = self._get(name, True)
        if value is None:
            return ""
        symbol = symbol_name(value)
        if symbol is None:
            self.bad(name, f"must be {SYMBOL_RULE} (got {value!r:.40})")
            return ""
        return symbol

    def timeframe(self, name: str = "timeframe", default: Timeframe | None = None) -> Timeframe:
        value = self._get(name, default is None)
        if value is None:
            return default or Timeframe.M1
        try:
            return Timeframe.parse(value) if isinstance(value, str) else Timeframe.parse(repr(value))
        except UnknownTimeframe as exc:
            self.bad(name, str(exc))
            return Timeframe.M1

    def decimal(self, name: str, required: bool = True) -> Decimal | None:
        value = self._get(name, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.bad(name, f"must be a number or decimal string (got {value!r:.40})")
            return None
        text = value if isinstance(value, str) else repr(value)
        if isinstance(value, float) and "e" in text.lower():
            text = format(Decimal(text), "f")
        if len(text) > 40 or not NUMBER_RE.fullmatch(text.strip()):
            self.bad(name, f"must be a decimal number (got {value!r:.40})")
            return None
        try:
            return Decimal(text.strip())
        except InvalidOperation:  # unreachable after the pattern
            self.bad(name, f"must be a decimal number (got {value!r:.40})")
            return None

    def positive(self, name: str, required: bool = True) -> Decimal | None:
        number = self.decimal(name, required)
        if number is not None and number <= 0:
            self.bad(name, f"must be > 0 (got {number})")
            return None
        return number

    def integer(self, name: str, low: int, high: int, default: int | None = None) -> int:
        value = self._get(name, default is None)
        if value is None:
            return default if default is not None else low
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.bad(name, f"must be an integer {low}..{high} (got {value!r:.40})")
            return low
        return value

    def choice(self, name: str, options: tuple[str, ...], default: str | None = None) -> str:
        value = self._get(name, default is None)
        if value is None:
            return default or options[0]
        if value not in options:
            self.bad(name, f"must be one of {', '.join(options)} (got {value!r:.40})")
            return options[0]
        return str(value)

    def duration_ms(self, name: str, low_ms: int, high_ms: int) -> int:
        """ "90s", "30m", "1h", "2d"."""
        value = self._get(name, True)
        if value is None:
            return low_ms
        match = DURATION_RE.fullmatch(value) if isinstance(value, str) else None
        ms = int(match[1]) * DURATION_UNITS_MS[match[2]] if match else -1
        if not low_ms <= ms <= high_ms:
            self.bad(name, f"must be a duration like 30m, 1h or 2d between {low_ms // 1000} s and {high_ms // 1000} s")
            return low_ms
        return ms

    def one_of(self, names: tuple[str, str]) -> tuple[str, Decimal | None]:
        """Exactly one of two thresholds (`below` / `above`)."""
        given = [n for n in names if self.obj.get(n) is not None]
        if len(given) != 1:
            self.bad("/".join(names), f"give exactly one of {' / '.join(names)}")
            return names[0], None
        return given[0], self.decimal(given[0])

    def max_age_ms(self, default: int) -> int:
        return self.integer("max_age_ms", 0, MAX_AGE_LIMIT_MS, default)

    def done(self) -> None:
        if self.errors:
            raise ConditionError(self.errors)


def canon(number: Decimal) -> str:
    """A Decimal as plain text without exponent or trailing zeros (1.10 -> "1.1")."""
    if number.is_zero():
        return "0"
    return format(number.normalize(), "f")
