"""`haexec account|positions|deals`: the account at the configured broker, read from this
process (no replica needed): balance, equity, margin and today's P&L; open positions marked
at the configured market data; the paper venue's deals."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from haexec.cli_common import MAX_LIMIT, CommandError, database_url, int_in, since_arg


def cmd_account(args: argparse.Namespace, env: dict[str, str]) -> int:
    from common.errors import first_line
    from engine.brokers.base import BrokerError
    from engine.brokers.paper import PaperBroker
    from engine.market import FeedUnavailable
    from engine.venue import ledger
    from haexec import book
    from haexec.cli_engine import _broker, _pool
    from haexec.marketdata import open_market

    with _pool(args, env) as (pool, cfg):
        if args.command == "deals":
            if cfg.engine.broker != "paper":
                raise CommandError(
                    f"deals are read from the paper venue; at {cfg.engine.broker}, see the terminal's history"
                )
            since = args.since or book.start_of_day(datetime.now(UTC))
            with pool.connection() as conn:
                rows = book.deals_json(ledger.deals(conn, cfg.election.cluster, since, args.limit))
            _emit({"since": since.isoformat(), "deals": rows}, args.json, _deals_text)
            return 0
        try:
            broker = _broker(cfg, pool)
        except BrokerError as e:
            raise CommandError(f"broker {cfg.engine.broker}: {first_line(e)}") from None
        try:
            if args.command == "account":
                _emit(book.account_json(broker.account()), args.json, _account_text)
                return 0
            terminal = getattr(broker, "run_on_terminal", None) if cfg.engine.market.source == "mt5" else None
            try:
                replay = cfg.engine.market.source == "replay"  # its cursor is in the database
                market = open_market(
                    cfg, database_url(args) if replay else None, terminal=terminal, writes_cursor=False
                )
            except FeedUnavailable as e:
                raise CommandError(f"market data ({cfg.engine.market.source}): {first_line(e)}") from None
            try:
                if isinstance(broker, PaperBroker):
                    broker.market = market
                answer = book.read_positions(broker, market, cfg.engine.market_max_age_ms)
            finally:
                market.close()
            _emit(answer, args.json, _positions_text)
        except BrokerError as e:
            raise CommandError(f"broker {cfg.engine.broker}: {first_line(e)}") from None
        finally:
            broker.close()
    return 0


def _emit(answer: dict[str, Any], as_json: bool, text: Any) -> None:
    print(json.dumps(answer) if as_json else text(answer))


def _account_text(a: dict[str, Any]) -> str:
    margin = "-" if a["margin"] is None else f"{a['margin']} (free {a['free_margin']})"
    return (
        f"balance {a['balance']} {a['currency']}  equity {a['equity']}  floating {a['floating']}"
        f"  margin {margin}  today {a['daily_pnl']}"
    )


def _positions_text(p: dict[str, Any]) -> str:
    rows = p["positions"]
    if not rows:
        return "no open positions"
    head = ("ticket", "symbol", "side", "volume", "price", "sl", "tp", "now", "P&L")
    lines = ["{:>8} {:<10} {:<4} {:>8} {:>12} {:>12} {:>12} {:>12} {:>10}".format(*head)]
    for r in rows:
        lines.append(
            f"{r['ticket']:>8} {r['symbol']:<10} {r['side']:<4} {r['volume']:>8} {r['price']:>12} {r['sl'] or '-':>12}"
            f" {r['tp'] or '-':>12} {r['current'] or '-':>12} {r['floating'] or '-':>10}"
            + (f"  ({r['price_error']})" if r.get("price_error") else "")
        )
    return "\n".join(lines)


def _deals_text(d: dict[str, Any]) -> str:
    rows = d["deals"]
    if not rows:
        return f"no deals since {d['since']}"
    return "\n".join(
        f"{r['at']:<24} {r['ticket']:>8} {r['kind']:<9} {r['volume']:>8} @ {r['price']:<12} P&L {r['pnl']:>10}"
        + (f"  balance {r['balance']}" if r["balance"] is not None else "")
        for r in rows
    )


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    acc = sub.add_parser("account", parents=[common], help="balance, equity, margin and today's P&L at the broker")
    acc.add_argument("--json", action="store_true")
    acc.set_defaults(engine_func=cmd_account)
    pos = sub.add_parser("positions", parents=[common], help="open positions with their stops and floating P&L")
    pos.add_argument("--json", action="store_true")
    pos.set_defaults(engine_func=cmd_account)
    deals = sub.add_parser("deals", parents=[common], help="the paper venue's deals, oldest first")
    deals.add_argument("--since", type=since_arg, help="from this time on (ISO 8601; default 00:00 UTC today)")
    deals.add_argument("--limit", type=int_in(1, MAX_LIMIT), default=100, help=f"at most this many (1..{MAX_LIMIT})")
    deals.add_argument("--json", action="store_true")
    deals.set_defaults(engine_func=cmd_account)
