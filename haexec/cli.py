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
from typing import Any

from coordinator.config import ConfigError

EXIT_FAILED = 1
EXIT_CONFIG = 2


class CommandError(Exception):
    """An expected failure of a command: one line, exit status 1."""


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # alembic narrates every migration step at INFO; start-up failures must stay one line.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _env_with(args: argparse.Namespace) -> dict[str, str]:
    """The environment with command-line flags laid over it."""
    env = dict(os.environ)
    for flag, name in (
        ("cluster", "HAEXEC_CLUSTER"),
        ("instance_id", "HAEXEC_INSTANCE_ID"),
        ("http", "HAEXEC_HTTP"),
        ("state_dir", "HAEXEC_STATE_DIR"),
        ("lease_ms", "HAEXEC_LEASE_MS"),
        ("redis_url", "HAEXEC_REDIS_URL"),
        ("database_url", "HAEXEC_DATABASE_URL"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            env[name] = str(value)
    return env


# ---- run ----


def cmd_run(args: argparse.Namespace) -> int:
    from haexec import settings as settings_mod
    from haexec.alerts import AlertSink
    from haexec.replica import Replica, StartupError, resolve_urls

    env = _env_with(args)
    cfg = settings_mod.load(env)
    alerts = AlertSink.from_env(env, cfg.election.cluster, cfg.election.instance_id)
    _setup_logging(os.environ.get("HAEXEC_LOG_LEVEL", "INFO"))
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


def _store_urls(args: argparse.Namespace) -> tuple[str, str]:
    """Configured URLs, else those of a running embedded cluster (never starts one)."""
    from haexec import settings as settings_mod

    cfg = settings_mod.load(_env_with(args))
    if not cfg.embedded:
        assert cfg.redis_url and cfg.database_url
        return cfg.redis_url, cfg.database_url
    from haexec.embedded import running_servers

    servers = running_servers(cfg.state_dir)
    if servers is None:
        raise CommandError(
            f"no HAEXEC_REDIS_URL/HAEXEC_DATABASE_URL and no embedded servers running in {cfg.state_dir}"
        )
    return cfg.redis_url or servers.redis_url, cfg.database_url or servers.database_url


def _read_view(args: argparse.Namespace) -> Any:
    from coordinator.epoch import EpochStore
    from coordinator.lease import redis_client
    from coordinator.view import read_view
    from db.session import SessionLimits, make_pool
    from haexec import settings as settings_mod

    election = settings_mod.election_config(_env_with(args))
    redis_url, database_url = _store_urls(args)
    client = redis_client(redis_url, 2.0)
    pool = make_pool(database_url, SessionLimits(2000, "haexec-status"), name="haexec-status", max_size=1)
    try:
        try:
            pool.open(wait=True, timeout=5)
        except Exception:
            pass  # read_view reports the database as unreachable
        epochs = EpochStore(pool, election.cluster, election.stale_after_ms, election.handoff_ms)
        return read_view(client, epochs, election.stale_after_ms)
    finally:
        pool.close(timeout=1)
        client.close()


def cmd_status(args: argparse.Namespace) -> int:
    view = _read_view(args)
    if args.json:
        print(json.dumps(view.as_dict(), default=str))
    else:
        leader = view.leader
        print(f"cluster     {view.cluster}")
        who = f"{leader['instance_id']} (epoch {leader['epoch']})" if leader else "-"
        print(f"leader      {who}")
        print(f"redis       {view.redis_leader or '-'} (pttl {view.lease_pttl_ms} ms)")
        age = f"{view.db_heartbeat_age_ms:.0f} ms ago" if view.db_heartbeat_age_ms is not None else "never"
        released = ", released" if view.db_released else ""
        print(f"database    {view.db_leader or '-'} epoch {view.epoch} heartbeat {age}{released}")
        if view.split_brain:
            print("SPLIT BRAIN: Redis and PostgreSQL name different leaders")
        if view.stale_leader:
            print("STALE LEADER: the database leader stopped heartbeating")
        for r in view.replicas:
            name, role = r.get("instance_id"), r.get("role")
            print(f"  {name:<20} {role:<9} http={r.get('http')} healthy={r.get('healthy')}")
        for err in view.errors:
            print(f"error: {err}")
    return EXIT_FAILED if len(view.errors) == 2 else 0


def cmd_leader(args: argparse.Namespace) -> int:
    view = _read_view(args)
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

    before = _read_view(args)
    leader = before.leader
    if leader is None:
        raise CommandError("no leader to switch over from")
    http = next((r.get("http") for r in before.replicas if r.get("instance_id") == leader["instance_id"]), None)
    if not http:
        raise CommandError(f"leader {leader['instance_id']} has no registered HTTP address")
    known = {r.get("instance_id") for r in before.replicas}
    if args.to is not None and args.to not in known:
        raise CommandError(f"unknown replica {args.to!r} (known: {', '.join(sorted(map(str, known)))})")
    body = json.dumps({"to": args.to}).encode()
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
        view = _read_view(args)
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
    from db.session import SessionLimits, make_pool
    from haexec import settings as settings_mod

    election = settings_mod.election_config(_env_with(args))
    _, database_url = _store_urls(args)
    pool = make_pool(database_url, SessionLimits(5000, "haexec-history"), name="haexec-history", max_size=1)
    try:
        pool.open(wait=True, timeout=10)
        entries = EpochStore(pool, election.cluster, election.stale_after_ms, election.handoff_ms).history(args.limit)
    except Exception as e:
        from coordinator.errors import first_line

        raise CommandError(f"database unreachable: {first_line(e)}") from None
    finally:
        pool.close(timeout=1)
    if args.json:
        print(json.dumps([asdict(e) for e in entries]))
    else:
        for e in entries:
            print(f"{e.at}  epoch {e.epoch:<5} {e.instance_id:<20} {e.reason}")
    return 0


# ---- db ----


def _database_url(args: argparse.Namespace) -> str:
    from haexec import settings as settings_mod

    cfg = settings_mod.load(_env_with(args))
    if cfg.database_url:
        return cfg.database_url
    from haexec.embedded import EmbeddedError, ensure_servers

    try:
        return ensure_servers(cfg.state_dir).database_url
    except EmbeddedError as e:
        raise CommandError(f"embedded servers: {e}") from None


def cmd_db(args: argparse.Namespace) -> int:
    from db import migrate

    if args.db_command == "history":
        for rev, down, doc in migrate.history():
            print(f"{down or '<base>'} -> {rev}  {doc.splitlines()[0] if doc else ''}")
        return 0
    url = _database_url(args)
    try:
        if args.db_command == "upgrade":
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
    except migrate.MigrationError as e:
        raise CommandError(str(e)) from None
    except Exception as e:  # alembic/SQLAlchemy: unknown revision, unreachable database
        from coordinator.errors import first_line

        raise CommandError(f"db {args.db_command}: {first_line(e)}") from None
    return 0


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

    return run_up(args, _env_with(args))


# ---- parser ----


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer (got {value!r})") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {n})")
    return n


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cluster", help="cluster name (HAEXEC_CLUSTER)")
    common.add_argument("--state-dir", help="embedded servers' directory (HAEXEC_STATE_DIR, default ./.haexec)")
    common.add_argument("--redis-url", help="HAEXEC_REDIS_URL")
    common.add_argument("--database-url", help="HAEXEC_DATABASE_URL")

    parser = argparse.ArgumentParser(prog="haexec", description="High-availability trading-signal executor")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common], help="run one replica (what a supervisor starts)")
    run.add_argument("--instance-id", help="HAEXEC_INSTANCE_ID")
    run.add_argument("--http", help="host:port to serve HTTP on (HAEXEC_HTTP)")
    run.add_argument("--lease-ms", type=_positive, help="HAEXEC_LEASE_MS")
    run.set_defaults(func=cmd_run)

    up = sub.add_parser("up", parents=[common], help="run a local cluster of N replicas")
    up.add_argument("--replicas", type=_positive, default=3)
    up.add_argument("--http-base-port", type=_positive, default=8700, help="replicas listen on P+1..P+N")
    up.add_argument("--lease-ms", type=_positive, help="HAEXEC_LEASE_MS")
    up.add_argument("--no-view", action="store_true", help="print changes only, no live table")
    up.set_defaults(func=cmd_up)

    gw = sub.add_parser("gateway", help="the fenced MT5 gateway: one process beside one terminal")
    gw.add_argument("--cluster", help="the cluster it serves (HAEXEC_CLUSTER)")
    gw.add_argument("--database-url", help="where epochs are confirmed (HAEXEC_DATABASE_URL)")
    gw.add_argument("--http", help="host:port to serve on (HAEXEC_GATEWAY_HTTP, default 127.0.0.1:8790)")
    gw.add_argument("--state-dir", help="promise and journal (HAEXEC_GATEWAY_STATE_DIR, default ./.haexec-gateway)")
    gw.set_defaults(func=cmd_gateway)

    for name, func, text in (
        ("status", cmd_status, "cluster state read from Redis and PostgreSQL"),
        ("leader", cmd_leader, "the current leader (exit 1 when there is none)"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)

    sw = sub.add_parser("switchover", parents=[common], help="graceful handover to another replica")
    sw.add_argument("--to", help="the instance to hand over to (default: whoever is first)")
    sw.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the new leader")
    sw.add_argument("--json", action="store_true")
    sw.set_defaults(func=cmd_switchover)
    hist = sub.add_parser("history", parents=[common], help="latest leadership changes")
    hist.add_argument("--limit", type=_positive, default=20)
    hist.add_argument("--json", action="store_true")
    hist.set_defaults(func=cmd_history)

    db = sub.add_parser("db", help="schema migrations")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    upg = dbsub.add_parser("upgrade", parents=[common])
    upg.add_argument("revision", nargs="?", default="head")
    upg.add_argument("--backup-dir", help="pg_dump here first; refuse to migrate if the dump fails")
    down = dbsub.add_parser("downgrade", parents=[common])
    down.add_argument("revision", help="target revision, or 'base'")
    dbsub.add_parser("current", parents=[common])
    dbsub.add_parser("history", parents=[common])
    db.set_defaults(func=cmd_db)

    from haexec import cli_engine

    cli_engine.add_commands(sub, common)
    from haexec.drill.cli import add_commands as add_drill

    add_drill(sub, common)
    return parser


def cmd_engine(args: argparse.Namespace) -> int:
    from haexec.cli_engine import EngineCommandError

    try:
        return args.engine_func(args, _env_with(args))
    except EngineCommandError as e:
        raise CommandError(str(e)) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = cmd_engine if hasattr(args, "engine_func") else args.func
    try:
        return func(args)
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
