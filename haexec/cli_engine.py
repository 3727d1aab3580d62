"""`haexec signal|broker|halt|resume|reconcile|audit`: the operator's side of the signal pipeline.
They talk to PostgreSQL (and the broker) directly, so they work with no replica up."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict

import psycopg
from psycopg_pool import ConnectionPool

from engine import audit, controls, intake, store
from engine.brokers.base import Broker
from engine.model import SignalStatus
from engine.signal import MAX_BODY_BYTES, BodyTooLarge, DuplicateKey, SignalValidationError, loads
from haexec import settings as settings_mod
from haexec.cli_common import MAX_LIMIT, CommandError, database_url, int_in, open_database

EXIT_FAILED = 1
# `signal list` shows 16 characters; 8 already make a collision among a cluster's signals rare.
MIN_PREFIX = 8
_HEX = re.compile(r"[0-9a-f]+")


@contextmanager
def _pool(args: argparse.Namespace, env: dict[str, str]) -> Iterator[tuple[ConnectionPool, settings_mod.Settings]]:
    """A pool on the configured database, reachable and at this release's schema."""
    cfg = settings_mod.load(env)
    with open_database(database_url(args), "haexec-cli", max_size=2) as pool:
        yield pool, cfg


def fingerprint_arg(value: str) -> str:
    """An argparse type: a fingerprint, or a prefix of one (hex, at least MIN_PREFIX characters)."""
    text = value.strip().lower()
    if not (MIN_PREFIX <= len(text) <= 64 and _HEX.fullmatch(text)):
        raise argparse.ArgumentTypeError(
            f"must be a fingerprint or its first {MIN_PREFIX} or more hex characters (got {value!r})"
        )
    return text


def _fingerprint(conn: psycopg.Connection, cluster: str, prefix: str) -> str:
    """The one fingerprint that starts with `prefix`; none or several is an CommandError."""
    found = store.fingerprints_starting(conn, cluster, prefix, limit=3)
    if not found:
        raise CommandError(f"no signal {prefix} in cluster {cluster!r}")
    if len(found) > 1:
        some = ", ".join(fp[: len(prefix) + 4] for fp in found[:2]) + (", ..." if len(found) > 2 else "")
        raise CommandError(f"{prefix} is the start of several signals ({some}): give more characters")
    return found[0]


def _print(obj: object, as_json: bool, text: Callable[[], str]) -> None:
    print(json.dumps(obj, default=str) if as_json else text())


def cmd_signal(args: argparse.Namespace, env: dict[str, str]) -> int:
    with _pool(args, env) as (pool, cfg):
        cluster = cfg.election.cluster
        if args.signal_command == "submit":
            # Bytes, as POST /signals reads them, and never more of stdin than the limit needs.
            raw = sys.stdin.buffer.read(MAX_BODY_BYTES + 1) if args.body == "-" else os.fsencode(args.body)
            try:
                body = loads(raw)
            except (BodyTooLarge, DuplicateKey) as e:
                raise CommandError(f"the signal is refused: {e}") from None
            except (ValueError, RecursionError):
                raise CommandError("the signal is not valid JSON") from None
            try:
                accepted = intake.submit(pool, cluster, f"cli:{getpass.getuser()}", body)
            except SignalValidationError as e:
                raise CommandError("; ".join(f"{k}: {v}" for k, v in e.errors.items())) from None
            if accepted.conflict:
                raise CommandError(f"signal_id reused with a different trade intent ({accepted.fingerprint})")
            answer = {"fingerprint": accepted.fingerprint, "status": accepted.status, "duplicate": accepted.duplicate}
            _print(
                answer,
                args.json,
                lambda: f"{accepted.fingerprint} {accepted.status}" + (" (duplicate)" if accepted.duplicate else ""),
            )
            return 0
        if args.signal_command == "list":
            with pool.connection() as conn:
                rows = store.list_signals(conn, cluster, args.status, args.limit)
            _print(
                rows,
                args.json,
                lambda: (
                    "\n".join(
                        f"{r['fingerprint'][:16]}  {r['status']:<10} epoch={r['epoch']} ref={r['broker_ref']} "
                        f"{r['received_at']}"
                        for r in rows
                    )
                    or "no signals"
                ),
            )
            return 0
        if args.signal_command == "show":
            with pool.connection() as conn:
                found = store.show(conn, cluster, _fingerprint(conn, cluster, args.fingerprint))
            if found is None:  # deleted in between
                raise CommandError(f"no signal {args.fingerprint} in cluster {cluster!r}")
            _print(found, args.json, lambda: json.dumps(found, indent=2, default=str))
            return 0
        return _resolve(args, pool, cluster)


