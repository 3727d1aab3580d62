"""`haexec market tick|bars` as a user runs them: answers (Decimals as strings, times ISO
8601 UTC with milliseconds and Z), exit statuses (2 usage, 1 an unknown symbol or stale
data, 141 a closed stdout), one line on stderr and never a traceback; a replay read where
the cluster saved its cursor, which the command never moves."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from db.urls import libpq_url
from engine.market.cursor import PgCursorStore
from engine.market.replay import Cursor, load
from tests.integration.test_cli import run_into_closed_pipe
from tests.support import REPO, run_cli

ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
# No HAEXEC_* from the calling shell: the sim, unless a test says otherwise.
CLEAN = {k: "" for k in os.environ if k.startswith("HAEXEC_")}


def market(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["market", *args], {**CLEAN, **env})


def one_line_error(done: subprocess.CompletedProcess[str], status: int, starts: str) -> None:
    assert done.returncode == status, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(starts), done.stderr


def test_tick_as_json_and_as_text() -> None:
    done = market("tick", "EURUSD", "--json")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    answer = json.loads(done.stdout)
    assert answer["symbol"] == "EURUSD" and answer["source"] == "sim"
    tick = answer["tick"]
    assert ISO_MS_Z.match(tick["time"]) and isinstance(tick["bid"], str) and isinstance(tick["ask"], str)
    assert Decimal(tick["bid"]) < Decimal(tick["ask"]) and tick["last"] is None and tick["age_ms"] < 5000
    assert answer["spec"]["tick_value"] == "1.00000" and answer["spec"]["volume_step"] == "0.01"
    assert json.loads(market("tick", "US500", "--json").stdout)["tick"]["last"] is not None  # an index trades
    text = market("tick", "XAUUSD").stdout.splitlines()
    assert re.fullmatch(r"XAUUSD \(sim\)  bid \d+\.\d\d  ask \d+\.\d\d  last -  at \S+Z \(\d\.\d{3} s old\)", text[0])
    assert text[1].startswith("  digits 2  contract 100  tick 0.01 = 1.00 USD")


def test_bars_closed_oldest_first_then_the_forming_one() -> None:
    done = market("bars", "EURUSD", "m5", "--count", "3", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["symbol"], answer["timeframe"], answer["source"]) == ("EURUSD", "M5", "sim")
    rows = answer["bars"]
    assert [r["closed"] for r in rows] == [True, True, True, False]
    times = [datetime.fromisoformat(r["time"].replace("Z", "+00:00")) for r in rows]
    assert all(ISO_MS_Z.match(r["time"]) for r in rows) and ISO_MS_Z.match(answer["as_of"])
    assert all(t.minute % 5 == 0 and t.second == 0 for t in times)
    assert [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)] == [300.0] * 3
    for r in rows:
        o, h, lo, c = (Decimal(r[k]) for k in ("open", "high", "low", "close"))
        assert lo <= min(o, c) <= max(o, c) <= h
    text = market("bars", "EURUSD", "H1", "--count", "2").stdout.splitlines()
    assert text[0].startswith("EURUSD H1 (sim): 2 closed + the forming bar, as of ")
    assert len(text) == 5 and text[-1].endswith("forming")


@pytest.mark.parametrize(
    ("args", "starts"),
    [
        (["bars", "EURUSD", "M2"], "haexec market bars: argument TF: timeframe 'M2' does not exist (there are M1,"),
        (["bars", "EURUSD", "M1", "--count", "0"], "haexec market bars: argument --count: must be 1..10000 (got 0)"),
        (["bars", "EURUSD", "M1", "--count", "10001"], "haexec market bars: argument --count: must be 1..10000"),
        (["bars", "EURUSD", "M1", "--count", "１０"], "haexec market bars: argument --count: must be an integer in"),
        (["tick", "EURUSD", "--max-age-ms", "-1"], "haexec market tick: argument --max-age-ms:"),
        (["tick"], "haexec market tick: the following arguments are required: symbol"),
    ],
)
def test_bad_usage_is_exit_2_in_one_line(args: list[str], starts: str) -> None:
    one_line_error(market(*args), 2, starts)


def test_an_unknown_symbol_is_exit_1_in_one_line() -> None:
    one_line_error(market("tick", "EURXYZ"), 1, "haexec market: unknown symbol 'EURXYZ': the sim source has EURUSD,")
    one_line_error(market("bars", "EURXYZ", "M1"), 1, "haexec market: unknown symbol 'EURXYZ'")
    one_line_error(
        market("tick", "EURUSD", HAEXEC_MARKET_SYMBOLS="GBPUSD"), 1, "haexec market: unknown symbol 'EURUSD'"
    )


def test_a_bad_market_setting_is_exit_2_naming_it() -> None:
    one_line_error(
        market("tick", "EURUSD", HAEXEC_MARKET="bloomberg"), 2, "haexec market: configuration: HAEXEC_MARKET:"
    )
    one_line_error(
        market("tick", "EURUSD", HAEXEC_MARKET_MAX_AGE_MS="0"), 2, "haexec market: configuration: HAEXEC_MARKET_MAX_AGE"
    )


def test_a_closed_stdout_is_141_and_nothing_on_stderr() -> None:
    done = run_into_closed_pipe(["market", "bars", "EURUSD", "M1", "--count", "10000"], CLEAN)
    assert done.returncode == 141 and done.stderr == "", done.stderr
    # And `| head -1`: the reader takes a line, then goes away.
    proc = subprocess.Popen(
        [sys.executable, "-m", "haexec", "market", "bars", "EURUSD", "M1", "--count", "10000"],
        env={**os.environ, **CLEAN},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(REPO),
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"EURUSD M1 (sim): 10000 closed")
    proc.stdout.close()
    assert proc.wait(60) == 141 and proc.stderr.read() == b""


TICKS = (
    "time,symbol,bid,ask\n"
    "2026-01-05T10:00:00Z,EURUSD,1.10000,1.10010\n"
    "2026-01-05T10:00:01.250Z,EURUSD,1.10002,1.10012\n"
)


def test_a_replay_is_shown_where_the_cluster_left_it_and_its_cursor_stays(
    tmp_path: Path, database_url: str, cluster: str
) -> None:
    path = tmp_path / "ticks.csv"
    path.write_text(TICKS)
    env = {"HAEXEC_MARKET": f"replay:{path}", "HAEXEC_DATABASE_URL": database_url, "HAEXEC_CLUSTER": cluster}
    # No cursor yet: the replay starts at its first tick.
    first = json.loads(market("tick", "EURUSD", "--json", **env).stdout)
    assert (first["source"], first["tick"]["time"], first["tick"]["bid"]) == (
        "replay",
        "2026-01-05T10:00:00.000Z",
        "1.10000",
    )
    # The replicas played it to its end an hour ago (data time): stale, exit 1 in one line.
    data = load(path)
    end = int(datetime(2026, 1, 5, 11, 0, 1, 250000, tzinfo=UTC).timestamp() * 1000)
    PgCursorStore(database_url, cluster).save(data.digest, str(path), Cursor(2, end))
    one_line_error(
        market("tick", "EURUSD", **env),
        1,
        "haexec market: EURUSD tick at 2026-01-05T10:00:01.250Z is 3600.",
    )
    shown = json.loads(market("tick", "EURUSD", "--json", "--max-age-ms", "86400000", **env).stdout)
    assert shown["tick"]["bid"] == "1.10002" and shown["tick"]["age_ms"] >= 3_600_000
    with psycopg.connect(libpq_url(database_url)) as conn:
        row = conn.execute(
            "SELECT position, data_ms FROM market_replay_cursor WHERE cluster = %s", (cluster,)
        ).fetchone()
    assert row == (2, end)  # read, never moved by the command


def test_a_replay_without_a_database_is_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "ticks.csv"
    path.write_text(TICKS)
    done = market("tick", "EURUSD", HAEXEC_MARKET=f"replay:{path}", HAEXEC_STATE_DIR=str(tmp_path / "state"))
    one_line_error(done, 1, "haexec market: market data (replay): a replay keeps its cursor in the database")
    bad = tmp_path / "bad.csv"
    bad.write_text("time,symbol,bid,ask\n2026-01-05T10:00:00Z,EURUSD,1.2,1.1\n")
    done = market("tick", "EURUSD", HAEXEC_MARKET=f"replay:{bad}", HAEXEC_DATABASE_URL="postgresql://h/d")
    one_line_error(done, 2, f"haexec market: configuration: HAEXEC_MARKET: replay file {bad} line 2:")


def test_mt5_through_a_connection_of_its_own() -> None:
    """Against the fake MetaTrader5 module (tests/fakes): the command initializes the terminal
    itself; without the package, or refused by the terminal, it is one line and exit 1."""
    fakes = {"PYTHONPATH": str(REPO / "tests" / "fakes"), "HAEXEC_MARKET": "mt5"}
    answer = json.loads(market("tick", "EURUSD", "--json", **fakes).stdout)
    assert (answer["source"], answer["tick"]["bid"], answer["spec"]["digits"]) == ("mt5", "1.10000", 5)
    one_line_error(market("tick", "NOPE", **fakes), 1, "haexec market: unknown symbol 'NOPE' at the MT5 terminal")
    refused = {**fakes, "HAEXEC_MT5_LOGIN": "1", "HAEXEC_MT5_PASSWORD": "wrong"}
    done = market("tick", "EURUSD", **refused)
    one_line_error(done, 1, "haexec market: market data (mt5): MT5 initialize failed")
    assert "wrong" not in done.stderr  # the password is never printed
    one_line_error(
        market("tick", "EURUSD", HAEXEC_MARKET="mt5"), 1, "haexec market: market data (mt5): the MetaTrader5 package"
    )
