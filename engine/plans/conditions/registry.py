"""Every condition type there is: importing this module imports every family module of the
package (each registers its types in base.PARSERS), so a new family is a new file and
nothing else; and `parse_condition`, one leaf's JSON to its Condition."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from engine.plans import conditions
from engine.plans.conditions.base import PARSERS, Condition, ConditionError

_NOT_FAMILIES = frozenset({"base", "registry"})

for _module in pkgutil.iter_modules(conditions.__path__):
    if _module.name not in _NOT_FAMILIES:
        importlib.import_module(f"{conditions.__name__}.{_module.name}")


def types() -> list[str]:
    return sorted(PARSERS)


def parse_condition(obj: Any, path: str) -> Condition:
    """One condition's JSON object at `path` (e.g. `conditions.all[1]`) -> its Condition;
    ConditionError naming every bad field, an unknown type or parameter included."""
    if not isinstance(obj, Mapping):
        raise ConditionError([f"{path}: must be a JSON object with a type"])
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ConditionError([f"{path}.type: required, one of {', '.join(types())}"])
    parser = PARSERS.get(kind)
    if parser is None:
        raise ConditionError([f"{path}.type: unknown condition type {kind!r:.40} (known: {', '.join(types())})"])
    return parser(obj, path)
