"""`haexec trades list|show|register|unregister`: trade registration from the command line.
They talk to PostgreSQL (and, to register, the venue) directly, so they work with no replica up."""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.brokers.base import BrokerError
from engine.positions import store
from engine.positions.registration import NoSuchPosition, Registrar, RegistrationError
from engine.positions.store import Registered
from engine.signal import DuplicateKey, loads
from haexec import cli_engine
from haexec.cli_common import MAX_LIMIT, CommandError, int_in, since_arg
from haexec.positions import account_of, default_rules


def _registrar(pool: Any, cfg: Any, with_broker: bool) -> Registrar:
    broker: Any = None
    if with_broker:
        try:
            broker = cli_engine._broker(cfg, pool)
        except BrokerError as e:
            raise CommandError(f"broker {cfg.engine.broker}: {e}") from None
    election = cfg.election
    return Registrar(pool, broker, election.cluster, account_of(cfg), f"cli:{getpass.getuser()}", default_rules(cfg))


def _line(t: dict[str, Any]) -> str:
    return (
        f"{t['ticket']:>10} {t['symbol']:<8} {t['side']:<4} {t['volume']} @ {t['entry']}"
        f" sl={t['verified_sl'] or t['initial_sl']}"
        f" {'managed' if t['managed'] else 'unmanaged'}{' closed' if t['closed_at'] else ''}"
    )


def cmd_trades(args: argparse.Namespace, env: dict[str, str]) -> int:
    with cli_engine._pool(args, env) as (pool, cfg):
        command = args.trades_command
        reg = _registrar(pool, cfg, with_broker=command == "register")
        if command == "list":
            rows = reg.listing(include_closed=args.all)
            cli_engine._print(rows, args.json, lambda: "\n".join(_line(t) for t in rows) or "no trades")
            return 0
        if command == "show":
            found = reg.show(args.ticket)
            if found is None:
                raise CommandError(f"no trade {args.ticket} in cluster {cfg.election.cluster!r}")
            cli_engine._print(found, args.json, lambda: json.dumps(found, indent=2, default=str))
            return 0
        if command == "unregister":
            if not reg.unregister(args.ticket, f"cli:{getpass.getuser()}"):
                raise CommandError(f"trade {args.ticket} is not managed")
            cli_engine._print(
                {"ticket": args.ticket, "managed": False},
                args.json,
                lambda: f"{args.ticket} unmanaged (the stop stays)",
            )
            return 0
        body: dict[str, Any] = {"ticket": args.ticket}
        if args.manage is not None:
            try:
                body["manage"] = loads(os.fsencode(args.manage))
            except DuplicateKey as e:
                raise CommandError(f"--manage: {e}") from None
            except (ValueError, RecursionError):
                raise CommandError("--manage is not valid JSON") from None
        if args.sl is not None:
            body["sl"] = args.sl
        try:
            row, created = reg.register(body, f"cli:{getpass.getuser()}")
        except RegistrationError as e:
            raise CommandError("; ".join(f"{k}: {v}" for k, v in e.errors.items())) from None
        except (NoSuchPosition, Registered) as e:
            raise CommandError(str(e)) from None
        except BrokerError as e:
            raise CommandError(f"broker {cfg.engine.broker}: {e}") from None
        out = {**row.as_json(), "created": created}
        cli_engine._print(out, args.json, lambda: f"{row.ticket} {'registered' if created else 'registered already'}")
        return 0


def cmd_journal(args: argparse.Namespace, env: dict[str, str]) -> int:
    """Every state change haexec made to a position (fill, stop set or moved, breakeven, lock,
    close, registration, operator action), oldest first."""
    with cli_engine._pool(args, env) as (pool, cfg):
        since = args.since or datetime.now(UTC) - timedelta(days=1)
        with pool.connection() as conn:
            rows = store.journal_since(conn, cfg.election.cluster, since, args.limit)
    if args.csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(JOURNAL_COLUMNS)
        for r in rows:
            out.writerow([json.dumps(r[c], default=str) if c == "detail" else r[c] for c in JOURNAL_COLUMNS])
        return 0
    cli_engine._print(
        rows,
        args.json,
        lambda: (
            "\n".join(
                f"{r['at']:<32} {r['ticket']:>10} {r['kind']:<13} epoch={r['epoch']} "
                + json.dumps(r["detail"], default=str)
                for r in rows
            )
            or f"no journal entries since {since.isoformat()}"
        ),
    )
    return 0


JOURNAL_COLUMNS = ("id", "at", "ticket", "kind", "epoch", "instance", "detail")


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    journal = sub.add_parser("journal", parents=[common], help="the trade journal: every change made to a position")
    journal.add_argument("--since", type=since_arg, help="from this time on (ISO 8601; default 24 hours ago)")
    journal.add_argument("--limit", type=int_in(1, MAX_LIMIT), default=1000, help=f"at most this many (1..{MAX_LIMIT})")
    form = journal.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true")
    form.add_argument("--csv", action="store_true", help="CSV with a header row (detail as JSON)")
    journal.set_defaults(engine_func=cmd_journal)
    trades = sub.add_parser("trades", help="positions under management: list, show, register, unregister")
    tsub = trades.add_subparsers(dest="trades_command", required=True)
    lst = tsub.add_parser("list", parents=[common], help="the managed positions")
    lst.add_argument("--all", action="store_true", help="unmanaged and closed ones too")
    lst.add_argument("--json", action="store_true")
    show = tsub.add_parser("show", parents=[common], help="one position with its journal")
    show.add_argument("ticket")
    show.add_argument("--json", action="store_true")
    reg = tsub.add_parser("register", parents=[common], help="manage a venue position (idempotent)")
    reg.add_argument("ticket")
    reg.add_argument(
        "--manage", help='the rules as JSON, e.g. \'{"breakeven": {"at_rr": 1}}\' (default: HAEXEC_MANAGE_DEFAULT)'
    )
    reg.add_argument("--sl", help="the stop that defines its risk, when the venue has none")
    reg.add_argument("--json", action="store_true")
    unreg = tsub.add_parser("unregister", parents=[common], help="stop managing (the stop stays at the venue)")
    unreg.add_argument("ticket")
    unreg.add_argument("--json", action="store_true")
    trades.set_defaults(engine_func=cmd_trades)