def _resolve(args: argparse.Namespace, pool: ConnectionPool, cluster: str) -> int:
    actor = args.actor or f"cli:{getpass.getuser()}"
    with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        fingerprint = _fingerprint(conn, cluster, args.fingerprint)
        row = store.lock_signal(cur, cluster, fingerprint)
        if row is None:
            raise CommandError(f"no signal {args.fingerprint} in cluster {cluster!r}")
        signal, status, epoch = row
        if status != SignalStatus.IN_DOUBT:
            raise CommandError(f"signal is {status}; only in_doubt signals can be resolved")
        why = args.reason or "operator decision"
        if args.executed:
            target, detail, ref = (
                SignalStatus.EXECUTED,
                f"resolved as executed (ticket {args.executed}): {why}",
                args.executed,
            )
        elif args.cancel:
            target, detail, ref = SignalStatus.CANCELLED, f"cancelled: {why}", None
        else:
            target, detail, ref = SignalStatus.RECEIVED, f"re-execute requested: {why}", None
        if store.settle_held(cur, signal, status, epoch, target, actor, actor, detail, ref=ref):
            audit.record(
                cur, cluster, "resolve", actor, args.reason, {"fingerprint": fingerprint, "to": target, "ticket": ref}
            )
    print(f"{fingerprint} {target}")
    return 0


def cmd_control(args: argparse.Namespace, env: dict[str, str]) -> int:
    halted = args.command == "halt"
    actor = f"cli:{getpass.getuser()}"
    with _pool(args, env) as (pool, cfg), pool.connection() as conn:
        controls.write(conn, cfg.election.cluster, halted, getattr(args, "reason", None), actor)
    print(f"cluster {cfg.election.cluster}: {'halted' if halted else 'trading'}")
    return 0


def cmd_audit(args: argparse.Namespace, env: dict[str, str]) -> int:
    with _pool(args, env) as (pool, cfg), pool.connection() as conn:
        cluster = cfg.election.cluster
        if args.audit_command == "verify":
            verdict = audit.verify(conn, cluster)
            if not verdict.intact:
                raise CommandError(
                    f"audit chain of cluster {cluster!r} broken at entry {verdict.broken_id}: {verdict.problem}"
                )
            print(f"audit chain intact: {verdict.entries} entries")
            return 0
        entries = [e.as_dict() for e in audit.latest(conn, cluster, args.limit)]
    _print(
        entries,
        args.json,
        lambda: (
            "\n".join(
                f"{e['id']:>6}  {e['at']}  {e['action']:<10} {e['actor']}"
                + (f": {e['reason']}" if e["reason"] else "")
                + (f" {json.dumps(e['detail'], sort_keys=True)}" if e["detail"] else "")
                for e in entries
            )
            or "no audit entries"
        ),
    )
    return 0


def _broker(cfg: settings_mod.Settings, pool: ConnectionPool) -> Broker:
    from haexec.replica import build_broker

    broker = build_broker(cfg, pool)
    broker.connect()
    return broker


def cmd_broker(args: argparse.Namespace, env: dict[str, str]) -> int:
    from engine.brokers.base import BrokerError

    with _pool(args, env) as (pool, cfg):
        try:
            broker = _broker(cfg, pool)
            orders = broker.orders()
        except BrokerError as e:
            raise CommandError(f"broker {cfg.engine.broker}: {e}") from None
        rows = [{**asdict(o), "side": o.side.value} for o in orders]
        _print(
            rows,
            args.json,
            lambda: (
                "\n".join(
                    f"{r['ticket']:>8} {r['tag'] or '-':<28} {r['symbol']:<10} {r['side']:<4} "
                    f"{r['volume']} @ {r['price']} {r['state']} epoch={r['epoch']}"
                    for r in rows
                )
                or "no orders"
            ),
        )
    return 0


