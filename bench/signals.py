"""Signal pipeline benchmark on real processes: `python -m bench.signals`.

N `haexec run` replicas with the paper broker share a fresh cluster name on one Redis and one
PostgreSQL (bench-owned by default, or given by URL). Risk limits are set so high that risk
never rejects. Every signal is distinct (its own signal_id), posted round-robin over all
replicas. Phases, each optional through --only:

latency     open loop: --signals signals at --rate per second (sent on schedule whatever the
            answers). Latency = signals.updated_at (the UPDATE that made it 'executed') -
            signals.received_at (the intake INSERT), both PostgreSQL clock_timestamp(), read
            after the run; split at attempt_at (the claim) into queue and execute.
            Goal: p50 < 10 ms, p99 < 50 ms.
throughput  closed loop: --concurrency producers (asyncio, keep-alive) post as fast as they are
            answered, --signals signals in all. throughput = executed / (last updated_at -
            first received_at); intake = accepted / posting time. Goal: >= 300 signals/s.

A warm-up (not measured) first lets the leader take office and grows the connection pools.
After each phase every signal must be 'executed' with exactly one paper order (its tag) whose
ticket is the signal's broker_ref. The producer shares the machine with what it measures, so
CPU seconds of the bench process, each replica, PostgreSQL, Redis and everything else on the
host are reported per phase. --profile samples the leader with py-spy during each phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from bench.cluster import BENCH_CLIENT_PREFIX, BenchError, Replica, Servers, log, replica_env, wait_until
from bench.failover import code_version
from bench.idle import log_offset, logged_writes
from bench.stats import summary
from coordinator.keys import cluster_pattern
from db.urls import libpq_url
from haexec.drill.cluster import free_port

PHASES = ("latency", "throughput")
GOAL_P50_MS = 10.0
GOAL_P99_MS = 50.0
GOAL_THROUGHPUT = 300.0
READY_TIMEOUT_S = 30.0
LEADER_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 10.0
DB_POLL_S = 0.05
PROGRESS_EVERY_S = 5.0
QUIET_WINDOW_S = 2.0
QUIET_OTHER_PCT = 20.0  # of one core: what the rest of the host may use for it to count as quiet
# Risk must never be what a signal meets: open positions pile up over a run.
RISK_ENV = {"HAEXEC_RISK_MAX_OPEN_POSITIONS": "1000000", "HAEXEC_RISK_MAX_VOLUME": "1000000"}
JSON_HEADERS = {"content-type": "application/json"}
# uvicorn closes a keep-alive connection idle for 5 s; one idle longer than this is not reused.
IDLE_REUSE_S = 3.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Options:
    replicas: int
    signals: int
    rate: float
    concurrency: int
    client: str
    intake: str
    pg_waits: bool
    warmup: int
    only: tuple[str, ...]
    json: bool
    lease_ms: int
    settle_timeout_s: float
    redis_url: str | None
    database_url: str | None
    keep: bool
    profile: bool
    count_statements: bool
    wait_quiet_s: float
    replica_env: dict[str, str]


@dataclass(frozen=True)
class Post:
    status: int  # 0: no answer
    sent: float  # perf_counter
    done: float
    error: str | None = None


# ---- producers (asyncio; keep-alive connections) ----


def signal_body(run: str, phase: str, i: int) -> bytes:
    """A distinct, valid signal that risk accepts: 0.01 lots, a 100-pip stop."""
    return json.dumps(
        {
            "source": f"bench-{phase}",
            "signal_id": f"{run}-{phase}-{i}",
            "symbol": "EURUSD",
            "side": "buy",
            "type": "market",
            "volume": "0.01",
            "price": "1.1000",
            "sl": "1.0900",
            "tp": "1.1200",
        },
        separators=(",", ":"),
    ).encode()


class HttpxClients:
    """One httpx.AsyncClient per replica, at most `limit` connections each; `open` makes
    `warm` of them up front so no measured request pays for a TCP connect."""

    def __init__(self, bases: list[str], warm: int, limit: int) -> None:
        limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit, keepalive_expiry=IDLE_REUSE_S)
        self.warm = warm
        self.clients = [httpx.AsyncClient(base_url=b, limits=limits, timeout=HTTP_TIMEOUT_S) for b in bases]

    async def open(self) -> None:
        gets = [c.get("/ready") for c in self.clients for _ in range(self.warm)]
        for resp in await asyncio.gather(*gets):
            if resp.status_code != 200:
                raise BenchError(f"{resp.request.url} answered {resp.status_code} before the phase")

    async def close(self) -> None:
        for c in self.clients:
            await c.aclose()

    async def post(self, i: int, body: bytes) -> Post:
        client = self.clients[i % len(self.clients)]
        sent = time.perf_counter()
        try:
            resp = await client.post("/signals", content=body, headers=JSON_HEADERS)
        except httpx.HTTPError as e:
            return Post(0, sent, time.perf_counter(), f"{type(e).__name__}: {e}")
        done = time.perf_counter()
        return Post(resp.status_code, sent, done, None if resp.status_code == 202 else resp.text[:200])


class RawConnection:
    """Minimal HTTP/1.1 keep-alive client on asyncio streams: far less CPU per request than
    httpx, for a producer that must not take the cores it measures. It only understands
    answers with a Content-Length (all of the replica's are)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used = time.monotonic()

    async def connect(self) -> RawConnection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        answer = (await self.reader.readexactly(length)) if length else b""
        self.used = time.monotonic()
        return status, answer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class RawClients:
    """Per replica a pool of RawConnections: an idle one if there is one, else a new one."""

    def __init__(self, bases: list[str], warm: int, limit: int) -> None:
        self.addrs = [(u.host, u.port) for u in (httpx.URL(b) for b in bases)]
        self.warm = warm
        self.idle: list[list[RawConnection]] = [[] for _ in bases]
        self.all: list[RawConnection] = []

    async def _new(self, k: int) -> RawConnection:
        host, port = self.addrs[k]
        conn = RawConnection(host, int(port or 80))
        self.all.append(conn)
        return await conn.connect()

    async def open(self) -> None:
        for k in range(len(self.addrs)):
            for conn in await asyncio.gather(*(self._new(k) for _ in range(self.warm))):
                status, _ = await conn.request("GET", "/ready")
                if status != 200:
                    raise BenchError(f"{conn.host}:{conn.port}/ready answered {status} before the phase")
                self.idle[k].append(conn)

    async def close(self) -> None:
        for conn in self.all:
            conn.close()

    def _idle(self, k: int) -> RawConnection | None:
        """The most recently used idle connection, closing those the server may have dropped."""
        idle = self.idle[k]
        while idle:
            conn = idle.pop()
            if time.monotonic() - conn.used < IDLE_REUSE_S:
                return conn
            conn.close()
        return None

    async def post(self, i: int, body: bytes) -> Post:
        k = i % len(self.addrs)
        sent = time.perf_counter()
        conn: RawConnection | None = None
        try:
            conn = self._idle(k) or await self._new(k)
            status, answer = await asyncio.wait_for(conn.request("POST", "/signals", body), HTTP_TIMEOUT_S)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as e:
            if conn is not None:
                conn.close()  # in an unknown state: never reused
            return Post(0, sent, time.perf_counter(), f"{type(e).__name__}: {e}")
        done = time.perf_counter()
        self.idle[k].append(conn)
        return Post(status, sent, done, None if status == 202 else answer[:200].decode(errors="replace"))


Clients = HttpxClients | RawClients


def make_clients(kind: str, bases: list[str], warm: int, limit: int) -> Clients:
    return RawClients(bases, warm, limit) if kind == "raw" else HttpxClients(bases, warm, limit)


async def open_loop(kind: str, bases: list[str], bodies: list[bytes], rate: float) -> tuple[list[Post], list[float]]:
    """Send body i at start + i/rate whatever the earlier answers; returns the posts and how
    late each send was against its schedule (seconds)."""
    clients = make_clients(kind, bases, warm=max(4, math.ceil(rate / len(bases) * 0.05)), limit=256)
    try:
        await clients.open()
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        tasks: list[asyncio.Task[Post]] = []
        late: list[float] = []
        for i, body in enumerate(bodies):
            at = start + i / rate
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            late.append(max(0.0, loop.time() - at))
            tasks.append(asyncio.create_task(clients.post(i, body)))
        posts = list(await asyncio.gather(*tasks))
    finally:
        await clients.close()
    return posts, late


async def closed_loop(kind: str, bases: list[str], bodies: list[bytes], concurrency: int) -> list[Post]:
    """`concurrency` producers, each posting the next body as soon as its last one is answered."""
    per_replica = math.ceil(concurrency / len(bases)) + 1
    clients = make_clients(kind, bases, warm=per_replica, limit=concurrency)
    posts: list[Post | None] = [None] * len(bodies)
    work = iter(enumerate(bodies))

    async def producer() -> None:
        for i, body in work:
            posts[i] = await clients.post(i, body)

    try:
        await clients.open()
        await asyncio.gather(*(producer() for _ in range(concurrency)))
    finally:
        await clients.close()
    return [p for p in posts if p is not None]


# ---- CPU accounting from /proc ----


def _stat_fields(pid: int) -> list[str]:
    # Fields after the parenthesised command name, starting with field 3 (state).
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def proc_cpu_s(pid: int, with_reaped: bool = False) -> float:
    """utime + stime of a process (all its threads); with_reaped adds its waited-for children."""
    try:
        f = _stat_fields(pid)
    except OSError:
        return 0.0
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if with_reaped else 0)
    return ticks / CLK_TCK


