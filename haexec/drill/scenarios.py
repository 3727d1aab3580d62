"""Drill scenarios: per round, inject one fault, wait for recovery with deadlines, measure.

Times: faults are stamped with this process's time.time(); leader_record.acquired_at,
leadership_history.at, paper_orders.placed_at and signals.updated_at with PostgreSQL's
clock_timestamp(). Both are the same machine's wall clock (the drill's servers are local),
so they can be subtracted. The one replica under libfaketime has a shifted wall clock, but
nothing of it is used in any figure: the database stamps every row.
"""

from __future__ import annotations

import email.utils
import functools
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from haexec.drill.checker import Facts
from haexec.drill.cluster import DrillCluster, DrillError, Replica, http_call, log, wait_until
from haexec.drill.monitor import Monitor
from haexec.drill.producer import Answer

SCENARIOS = (
    "kill",
    "pause",
    "switchover",
    "redis-restart",
    "db-restart",
    "partition-redis",
    "partition-db",
    "latency-redis",
    "latency-db",
    "clock-jump",
)
# Scenarios where a new leader is the expected outcome (and failover_ms the figure).
FAILOVER = ("kill", "pause", "switchover", "db-restart", "partition-redis", "partition-db")
# Scenarios where the leader must NOT change.
STEADY = ("redis-restart", "latency-redis", "latency-db", "clock-jump")
# A new leader within this many leases of the fault, or the round failed.
DEADLINE_LEASES = 8
# Signals waiting for execution that still count as a steady cluster (about 0.25 s at 20/s).
BACKLOG_STEADY = 5


class RoundFailed(Exception):
    """The round could not be carried out or the cluster did not recover in time."""


class Skipped(Exception):
    """The scenario cannot run here (one line saying why)."""


@dataclass
class FaultSpan:
    kind: str
    target: str
    start: float
    end: float | None = None
    detail: str = ""


@dataclass
class Context:
    cluster: DrillCluster
    monitor: Monitor
    faults: list[FaultSpan] = field(default_factory=list)

    @property
    def lease_s(self) -> float:
        return self.cluster.lease_ms / 1000.0

    @property
    def renew_s(self) -> float:
        return self.cluster.renew_ms / 1000.0

    def span(self, kind: str, target: str, start: float, detail: str = "") -> FaultSpan:
        s = FaultSpan(kind, target, start, None, detail)
        self.faults.append(s)
        return s


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)


def refusal(name: str, cluster: DrillCluster) -> str | None:
    """Why `name` cannot run on this cluster's servers (None: it can)."""
    if name == "redis-restart" and not cluster.servers.owns_redis:
        return "redis-restart needs the drill's own Redis (not --redis-url)"
    if name == "db-restart" and not cluster.servers.owns_postgres:
        return "db-restart needs the drill's own PostgreSQL (not --database-url)"
    return None


# --------------------------------------------------------------------------- preparation


def prepare(ctx: Context) -> Replica:
    """Between rounds: everything healed, every replica up and ready, one settled leader."""
    c = ctx.cluster
    c.heal_all()
    for r in c.replicas:
        if not r.alive():
            log(f"{r.instance_id} is down before the round; restarting it")
            r.start()
    for r in c.replicas:
        c.wait_ready(r)
    leader = c.leader(DEADLINE_LEASES * ctx.lease_s)
    if leader is None:
        raise RoundFailed("no single leader before the round")
    c.wait_subscribed()
    # A leader younger than a lease may still be doing its take-over work (reconciliation,
    # in-doubt resolution); faults are measured from a steady cluster.
    rec = c.record()
    if rec is not None and rec.acquired_at is not None:
        young = ctx.lease_s - (time.time() - rec.acquired_at)
        if young > 0:
            time.sleep(young)
    leader = c.leader(DEADLINE_LEASES * ctx.lease_s)
    if leader is None:
        raise RoundFailed("no single leader before the round")
    drained(ctx)
    return leader


def drained(ctx: Context, timeout_s: float = 30.0) -> bool:
    """Wait until the backlog a previous fault left is executed (a round starts steady)."""

    def small() -> bool:
        try:
            rows = ctx.cluster.query(
                "SELECT count(*) FROM signals WHERE cluster = %s AND status IN ('received', 'executing')",
                (ctx.cluster.cluster,),
            )
        except Exception:
            return False
        return int(rows[0][0]) <= BACKLOG_STEADY

    return wait_until(small, timeout_s, 0.05) is not None


