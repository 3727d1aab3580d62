"""What a steady cluster costs its stores: Redis commands per replica (attributed through
MONITOR) and PostgreSQL writes (the server's statement log, else pg_stat counters)."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench.cluster import BENCH_CLIENT_PREFIX, log

# The replica's three Redis connections (coordinator/service.py names them).
CONNECTION_KINDS = ("ha", "side", "events")
SCRIPT_COMMANDS = ("EVAL", "EVALSHA")


def connection_names(instances: list[str]) -> dict[str, tuple[str, str]]:
    """CLIENT SETNAME value -> (instance, kind) for the connections a replica is known to open."""
    return {f"haexec-{kind}-{i}": (i, kind) for i in instances for kind in CONNECTION_KINDS}


def owner_of(name: str, known: dict[str, tuple[str, str]], instances: list[str]) -> tuple[str, str] | None:
    """(instance, kind) of a connection name; `haexec-<kind>-<instance>` of a kind not listed
    above still belongs to that replica (new subsystems name their connections the same way)."""
    if name in known:
        return known[name]
    if name.startswith("haexec-") and not name.startswith(BENCH_CLIENT_PREFIX):
        for i in instances:
            if name.endswith(f"-{i}") and (kind := name[len("haexec-") : -len(i) - 1]):
                return i, kind
    return None


@dataclass
class RedisTally:
    """Commands seen in the window, by instance -> connection kind -> command."""

    commands: dict[str, dict[str, Counter[str]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(Counter))
    )
    # Commands a Lua script ran on the server; not round trips, reported apart.
    script_commands: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    bench: int = 0
    foreign: Counter[str] = field(default_factory=Counter)

    def total(self, instance: str) -> int:
        return sum(sum(c.values()) for c in self.commands.get(instance, {}).values())


class RedisCommandCounter:
    """A MONITOR connection on its own thread, attributing each command to the replica whose
    named connection sent it. MONITOR names clients only by address, so addresses are mapped
    to CLIENT SETNAME values through CLIENT LIST, refreshed whenever an unknown one appears
    (a replica restarted and reconnected)."""

    def __init__(self, redis_url: str, instances: list[str], keep_text: bool = False) -> None:
        self._url = redis_url
        self._instances = list(instances)
        self._names = connection_names(instances)
        # Every name ever seen per address, kept after the connection closes: commands are
        # attributed when tallied, possibly after the client is gone.
        self._addr_to_name: dict[str, str] = {}
        self._looked_up_at: dict[str, float] = {}
        self._sentinel = f"{BENCH_CLIENT_PREFIX}-stop-{uuid.uuid4().hex[:8]}"
        self._lookup = redis.Redis.from_url(
            redis_url, client_name=f"{BENCH_CLIENT_PREFIX}-lookup", socket_timeout=5, decode_responses=True
        )
        self._client = redis.Redis.from_url(
            redis_url, client_name=f"{BENCH_CLIENT_PREFIX}-monitor", decode_responses=True
        )
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)
        self._monitor: Any = None
        # (server time, client address or "lua", command verb, full command when keep_text)
        self._events: list[tuple[float, str, str, str]] = []
        self._keep_text = keep_text
        self.error: BaseException | None = None

    def start(self) -> None:
        self._refresh()
        self._monitor = self._client.monitor()
        self._monitor.__enter__()  # sends MONITOR and waits for its OK: nothing is missed after
        self._thread.start()

    def stop(self, ctl: redis.Redis, timeout_s: float = 10.0) -> None:
        """Send a marker command MONITOR will echo, so the reader stops without a read timeout
        tearing down its connection halfway through a reply."""
        ctl.echo(self._sentinel)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self.error = self.error or TimeoutError("MONITOR reader did not see the stop marker")
        try:
            self._monitor.__exit__(None, None, None)
        finally:
            self._client.close()
            self._lookup.close()

    def _refresh(self) -> None:
        for client in self._lookup.client_list():
            if client.get("name"):
                self._addr_to_name[client["addr"]] = client["name"]

    def _learn(self, addr: str) -> None:
        """Look up an address not named yet. A new connection's first command (HELLO) comes
        before its CLIENT SETNAME, so an unnamed address is looked up again when it sends
        more, but at most every 20 ms so that an unnamed client cannot flood CLIENT LIST."""
        if addr in self._addr_to_name:
            return
        now = time.monotonic()
        if now - self._looked_up_at.get(addr, -1.0) < 0.02:
            return
        self._looked_up_at[addr] = now
        self._refresh()

    def _run(self) -> None:
        try:
            while True:
                cmd = self._monitor.next_command()
                if cmd is None:
                    continue
                words = cmd["command"].split(" ", 1)
                verb = words[0].upper()
                if verb == "ECHO" and len(words) > 1 and words[1] == self._sentinel:
                    return
                text = cmd["command"][:200] if self._keep_text else ""
                if cmd["client_type"] == "lua":
                    self._events.append((cmd["time"], "lua", verb, text))
                    continue
                addr = f"{cmd['client_address']}:{cmd['client_port']}"
                self._learn(addr)
                self._events.append((cmd["time"], addr, verb, text))
        except BaseException as e:  # reported by the caller; the thread must not die silently
            self.error = e

    def dump(self, path: Path) -> None:
        """Every command seen, one line each: server time, connection name, command."""
        with path.open("w") as out:
            for at, addr, _, text in self._events:
                name = "lua" if addr == "lua" else self._addr_to_name.get(addr, f"?{addr}")
                out.write(f"{at:.6f} {name} {text}\n")

    def tally(self, start: float, end: float) -> RedisTally:
        """Commands whose MONITOR timestamp (the server's wall clock, same machine) lies in
        [start, end)."""
        tally = RedisTally()
        last_script_caller: str | None = None
        for at, addr, verb, _ in self._events:
            if addr == "lua":
                # Redis runs a script's commands right after the EVALSHA that started it and
                # is single-threaded, so they belong to the last caller of a script.
                if last_script_caller is not None and start <= at < end:
                    tally.script_commands[last_script_caller][verb] += 1
                continue
            name = self._addr_to_name.get(addr, "")
            owner = owner_of(name, self._names, self._instances)
            last_script_caller = owner[0] if owner and verb in SCRIPT_COMMANDS else None
            if not start <= at < end:
                continue
            if owner is not None:
                instance, kind = owner
                tally.commands[instance][kind][verb] += 1
            elif name.startswith(BENCH_CLIENT_PREFIX):
                tally.bench += 1
            else:
                tally.foreign[name or "(unnamed)"] += 1
        return tally


# ---- PostgreSQL ----

# log_line_prefix '%n [%p] app=%a: ' (set by bench.cluster on a bench-owned server).
_LOG_LINE = re.compile(r"^(\d+\.\d+) \[(\d+)\] app=(.*?): (\w+):  (.*)$")
_STATEMENT = re.compile(r"^(?:statement|execute [^:]*):\s*(.*)$")
WRITE_TABLES = ("leader_record", "leadership_history")
WRITE_VERBS = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "TRUNCATE", "COPY"})


@dataclass
class LoggedWrite:
    at: float
    application: str
    sql: str


def log_offset(path: Path) -> int:
    return path.stat().st_size


def logged_writes(path: Path, offset: int, everything_logged: bool = False) -> list[LoggedWrite]:
    """Data-modifying statements the server logged after `offset`. With log_statement = 'mod'
    that is every logged statement; with 'all' (--trace) those starting with a DML verb.
    A statement's text may continue on lines without the prefix; its first words are kept
    for the report."""
    with path.open("rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    logged: list[LoggedWrite] = []
    current: LoggedWrite | None = None
    for line in text.splitlines():
        m = _LOG_LINE.match(line)
        if m is None:
            if current is not None and not current.sql and line.strip():
                current.sql = " ".join(line.split()[:2])
            continue
        current = None
        if m.group(4) != "LOG":
            continue
        s = _STATEMENT.match(m.group(5))
        if s is None:
            continue
        current = LoggedWrite(float(m.group(1)), m.group(3), " ".join(s.group(1).split()[:2]))
        logged.append(current)
    if not everything_logged:
        return logged
    return [w for w in logged if w.sql.split(" ", 1)[0].upper() in WRITE_VERBS]


def pg_stat_writes(conn: psycopg.Connection) -> tuple[int, int]:
    """Rows inserted, updated and deleted (coordinator tables, all user tables), as counted by
    the statistics system (each backend flushes its counters at most once a second)."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del) FILTER (WHERE relname = ANY(%s)), 0),"
        " coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables",
        (list(WRITE_TABLES),),
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def current_xid(conn: psycopg.Connection) -> int:
    """Assigns (and returns) a transaction id. Every transaction that writes anything, row locks
    such as FOR KEY SHARE included, takes one, so the difference of two calls, minus the
    second call's own, is the number of write transactions on the whole server in between."""
    row = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
    return int(row[0]) if row else 0


def wait_window(seconds: float) -> None:
    """The measurement window itself: the one place the bench waits on the clock, by design."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))
    log(f"idle window of {seconds:g}s over")