def tree_cpu_s(root: int) -> float:
    """A server and its live children (PostgreSQL backends) plus the children it reaped."""
    total = proc_cpu_s(root, with_reaped=True)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            f = _stat_fields(int(entry.name))
        except OSError:
            continue
        if int(f[1]) == root:
            total += (int(f[11]) + int(f[12])) / CLK_TCK
    return total


def machine_busy_s() -> float:
    """CPU seconds spent by anything on the host (all cores), from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return (sum(parts[:8]) - idle) / CLK_TCK


def self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class CpuSnapshot:
    wall: float
    parts: dict[str, float]


# ---- py-spy ----


FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):\d+\)$")


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Per-thread share of the samples and the top frames (self and inclusive), from py-spy's
    raw (collapsed) output. Idle frames are not sampled, so shares are shares of CPU."""
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = frames[0].partition(": ")[2] or frames[0]
        names = []
        for fr in frames[1:]:
            m = FRAME.match(fr)
            names.append(f"{m['func']} ({Path(m['file']).name})" if m else fr)
        total += n
        threads[thread] += n
        if names:
            own[names[-1]] += n
        for name in set(names):
            inclusive[name] += n

    def pct(c: Counter[str], k: int) -> list[list[Any]]:
        return [[name, round(100.0 * n / total, 1)] for name, n in c.most_common(k)] if total else []

    return {
        "samples": total,
        "threads_pct": pct(threads, 10),
        "self_pct": pct(own, top),
        "inclusive_pct": pct(inclusive, top),
    }


