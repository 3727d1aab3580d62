"""Error text fit for one log or CLI line."""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
