"""HAEXEC_SL_DEADLINE_MS, HAEXEC_NAKED_POSITION, HAEXEC_RECONCILE_S, HAEXEC_MANAGE_EXTERNAL,
HAEXEC_MANAGER_PERIOD_MS: parsed here, each broken rule one line naming the variable
(ConfigError, exit 2 at the CLI)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from common.errors import ConfigError

NAKED_POLICIES = ("close", "alert")
BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


@dataclass(frozen=True)
class PositionSettings:
    sl_deadline_ms: int = 1000  # a position with no stop this long after it was seen naked: close or alert
    naked_policy: str = "close"
    reconcile_s: int = 60  # the full recovery report (foreign positions, holds) this often
    manage_external: bool = False  # adopt positions not opened by haexec too
    period_ms: int = 100  # one manager loop this often


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise ConfigError(name, f"must be an integer from {low} to {high} (got {raw!r})")
    return int(raw)


def position_settings(env: Mapping[str, str]) -> PositionSettings:
    policy = (env.get("HAEXEC_NAKED_POSITION") or "close").strip()
    if policy not in NAKED_POLICIES:
        raise ConfigError("HAEXEC_NAKED_POSITION", f"must be one of {', '.join(NAKED_POLICIES)} (got {policy!r})")
    raw = (env.get("HAEXEC_MANAGE_EXTERNAL") or "false").strip().lower()
    if raw not in BOOLEANS:
        raise ConfigError("HAEXEC_MANAGE_EXTERNAL", f"must be true or false (got {raw!r})")
    return PositionSettings(
        sl_deadline_ms=_int(env, "HAEXEC_SL_DEADLINE_MS", 1000, 100, 60_000),
        naked_policy=policy,
        reconcile_s=_int(env, "HAEXEC_RECONCILE_S", 60, 1, 86_400),
        manage_external=BOOLEANS[raw],
        period_ms=_int(env, "HAEXEC_MANAGER_PERIOD_MS", 100, 10, 10_000),
    )
