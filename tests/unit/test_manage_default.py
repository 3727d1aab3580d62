"""HAEXEC_MANAGE_DEFAULT: the cluster's rules for a position whose signal has no `manage`
block, on the engine settings; a bad value is one line naming the variable and each bad
field, exit 2 at the CLI, before anything starts."""

from __future__ import annotations

from decimal import Decimal

import pytest

from common.errors import ConfigError
from engine.positions.rules import ManageRules, parse_manage
from haexec import settings
from haexec.cli import main

BASE = {"HAEXEC_INSTANCE_ID": "r1"}


def test_unset_or_blank_is_no_rules() -> None:
    assert settings.load(BASE).engine.manage_default == ManageRules()
    assert settings.load({**BASE, "HAEXEC_MANAGE_DEFAULT": "  "}).engine.manage_default.empty


def test_a_block_becomes_the_default_rules() -> None:
    raw = '{"breakeven": {"at_rr": 1}, "trailing": {"distance_points": 150, "activation_rr": 1.5}, "lock": [[2, 1]]}'
    rules = settings.load({**BASE, "HAEXEC_MANAGE_DEFAULT": raw}).engine.manage_default
    assert rules == parse_manage(
        {
            "breakeven": {"at_rr": "1"},
            "trailing": {"distance_points": "150", "activation_rr": "1.5"},
            "lock": [["2", "1"]],
        }
    )
    assert rules.trailing is not None and rules.trailing.activation_rr == Decimal("1.5")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{", "HAEXEC_MANAGE_DEFAULT: is not JSON"),
        ("[1]", "HAEXEC_MANAGE_DEFAULT: must be an object, got an array"),
        ('{"lock": [[2, 1]], "lock": [[3, 1]]}', "HAEXEC_MANAGE_DEFAULT: duplicate key 'lock'"),
        (
            '{"breakeven": {"at_rr": 0}, "partial": {"at_rr": 2, "fraction": 2}}',
            "HAEXEC_MANAGE_DEFAULT: breakeven.at_rr: must be > 0 (got 0); partial.fraction: must be between 0 and 1",
        ),
        ('{"trailing": {"distance_points": NaN, "activation_rr": 1}}', "HAEXEC_MANAGE_DEFAULT: is not JSON"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_field(raw: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings.load({**BASE, "HAEXEC_MANAGE_DEFAULT": raw})
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert info.value.setting == "HAEXEC_MANAGE_DEFAULT"


def test_the_cli_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HAEXEC_INSTANCE_ID", "r1")
    monkeypatch.setenv("HAEXEC_MANAGE_DEFAULT", '{"breakeven": {"at_rr": -1}}')
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err == "haexec run: configuration: HAEXEC_MANAGE_DEFAULT: breakeven.at_rr: must be > 0 (got -1)\n"