def restart(ctx: Context, r: Replica) -> None:
    r.kill()
    r.start()
    ctx.cluster.wait_ready(r)


def wait_follower(ctx: Context, r: Replica, timeout_s: float) -> bool:
    return wait_until(lambda: r.answering() and r.get("/leader", 0.5)[0] == 503, timeout_s, 0.02) is not None


def pttl_left(ctx: Context, victim: Replica) -> tuple[float | None, float]:
    """(ms of lease left in the key at the fault, fault time), or None when the key is not the victim's."""
    value, pttl, expires = ctx.cluster.key_state()
    t_fault = time.time()
    if value is None or pttl is None or value.split("|", 1)[0] != victim.instance_id:
        return None, t_fault
    return round((expires - t_fault) * 1000.0, 1), t_fault


def new_leader(ctx: Context, out: dict[str, Any], epoch: int, t_fault: float, timeout_s: float) -> None:
    after = ctx.cluster.wait_new_epoch(epoch, timeout_s)
    if after is None or after.acquired_at is None:
        raise RoundFailed(f"no new epoch within {timeout_s:g}s of the fault")
    out["new_leader"] = after.instance_id
    out["new_epoch"] = after.epoch
    out["failover_ms"] = ms(after.acquired_at - t_fault)
    if out.get("pttl_ms") is not None:
        out["lag_ms"] = round(out["failover_ms"] - out["pttl_ms"], 1)


# --------------------------------------------------------------------------- scenarios


def s_kill(ctx: Context, leader: Replica, epoch: int, out: dict[str, Any]) -> None:
    pttl, t_fault = pttl_left(ctx, leader)
    leader.send(signal.SIGKILL)
    out.update(victim=leader.instance_id, t_fault=t_fault, pttl_ms=pttl)
    span = ctx.span("kill", leader.instance_id, t_fault)
    try:
        new_leader(ctx, out, epoch, t_fault, DEADLINE_LEASES * ctx.lease_s)
    finally:
        span.end = time.time()
        restart(ctx, leader)


def s_pause(ctx: Context, leader: Replica, epoch: int, out: dict[str, Any]) -> None:
    pttl, t_fault = pttl_left(ctx, leader)
    leader.send(signal.SIGSTOP)
    out.update(victim=leader.instance_id, t_fault=t_fault, pttl_ms=pttl)
    span = ctx.span("pause", leader.instance_id, t_fault)
    try:
        new_leader(ctx, out, epoch, t_fault, DEADLINE_LEASES * ctx.lease_s)
        time.sleep(ctx.renew_s)  # stay paused a little past the takeover
    finally:
        leader.send(signal.SIGCONT)
        span.end = time.time()
    # Woken, the ex-leader refuses at once (its lease ran out) and becomes a follower.
    if not wait_follower(ctx, leader, 5 * ctx.lease_s):
        raise RoundFailed(f"{leader.instance_id} still answers as leader after waking")
    out["woke_as_follower_ms"] = ms(time.time() - span.end)


def s_switchover(ctx: Context, leader: Replica, epoch: int, out: dict[str, Any]) -> None:
    c = ctx.cluster
    others = [r for r in c.replicas if r is not leader and r.answering()]
    n = int(out["round"])
    target = others[n % len(others)].instance_id if others and n % 2 == 1 else None
    t_fault = time.time()
    status, body, _ = http_call(leader.port, "POST", "/coordinator/switchover", {"to": target}, timeout_s=10.0)
    out.update(victim=leader.instance_id, t_fault=t_fault, target=target or "any")
    span = ctx.span("switchover", leader.instance_id, t_fault, f"to {target or 'any'}")
    span.end = time.time()
    if status != 202:
        raise RoundFailed(f"switchover refused: {status} {body}")
    new_leader(ctx, out, epoch, t_fault, DEADLINE_LEASES * ctx.lease_s)
    if target is not None and out.get("new_leader") != target:
        out["note"] = f"asked for {target}, got {out.get('new_leader')}"


