"""What every `haexec` command shares: exit statuses, the one-line error, the parser that
answers usage errors in one line, flags laid over the environment, and the stores a command
opens. `cli.py` and `cli_engine.py` both build on it; neither imports the other's internals."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, NoReturn

from common.numbers import ascii_int

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

EXIT_FAILED = 1
EXIT_CONFIG = 2
# What a shell reports for a process killed by SIGPIPE (128 + 13): the reader of our stdout
# (`head`, a closed pager) went away, as it would for any Unix tool under `set -o pipefail`.
EXIT_BROKEN_PIPE = 141
# More rows than an operator reads, few enough for one query and one screen of JSON.
MAX_LIMIT = 10_000
MAX_REPLICAS = 64


class CommandError(Exception):
    """An expected failure of a command: one line, exit status 1."""


def env_with(args: argparse.Namespace) -> dict[str, str]:
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


def store_urls(args: argparse.Namespace) -> tuple[str, str]:
    """Configured URLs, else those of a running embedded cluster (never starts one)."""
    from haexec import settings as settings_mod

    cfg = settings_mod.load(env_with(args))
    if not cfg.embedded:
        assert cfg.redis_url and cfg.database_url
        return cfg.redis_url, cfg.database_url
    from embedded import running_servers

    servers = running_servers(cfg.state_dir)
    if servers is None:
        raise CommandError(
            f"no HAEXEC_REDIS_URL/HAEXEC_DATABASE_URL and no embedded servers running in {cfg.state_dir}"
        )
    return cfg.redis_url or servers.redis_url, cfg.database_url or servers.database_url


@contextmanager
def open_database(url: str, name: str, timeout_ms: int = 5000, max_size: int = 1) -> Iterator[ConnectionPool]:
    """A pool on a database that answered and holds this release's schema, or CommandError:
    one line naming the database (password redacted) and the cause. The first connection is
    made by hand so the cause is libpq's, not the pool's "initialization incomplete"."""
    import psycopg
    from psycopg_pool import PoolTimeout

    from common.errors import first_line
    from db import migrate
    from db.session import SessionLimits, connect, make_pool
    from db.urls import redact

    limits = SessionLimits(timeout_ms, name)
    try:
        with connect(url, limits) as conn:
            state = migrate.read_schema(conn)
    except psycopg.OperationalError as e:
        raise CommandError(f"database at {redact(url)} unreachable: {first_line(e)}") from None
    except psycopg.Error as e:
        raise CommandError(f"database at {redact(url)}: {first_line(e)}") from None
    problem = state.problem()
    if problem is not None:
        raise CommandError(problem)
    pool = make_pool(url, limits, name=name, max_size=max_size)
    try:
        pool.open(wait=True, timeout=timeout_ms / 1000)
    except PoolTimeout as e:  # it answered a moment ago
        pool.close()
        raise CommandError(f"database at {redact(url)} unreachable: {first_line(e)}") from None
    try:
        yield pool
    finally:
        pool.close(timeout=1)


def database_url(args: argparse.Namespace) -> str:
    from haexec import settings as settings_mod

    cfg = settings_mod.load(env_with(args))
    if cfg.database_url:
        return cfg.database_url
    from embedded import EmbeddedError, ensure_servers

    try:
        return ensure_servers(cfg.state_dir).database_url
    except EmbeddedError as e:
        raise CommandError(f"embedded servers: {e}") from None


class Parser(argparse.ArgumentParser):
    """Usage errors are one line and exit 2, like every other bad input (argparse's own
    answer is a usage block). Subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: {message} (see {self.prog} --help)\n")


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer within [low, high]."""

    def parse(value: str) -> int:
        try:
            n = ascii_int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer in ASCII digits (got {value!r})") from None
        if not low <= n <= high:
            raise argparse.ArgumentTypeError(f"must be {low}..{high} (got {n})")
        return n

    return parse


def since_arg(value: str) -> datetime:
    """An argparse type: an ISO 8601 time with its offset (`2026-12-04T00:00:00Z`)."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an ISO 8601 time such as 2026-12-04T00:00:00Z (got {value!r})"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"must say its time zone, e.g. a trailing Z for UTC (got {value!r})")
    return moment
