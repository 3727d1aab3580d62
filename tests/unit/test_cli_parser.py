"""The `haexec` argument parser on its own: bounds, one-line usage errors, help texts."""

from __future__ import annotations

import argparse

import pytest

from haexec.cli import MAX_LIMIT, MAX_REPLICAS, build_parser


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "--replicas", str(MAX_REPLICAS + 1)],
        ["up", "--http-base-port", "70000"],
        ["signal", "list", "--limit", str(MAX_LIMIT + 1)],
        ["history", "--limit", "0"],
        ["history", "--limit", "１０"],  # full-width digits: int() takes them, we do not
        ["signal", "list", "--limit", " 5"],
        ["switchover", "--timeout", "0"],
        ["switchover", "--timeout", "inf"],
    ],
)
def test_out_of_bounds_is_one_line_and_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and argv[-2] in err, err


def test_bounds_themselves_are_accepted() -> None:
    parser = build_parser()
    assert parser.parse_args(["up", "--replicas", str(MAX_REPLICAS)]).replicas == MAX_REPLICAS
    assert parser.parse_args(["signal", "list", "--limit", str(MAX_LIMIT)]).limit == MAX_LIMIT
    assert parser.parse_args(["history", "--limit", "1"]).limit == 1


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {choice.dest: choice.help for choice in action._choices_actions}


@pytest.mark.parametrize("group", ["signal", "db", "broker"])
def test_every_subcommand_says_what_it_does(group: str) -> None:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    helps = _subcommands(action.choices[group])
    assert helps and all(helps.values()), helps


def test_every_command_says_what_it_does() -> None:
    helps = _subcommands(build_parser())
    assert all(helps.values()), helps
