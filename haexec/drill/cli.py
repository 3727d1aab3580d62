"""`haexec drill SCENARIO` and `haexec drill random`: failure drills on a throwaway cluster.

Bad input is one line and exit status 2; a drill that cannot start its servers, one line
and 1; a drill that finds a violation, a round the cluster did not recover from, or a goal
it missed, the report and 1.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import NoReturn

from common.errors import ConfigError
from coordinator.config import ElectionConfig
from haexec.drill.scenarios import SCENARIOS

EXIT_USAGE = 2
DEFAULT_LEASE_MS = 3000
# A drill runs on one machine: beyond these it measures the machine, not the cluster.
MAX_REPLICAS = 16
MAX_ROUNDS = 1000
MAX_SECONDS = 86_400
MAX_RATE = 10_000.0

CHOICES = (*SCENARIOS, "all", "random")


def _usage_error(message: str) -> NoReturn:
    print(f"haexec drill: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "drill",
        parents=[common],
        help="failure drill on a throwaway local cluster: inject faults, measure, check the invariants",
        description=(
            "Start a throwaway cluster (own Redis and PostgreSQL unless --redis-url/--database-url), N replicas "
            "each behind its own fault proxies, a steady producer of signals; inject SCENARIO's fault per round; "
            "then check from the database and the broker's records that no invariant broke."
        ),
    )
    p.add_argument("scenario", help=f"one of: {', '.join(CHOICES)}")
    p.add_argument("--replicas", type=int, default=3, help="replica processes (>= 2, default 3)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per scenario (default 5)")
    p.add_argument(
        "--lease-ms", type=int, default=DEFAULT_LEASE_MS, help=f"HAEXEC_LEASE_MS (default {DEFAULT_LEASE_MS})"
    )
    p.add_argument("--seed", type=int, help="random seed (random: the schedule; default: chosen and printed)")
    p.add_argument("--seconds", type=int, default=60, help="random: length of the schedule (default 60)")
    p.add_argument("--rate", type=float, default=20.0, help="signals per second from the producer (default 20)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--report", metavar="DIR", help="also write a PNG timeline into DIR (needs matplotlib)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs) even when all is well")
    p.set_defaults(func=cmd_drill)
    # One line, exit 2, for every usage error of this command (argparse prints a usage block).
    p.error = _usage_error


def options(args: argparse.Namespace) -> object:
    from haexec.drill.run import Options

    scenario = args.scenario
    if scenario not in CHOICES:
        _usage_error(f"unknown scenario {scenario!r} (choose from {', '.join(CHOICES)})")
    if not 2 <= args.replicas <= MAX_REPLICAS:
        _usage_error(f"--replicas must be >= 2 and <= {MAX_REPLICAS} (got {args.replicas})")
    if not 1 <= args.rounds <= MAX_ROUNDS:
        _usage_error(f"--rounds must be >= 1 and <= {MAX_ROUNDS} (got {args.rounds})")
    if not 1 <= args.seconds <= MAX_SECONDS:
        _usage_error(f"--seconds must be >= 1 and <= {MAX_SECONDS} (got {args.seconds})")
    if not 0 < args.rate <= MAX_RATE:
        _usage_error(f"--rate must be positive and <= {MAX_RATE:g} (got {args.rate})")
    try:
        ElectionConfig.for_lease("drill", "drill", args.lease_ms)
    except ConfigError as e:
        _usage_error(f"--lease-ms {args.lease_ms}: {e}")
    if args.redis_url and not args.redis_url.startswith(("redis://", "rediss://")):
        _usage_error("--redis-url must be a redis:// or rediss:// URL (the drill proxies TCP)")
    if args.database_url and not args.database_url.startswith(("postgresql://", "postgres://")):
        _usage_error("--database-url must be a postgresql:// URL")
    if scenario == "redis-restart" and args.redis_url:
        _usage_error("redis-restart restarts the drill's own Redis: it cannot be run with --redis-url")
    if scenario == "db-restart" and args.database_url:
        _usage_error("db-restart restarts the drill's own PostgreSQL: it cannot be run with --database-url")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    return Options(
        scenario=scenario,
        replicas=args.replicas,
        rounds=args.rounds,
        lease_ms=args.lease_ms,
        seed=seed,
        seconds=args.seconds,
        json=args.json,
        report_dir=Path(args.report) if args.report else None,
        redis_url=args.redis_url,
        database_url=args.database_url,
        rate=args.rate,
        keep=args.keep,
    )


def cmd_drill(args: argparse.Namespace) -> int:
    from haexec.drill.run import execute

    opts = options(args)
    return execute(opts)  # type: ignore[arg-type]