def observe_steady(ctx: Context, leader: Replica, epoch: int, seconds: float, out: dict[str, Any]) -> None:
    """Watch for `seconds`: the leader should stay, with its epoch."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
    rec = ctx.cluster.record()
    if rec is not None and rec.epoch != epoch:
        out["new_leader"] = rec.instance_id
        out["new_epoch"] = rec.epoch
        if rec.acquired_at is not None and out.get("t_fault"):
            out["failover_ms"] = ms(rec.acquired_at - out["t_fault"])


def s_redis_restart(ctx: Context, leader: Replica, epoch: int, out: dict[str, Any]) -> None:
    c = ctx.cluster
    server = c.servers.redis_server
    if server is None:
        raise Skipped(refusal("redis-restart", c) or "no Redis of the drill's own")
    t_fault = time.time()
    out.update(victim=leader.instance_id, t_fault=t_fault)
    span = ctx.span("redis-restart", "redis", t_fault)
    server.restart()
    span.end = time.time()
    out["redis_down_ms"] = ms(span.end - t_fault)
    # The leader re-asserts its key (its DB heartbeat is fresh); nobody else claims.
    got = wait_until(lambda: (c.key_state()[0] or "").split("|", 1)[0] or None, 5 * ctx.lease_s, 0.005)
    out["key_back_ms"] = ms(time.time() - t_fault) if got else None
    out["key_holder_after"] = got
    observe_steady(ctx, leader, epoch, 2 * ctx.lease_s, out)


def s_db_restart(ctx: Context, leader: Replica, epoch: int, out: dict[str, Any]) -> None:
    c = ctx.cluster
    server = c.servers.pg_server
    if server is None:
        raise Skipped(refusal("db-restart", c) or "no PostgreSQL of the drill's own")
    t_fault = time.time()
    out.update(victim=leader.instance_id, t_fault=t_fault)
    span = ctx.span("db-restart", "postgres", t_fault)
    try:
        server.stop(30)
        # Down for a lease: past the leader's db_grace, so it must release.
        time.sleep(max(0.0, t_fault + ctx.lease_s - time.time()))
    finally:
        server.start(60)
        span.end = time.time()
    out["db_down_ms"] = ms(span.end - t_fault)
    new_leader(ctx, out, epoch, t_fault, DEADLINE_LEASES * ctx.lease_s + 30)
    if out.get("failover_ms") is not None:
        out["after_db_up_ms"] = round(out["failover_ms"] - out["db_down_ms"], 1)


def s_partition(ctx: Context, leader: Replica, epoch: int, out: dict[str, Any], store: str) -> None:
    c = ctx.cluster
    proxy = leader.redis_proxy if store == "redis" else leader.db_proxy
    pttl, t_fault = pttl_left(ctx, leader)
    c.set_proxy(proxy, "blackhole")
    out.update(victim=leader.instance_id, t_fault=t_fault, pttl_ms=pttl if store == "redis" else None)
    span = ctx.span(f"partition-{store}", leader.instance_id, t_fault)
    try:
        new_leader(ctx, out, epoch, t_fault, DEADLINE_LEASES * ctx.lease_s)
        # The cut-off leader must stop acting as leader on its own (lease or grace ran out).
        if not wait_follower(ctx, leader, DEADLINE_LEASES * ctx.lease_s):
            raise RoundFailed(f"{leader.instance_id} still answers as leader while cut off from {store}")
        out["victim_stepped_down_ms"] = ms(time.time() - t_fault)
        time.sleep(ctx.renew_s)
    finally:
        c.set_proxy(proxy, "pass")
        span.end = time.time()
    out["partition_ms"] = ms(span.end - t_fault)
    if not wait_follower(ctx, leader, DEADLINE_LEASES * ctx.lease_s):
        raise RoundFailed(f"{leader.instance_id} did not come back as a follower after the heal")


def s_latency(ctx: Context, leader: Replica, epoch: int, out: dict[str, Any], store: str) -> None:
    c = ctx.cluster
    proxy = leader.redis_proxy if store == "redis" else leader.db_proxy
    latency = max(5, c.lease_ms // 20)
    t_fault = time.time()
    c.set_proxy(proxy, "latency", latency)
    out.update(victim=leader.instance_id, t_fault=t_fault, latency_ms=latency)
    span = ctx.span(f"latency-{store}", leader.instance_id, t_fault, f"+{latency} ms each way")
    try:
        observe_steady(ctx, leader, epoch, 3 * ctx.lease_s, out)
    finally:
        c.set_proxy(proxy, "pass")
        span.end = time.time()


def _date_offset_s(r: Replica) -> float | None:
    """The replica's wall clock minus ours, from its HTTP Date header (1 s resolution)."""
    status, _, headers = r.get("/ready")
    if not status or "date" not in headers:
        return None
    try:
        theirs = email.utils.parsedate_to_datetime(headers["date"]).timestamp()
    except (TypeError, ValueError):
        return None
    return round(theirs - time.time())


