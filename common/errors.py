"""Errors fit for one log or CLI line."""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class ConfigError(ValueError):
    """A setting breaks a rule. The message is one line naming the setting and the rule."""

    def __init__(self, setting: str, rule: str) -> None:
        super().__init__(f"{setting}: {rule}")
        self.setting = setting
        self.rule = rule
