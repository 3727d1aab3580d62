"""HAEXEC_MARKET* parsing: defaults, and one line naming the variable for each bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ConfigError
from engine.market.settings import market_settings
from engine.market.simsymbols import DEFAULT_SYMBOLS


def test_defaults_are_the_sim_with_its_symbols() -> None:
    s = market_settings({})
    assert (s.source, s.seed, s.speed, s.symbols, s.replay_path) == ("sim", 0, 1.0, DEFAULT_SYMBOLS, None)


def test_replay_mt5_speed_seed_symbols(tmp_path: Path) -> None:
    f = tmp_path / "ticks.csv"
    f.write_text("time,symbol,bid,ask\n")
    s = market_settings(
        {
            "HAEXEC_MARKET": f"replay:{f}",
            "HAEXEC_MARKET_SPEED": "max",
            "HAEXEC_MARKET_SEED": "7",
            "HAEXEC_MARKET_SYMBOLS": "EURUSD, GER40",
        }
    )
    assert (s.source, s.replay_path, s.speed, s.seed, s.symbols) == ("replay", f, None, 7, ("EURUSD", "GER40"))
    assert market_settings({"HAEXEC_MARKET": "mt5", "HAEXEC_MARKET_SPEED": "2.5"}).speed == 2.5
    assert market_settings({"HAEXEC_MARKET": "mt5"}).symbols is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HAEXEC_MARKET": "paper"}, "HAEXEC_MARKET: must be one of sim, replay:PATH, mt5, gateway (got 'paper')"),
        ({"HAEXEC_MARKET": "replay:"}, "HAEXEC_MARKET: replay needs a file: replay:PATH"),
        ({"HAEXEC_MARKET": "replay:/nonexistent.csv"}, "HAEXEC_MARKET: replay file '/nonexistent.csv' does not exist"),
        ({"HAEXEC_MARKET_SPEED": "0"}, "HAEXEC_MARKET_SPEED: must be > 0 and <= 1,000,000, or max (got '0')"),
        ({"HAEXEC_MARKET_SPEED": "-2"}, "HAEXEC_MARKET_SPEED: must be > 0"),
        ({"HAEXEC_MARKET_SPEED": "fast"}, "HAEXEC_MARKET_SPEED: must be a positive number or max (got 'fast')"),
        ({"HAEXEC_MARKET_SPEED": "inf"}, "HAEXEC_MARKET_SPEED: must be > 0"),
        ({"HAEXEC_MARKET_SEED": "x1"}, "HAEXEC_MARKET_SEED: must be an integer (got 'x1')"),
        ({"HAEXEC_MARKET_SEED": "-1"}, "HAEXEC_MARKET_SEED: must be 0 .. 2**63 - 1"),
        ({"HAEXEC_MARKET_SYMBOLS": "EURUSD,,DXY"}, "HAEXEC_MARKET_SYMBOLS: must be comma-separated symbol names"),
        ({"HAEXEC_MARKET_SYMBOLS": "EURUSD,EURUSD"}, "HAEXEC_MARKET_SYMBOLS: names EURUSD more than once"),
        (
            {"HAEXEC_MARKET_SYMBOLS": "EURUSD,GER40"},
            "HAEXEC_MARKET_SYMBOLS: the sim source has no GER40 (it has EURUSD,",
        ),
    ],
)
def test_each_bad_value_is_one_line_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        market_settings(env)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_open_source_builds_what_the_settings_name(tmp_path: Path) -> None:
    from engine.market import MT5Source, ReplaySource, SimSource, open_source

    sim = open_source(market_settings({"HAEXEC_MARKET_SEED": "5", "HAEXEC_MARKET_SYMBOLS": "EURUSD,DXY"}))
    assert isinstance(sim, SimSource) and sim.symbols() == ["EURUSD", "DXY"] and sim.seed == 5
    f = tmp_path / "t.csv"
    f.write_text("time,symbol,bid,ask\n2026-01-05T10:00:00Z,EURUSD,1.1,1.2\n")
    replay = open_source(market_settings({"HAEXEC_MARKET": f"replay:{f}", "HAEXEC_MARKET_SPEED": "max"}))
    assert isinstance(replay, ReplaySource) and replay.speed is None
    from tests.fakes import MetaTrader5 as fake_mt5

    mt5 = open_source(market_settings({"HAEXEC_MARKET": "mt5"}), mt5_run=lambda what, job, t: job(fake_mt5))
    assert isinstance(mt5, MT5Source)


def test_open_source_refuses_the_gateway_it_cannot_reach() -> None:
    from engine.market import BadInput, open_source

    with pytest.raises(BadInput, match="gateway source"):
        open_source(market_settings({"HAEXEC_MARKET": "gateway"}))  # the venue's path: exit 2 there