def _heartbeat_age_s(r: Replica) -> float | None:
    """Our clock minus the replica's haexec_last_heartbeat_timestamp_seconds gauge."""
    status, _, _ = r.get("/ready")
    if not status:
        return None
    conn_status, text = _metrics_text(r)
    if conn_status != 200:
        return None
    for line in text.splitlines():
        if line.startswith("haexec_last_heartbeat_timestamp_seconds"):
            try:
                return round(time.time() - float(line.split()[-1]), 1)
            except ValueError:
                return None
    return None


def _metrics_text(r: Replica) -> tuple[int, str]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", r.port, timeout=1.0)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return 0, ""
    finally:
        conn.close()


def s_clock_jump(ctx: Context, leader: Replica, epoch: int, out: dict[str, Any]) -> None:
    c = ctx.cluster
    faked = c.faked
    if faked is None:
        raise Skipped(f"clock-jump skipped: {c.faketime_note or 'no replica runs under libfaketime'}")
    if c.ensure_faked():
        # Restarted under libfaketime just now (it may have been the leader): start over.
        leader = prepare(ctx)
        rec = c.record()
        epoch = rec.epoch if rec is not None else epoch
        out.update(t_start=time.time(), epoch_before=epoch, leader_before=leader.instance_id)
    if leader is not faked:
        # Hand leadership to the faked replica first: jumping the leader's clock is the test.
        status, body, _ = http_call(
            leader.port, "POST", "/coordinator/switchover", {"to": faked.instance_id}, timeout_s=10.0
        )
        if status != 202:
            raise RoundFailed(f"switchover to {faked.instance_id} refused: {status} {body}")
        if wait_until(lambda: faked.is_leader(), DEADLINE_LEASES * ctx.lease_s, 0.02) is None:
            raise RoundFailed(f"{faked.instance_id} did not become leader for the clock jump")
        time.sleep(ctx.lease_s)  # settle
        drained(ctx)
        rec = c.record()
        epoch = rec.epoch if rec is not None else epoch
        out["epoch_before"] = epoch
        out["leader_before"] = faked.instance_id
        out["t_start"] = time.time()
    t_fault = time.time()
    out.update(victim=faked.instance_id, t_fault=t_fault)
    seen: list[float | None] = []
    ages: list[float | None] = []
    for offset in (3600, -3600):
        span = ctx.span("clock-jump", faked.instance_id, time.time(), f"{offset:+d} s")
        c.set_clock_offset(faked, offset)
        # uvicorn refreshes its Date header once a second: look after that.
        time.sleep(1.2)
        seen.append(_date_offset_s(faked))
        ages.append(_heartbeat_age_s(faked))
        time.sleep(max(0.0, 2 * ctx.lease_s - 1.2))
        span.end = time.time()
    c.set_clock_offset(faked, 0)
    out["offsets_s"] = [3600, -3600]
    out["offsets_seen_s"] = seen
    # What Prometheus would compute for HaexecLeaderHeartbeatStale (its clock minus the gauge).
    out["heartbeat_gauge_age_s"] = ages
    observe_steady(ctx, faked, epoch, 0.1, out)
    samples = ctx.monitor.leader_samples(faked.instance_id, t_fault, time.time())
    out["leader_samples"] = len(samples)
    out["leader_throughout"] = bool(samples) and all(s.leader for s in samples)


