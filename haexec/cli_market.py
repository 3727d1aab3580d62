"""`haexec market tick|bars`: the configured market data source, read from this process, so
they work with no replica up. The sim is computed here (the same prices every replica
sees); a replay is shown where the cluster's replicas last saved its cursor, which this
never moves; mt5 opens a connection of its own to the terminal; gateway reads through the
MT5 gateway (HAEXEC_GATEWAY_URL)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy comes with engine.market: imported when a market command runs
    from engine.market import Timeframe
    from haexec.settings import Settings

MAX_BARS = 10_000  # one screen of JSON too many; a program reads bars through engine.market
DEFAULT_BARS = 20


def timeframe_arg(value: str) -> Timeframe:
    """An argparse type: M1, M5, M15, M30, H1, H4 or D1 (any case)."""
    from engine.market import Timeframe, UnknownTimeframe

    try:
        return Timeframe.parse(value)
    except UnknownTimeframe as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _database_url(cfg: Settings) -> str | None:
    """Where a replay's cursor is: the configured database, else a running embedded cluster's
    (never started for this)."""
    if cfg.database_url:
        return cfg.database_url
    from embedded import running_servers

    servers = running_servers(cfg.state_dir)
    return servers.database_url if servers is not None else None


def cmd_market(args: argparse.Namespace, env: dict[str, str]) -> int:
    """Run through haexec.cli's cmd_engine: a CommandError is one line, exit 1."""
    from common.errors import first_line
    from engine.market import FeedUnavailable, MarketDataError
    from haexec import settings as settings_mod
    from haexec.cli_common import CommandError
    from haexec.marketdata import bars_json, open_market, quote_json

    cfg = settings_mod.load(env)
    chosen = cfg.engine.market
    database_url = _database_url(cfg) if chosen.source == "replay" else None
    try:
        market = open_market(cfg, database_url, writes_cursor=False)
    except FeedUnavailable as e:
        raise CommandError(f"market data ({chosen.source}): {first_line(e)}") from None
    max_age_ms = cfg.engine.market_max_age_ms if args.max_age_ms is None else args.max_age_ms
    try:
        if args.market_command == "tick":
            tick = market.tick(args.symbol, max_age_ms=max_age_ms)
            spec = market.spec(args.symbol)
            answer = quote_json(market.name, tick, spec)
            print(json.dumps(answer) if args.json else _tick_text(answer))
        else:
            bars = market.bars(args.symbol, args.timeframe, args.count, max_age_ms=max_age_ms)
            answer = bars_json(market.name, bars)
            print(json.dumps(answer) if args.json else _bars_text(answer))
    except MarketDataError as e:  # unknown symbol, stale, the source failing: one line, exit 1
        raise CommandError(first_line(e)) from None
    finally:
        market.close()
    return 0


def _tick_text(q: dict) -> str:
    t, s = q["tick"], q["spec"]
    last = t["last"] or "-"
    return (
        f"{q['symbol']} ({q['source']})  bid {t['bid']}  ask {t['ask']}  last {last}  at {t['time']}"
        f" ({t['age_ms'] / 1000:.3f} s old)\n"
        f"  digits {s['digits']}  contract {s['contract_size']}  tick {s['tick_size']} = {s['tick_value']}"
        f" {s['currency_profit']}  volume {s['volume_min']}..{s['volume_max']} step {s['volume_step']}"
        f"  stops {s['stops_level']}  freeze {s['freeze_level']}  trade {s['trade_mode']}"
    )


def _bars_text(b: dict) -> str:
    rows = b["bars"]
    closed = sum(1 for r in rows if r["closed"])
    forming = " + the forming bar" if rows and not rows[-1]["closed"] else ""
    lines = [
        f"{b['symbol']} {b['timeframe']} ({b['source']}): {closed} closed{forming}, as of {b['as_of']}"
        f" ({b['age_ms'] / 1000:.3f} s old)",
        f"{'time':<24}  {'open':>12} {'high':>12} {'low':>12} {'close':>12} {'ticks':>7} {'spread':>6}",
    ]
    for r in rows:
        lines.append(
            f"{r['time']:<24}  {r['open']:>12} {r['high']:>12} {r['low']:>12} {r['close']:>12}"
            f" {r['tick_volume']:>7} {r['spread']:>6}" + ("" if r["closed"] else "  forming")
        )
    return "\n".join(lines)


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from coordinator.config import MAX_TIMER_MS
    from haexec.cli_common import int_in

    market = sub.add_parser("market", help="market data from the configured source (HAEXEC_MARKET)")
    msub = market.add_subparsers(dest="market_command", required=True)
    age_help = "the oldest data accepted, in ms (default HAEXEC_MARKET_MAX_AGE_MS, 5000); older is exit 1"
    tick = msub.add_parser("tick", parents=[common], help="the latest tick and the symbol's spec")
    tick.add_argument("symbol", help="e.g. EURUSD")
    tick.add_argument("--max-age-ms", type=int_in(0, MAX_TIMER_MS), help=age_help)
    tick.add_argument("--json", action="store_true")
    bars = msub.add_parser("bars", parents=[common], help="closed bars, oldest first, then the forming one")
    bars.add_argument("symbol", help="e.g. EURUSD")
    bars.add_argument("timeframe", type=timeframe_arg, metavar="TF", help="M1, M5, M15, M30, H1, H4 or D1")
    bars.add_argument(
        "--count", type=int_in(1, MAX_BARS), default=DEFAULT_BARS, help=f"closed bars (1..{MAX_BARS}, default 20)"
    )
    bars.add_argument("--max-age-ms", type=int_in(0, MAX_TIMER_MS), help=age_help)
    bars.add_argument("--json", action="store_true")
    market.set_defaults(engine_func=cmd_market)
