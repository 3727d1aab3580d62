"""The `haexec` command line. Expected failures print one line: exit 2 for bad
configuration or usage, 1 for a failed start-up or an unreachable store."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import ConfigError
from haexec.cli_common import (
    EXIT_BROKEN_PIPE,
    EXIT_CONFIG,
    EXIT_FAILED,
    MAX_LIMIT,
    MAX_REPLICAS,
    CommandError,
    Parser,
    database_url,
    env_with,
    int_in,
    open_database,
    store_urls,
)

if TYPE_CHECKING:  # the commands import what they need when they run: `haexec --help` stays quick
    from redis import Redis

    from coordinator.view import ClusterView
    from engine.controls import KillSwitch


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # alembic narrates every migration step at INFO; start-up failures must stay one line.
    logging.getLogger("alembic").setLevel(logging.WARNING)


# ---- run ----


def cmd_run(args: argparse.Namespace) -> int:
    from haexec import settings as settings_mod
    from haexec.alerts import AlertSink
    from haexec.replica import Replica, StartupError, resolve_urls

    env = env_with(args)
    cfg = settings_mod.load(env)
    alerts = AlertSink.from_env(env, cfg.election.cluster, cfg.election.instance_id)
    _setup_logging(cfg.log_level)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        redis_url, database_url = resolve_urls(cfg)
        replica = Replica(cfg, redis_url, database_url, alerts)
        replica.start()
    except StartupError as e:
        print(f"haexec run: {e}", file=sys.stderr)
        return EXIT_FAILED
    stop.wait()
    replica.stop("released:sigterm")
    return 0


# ---- status / leader ----


def _redis(url: str) -> Redis:
    """A client on a Redis that answered a PING, or CommandError naming it (password redacted)."""
    import redis

    from common.errors import first_line
    from coordinator.lease import redis_client
    from coordinator.redis_url import redact_redis_url

    client = redis_client(url, 2.0)
    try:
        client.ping()
    except redis.RedisError as e:
        client.close()
        raise CommandError(f"redis at {redact_redis_url(url)} unreachable: {first_line(e)}") from None
    return client


def _read_view(args: argparse.Namespace) -> tuple[ClusterView, KillSwitch]:
    from coordinator.epoch import EpochStore
    from coordinator.view import read_view
    from engine import controls
    from haexec import settings as settings_mod

    election = settings_mod.election_config(env_with(args))
    redis_url, database_url = store_urls(args)
    client = _redis(redis_url)
    try:
        with open_database(database_url, "haexec-status", timeout_ms=2000) as pool:
            epochs = EpochStore(pool, election.cluster, election.stale_after_ms, election.handoff_ms)
            view = read_view(client, epochs, election.stale_after_ms)
            with pool.connection() as conn:
                switch = controls.read(conn, election.cluster)
    finally:
        client.close()
    if view.errors:  # both answered a moment ago: a store went away meanwhile
        raise CommandError(view.errors[0])
    return view, switch


def cmd_status(args: argparse.Namespace) -> int:
    view, switch = _read_view(args)
    if args.json:
        print(json.dumps({**view.as_dict(), "kill_switch": switch.as_dict()}, default=str))
    else:
        leader = view.leader
        print(f"cluster     {view.cluster}")
        who = f"{leader['instance_id']} (epoch {leader['epoch']})" if leader else "-"
        print(f"leader      {who}")
        print(f"trading     {'HALTED' if switch.halted else 'on'}: {switch.describe()}")
        print(f"redis       {view.redis_leader or '-'} (pttl {view.lease_pttl_ms} ms)")
        age = f"{view.db_heartbeat_age_ms:.0f} ms ago" if view.db_heartbeat_age_ms is not None else "never"
        released = ", released" if view.db_released else ""
        print(f"database    {view.db_leader or '-'} epoch {view.epoch} heartbeat {age}{released}")
        if view.split_brain:
            print("SPLIT BRAIN: Redis and PostgreSQL name different leaders")
        if view.stale_leader:
            print("STALE LEADER: the database leader stopped heartbeating")
        for r in view.replicas:
            name = r.get("instance_id")
            role, healthy = ("unresponsive", False) if r.get("unresponsive") else (r.get("role"), r.get("healthy"))
            print(f"  {name:<20} {role:<12} http={r.get('http')} healthy={healthy}")
    return 0


def cmd_leader(args: argparse.Namespace) -> int:
    view, _ = _read_view(args)
    leader = view.leader
    http = None
    if leader:
        http = next((r.get("http") for r in view.replicas if r.get("instance_id") == leader["instance_id"]), None)
    if args.json:
        print(json.dumps({"leader": leader, "http": http, "split_brain": view.split_brain, "errors": view.errors}))
    elif leader:
        print(f"{leader['instance_id']} epoch {leader['epoch']} http {http or '-'}")
    else:
        print("no leader")
    return 0 if leader else EXIT_FAILED


# ---- switchover / history ----


def cmd_switchover(args: argparse.Namespace) -> int:
    """Ask the leader to hand over, then wait for the new leader's epoch and report it."""
    import time
    import urllib.error
    import urllib.request

    before, _ = _read_view(args)
    leader = before.leader
    if leader is None:
        raise CommandError("no leader to switch over from")
    if args.to is not None and args.to == leader["instance_id"]:  # nothing to do, which is success
        if args.json:
            print(json.dumps({"from": leader, "leader": leader, "took_ms": 0, "already_leader": True}))
        else:
            print(f"{leader['instance_id']} already leads at epoch {leader['epoch']}")
        return 0
    http = next((r.get("http") for r in before.replicas if r.get("instance_id") == leader["instance_id"]), None)
    if not http:
        raise CommandError(f"leader {leader['instance_id']} has no registered HTTP address")
    known = {r.get("instance_id") for r in before.replicas}
    if args.to is not None and args.to not in known:
        raise CommandError(f"unknown replica {args.to!r} (known: {', '.join(sorted(map(str, known)))})")
    import getpass

    body = json.dumps({"to": args.to, "reason": args.reason, "actor": f"cli:{getpass.getuser()}"}).encode()
    headers = {"Content-Type": "application/json"}
    token = os.environ.get("HAEXEC_API_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    started = time.monotonic()
    request = urllib.request.Request(f"http://{http}/coordinator/switchover", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            resp.read()
    except urllib.error.HTTPError as e:
        detail = json.loads(e.read() or b"{}").get("error", e.reason)
        raise CommandError(f"switchover refused ({e.code}): {detail}") from None
    except (urllib.error.URLError, OSError) as e:
        raise CommandError(f"leader at {http} unreachable: {e}") from None
    deadline = started + args.timeout
    while time.monotonic() < deadline:
        view, _ = _read_view(args)
        now = view.leader
        if now is not None and now["epoch"] > leader["epoch"]:
            took_ms = (time.monotonic() - started) * 1000
            answer = {"from": leader, "leader": now, "took_ms": round(took_ms, 1)}
            if args.json:
                print(json.dumps(answer))
            else:
                print(f"{now['instance_id']} leads at epoch {now['epoch']} ({took_ms:.0f} ms)")
            return 0
        time.sleep(0.02)
    raise CommandError(f"no new leader within {args.timeout:g}s")


def cmd_history(args: argparse.Namespace) -> int:
    from coordinator.epoch import EpochStore
    from haexec import settings as settings_mod

    election = settings_mod.election_config(env_with(args))
    _, database_url = store_urls(args)
    with open_database(database_url, "haexec-history") as pool:
        entries = EpochStore(pool, election.cluster, election.stale_after_ms, election.handoff_ms).history(args.limit)
    if args.json:
        print(json.dumps([asdict(e) for e in entries]))
    else:
        for e in entries:
            print(f"{e.at}  epoch {e.epoch:<5} {e.instance_id:<20} {e.reason}")
    return 0


# ---- db ----


def cmd_db(args: argparse.Namespace) -> int:
    from db import migrate

    if args.db_command == "history":
        for rev, down, doc in migrate.history():
            print(f"{down or '<base>'} -> {rev}  {doc.splitlines()[0] if doc else ''}")
        return 0
    url = database_url(args)
    try:
        if args.db_command == "upgrade":
            state = migrate.schema_state(url)
            if not state.upgradable:  # a stranger's tables, or a newer release's revision
                raise CommandError(str(state.problem()))
            dump = migrate.upgrade(url, args.revision, Path(args.backup_dir) if args.backup_dir else None)
            if dump:
                print(f"backup: {dump}")
            print(f"at {migrate.current_revision(url)}")
        elif args.db_command == "downgrade":
            migrate.downgrade(url, args.revision)
            print(f"at {migrate.current_revision(url) or 'base'}")
        else:
            current = migrate.current_revision(url)
            head = migrate.head_revision()
            print(f"{current or 'base'}{' (head)' if current == head else f' (head is {head})'}")
    except (migrate.MigrationError, CommandError) as e:
        raise CommandError(str(e)) from None
    except Exception as e:  # alembic/SQLAlchemy: unknown revision, unreachable database
        from common.errors import first_line

        raise CommandError(f"db {args.db_command}: {first_line(e)}") from None
    return 0


# ---- venue ----


def cmd_venue(args: argparse.Namespace) -> int:
    from haexec.replica import StartupError
    from haexec.venue import run_venue

    try:
        return run_venue(env_with(args), _setup_logging)
    except StartupError as e:
        raise CommandError(str(e)) from None


# ---- up ----


def cmd_gateway(args: argparse.Namespace) -> int:
    from haexec.gateway.main import run

    env = dict(os.environ)
    for flag, name in (
        ("cluster", "HAEXEC_CLUSTER"),
        ("database_url", "HAEXEC_DATABASE_URL"),
        ("http", "HAEXEC_GATEWAY_HTTP"),
        ("state_dir", "HAEXEC_GATEWAY_STATE_DIR"),
    ):
        if getattr(args, flag, None) is not None:
            env[name] = str(getattr(args, flag))
    _setup_logging(env.get("HAEXEC_LOG_LEVEL", "INFO"))
    return run(env)


def cmd_up(args: argparse.Namespace) -> int:
    from haexec.up import run_up

    return run_up(args, env_with(args))


# ---- parser ----


def _seconds(value: str) -> float:
    """A positive, finite number of seconds, at most an hour (a wait, never a forever)."""
    try:
        n = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds (got {value!r})") from None
    if not 0 < n <= 3600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3600 seconds (got {value})")
    return n


def _positive(value: str) -> int:
    """At least 1; the setting it feeds checks the upper bound and names itself."""
    return int_in(1, sys.maxsize)(value)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("haexec")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--cluster", help="cluster name (HAEXEC_CLUSTER)")
    common.add_argument("--state-dir", help="embedded servers' directory (HAEXEC_STATE_DIR, default ./.haexec)")
    common.add_argument("--redis-url", help="HAEXEC_REDIS_URL")
    common.add_argument("--database-url", help="HAEXEC_DATABASE_URL")

    parser = Parser(prog="haexec", description="High-availability trading-signal executor")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common], help="run one replica (what a supervisor starts)")
    run.add_argument("--instance-id", help="HAEXEC_INSTANCE_ID")
    run.add_argument("--http", help="host:port to serve HTTP on (HAEXEC_HTTP)")
    run.add_argument("--lease-ms", type=_positive, help="HAEXEC_LEASE_MS")
    run.set_defaults(func=cmd_run)

    up = sub.add_parser("up", parents=[common], help="run a local cluster of N replicas")
    up.add_argument("--replicas", type=int_in(1, MAX_REPLICAS), default=3)
    up.add_argument("--http-base-port", type=int_in(1, 65535), default=8700, help="replicas listen on P+1..P+N")
    up.add_argument("--lease-ms", type=_positive, help="HAEXEC_LEASE_MS")
    up.add_argument("--no-view", action="store_true", help="print changes only, no live table")
    up.add_argument("--no-venue", action="store_true", help="do not start the paper venue beside the replicas")
    up.set_defaults(func=cmd_up)

    gw = sub.add_parser("gateway", help="the fenced MT5 gateway: one process beside one terminal")
    gw.add_argument("--cluster", help="the cluster it serves (HAEXEC_CLUSTER)")
    gw.add_argument("--database-url", help="where epochs are confirmed (HAEXEC_DATABASE_URL)")
    gw.add_argument("--http", help="host:port to serve on (HAEXEC_GATEWAY_HTTP, default 127.0.0.1:8790)")
    gw.add_argument("--state-dir", help="promise and journal (HAEXEC_GATEWAY_STATE_DIR, default ./.haexec-gateway)")
    gw.set_defaults(func=cmd_gateway)

    venue = sub.add_parser(
        "venue", parents=[common], help="the paper venue: matches the paper account's orders (one per cluster)"
    )
    venue.add_argument("--instance-id", help="HAEXEC_INSTANCE_ID (names the venue in its account marks)")
    venue.set_defaults(func=cmd_venue)

    for name, func, text in (
        ("status", cmd_status, "cluster state read from Redis and PostgreSQL"),
        ("leader", cmd_leader, "the current leader (exit 1 when there is none)"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)

    sw = sub.add_parser("switchover", parents=[common], help="graceful handover to another replica")
    sw.add_argument("--to", help="the instance to hand over to (default: whoever is first)")
    sw.add_argument("--timeout", type=_seconds, default=10.0, help="seconds to wait for the new leader")
    sw.add_argument("--reason", help="why (kept in the operator audit)")
    sw.add_argument("--json", action="store_true")
    sw.set_defaults(func=cmd_switchover)
    hist = sub.add_parser("history", parents=[common], help="latest leadership changes")
    hist.add_argument("--limit", type=int_in(1, MAX_LIMIT), default=20)
    hist.add_argument("--json", action="store_true")
    hist.set_defaults(func=cmd_history)

    db = sub.add_parser("db", help="schema migrations")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    upg = dbsub.add_parser("upgrade", parents=[common], help="migrate to a revision (default head)")
    upg.add_argument("revision", nargs="?", default="head")
    upg.add_argument("--backup-dir", help="pg_dump here first; refuse to migrate if the dump fails")
    down = dbsub.add_parser("downgrade", parents=[common], help="migrate back to a revision")
    down.add_argument("revision", help="target revision, or 'base'")
    dbsub.add_parser("current", parents=[common], help="the database's revision and this release's head")
    dbsub.add_parser("history", parents=[common], help="this release's revisions, newest first")
    db.set_defaults(func=cmd_db)

    from haexec import cli_engine

    cli_engine.add_commands(sub, common)
    from haexec import cli_market

    cli_market.add_commands(sub, common)
    from haexec import cli_account

    cli_account.add_commands(sub, common)
    from haexec.drill.cli import add_commands as add_drill

    add_drill(sub, common)
    return parser


def cmd_engine(args: argparse.Namespace) -> int:
    import psycopg
    from psycopg_pool import PoolTimeout

    from common.errors import first_line
    from db.migrate import schema_mismatch

    try:
        return args.engine_func(args, env_with(args))
    except psycopg.Error as e:  # a table not as the statement expects, or the database went away
        raise CommandError(schema_mismatch(e) or f"database: {first_line(e)}") from None
    except PoolTimeout as e:
        raise CommandError(f"database unreachable: {first_line(e)}") from None


def _stdout_gone() -> int:
    """The reader of stdout closed it: stop quietly. Whatever is still buffered goes to
    /dev/null, so the interpreter's own flush at exit cannot fail a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = cmd_engine if hasattr(args, "engine_func") else args.func
    try:
        status = func(args)
        sys.stdout.flush()  # here, not at exit, so a closed pipe is caught below
        return status
    except BrokenPipeError:
        return _stdout_gone()
    except ConfigError as e:
        print(f"haexec {args.command}: configuration: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except CommandError as e:
        print(f"haexec {args.command}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