RUNNERS: dict[str, Callable[[Context, Replica, int, dict[str, Any]], None]] = {
    "kill": s_kill,
    "pause": s_pause,
    "switchover": s_switchover,
    "redis-restart": s_redis_restart,
    "db-restart": s_db_restart,
    "partition-redis": lambda ctx, ld, e, o: s_partition(ctx, ld, e, o, "redis"),
    "partition-db": lambda ctx, ld, e, o: s_partition(ctx, ld, e, o, "db"),
    "latency-redis": lambda ctx, ld, e, o: s_latency(ctx, ld, e, o, "redis"),
    "latency-db": lambda ctx, ld, e, o: s_latency(ctx, ld, e, o, "db"),
    "clock-jump": s_clock_jump,
}


def run_round(ctx: Context, scenario: str, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"scenario": scenario, "round": n}
    try:
        leader = prepare(ctx)
        rec = ctx.cluster.record()
        epoch = rec.epoch if rec is not None else 0
        out.update(t_start=time.time(), epoch_before=epoch, leader_before=leader.instance_id)
        RUNNERS[scenario](ctx, leader, epoch, out)
        out["ok"] = True
    except Skipped as e:
        out.update(ok=True, skipped=str(e))
    except (RoundFailed, DrillError) as e:
        out.update(ok=False, error=str(e))
        log(f"{scenario} round {n}: FAILED: {e}")
        ctx.cluster.heal_all()
    out.setdefault("t_start", time.time())
    # Let the round's signals settle into the window (one renew interval).
    time.sleep(ctx.renew_s)
    out["t_end"] = time.time()
    rec = ctx.cluster.record()
    out["epoch_after"] = rec.epoch if rec is not None else None
    return out


# --------------------------------------------------------------------------- figures per round


def fill_round(rnd: dict[str, Any], facts: Facts, answers: list[Answer], monitor: Monitor) -> None:
    """Signal figures and leadership facts of one round's window, from the database."""
    t0, t1 = rnd["t_start"], rnd["t_end"]
    first_answer: dict[str, Answer] = {}
    for a in answers:
        if a.fingerprint not in first_answer or a.at < first_answer[a.fingerprint].at:
            first_answer[a.fingerprint] = a
    mine = [fp for fp, a in first_answer.items() if t0 <= a.at < t1]
    executed = duplicated = lost = in_doubt = 0
    for fp in mine:
        row = facts.signals.get(fp)
        orders = facts.orders_by_tag.get(row.tag, []) if row else []
        if len(orders) > 1:
            duplicated += 1
        elif len(orders) == 1 and row is not None and row.status == "executed":
            executed += 1
        elif row is not None and row.status == "in_doubt":
            in_doubt += 1
        else:
            lost += 1
    rnd.update(accepted=len(mine), executed=executed, duplicated=duplicated, lost=lost, in_doubt=in_doubt)
    rnd["orders_in_window"] = sum(1 for rows in facts.orders_by_tag.values() for o in rows if t0 <= o.placed_at < t1)
    acquired = [a for a in facts.acquired if t0 <= a.at < t1]
    rnd["epochs"] = [{"epoch": a.epoch, "instance": a.instance_id} for a in acquired]
    changes = [h for h in facts.history if t0 <= h[4] < t1]
    rnd["history"] = [f"{inst} e{e} {reason}" for _, inst, e, reason, _ in changes]
    rnd["leadership_changed"] = bool(acquired)
    if acquired:
        # How long the new leader took from its acquisition to its first broker order (its
        # take-over work: reconciliation, in-doubt resolution), when signals were waiting.
        first = acquired[-1]
        placed = [
            o.placed_at
            for rows in facts.orders_by_tag.values()
            for o in rows
            if o.epoch == first.epoch and o.placed_at >= first.at
        ]
        rnd["first_order_ms"] = ms(min(placed) - first.at) if placed else None
    # From the last execution before the window: a round that starts with a fault must count
    # the silence from the last execution before it.
    every = facts.executed_times()
    before = [t for t in every if t < t0]
    times = before[-1:] + [t for t in every if t0 <= t < t1]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    rnd["max_exec_gap_ms"] = ms(max(gaps)) if gaps else None
    received = sorted(s.received_at for s in facts.signals.values() if t0 <= s.received_at < t1)
    rgaps = [b - a for a, b in zip(received, received[1:], strict=False)]
    rnd["max_intake_gap_ms"] = ms(max(rgaps)) if rgaps else None
    t_fault = rnd.get("t_fault")
    victim = rnd.get("victim")
    measured = rnd["scenario"] in FAILOVER or rnd["scenario"] == "redis-restart" or rnd["leadership_changed"]
    if t_fault and victim and measured:
        candidates = []
        k = monitor.key_left(victim, t_fault)
        if k is not None:
            candidates.append(k)
        s = monitor.stopped_leading(victim, t_fault)
        if s is not None:
            candidates.append(s)
        h = next((h[4] for h in facts.history if h[4] > t_fault), None)
        if h is not None:
            candidates.append(h)
        candidates = [t for t in candidates if t < t1]
        rnd["detect_ms"] = ms(min(candidates) - t_fault) if candidates else None