class Profiler:
    """`py-spy record` of one process, stopped with SIGINT (py-spy then writes its file)."""

    def __init__(self, binary: str, pid: int, out: Path) -> None:
        self.out = out
        self._proc = subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--threads"]
            + ["--nonblocking", "--output", str(out)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.3)  # py-spy attaches before the phase starts

    def stop(self) -> dict[str, Any] | None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(signal.SIGINT)
        try:
            _, err = self._proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
            return None
        if not self.out.exists():
            log(f"py-spy wrote nothing: {err.decode(errors='replace').strip()[-300:]}")
            return None
        return {"file": str(self.out), **summarize_profile(self.out)}


class PgWaits:
    """Samples pg_stat_activity every few ms on its own thread and connection: what the
    replicas' engine sessions that are not idle are doing (active on which statement, waiting
    for what; or idle in a transaction, i.e. waiting for the replica's next statement)."""

    def __init__(self, database_url: str, leader: str, every_s: float = 0.005) -> None:
        self._conn = psycopg.connect(
            libpq_url(database_url), autocommit=True, application_name=f"{BENCH_CLIENT_PREFIX}-waits"
        )
        self._leader = leader
        self._every = every_s
        self._stop = threading.Event()
        self._tally: Counter[str] = Counter()
        self._samples = 0
        self._thread = threading.Thread(target=self._run, name="bench-pg-waits", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sql = (
            "SELECT application_name, state, wait_event_type, wait_event, (regexp_match(query, '^\\s*(\\w+)'))[1] "
            "FROM pg_stat_activity WHERE application_name LIKE 'haexec-engine-%' AND state <> 'idle'"
        )
        try:
            while not self._stop.wait(self._every):
                for app, state, wtype, wevent, verb in self._conn.execute(sql).fetchall():
                    who = "leader" if app == f"haexec-engine-{self._leader}" else "follower"
                    what = f"{state}" + (f" {verb}" if state == "active" else "")
                    wait = f" [{wtype}:{wevent}]" if wtype else ""
                    self._tally[f"{who} {what}{wait}"] += 1
                self._samples += 1
        except psycopg.Error as e:
            log(f"pg_stat_activity sampling stopped: {e}")

    def stop(self) -> dict[str, Any]:
        """Mean number of sessions in each state (1.0: one session, all the time)."""
        self._stop.set()
        self._thread.join(5)
        self._conn.close()
        n = max(1, self._samples)
        return {
            "samples": self._samples,
            "mean_sessions": {k: round(v / n, 2) for k, v in self._tally.most_common(15) if v / n >= 0.01},
        }


# ---- the cluster and the phases ----


@dataclass
class PhaseRun:
    phase: str
    source: str
    posts: list[Post] = field(default_factory=list)
    late: list[float] = field(default_factory=list)


class SignalBench:
    def __init__(self, opts: Options, servers: Servers) -> None:
        self.opts = opts
        self.servers = servers
        self.run_id = uuid.uuid4().hex[:8]
        self.cluster = f"bench{self.run_id}"
        prefix = "" if servers.redis_server is not None else f"{self.run_id}-"
        self.replicas: list[Replica] = []
        for i in range(1, opts.replicas + 1):
            instance, port = f"{prefix}r{i}", free_port()
            env = replica_env(self.cluster, instance, port, servers.redis_url, servers.database_url, opts.lease_ms)
            env.update(RISK_ENV)
            env.update(opts.replica_env)
            self.replicas.append(Replica(instance, port, env, servers.logs / f"{instance}.log"))
        self.profiler_binary = py_spy() if opts.profile else None
        if opts.profile and self.profiler_binary is None:
            raise BenchError("--profile needs py-spy (.venv/bin/pip install py-spy)")
        self.leader: Replica | None = None
        self.profiler: Profiler | None = None
        self.db = psycopg.connect(
            libpq_url(servers.database_url), autocommit=True, application_name=f"{BENCH_CLIENT_PREFIX}-signals"
        )

    # ---- plumbing ----

    def start(self) -> None:
        for r in self.replicas:
            r.start()
        for r in self.replicas:
            r.wait_ready(READY_TIMEOUT_S)
        self.leader = self.find_leader()
        log(f"cluster {self.cluster}: {len(self.replicas)} replicas ready, leader {self.leader.instance_id}")

    def find_leader(self) -> Replica:
        def one() -> Replica | None:
            found = [r for r in self.replicas if r.is_leader()]
            return found[0] if len(found) == 1 else None

        leader = wait_until(one, LEADER_TIMEOUT_S, 0.02)
        if leader is None:
            raise BenchError(f"no single leader among {len(self.replicas)} replicas within {LEADER_TIMEOUT_S:g}s")
        return leader

    def epoch(self) -> int:
        row = self.db.execute("SELECT epoch FROM leader_record WHERE cluster = %s", (self.cluster,)).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        if self.profiler is not None:
            self.profiler.stop()
            self.profiler = None
        # Followers first: stopping the leader first would only hand office to one of them.
        leader = self.leader
        for r in sorted(self.replicas, key=lambda r: r is leader):
            try:
                r.stop()
            except Exception as e:
                log(f"stopping {r.instance_id} failed: {e}")
        try:
            self._forget_cluster()
        finally:
            self.db.close()

    def _forget_cluster(self) -> None:
        """On servers that outlive the bench, leave no trace of its throw-away cluster."""
        if self.servers.redis_server is not None and self.servers.pg_server is not None:
            return
        try:
            with redis.Redis.from_url(self.servers.redis_url, socket_timeout=5) as ctl:
                keys = list(ctl.scan_iter(match=cluster_pattern(self.cluster), count=100))
                if keys:
                    ctl.delete(*keys)
            for table in (
                "signals",  # cascades to signal_events and executions
                "paper_deals",
                "paper_positions",
                "paper_orders",
                "paper_accounts",
                "controls",
                "reconciliations",
                "broker_positions",
                "leadership_history",
                "leader_record",
            ):
                self.db.execute(f"DELETE FROM {table} WHERE cluster = %s", (self.cluster,))
        except (redis.RedisError, psycopg.Error) as e:
            log(f"could not remove cluster {self.cluster} from the servers: {e}")

    def cpu_snapshot(self) -> CpuSnapshot:
        parts = {"bench": self_cpu_s()}
        for r in self.replicas:
            parts[r.instance_id] = proc_cpu_s(r.pid) if r.alive() else 0.0
        pg = self.servers.pg_server.pid if self.servers.pg_server is not None else None
        if pg is not None:
            parts["postgres"] = tree_cpu_s(pg)
        rs = self.servers.redis_server.pid if self.servers.redis_server is not None else None
        if rs is not None:
            parts["redis"] = proc_cpu_s(rs)
        parts["machine"] = machine_busy_s()
        return CpuSnapshot(time.monotonic(), parts)

    def cpu_between(self, a: CpuSnapshot, b: CpuSnapshot) -> dict[str, Any]:
        wall = max(1e-9, b.wall - a.wall)
        used = {k: b.parts[k] - a.parts.get(k, 0.0) for k in b.parts}
        machine = used.pop("machine")
        known = sum(used.values())
        used["rest_of_host"] = max(0.0, machine - known)  # everything else on the host (other workloads)
        labels = {r.instance_id: f"{r.instance_id}{' (leader)' if r is self.leader else ''}" for r in self.replicas}
        return {
            "wall_s": round(wall, 3),
            "cores": os.cpu_count(),
            "machine_busy_pct_of_all_cores": round(100.0 * machine / wall / (os.cpu_count() or 1), 1),
            "cpu_s": {labels.get(k, k): round(v, 2) for k, v in used.items()},
            "pct_of_one_core": {labels.get(k, k): round(100.0 * v / wall, 1) for k, v in used.items()},
        }

    def wait_settled(self, source: str, expected: int) -> bool:
        """Until every signal of `source` is stored and none is received/executing."""
        timeout = self.opts.settle_timeout_s
        last = [time.monotonic()]

        def settled() -> bool:
            row = self.db.execute(
                "SELECT count(*), count(*) FILTER (WHERE status IN ('received', 'executing')) "
                "FROM signals WHERE cluster = %s AND source = %s",
                (self.cluster, source),
            ).fetchone()
            total, pending = row if row is not None else (0, 0)  # an aggregate always has a row
            if time.monotonic() - last[0] >= PROGRESS_EVERY_S:
                last[0] = time.monotonic()
                log(f"  {source}: {total}/{expected} stored, {pending} not yet executed")
            return total >= expected and pending == 0

        return wait_until(settled, timeout, DB_POLL_S) is not None

    def wait_quiet(self) -> float:
        """Until the rest of the host (other people's tests, say) used less than
        QUIET_OTHER_PCT of one core over a QUIET_WINDOW_S window, at most --wait-quiet seconds.
        Returns that share in the last window."""
        deadline = time.monotonic() + self.opts.wait_quiet_s
        while True:
            a = self.cpu_snapshot()
            time.sleep(QUIET_WINDOW_S)
            other = self.cpu_between(a, self.cpu_snapshot())["pct_of_one_core"]["rest_of_host"]
            if other < QUIET_OTHER_PCT or time.monotonic() >= deadline:
                if other >= QUIET_OTHER_PCT:
                    log(f"host not quiet: others use {other:.0f}% of a core; measuring anyway")
                return float(other)

    def statements(self, offset: int, t0: float, t1: float, executed: int) -> dict[str, Any] | None:
        """Statements PostgreSQL logged (log_statement = all) between t0 and t1, per executed
        signal, by session (application_name) and by statement's first two words."""
        path = self.servers.pg_log_path()
        if path is None or executed == 0:
            return None
        logged = [w for w in logged_writes(path, offset) if t0 <= w.at <= t1]
        leader = self.leader.instance_id if self.leader else ""
        by_app: Counter[str] = Counter()
        leader_sql: Counter[str] = Counter()
        for w in logged:
            app = w.application.replace(f"-{leader}", "-LEADER") if leader else w.application
            by_app[app] += 1
            if app == "haexec-engine-LEADER":
                leader_sql[w.sql] += 1
        return {
            "per_signal_total": round(len(logged) / executed, 2),
            "per_signal_by_session": {k: round(v / executed, 2) for k, v in by_app.most_common()},
            "leader_engine_per_signal": {k: round(v / executed, 2) for k, v in leader_sql.most_common(20)},
        }

    @property
    def bases(self) -> list[str]:
        """Where signals go: every replica, or (--intake followers) all but the leader."""
        if self.opts.intake == "followers":
            return [r.base for r in self.replicas if r is not self.leader]
        return [r.base for r in self.replicas]

    def post(self, run: PhaseRun, bodies: list[bytes], closed: bool) -> None:
        if closed:
            run.posts = asyncio.run(closed_loop(self.opts.client, self.bases, bodies, self.opts.concurrency))
        else:
            run.posts, run.late = asyncio.run(open_loop(self.opts.client, self.bases, bodies, self.opts.rate))

    # ---- reading the outcome back ----

    def rows(self, source: str) -> list[dict[str, Any]]:
        cur = self.db.execute(
            """
            SELECT s.signal_id, s.status, s.received_by, s.executed_by, s.broker_ref,
                   EXTRACT(EPOCH FROM s.received_at)::float8 AS received,
                   EXTRACT(EPOCH FROM s.updated_at)::float8 AS updated,
                   EXTRACT(EPOCH FROM s.attempt_at)::float8 AS attempted,
                   EXTRACT(EPOCH FROM s.updated_at - s.received_at)::float8 * 1000 AS latency_ms,
                   EXTRACT(EPOCH FROM s.attempt_at - s.received_at)::float8 * 1000 AS queue_ms,
                   EXTRACT(EPOCH FROM s.updated_at - s.attempt_at)::float8 * 1000 AS execute_ms,
                   EXTRACT(EPOCH FROM o.placed_at - s.attempt_at)::float8 * 1000 AS to_booking_ms,
                   o.ticket::text AS ticket,
                   (SELECT count(*) FROM paper_orders o2 WHERE o2.cluster = s.cluster AND o2.tag = s.tag) AS orders,
                   (SELECT count(*) FROM executions e WHERE e.signal = s.id) AS executions
            FROM signals s
            LEFT JOIN paper_orders o ON o.cluster = s.cluster AND o.tag = s.tag
            WHERE s.cluster = %s AND s.source = %s
            """,
            (self.cluster, source),
        )
        names = [d.name for d in cur.description or []]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def claim_batches(self, source: str) -> list[int]:
        """Signals per claim transaction: the claim's events share the inserting xmin."""
        rows = self.db.execute(
            """
            SELECT count(*) FROM signal_events ev JOIN signals s ON s.id = ev.signal
            WHERE s.cluster = %s AND s.source = %s AND ev.status = 'executing'
            GROUP BY ev.xmin::text
            """,
            (self.cluster, source),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def verify(self, rows: list[dict[str, Any]], accepted: int) -> list[str]:
        problems = []
        if len(rows) != accepted:
            problems.append(f"{accepted} signals accepted (202) but {len(rows)} stored")
        statuses = Counter(r["status"] for r in rows)
        if set(statuses) - {"executed"}:
            problems.append(f"not all executed: {dict(statuses)}")
        orders = Counter(int(r["orders"]) for r in rows)
        if set(orders) - {1}:
            problems.append(f"paper orders per signal: {dict(orders)} (must be exactly 1)")
        wrong_ref = sum(1 for r in rows if r["ticket"] is not None and r["broker_ref"] != r["ticket"])
        if wrong_ref:
            problems.append(f"{wrong_ref} signals whose broker_ref is not their paper order's ticket")
        execs = Counter(int(r["executions"]) for r in rows)
        if set(execs) - {1}:
            problems.append(f"executions per signal: {dict(execs)} (expected 1)")
        return problems

    def report(self, run: PhaseRun, rows: list[dict[str, Any]]) -> dict[str, Any]:
        posts = run.posts
        accepted = [p for p in posts if p.status == 202]
        answers = Counter(p.status for p in posts)
        errors = Counter((p.error or "")[:120] for p in posts if p.status != 202)
        done = [r for r in rows if r["status"] == "executed"]
        out: dict[str, Any] = {
            "signals": len(posts),
            "accepted": len(accepted),
            "answers": {str(k): v for k, v in sorted(answers.items())},
            "post_errors": dict(errors.most_common(5)),
            "executed": len(done),
            "problems": self.verify(rows, len(accepted)),
            "latency_ms": summary([r["latency_ms"] for r in done]),
            "queue_ms": summary([r["queue_ms"] for r in done if r["queue_ms"] is not None]),
            "execute_ms": summary([r["execute_ms"] for r in done if r["execute_ms"] is not None]),
            "claim_to_booking_ms": summary([r["to_booking_ms"] for r in done if r["to_booking_ms"] is not None]),
            "http_post_ms": summary([(p.done - p.sent) * 1000.0 for p in accepted]),
            "received_by": dict(sorted(Counter(r["received_by"] for r in rows).items())),
            "executed_by": dict(sorted(Counter(r["executed_by"] for r in rows).items())),
        }
        batches = self.claim_batches(run.source)
        out["claim_batches"] = {
            "n": len(batches),
            "mean": round(sum(batches) / len(batches), 2) if batches else None,
            "max": max(batches, default=None),
        }
        if posts:
            posting_s = max(p.done for p in posts) - min(p.sent for p in posts)
            out["posting_s"] = round(posting_s, 3)
            out["intake_per_s"] = round(len(accepted) / posting_s, 1) if posting_s > 0 else None
        if done:
            first_in = min(r["received"] for r in rows)
            last_in = max(r["received"] for r in rows)
            first_claim = min(r["attempted"] for r in done)
            last_out = max(r["updated"] for r in done)
            window = last_out - first_in
            out["window_s"] = round(window, 3)
            out["throughput_per_s"] = round(len(done) / window, 1) if window > 0 else None
            out["intake_per_s_db"] = round(len(rows) / (last_in - first_in), 1) if last_in > first_in else None
            # Busy from its first claim to its last outcome: what the executor alone sustains
            # when it is the bottleneck (it idles, and this understates it, when intake is).
            busy = last_out - first_claim
            out["executor_per_s"] = round(len(done) / busy, 1) if busy > 0 else None
            out["tail_after_last_intake_ms"] = round((last_out - last_in) * 1000.0, 1)
        if run.late:
            out["send_lateness_ms"] = summary([x * 1000.0 for x in run.late])
            out["achieved_rate_per_s"] = out.get("intake_per_s")
        return out

    # ---- phases ----

    def bodies(self, phase: str, n: int) -> list[bytes]:
        return [signal_body(self.run_id, phase, i) for i in range(n)]

    def warm_up(self) -> None:
        n = self.opts.warmup
        if n <= 0:
            return
        run = PhaseRun("warmup", "bench-warmup")
        self.post(run, self.bodies("warmup", n), closed=True)
        accepted = sum(1 for p in run.posts if p.status == 202)
        if not self.wait_settled(run.source, accepted):
            raise BenchError(f"warm-up: {accepted} signals not all executed within {self.opts.settle_timeout_s:g}s")
        problems = self.verify(self.rows(run.source), accepted)
        if problems:
            raise BenchError(f"warm-up: {'; '.join(problems)}")
        log(f"warm-up: {accepted} signals executed")

    def phase(self, phase: str) -> dict[str, Any]:
        closed = phase == "throughput"
        run = PhaseRun(phase, f"bench-{phase}")
        bodies = self.bodies(phase, self.opts.signals)
        leader = self.leader = self.find_leader()
        epoch_before = self.epoch()
        how = f"{self.opts.concurrency} producers, closed loop" if closed else f"{self.opts.rate:g}/s, open loop"
        quiet = self.wait_quiet() if self.opts.wait_quiet_s > 0 else None
        log(f"{phase}: {len(bodies)} signals, {how}, leader {leader.instance_id}")
        pg_log = self.servers.pg_log_path() if self.opts.count_statements else None
        offset = log_offset(pg_log) if pg_log is not None else 0
        t_start = time.time()
        if self.profiler_binary is not None:
            out = self.servers.workdir / f"profile-{phase}-{leader.instance_id}.txt"
            self.profiler = Profiler(self.profiler_binary, leader.pid, out)
        waits = PgWaits(self.servers.database_url, leader.instance_id) if self.opts.pg_waits else None
        cpu0 = self.cpu_snapshot()
        self.post(run, bodies, closed)
        cpu1 = self.cpu_snapshot()
        accepted = sum(1 for p in run.posts if p.status == 202)
        settled = self.wait_settled(run.source, accepted)
        cpu2 = self.cpu_snapshot()
        t_end = time.time()
        waited = waits.stop() if waits is not None else None
        profile = self.profiler.stop() if self.profiler is not None else None
        self.profiler = None
        rows = self.rows(run.source)
        result = self.report(run, rows)
        if not settled:
            result["problems"].insert(0, f"not settled within {self.opts.settle_timeout_s:g}s")
        result["leader"] = leader.instance_id
        result["leadership_changed"] = self.epoch() != epoch_before
        result["cpu_posting"] = self.cpu_between(cpu0, cpu1)
        result["cpu_phase"] = self.cpu_between(cpu0, cpu2)
        wall = cpu1.wall - cpu0.wall
        bench_cpu = cpu1.parts["bench"] - cpu0.parts["bench"]
        result["producer_cpu_s"] = round(bench_cpu, 2)
        result["producer_cpu_pct_of_one_core"] = round(100.0 * bench_cpu / wall, 1) if wall > 0 else None
        if quiet is not None:
            result["others_pct_of_one_core_before"] = quiet
        if waited is not None:
            result["pg_waits"] = waited
        if profile is not None:
            result["profile"] = profile
        if pg_log is not None:
            result["statements"] = self.statements(offset, t_start, t_end, result["executed"])
        if closed:
            result["concurrency"] = self.opts.concurrency
        else:
            result["rate"] = self.opts.rate
        summary_line = (
            f"{phase}: {result['executed']}/{result['signals']} executed, "
            f"latency p50 {_ms(result['latency_ms'], 'p50')} p99 {_ms(result['latency_ms'], 'p99')} ms, "
            f"throughput {result.get('throughput_per_s')}/s, intake {result.get('intake_per_s')}/s"
        )
        log(summary_line + (f"; PROBLEMS: {'; '.join(result['problems'])}" if result["problems"] else ""))
        return result

    def run(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "replicas": self.opts.replicas,
            "signals": self.opts.signals,
            "client": self.opts.client,
            "intake": self.opts.intake,
            "broker": "paper",
            "cluster": self.cluster,
            "code": code_version(),
            "lease_ms": self.opts.lease_ms,
            "replica_env": {**RISK_ENV, **self.opts.replica_env},
            "servers": "bench-owned" if self.servers.owns_postgres else "given by URL",
            "host": {"cpus": os.cpu_count(), "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
            "latency": None,
            "throughput": None,
        }
        self.start()
        self.warm_up()
        for phase in PHASES:
            if phase in self.opts.only:
                result[phase] = self.phase(phase)
        result["host"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        lat, thr = result["latency"], result["throughput"]
        goals: dict[str, Any] = {}
        if lat and lat["latency_ms"]:
            goals["latency_p50_ms"] = {"goal": f"< {GOAL_P50_MS:g}", "ok": lat["latency_ms"]["p50"] < GOAL_P50_MS}
            goals["latency_p99_ms"] = {"goal": f"< {GOAL_P99_MS:g}", "ok": lat["latency_ms"]["p99"] < GOAL_P99_MS}
        if thr and thr.get("throughput_per_s") is not None:
            goals["throughput_per_s"] = {
                "goal": f">= {GOAL_THROUGHPUT:g}",
                "ok": thr["throughput_per_s"] >= GOAL_THROUGHPUT,
            }
        result["goals"] = goals
        return result


def prepare_servers(servers: Servers, count_statements: bool) -> None:
    """bench.cluster.Servers makes a bench-owned PostgreSQL log every write (for the idle
    measurement); a log line per statement would be part of what this bench measures, so it
    is turned off, unless --count-statements asks for every statement."""
    if servers.pg_server is None:
        return
    with psycopg.connect(libpq_url(servers.pg_server.url()), autocommit=True) as conn:
        if count_statements:
            conn.execute("ALTER SYSTEM SET log_statement = 'all'")
        else:
            conn.execute("ALTER SYSTEM RESET log_statement")
        conn.execute("SELECT pg_reload_conf()")


# ---- output ----


def _ms(s: dict[str, float] | None, key: str) -> str:
    return "-" if not s else f"{s[key]:.1f}"


def _goal(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def render(result: dict[str, Any]) -> str:
    host = result["host"]
    lines = [
        f"haexec signals bench: {result['replicas']} replicas, paper broker, cluster {result['cluster']}, "
        f"code {result['code']}, servers {result['servers']}, client {result['client']}, intake {result['intake']}",
        f"host: {host['cpus']} CPUs, load average {host['loadavg_start'][0]:.2f} at start, "
        f"{host.get('loadavg_end', ['-'])[0]} at end",
    ]

    def dist(label: str, s: dict[str, float] | None, goal: str = "") -> str:
        return f"  {label:<34}{_ms(s, 'p50'):>9}{_ms(s, 'p99'):>9}{_ms(s, 'max'):>9}  {goal}".rstrip()

    def common(p: dict[str, Any]) -> None:
        lines.append(f"  {'':<34}{'p50':>9}{'p99':>9}{'max':>9}")

    def tail(p: dict[str, Any]) -> None:
        lines.append(dist("queue (intake -> claim) ms", p["queue_ms"]))
        lines.append(dist("execute (claim -> executed) ms", p["execute_ms"]))
        lines.append(dist("  of which claim -> booking ms", p["claim_to_booking_ms"]))
        lines.append(dist("HTTP POST (client) ms", p["http_post_ms"]))
        b = p["claim_batches"]
        lines.append(f"  claim transactions {b['n']}, signals per claim mean {b['mean']} max {b['max']}")
        lines.append(
            f"  received by {p['received_by']}; executed by {p['executed_by']}"
            + ("; LEADERSHIP CHANGED" if p["leadership_changed"] else "")
        )
        cpu = p["cpu_phase"]
        each = "  ".join(f"{k} {v:.0f}%" for k, v in cpu["pct_of_one_core"].items())
        lines.append(
            f"  CPU over {cpu['wall_s']:.1f}s (% of one core; {cpu['cores']} cores, machine "
            f"{cpu['machine_busy_pct_of_all_cores']:.0f}% busy): {each}"
        )
        lines.append(
            f"  producer (this process) while posting: {p['producer_cpu_s']:.2f} CPU s, "
            f"{p['producer_cpu_pct_of_one_core']}% of one core"
        )
        verdict = "every signal executed once, one paper order each" if not p["problems"] else "; ".join(p["problems"])
        lines.append(f"  verified: {p['executed']}/{p['signals']} executed; {verdict}")
        if p["answers"] != {"202": p["signals"]}:
            lines.append(f"  HTTP answers {p['answers']} {p['post_errors']}")
        st = p.get("statements")
        if st:
            lines.append(
                f"  statements per signal (log_statement = all): {st['per_signal_total']} in all; by session "
                + ", ".join(f"{k} {v}" for k, v in st["per_signal_by_session"].items())
            )
            lines.append(
                "    leader engine pool: " + ", ".join(f"{k} {v}" for k, v in st["leader_engine_per_signal"].items())
            )
        if p.get("pg_waits"):
            each = ", ".join(f"{k} {v}" for k, v in p["pg_waits"]["mean_sessions"].items())
            lines.append(f"  engine sessions (mean count, pg_stat_activity): {each}")
        if p.get("others_pct_of_one_core_before") is not None:
            lines.append(f"  rest of host before the phase: {p['others_pct_of_one_core_before']:.0f}% of one core")
        prof = p.get("profile")
        if prof:
            lines.append(f"  py-spy ({prof['samples']} samples, {prof['file']}):")
            lines.append("    threads: " + ", ".join(f"{n} {v}%" for n, v in prof["threads_pct"]))
            lines.append("    self:    " + ", ".join(f"{n} {v}%" for n, v in prof["self_pct"][:8]))

    lat = result["latency"]
    goals = result["goals"]
    if lat:
        lines += ["", f"latency: open loop {lat['rate']:g}/s target, {lat['signals']} signals, leader {lat['leader']}"]
        common(lat)
        ok = "latency_p50_ms" in goals and goals["latency_p50_ms"]["ok"] and goals["latency_p99_ms"]["ok"]
        goal = f"goal p50 < {GOAL_P50_MS:g}, p99 < {GOAL_P99_MS:g}: {_goal(ok)}"
        lines.append(dist("intake -> executed ms", lat["latency_ms"], goal))
        tail(lat)
        lines.append(
            f"  achieved {lat.get('achieved_rate_per_s')}/s; send lateness p99 "
            f"{_ms(lat.get('send_lateness_ms'), 'p99')} ms"
        )
    thr = result["throughput"]
    if thr:
        lines += [
            "",
            f"throughput: closed loop, {thr['concurrency']} producers, {thr['signals']} signals, "
            f"leader {thr['leader']}",
        ]
        ok = "throughput_per_s" in goals and goals["throughput_per_s"]["ok"]
        lines.append(
            f"  executed/s {thr.get('throughput_per_s')} (over {thr.get('window_s')} s)   "
            f"goal >= {GOAL_THROUGHPUT:g}: {_goal(ok)}"
        )
        lines.append(
            f"  intake accepted/s {thr.get('intake_per_s')} (client) {thr.get('intake_per_s_db')} (DB); "
            f"executor first claim -> last executed {thr.get('executor_per_s')}/s; "
            f"tail after last intake {thr.get('tail_after_last_intake_ms')} ms"
        )
        common(thr)
        lines.append(dist("intake -> executed ms", thr["latency_ms"]))
        tail(thr)
    return "\n".join(lines)


# ---- command line ----


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {n})")
    return n


def _positive_float(value: str) -> float:
    x = float(value)
    if not x > 0 or not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"must be > 0 (got {value})")
    return x


def _phases(value: str) -> tuple[str, ...]:
    chosen = tuple(p.strip() for p in value.split(",") if p.strip())
    unknown = [p for p in chosen if p not in PHASES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {','.join(PHASES)} (got {value!r})")
    return chosen


def _env_pair(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key.startswith("HAEXEC_"):
        raise argparse.ArgumentTypeError(f"must be HAEXEC_NAME=VALUE (got {value!r})")
    return key, val


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.signals", description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=_positive_int, default=3)
    p.add_argument("--signals", type=_positive_int, default=3000, help="signals per phase")
    p.add_argument("--rate", type=_positive_float, default=100.0, help="signals/s of the open-loop latency phase")
    p.add_argument("--concurrency", type=_positive_int, default=64, help="producers of the throughput phase")
    p.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="producer's HTTP client: a minimal asyncio HTTP/1.1 one (default), or httpx, which needs ~60%% of"
        " a core for 300 posts/s on this machine's two, and then bounds what is measured",
    )
    p.add_argument(
        "--intake",
        choices=("all", "followers"),
        default="all",
        help="replicas the signals are posted to, round-robin (followers: not the leader, a diagnostic)",
    )
    p.add_argument(
        "--pg-waits",
        action="store_true",
        help="sample pg_stat_activity every 5 ms during each phase: what the engine sessions wait for",
    )
    p.add_argument("--warmup", type=int, default=200, help="unmeasured signals before the phases (0: none)")
    p.add_argument("--only", type=_phases, default=PHASES, help="comma-separated: latency,throughput")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--lease-ms", type=_positive_int, default=3000, help="HAEXEC_LEASE_MS of the replicas")
    p.add_argument(
        "--settle-timeout", type=_positive_float, default=120.0, help="seconds to wait for a phase to be executed"
    )
    p.add_argument("--redis-url", help="an existing Redis (default: a bench-owned redis-server)")
    p.add_argument("--database-url", help="an existing PostgreSQL database at schema head")
    p.add_argument("--keep", action="store_true", help="keep the work directory (replica logs, profiles)")
    p.add_argument("--profile", action="store_true", help="py-spy record the leader during each phase (kept)")
    p.add_argument(
        "--count-statements",
        action="store_true",
        help="bench-owned PostgreSQL logs every statement; report statements per signal (slows the run)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each phase, wait up to this long for the rest of the host to use "
        f"< {QUIET_OTHER_PCT:g}%% of a core (0: do not wait)",
    )
    p.add_argument(
        "--replica-env",
        type=_env_pair,
        action="append",
        default=[],
        metavar="HAEXEC_NAME=VALUE",
        help="extra setting for every replica (repeatable)",
    )
    a = p.parse_args(argv)
    if a.intake == "followers" and a.replicas < 2:
        p.error("--intake followers needs --replicas >= 2")
    if a.count_statements and a.database_url:
        p.error("--count-statements needs the bench-owned PostgreSQL (no --database-url)")
    return Options(
        replicas=a.replicas,
        signals=a.signals,
        rate=a.rate,
        concurrency=a.concurrency,
        client=a.client,
        intake=a.intake,
        pg_waits=a.pg_waits,
        warmup=max(0, a.warmup),
        only=a.only,
        json=a.json,
        lease_ms=a.lease_ms,
        settle_timeout_s=a.settle_timeout,
        redis_url=a.redis_url,
        database_url=a.database_url,
        keep=a.keep or a.profile,
        profile=a.profile,
        count_statements=a.count_statements,
        wait_quiet_s=max(0.0, a.wait_quiet),
        replica_env=dict(a.replica_env),
    )


def _interrupt(signum: int, _frame: object) -> None:
    # SIGTERM/SIGHUP take the same way out as Ctrl-C: through every `finally`.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    # Also when started with SIGINT ignored (a background job of a script): Ctrl-C / kill -INT
    # must still tear everything down.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    result: dict[str, Any] | None = None
    failed = False
    try:
        with Servers(opts.redis_url, opts.database_url, keep=opts.keep) as servers:
            prepare_servers(servers, opts.count_statements)
            bench = SignalBench(opts, servers)
            try:
                result = bench.run()
            except BenchError as e:
                log(f"error: {e}")
                failed = True
                servers.keep = True  # the replica logs explain what went wrong
            finally:
                # A second Ctrl-C must not cut the teardown short and leave processes behind.
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_IGN)
                log("stopping replicas and servers")
                bench.close()
            if result is not None:
                failed = failed or any(result[p] is not None and result[p]["problems"] for p in PHASES)
                if failed:
                    servers.keep = True
    except KeyboardInterrupt:
        log("interrupted; replicas and servers stopped")
        return 130
    except BenchError as e:
        log(f"error: {e}")
        return 1
    if result is None:
        return 1
    print(json.dumps(result, indent=2 if sys.stdout.isatty() else None) if opts.json else render(result))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
