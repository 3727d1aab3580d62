"""`haexec up`: a local cluster of N replica processes on the embedded default (or the
configured servers) and, with the paper broker, the paper venue beside them (`haexec
venue`), each restarted when it crashes, with a live view of who leads."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
from psycopg_pool import ConnectionPool

from common.errors import ConfigError
from coordinator.epoch import EpochStore
from coordinator.lease import redis_client
from coordinator.view import ClusterView, read_view
from db.session import SessionLimits, make_pool
from engine import controls
from engine.controls import KillSwitch
from haexec import settings as settings_mod
from haexec.replica import StartupError, check_database, resolve_urls

RESTART_BACKOFF_MAX_S = 10.0
VENUE = "venue"
# The venue marks the account every 250 ms by default; a mark older than this is a venue
# that stopped matching (or lost its database), whatever its process looks like.
VENUE_STALE_MS = 2000


@dataclass
class Child:
    instance_id: str
    http: str
    log_path: Path
    command: tuple[str, ...] = ("run",)
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    backoff_s: float = 0.5
    last_exit: int | None = None
    started_at: float = field(default_factory=time.monotonic)
    log_offset: int = 0  # where this run's output starts in its log
    last_error: str | None = None  # why it last died, while it has not come back
    announced: bool = False  # seen in the registry since it was last started


def venue_child(logs: Path) -> Child:
    return Child(VENUE, "-", logs / "venue.log", command=(VENUE,))


def _spawn(child: Child, env: dict[str, str]) -> None:
    child_env = {**env, "HAEXEC_INSTANCE_ID": child.instance_id}
    if child.command == ("run",):
        child_env["HAEXEC_HTTP"] = child.http
    log = open(child.log_path, "ab")
    try:
        child.log_offset = os.fstat(log.fileno()).st_size
        child.proc = subprocess.Popen(
            [sys.executable, "-m", "haexec.cli", *child.command],
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches `up` only; it stops the replicas in order
        )
    finally:
        log.close()
    child.started_at = time.monotonic()
    child.announced = False


def last_line(path: Path, offset: int, window: int = 8192) -> str | None:
    """The last non-empty line written to `path` after `offset` (a one-line start-up failure,
    or the last line of a traceback), or None."""
    text = ""
    with contextlib.suppress(OSError), path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(offset, size - window))
        text = f.read().decode(errors="replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else None


def exit_reason(code: int, log_path: Path, offset: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return last_line(log_path, offset) or f"exit {code} with no output"


def _alive(c: Child) -> bool:
    return c.proc is not None and c.proc.poll() is None


def role_of(c: Child, entry: dict[str, Any] | None) -> tuple[str, str]:
    """(role, healthy) as the table shows them. A registry entry outlives its replica by up to
    its TTL; one that stopped being refreshed is "unresponsive", whatever role it last claimed."""
    if not _alive(c):
        return ("stopped" if c.last_exit is None else f"exit {c.last_exit}"), "-"
    if entry is None:
        return ("unresponsive", "no") if c.announced else ("starting", "-")
    if entry.get("unresponsive"):
        return "unresponsive", "no"
    return str(entry.get("role", "?")), str(entry.get("healthy", "-"))


def venue_role(c: Child, mark_age_ms: int | None) -> tuple[str, str]:
    """The venue has no registry entry: its account marks are its heartbeat. "matching" while
    they are fresh; "standby" while another venue's are (it waits for the lock); else
    "starting" (no mark yet) or "stalled"."""
    if not _alive(c):
        return ("stopped" if c.last_exit is None else f"exit {c.last_exit}"), "-"
    if mark_age_ms is None:
        return "starting", "-"
    if mark_age_ms <= VENUE_STALE_MS:
        return ("matching", "yes") if c.announced else ("standby", "-")
    return "stalled", "no"


def _role(c: Child, registered: dict[Any, dict[str, Any]], mark_age_ms: int | None) -> tuple[str, str]:
    if c.command == (VENUE,):
        return venue_role(c, mark_age_ms)
    return role_of(c, registered.get(c.instance_id))


def _roles(view: ClusterView, children: list[Child], mark_age_ms: int | None = None) -> tuple[str, ...]:
    registered = {r.get("instance_id"): r for r in view.replicas}
    return tuple(_role(c, registered, mark_age_ms)[0] for c in children)


def _note_announced(view: ClusterView, children: list[Child], venue: tuple[str | None, int | None]) -> None:
    registered = {r.get("instance_id") for r in view.replicas if not r.get("unresponsive")}
    venue_id, age = venue
    for c in children:
        if c.command == (VENUE,):
            # its marks name it: this venue is the one matching (not a standby beside another's)
            c.announced = _alive(c) and venue_id == c.instance_id and age is not None and age <= VENUE_STALE_MS
            if c.announced:
                c.last_error = None
        elif c.instance_id in registered and _alive(c):
            c.announced = True
            c.last_error = None  # it came back


def _read_venue(pool: ConnectionPool, cluster: str) -> tuple[str | None, int | None]:
    """Who last marked the paper account and how long ago (ms), or (None, None)."""
    try:
        with pool.connection() as conn:
            row = conn.execute(
                "SELECT venue, floor(extract(epoch FROM clock_timestamp() - marked_at) * 1000)::bigint"
                " FROM paper_marks WHERE cluster = %s",
                (cluster,),
            ).fetchone()
    except (psycopg.Error, psycopg_pool.PoolTimeout):
        return None, None
    return (row[0], int(row[1])) if row else (None, None)


def _read_switch(pool: ConnectionPool, cluster: str) -> KillSwitch | None:
    """The kill switch, or None while the database does not answer (the view says why)."""
    try:
        with pool.connection() as conn:
            return controls.read(conn, cluster)
    except (psycopg.Error, psycopg_pool.PoolTimeout):
        return None


def _render(
    view: ClusterView | None,
    children: list[Child],
    tty: bool,
    switch: KillSwitch | None = None,
    mark_age_ms: int | None = None,
) -> str:
    lines = []
    if view is not None:
        leader = view.leader
        who = f"{leader['instance_id']} (epoch {leader['epoch']})" if leader else "none"
        flags = " SPLIT-BRAIN" if view.split_brain else ""
        flags += " STALE-LEADER" if view.stale_leader else ""
        lines.append(f"cluster {view.cluster}  leader {who}{flags}")
        registered = {r.get("instance_id"): r for r in view.replicas}
    else:
        registered = {}
    if switch is not None and switch.halted:
        lines.append(f"TRADING HALTED: {switch.describe()}")
    lines.append(f"{'instance':<14}{'pid':>8}  {'role':<13}{'healthy':<9}{'http':<18}restarts")
    for c in children:
        pid = str(c.proc.pid) if _alive(c) and c.proc else "-"
        role, healthy = _role(c, registered, mark_age_ms)
        lines.append(f"{c.instance_id:<14}{pid:>8}  {role:<13}{healthy:<9}{c.http:<18}{c.restarts}")
    for c in children:
        if c.last_error:
            lines.append(f"{c.instance_id} died: {c.last_error} (log {c.log_path})")
    for err in view.errors if view else []:
        lines.append(f"error: {err}")
    text = "\n".join(lines)
    return ("\x1b[H\x1b[2J" + text + "\n") if tty else text + "\n"


def run_up(args: argparse.Namespace, env: dict[str, str]) -> int:
    try:
        base = settings_mod.load(env)
    except ConfigError as e:
        print(f"haexec up: configuration: {e}", file=sys.stderr)
        return 2
    if args.http_base_port + args.replicas > 65535:
        print("haexec up: --http-base-port + --replicas must stay below 65536", file=sys.stderr)
        return 2
    from embedded import running_servers, stop_servers

    started_servers = base.embedded and running_servers(base.state_dir) is None
    try:
        redis_url, database_url = resolve_urls(base)
        # Here, once: a replica would fail the same way, and be restarted to fail again.
        check_database(database_url, base.startup_timeout_s)
    except StartupError as e:
        print(f"haexec up: {e}", file=sys.stderr)
        return 1
    env = {**env, "HAEXEC_REDIS_URL": redis_url, "HAEXEC_DATABASE_URL": database_url}
    logs = base.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    children = [
        Child(f"replica-{i}", f"127.0.0.1:{args.http_base_port + i}", logs / f"replica-{i}.log")
        for i in range(1, args.replicas + 1)
    ]
    if base.broker == "paper" and not getattr(args, "no_venue", False):
        children.append(venue_child(logs))  # the paper account's stops trigger whoever leads
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    for c in children:
        _spawn(c, env)

    client = redis_client(redis_url, 1.0)
    pool = make_pool(database_url, SessionLimits(1000, "haexec-up"), name="haexec-up", max_size=1)
    pool.open(wait=False)
    epochs = EpochStore(pool, base.election.cluster, base.election.stale_after_ms, base.election.handoff_ms)
    tty = sys.stdout.isatty() and not args.no_view
    last_summary = None
    try:
        while not stop.is_set():
            now = time.monotonic()
            for c in children:
                if c.proc is not None and c.proc.poll() is not None:
                    c.last_exit = c.proc.returncode
                    c.last_error = exit_reason(c.last_exit, c.log_path, c.log_offset)
                    c.proc = None
                    # A replica that keeps dying right away backs off; one that ran a while restarts at once.
                    c.backoff_s = 0.5 if now - c.started_at > 30 else min(c.backoff_s * 2, RESTART_BACKOFF_MAX_S)
                    c.next_start = now + c.backoff_s
                    print(
                        f"{c.instance_id} exited with {c.last_exit}: {c.last_error} (log {c.log_path}); "
                        f"restarting in {c.backoff_s:.1f}s",
                        file=sys.stderr,
                    )
                if c.proc is None and now >= c.next_start:
                    c.restarts += 1
                    _spawn(c, env)
            view = read_view(client, epochs, base.election.stale_after_ms)
            switch = _read_switch(pool, base.election.cluster)
            venue = _read_venue(pool, base.election.cluster)
            _note_announced(view, children, venue)
            if tty:
                sys.stdout.write(_render(view, children, tty=True, switch=switch, mark_age_ms=venue[1]))
                sys.stdout.flush()
            else:
                summary = (
                    view.leader and (view.leader["instance_id"], view.leader["epoch"]),
                    view.split_brain,
                    _roles(view, children, venue[1]),  # a replica dying or hanging is news too
                    switch.halted if switch else None,
                )
                if summary != last_summary:
                    sys.stdout.write(_render(view, children, tty=False, switch=switch, mark_age_ms=venue[1]))
                    sys.stdout.flush()
                    last_summary = summary
            stop.wait(1.0)
    finally:
        _stop_children(children, base.election.lease_ms)
        pool.close(timeout=1)
        client.close()
        if started_servers:
            stop_servers(base.state_dir)
    print("stopped", file=sys.stderr)
    return 0


def _stop_children(children: list[Child], lease_ms: int) -> None:
    running = [c.proc for c in children if c.proc is not None and c.proc.poll() is None]
    for p in running:
        os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 2 * lease_ms / 1000 + 2
    for p in running:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