# --------------------------------------------------------------------------- random


RANDOM_WEIGHTS = {
    "kill": 3,
    "pause": 3,
    "switchover": 2,
    "redis-restart": 1,
    "db-restart": 1,
    "partition-redis": 2,
    "partition-db": 2,
    "latency-redis": 1,
    "latency-db": 1,
    "reset-redis": 1,
    "reset-db": 1,
    "clock-jump": 1,
}
REPLICA_FAULTS = ("kill", "pause", "partition-redis", "partition-db", "reset-redis", "reset-db")


@dataclass(frozen=True)
class Planned:
    at: float  # seconds from the start of the schedule
    kind: str
    target: str  # "leader", a replica name, "redis" or "postgres"
    duration: float
    offset_s: int = 0  # clock-jump only

    def describe(self) -> str:
        extra = f" offset {self.offset_s:+d}s" if self.kind == "clock-jump" else ""
        length = f" for {self.duration:.2f}s" if self.duration else ""
        return f"t+{self.at:7.2f}s  {self.kind:<15} {self.target:<8}{length}{extra}"


def random_schedule(
    seed: int, seconds: float, replicas: list[str], lease_s: float, kinds: list[str], faked: str | None
) -> list[Planned]:
    """A reproducible schedule: same seed, same arguments -> same list. Faults overlap (their
    durations outlast the gaps between them), but at most n-1 replicas are impaired at once
    and each server has one fault at a time."""
    rng = random.Random(seed)
    names = [k for k in kinds if k != "clock-jump" or faked]
    weights = [RANDOM_WEIGHTS[k] for k in names]
    plan: list[Planned] = []
    busy: list[tuple[float, float, str]] = []  # (start, end, resource)
    t = 1.0
    while t < seconds - 0.5:
        kind = rng.choices(names, weights)[0]
        duration = 0.0
        offset = 0
        if kind in ("kill", "pause", "partition-redis", "partition-db", "latency-redis", "latency-db"):
            duration = rng.uniform(0.5, 2.5) * lease_s
        elif kind in ("reset-redis", "reset-db"):
            duration = rng.uniform(0.05, 0.5)
        elif kind == "db-restart":
            duration = rng.uniform(0.3, 1.5) * lease_s
        elif kind == "clock-jump":
            duration = rng.uniform(1.0, 3.0) * lease_s
            offset = rng.choice([3600, -3600, 86400, -300, 30])
        if kind in ("redis-restart", "db-restart"):
            target = "redis" if kind == "redis-restart" else "postgres"
        elif kind == "clock-jump":
            target = str(faked)
        elif kind == "switchover":
            target = "leader"
        else:
            target = "leader" if rng.random() < 0.6 else rng.choice(replicas)
        end = t + max(duration, 0.5)
        active = [b for b in busy if b[0] < end and t < b[1]]
        resource = target if target in ("redis", "postgres") or kind == "clock-jump" else "replica"
        clash = (resource != "replica" and any(b[2] == resource for b in active)) or (
            resource == "replica" and sum(1 for b in active if b[2] == "replica") >= len(replicas) - 1
        )
        if not clash:
            plan.append(Planned(round(t, 3), kind, target, round(duration, 3), offset))
            busy.append((t, end, resource))
        t += rng.uniform(0.3, 1.5) * lease_s
    return plan