def cmd_reconcile(args: argparse.Namespace, env: dict[str, str]) -> int:
    from engine.brokers.base import BrokerError
    from engine.reconcile import RECONCILE_TIMEOUT_MS, reconcile

    with _pool(args, env) as (pool, cfg):
        try:
            broker = _broker(cfg, pool)
            report = reconcile(
                pool, broker, cfg.election.cluster, f"cli:{getpass.getuser()}", None, 3 * RECONCILE_TIMEOUT_MS
            )
        except BrokerError as e:
            raise CommandError(f"broker {cfg.engine.broker}: {e}") from None
        _print({**asdict(report), "ok": report.ok}, args.json, lambda: json.dumps(asdict(report), indent=2))
    return 0 if report.ok else EXIT_FAILED


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:

    sig = sub.add_parser("signal", help="submit, list, show and resolve signals")
    sigsub = sig.add_subparsers(dest="signal_command", required=True)
    submit = sigsub.add_parser("submit", parents=[common], help="store a signal (JSON argument, or - for stdin)")
    submit.add_argument("body", help="the signal as JSON, or - to read it from stdin")
    submit.add_argument("--json", action="store_true")
    lst = sigsub.add_parser(
        "list", parents=[common], help="the latest signals, newest first (fingerprints cut to 16 characters)"
    )
    lst.add_argument("--status", choices=[s.value for s in SignalStatus], help="only signals in this status")
    lst.add_argument("--limit", type=int_in(1, MAX_LIMIT), default=50, help=f"at most this many (1..{MAX_LIMIT})")
    lst.add_argument("--json", action="store_true")
    fp_help = f"the fingerprint, or a unique prefix of it ({MIN_PREFIX}+ hex characters, as `signal list` shows)"
    show = sigsub.add_parser("show", parents=[common], help="one signal with its event history")
    show.add_argument("fingerprint", type=fingerprint_arg, help=fp_help)
    show.add_argument("--json", action="store_true")
    res = sigsub.add_parser("resolve", parents=[common], help="settle a signal held in doubt")
    res.add_argument("fingerprint", type=fingerprint_arg, help=fp_help)
    how = res.add_mutually_exclusive_group(required=True)
    how.add_argument("--executed", metavar="TICKET", help="it was executed: this is the broker's ticket")
    how.add_argument("--reexecute", action="store_true", help="it was not executed: execute it now")
    how.add_argument("--cancel", action="store_true", help="do not execute it")
    res.add_argument("--reason", help="why (kept in the signal's history)")
    res.add_argument("--actor", help="who (default cli:<user>)")
    sig.set_defaults(engine_func=cmd_signal)

    broker = sub.add_parser("broker", help="the configured broker")
    brsub = broker.add_subparsers(dest="broker_command", required=True)
    orders = brsub.add_parser("orders", parents=[common], help="orders at the broker with their tags")
    orders.add_argument("--json", action="store_true")
    broker.set_defaults(engine_func=cmd_broker)

    halt = sub.add_parser("halt", parents=[common], help="kill switch: accept and store signals, execute none")
    halt.add_argument("--reason")
    halt.set_defaults(engine_func=cmd_control)
    resume = sub.add_parser("resume", parents=[common], help="lift the kill switch")
    resume.set_defaults(engine_func=cmd_control)
    aud = sub.add_parser("audit", help="the operator audit: who halted, resumed, resolved, switched over, and why")
    audsub = aud.add_subparsers(dest="audit_command", required=True)
    audsub.add_parser("verify", parents=[common], help="check the hash chain; exit 1 naming the first broken entry")
    alist = audsub.add_parser("list", parents=[common], help="the latest entries, newest first")
    alist.add_argument("--limit", type=int_in(1, MAX_LIMIT), default=50, help=f"at most this many (1..{MAX_LIMIT})")
    alist.add_argument("--json", action="store_true")
    aud.set_defaults(engine_func=cmd_audit)
    rec = sub.add_parser("reconcile", parents=[common], help="compare broker positions with the database")
    rec.add_argument("--json", action="store_true")
    rec.set_defaults(engine_func=cmd_reconcile)
