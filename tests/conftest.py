"""Real servers for the suite: HAEXEC_TEST_REDIS_URL / HAEXEC_TEST_DATABASE_URL when set,
otherwise an embedded Redis and PostgreSQL started for this session. Each session gets a
database of its own, migrated to head; each test a cluster name of its own."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from db import migrate
from db.urls import libpq_url
from tests.support import ReplicaProcess, start_replica, stop_replicas

# Tests that start replica processes, servers or process supervisors, and time what they do:
# one xdist worker runs them all, in order (pyproject's --dist loadgroup), while the other
# takes the rest, so two drills never compete for the 2 cores.
SERIAL = ("tests/drills/", "tests/ops/test_supervisord.py", "tests/ops/test_gateway_ops.py", "tests/test_embedded.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).resolve().parent.parent
    for item in items:
        where = item.path.resolve().relative_to(root).as_posix()
        if where.startswith(SERIAL):
            item.add_marker(pytest.mark.xdist_group("processes"))


@pytest.fixture(scope="session")
def server_urls() -> Iterator[tuple[str, str]]:
    redis_url = os.environ.get("HAEXEC_TEST_REDIS_URL")
    database_url = os.environ.get("HAEXEC_TEST_DATABASE_URL")
    state_dir: Path | None = None
    if not (redis_url and database_url):
        from embedded import ensure_servers

        state_dir = server_workdir("embedded")
        servers = ensure_servers(state_dir)
        redis_url = redis_url or servers.redis_url
        database_url = database_url or servers.database_url
    yield redis_url, database_url
    if state_dir is not None:
        from embedded import stop_servers

        stop_servers(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)


def server_workdir(name: str) -> Path:
    """A directory for a test-owned PostgreSQL. Not under tmp_path: as root the server runs
    as another user, and pytest resets its base directory to 0700 whenever a session starts."""
    return Path(tempfile.mkdtemp(prefix=f"haexec-{name}-"))


def _with_dbname(url: str, dbname: str) -> str:
    return urlsplit(libpq_url(url))._replace(path=f"/{dbname}").geturl()


def create_database(server_url: str, prefix: str = "haexec_t") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return _with_dbname(server_url, name)


def drop_database(server_url: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url(server_urls: tuple[str, str]) -> str:
    return server_urls[0]


@pytest.fixture(scope="session")
def database_url(server_urls: tuple[str, str]) -> Iterator[str]:
    """A database of this session's own, at schema head."""
    url = create_database(server_urls[1])
    migrate.upgrade(url)
    yield url
    drop_database(server_urls[1], url)


@pytest.fixture
def cluster() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[dict[str, str], str], ReplicaProcess]]:
    """Start `haexec run` processes; every one is stopped (SIGCONT first) after the test."""
    started: list[ReplicaProcess] = []

    def _spawn(env: dict[str, str], instance_id: str) -> ReplicaProcess:
        r = start_replica(env, instance_id, tmp_path)
        started.append(r)
        return r

    yield _spawn
    stop_replicas(started)