class RandomRun:
    """Carries out a schedule on the main thread (child processes are only ever started here)."""

    def __init__(self, ctx: Context, plan: list[Planned]) -> None:
        self.ctx = ctx
        self.plan = plan
        self.injected: list[dict[str, Any]] = []
        self._holds: dict[tuple[str, str], int] = {}  # (replica, what) -> active faults

    def _resolve(self, target: str) -> Replica | None:
        c = self.ctx.cluster
        if target != "leader":
            return c.by_name(target)
        value = c.key_state()[0]
        name = (value or "").split("|", 1)[0]
        r = c.by_name(name)
        if r is None:
            rec = c.record()
            r = c.by_name(rec.instance_id if rec else None)
        return r

    def _hold(self, r: Replica, what: str, delta: int) -> int:
        key = (r.instance_id, what)
        self._holds[key] = max(0, self._holds.get(key, 0) + delta)
        return self._holds[key]

    def run(self) -> None:
        c = self.ctx.cluster
        start = time.time()
        actions: list[tuple[float, int, Callable[[], Any]]] = []
        for i, p in enumerate(self.plan):
            actions.append((start + p.at, i, functools.partial(self._inject, p, start)))
        seq = len(actions)
        while actions:
            actions.sort(key=lambda a: (a[0], a[1]))
            at, _, fn = actions.pop(0)
            delay = at - time.time()
            if delay > 0:
                time.sleep(delay)
            try:
                heal = fn()
            except DrillError as e:
                log(f"random: {e}")
                heal = None
            if isinstance(heal, tuple):
                heal_at, heal_fn = heal
                seq += 1
                actions.append((heal_at, seq, heal_fn))
        c.heal_all()

    def _inject(self, p: Planned, start: float) -> tuple[float, Callable[[], None]] | None:
        c = self.ctx.cluster
        now = time.time()
        rec: dict[str, Any] = {"planned_at": p.at, "at": round(now - start, 3), "kind": p.kind, "target": p.target}
        self.injected.append(rec)
        end = now + p.duration
        if p.kind == "redis-restart":
            span = self.ctx.span(p.kind, "redis", now)
            if c.servers.redis_server is not None:
                c.servers.redis_server.restart()
            span.end = time.time()
            return None
        if p.kind == "db-restart":
            span = self.ctx.span(p.kind, "postgres", now)
            if c.servers.pg_server is None:
                return None
            c.servers.pg_server.stop(30)

            def db_up() -> None:
                assert c.servers.pg_server is not None
                c.servers.pg_server.start(60)
                span.end = time.time()

            return end, db_up
        r = self._resolve(p.target)
        if r is None:
            rec["skipped"] = "no such replica (or no leader) right now"
            return None
        rec["replica"] = r.instance_id
        if p.kind == "switchover":
            status = http_call(r.port, "POST", "/coordinator/switchover", {"to": None}, timeout_s=5.0)[0]
            rec["answer"] = status
            self.ctx.span(p.kind, r.instance_id, now).end = time.time()
            return None
        if p.kind == "kill":
            if not r.alive():
                rec["skipped"] = "already down"
                return None
            r.send(signal.SIGKILL)
            span = self.ctx.span(p.kind, r.instance_id, now)

            def back() -> None:
                r.kill()
                r.start()
                span.end = time.time()

            return end, back
        if p.kind == "pause":
            if not r.alive() or r.paused:
                rec["skipped"] = "down or paused already"
                return None
            r.send(signal.SIGSTOP)
            span = self.ctx.span(p.kind, r.instance_id, now)

            def cont() -> None:
                r.send(signal.SIGCONT)
                span.end = time.time()

            return end, cont
        if p.kind == "clock-jump":
            if not r.under_faketime:
                rec["skipped"] = "not under libfaketime"
                return None
            c.set_clock_offset(r, p.offset_s)
            span = self.ctx.span(p.kind, r.instance_id, now, f"{p.offset_s:+d} s")

            def unjump() -> None:
                c.set_clock_offset(r, 0)
                span.end = time.time()

            return end, unjump
        store = "redis" if p.kind.endswith("redis") else "db"
        proxy = r.redis_proxy if store == "redis" else r.db_proxy
        mode = p.kind.split("-", 1)[0]
        mode = {"partition": "blackhole"}.get(mode, mode)
        latency = max(5, c.lease_ms // 20) if mode == "latency" else 0
        self._hold(r, proxy, +1)
        c.set_proxy(proxy, mode, latency)
        span = self.ctx.span(p.kind, r.instance_id, now)

        def heal() -> None:
            if self._hold(r, proxy, -1) == 0:
                c.set_proxy(proxy, "pass")
            span.end = time.time()

        return end, heal
