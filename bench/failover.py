"""Failover benchmark on real processes: `python -m bench.failover`.

N `haexec run` replicas share a fresh cluster name on one Redis and one PostgreSQL
(bench-owned by default, or given by URL). Phases, each optional through --only:

kill     SIGKILL the leader; failover_ms = new leader_record.acquired_at - t_kill, and
         lag_ms = failover_ms - the key's PTTL at the kill (what the protocol adds on top of
         waiting out the lease). The victim is restarted before the next round.
sigterm  SIGTERM the leader (it releases and publishes); handover_ms = acquired_at - t_term.
takeover with --open-positions paper positions open (reconciled once at start-up), SIGKILL
         the leader and submit a signal at once; first_order_ms = the signal's booking time -
         the new leader's acquired_at: reconciliation before trading, the claim and the
         booking, everything a takeover does before its first order.
idle     a steady cluster for --idle-seconds: Redis commands/s per replica (MONITOR) and
         PostgreSQL writes/s by the leader.
Then the RSS of every replica.

acquired_at is PostgreSQL's clock_timestamp() and t_kill this process's time.time(): the
same machine's wall clock, so the two can be subtracted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import redis

from bench.cluster import (
    BENCH_CLIENT_PREFIX,
    REPO,
    BenchError,
    Replica,
    Servers,
    log,
    replica_env,
    wait_until,
)
from bench.idle import (
    RedisCommandCounter,
    current_xid,
    log_offset,
    logged_writes,
    pg_stat_writes,
    wait_window,
)
from bench.stats import summary
from coordinator.keys import cluster_pattern, events_channel, leader_key
from db.urls import libpq_url
from engine import store
from engine.signal import canonical_payload, fingerprint, intent_digest, order_tag, parse_signal
from haexec.drill.cluster import free_port

PHASES = ("kill", "sigterm", "takeover", "idle")
FAILOVER_DEADLINE_LEASES = 5
READY_TIMEOUT_S = 30.0
# How long the cluster may take to show one leader between rounds (startup, a failed round).
LEADER_TIMEOUT_LEASES = 10
GOAL_FOLLOWER_REDIS_PER_S = 2.0
GOAL_LEADER_DB_WRITES_PER_S = 1.0
# 74 MB before market data, plus the 20 MB the market-data issue allows a replica's feed.
GOAL_RSS_MB = 94.0
GOAL_FIRST_ORDER_P99_MS = 100.0
# The seeded book: market positions under epoch 0, as an earlier leader would have left them.
SEED_SQL = """
WITH o AS (
    INSERT INTO paper_orders (cluster, tag, symbol, side, type, volume, price, sl, tp, epoch, instance_id, state)
    SELECT %(cluster)s, 'HXSEED' || lpad(n::text, 21, '0'), 'EURUSD', 'buy', 'market', 0.01, 1.1, 1.09, NULL, 0,
           'bench', 'filled'
    FROM generate_series(1, %(n)s) AS n
    RETURNING ticket, symbol, side, volume, price, sl, tag
)
INSERT INTO paper_positions (ticket, cluster, symbol, side, volume, price, sl, tag)
SELECT ticket, %(cluster)s, symbol, side, volume, price, sl, tag FROM o
"""
BOOKED_SQL = "SELECT placed_at FROM paper_orders WHERE cluster = %s AND tag = %s"
RECORD_SQL = "SELECT epoch, acquired_at, instance_id FROM leader_record WHERE cluster = %s"


@dataclass(frozen=True)
class Options:
    rounds: int
    lease_ms: int
    replicas: int
    idle_seconds: float
    json: bool
    only: tuple[str, ...]
    redis_url: str | None
    database_url: str | None
    keep: bool
    trace: bool
    open_positions: int = 5000


@dataclass(frozen=True)
class Record:
    epoch: int
    acquired_at: datetime | None
    instance_id: str | None


def code_version() -> str:
    """The commit measured, marked dirty when the working tree differs from it: replicas run
    from the working tree, which other people may be changing."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{'-dirty' if dirty else ''}"


class Bench:
    def __init__(self, opts: Options, servers: Servers) -> None:
        self.opts = opts
        self.servers = servers
        self.lease_s = opts.lease_ms / 1000.0
        tag = uuid.uuid4().hex[:8]
        self.cluster = f"bench{tag}"
        self.key = leader_key(self.cluster)
        self.events = events_channel(self.cluster)
        # On a shared Redis, other clusters' replicas may be called r1 too; names must be
        # unique for MONITOR attribution.
        prefix = "" if servers.redis_server is not None else f"{tag}-"
        self.replicas: list[Replica] = []
        for i in range(1, opts.replicas + 1):
            instance, port = f"{prefix}r{i}", free_port()
            env = replica_env(self.cluster, instance, port, servers.redis_url, servers.database_url, opts.lease_ms)
            # The takeover phase's book would otherwise be refused by the default limit of 20.
            env["HAEXEC_RISK_MAX_OPEN_POSITIONS"] = str(opts.open_positions + opts.rounds + 100)
            self.replicas.append(Replica(instance, port, env, servers.logs / f"{instance}.log"))
        self.ctl = redis.Redis.from_url(
            servers.redis_url,
            client_name=f"{BENCH_CLIENT_PREFIX}-ctl",
            socket_timeout=5,
            decode_responses=True,
        )
        self.db = psycopg.connect(
            libpq_url(servers.database_url), autocommit=True, application_name=BENCH_CLIENT_PREFIX
        )

    # ---- cluster plumbing ----

    def start_all(self) -> None:
        for r in self.replicas:
            r.start()
        for r in self.replicas:
            r.wait_ready(READY_TIMEOUT_S)
        if wait_until(self._all_subscribed, READY_TIMEOUT_S) is None:
            raise BenchError(f"replicas never all subscribed to {self.events}")
        leader = self.find_leader()
        if leader is None:
            raise BenchError(f"no leader among {len(self.replicas)} replicas after start-up")
        log(f"cluster {self.cluster}: {len(self.replicas)} replicas ready, leader {leader.instance_id}")

    def stop_all(self) -> None:
        for r in self.replicas:
            if r.alive():
                try:
                    r.send(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for r in self.replicas:
            r.stop()

    def close(self) -> None:
        try:
            self.stop_all()
        finally:
            self._forget_cluster()
            self.ctl.close()
            self.db.close()

    def _forget_cluster(self) -> None:
        """On servers that outlive the bench, leave no trace of its throw-away cluster."""
        if self.servers.redis_server is not None and self.servers.pg_server is not None:
            return
        try:
            keys = list(self.ctl.scan_iter(match=cluster_pattern(self.cluster), count=100))
            if keys:
                self.ctl.delete(*keys)
            self.db.execute("DELETE FROM leadership_history WHERE cluster = %s", (self.cluster,))
            self.db.execute("DELETE FROM leader_record WHERE cluster = %s", (self.cluster,))
        except (redis.RedisError, psycopg.Error) as e:
            log(f"could not remove cluster {self.cluster} from the servers: {e}")

    def record(self) -> Record:
        row = self.db.execute(RECORD_SQL, (self.cluster,)).fetchone()
        if row is None:
            return Record(0, None, None)
        return Record(int(row[0]), row[1], row[2])

    def find_leader(self, timeout_s: float | None = None) -> Replica | None:
        """The one replica answering 200 on /leader (None if there is not exactly one in time)."""

        def one() -> Replica | None:
            found = [r for r in self.replicas if r.is_leader()]
            return found[0] if len(found) == 1 else None

        timeout = timeout_s if timeout_s is not None else LEADER_TIMEOUT_LEASES * self.lease_s
        return wait_until(one, timeout, 0.02)

    def wait_new_epoch(self, above: int, deadline: float) -> Record | None:
        """Poll leader_record until its epoch exceeds `above`, until wall-clock `deadline`.
        The poll interval does not bias the figure: acquired_at is stamped by PostgreSQL."""

        def moved() -> Record | None:
            rec = self.record()
            return rec if rec.epoch > above else None

        return wait_until(moved, max(0.0, deadline - time.time()))

    def restart(self, victim: Replica) -> None:
        """Same instance id and port; back as a ready follower before the next round."""
        victim.start()
        victim.wait_ready(READY_TIMEOUT_S)
        if wait_until(lambda: victim.alive() and victim.get("/leader") != 200, READY_TIMEOUT_S) is None:
            raise BenchError(f"{victim.instance_id} did not come back as a follower")
        # /ready comes before the events subscription is in place; a SIGTERM round started
        # earlier would measure a follower that cannot hear the release yet.
        if wait_until(self._all_subscribed, READY_TIMEOUT_S) is None:
            raise BenchError(f"{victim.instance_id} never subscribed to {self.events}")

    def _leader_settled(self) -> bool:
        row = self.db.execute(
            "SELECT clock_timestamp() - acquired_at >= %s * interval '1 millisecond' FROM leader_record"
            " WHERE cluster = %s AND released_at IS NULL",
            (self.opts.lease_ms, self.cluster),
        ).fetchone()
        return bool(row and row[0])

    def _all_subscribed(self) -> bool:
        numsub = dict(self.ctl.pubsub_numsub(self.events))
        return int(numsub.get(self.events, 0)) >= sum(r.alive() for r in self.replicas)

    # ---- phases ----

    def _round(self, n: int, sig: signal.Signals, metric: str) -> dict[str, Any]:
        leader = self.find_leader()
        if leader is None:
            return {"round": n, "ok": False, "error": "no single leader before the round"}
        before = self.record()
        pipe = self.ctl.pipeline(transaction=False)
        pipe.pttl(self.key)
        pipe.get(self.key)
        sent = time.time()
        pttl, holder = pipe.execute()
        t_signal = time.time()
        leader.send(sig)
        sample: dict[str, Any] = {
            "round": n,
            "victim": leader.instance_id,
            "epoch_before": before.epoch,
            "key_holder": (holder or "").split("|", 1)[0] or None,
            "t_signal": round(t_signal, 6),
        }
        if sig == signal.SIGKILL:
            # Redis computed the PTTL somewhere between `sent` and its reply, so the key expires
            # no earlier than sent + pttl; what is left of it at the kill is that minus t_kill.
            sample["pttl_raw_ms"] = int(pttl)
            sample["pttl_at_kill_ms"] = round((sent + int(pttl) / 1000.0 - t_signal) * 1000.0, 1)
        deadline = t_signal + FAILOVER_DEADLINE_LEASES * self.lease_s
        after = self.wait_new_epoch(before.epoch, deadline)
        exit_code = leader.wait_exit(max(1.0, deadline - time.time()) + 10.0)
        sample["victim_exit"] = exit_code
        if sig != signal.SIGKILL and exit_code is not None:
            # A graceful exit outlasts the handover, so the new epoch is seen first and this
            # is close to when the process really ended; after SIGKILL it would only say when
            # the poll for the new epoch ended.
            sample["victim_exit_ms"] = round((time.time() - t_signal) * 1000.0, 1)
        if exit_code is None:
            log(f"round {n}: {leader.instance_id} did not exit after {sig.name}; killing it")
            leader.send(signal.SIGKILL)
            leader.wait_exit(10.0)
        if after is None or after.acquired_at is None:
            limit = FAILOVER_DEADLINE_LEASES * self.opts.lease_ms
            sample.update(ok=False, error=f"no new leader within {limit} ms")
        else:
            elapsed = round((after.acquired_at.timestamp() - t_signal) * 1000.0, 1)
            sample.update({"ok": True, "new_leader": after.instance_id, "epoch": after.epoch, metric: elapsed})
            if "pttl_at_kill_ms" in sample:
                sample["lag_ms"] = round(elapsed - sample["pttl_at_kill_ms"], 1)
        self.restart(leader)
        return sample

    def run_rounds(self, sig: signal.Signals, label: str, metric: str) -> list[dict[str, Any]]:
        samples = []
        for n in range(1, self.opts.rounds + 1):
            s = self._round(n, sig, metric)
            samples.append(s)
            if s["ok"]:
                extra = f" lag {s['lag_ms']:.1f} ms (pttl {s['pttl_at_kill_ms']:.1f})" if "lag_ms" in s else ""
                log(f"{label} {n}/{self.opts.rounds}: {s['victim']} -> {s['new_leader']} in {s[metric]:.1f} ms{extra}")
            else:
                log(f"{label} {n}/{self.opts.rounds}: FAILED: {s['error']}")
        return samples

    def kill_phase(self) -> dict[str, Any]:
        samples = self.run_rounds(signal.SIGKILL, "kill", "failover_ms")
        ok = [s for s in samples if s["ok"]]
        return {
            "n": len(samples),
            "failed": len(samples) - len(ok),
            "failover_ms": summary([s["failover_ms"] for s in ok]),
            "lag_ms": summary([s["lag_ms"] for s in ok]),
            "samples": samples,
        }

    def sigterm_phase(self) -> dict[str, Any]:
        samples = self.run_rounds(signal.SIGTERM, "sigterm", "handover_ms")
        ok = [s for s in samples if s["ok"]]
        return {
            "n": len(samples),
            "failed": len(samples) - len(ok),
            "handover_ms": summary([s["handover_ms"] for s in ok]),
            "samples": samples,
        }

    def seed_book(self) -> None:
        """The paper book of the takeover phase, before the replicas start: the first leader
        reconciles it at start-up, as a long-running cluster would have done long ago."""
        if self.opts.open_positions and "takeover" in self.opts.only:
            self.db.execute(SEED_SQL, {"cluster": self.cluster, "n": self.opts.open_positions})
            log(f"cluster {self.cluster}: {self.opts.open_positions} open paper positions seeded")

    def _reconciled(self) -> bool:
        row = self.db.execute("SELECT count(*) FROM reconciliations WHERE cluster = %s", (self.cluster,)).fetchone()
        return bool(row and row[0])

    def submit(self, n: int) -> str:
        """A signal straight into the database, with its NOTIFY, as any replica's intake does."""
        intent = parse_signal(
            {
                "source": "bench",
                "signal_id": f"takeover-{n}",
                "symbol": "EURUSD",
                "side": "buy",
                "type": "market",
                "volume": "0.01",
                "price": "1.1",
                "sl": "1.09",
            }
        )
        fp = fingerprint(intent)
        store.accept(
            self.db,
            self.cluster,
            "bench",
            fp,
            intent_digest(intent),
            order_tag(fp),
            canonical_payload(intent),
            "bench",
            intent.signal_id,
            None,
        )
        return order_tag(fp)

    def _takeover_round(self, n: int) -> dict[str, Any]:
        leader = self.find_leader()
        if leader is None:
            return {"round": n, "ok": False, "error": "no single leader before the round"}
        before = self.record()
        t_kill = time.time()
        leader.send(signal.SIGKILL)
        tag = self.submit(n)
        sample: dict[str, Any] = {"round": n, "victim": leader.instance_id, "epoch_before": before.epoch}
        deadline = t_kill + FAILOVER_DEADLINE_LEASES * self.lease_s
        after = self.wait_new_epoch(before.epoch, deadline)
        booked = wait_until(
            lambda: (self.db.execute(BOOKED_SQL, (self.cluster, tag)).fetchone() or [None])[0],
            max(1.0, deadline - time.time()) + 5.0,
        )
        leader.wait_exit(10.0)
        if after is None or after.acquired_at is None:
            sample.update(ok=False, error="no new leader in time")
        elif booked is None:
            status = self.db.execute(
                "SELECT status, error FROM signals WHERE cluster = %s AND tag = %s", (self.cluster, tag)
            ).fetchone()
            sample.update(ok=False, error=f"the signal was not booked in time: {status}")
        else:
            sample.update(
                ok=True,
                new_leader=after.instance_id,
                epoch=after.epoch,
                first_order_ms=round((booked.timestamp() - after.acquired_at.timestamp()) * 1000.0, 1),
                kill_to_order_ms=round((booked.timestamp() - t_kill) * 1000.0, 1),
            )
        self.restart(leader)
        return sample

    def takeover_phase(self) -> dict[str, Any]:
        if wait_until(self._reconciled, READY_TIMEOUT_S, 0.05) is None:
            raise BenchError("the first leader never reconciled")
        samples = []
        for n in range(1, self.opts.rounds + 1):
            s = self._takeover_round(n)
            samples.append(s)
            if s["ok"]:
                log(
                    f"takeover {n}/{self.opts.rounds}: {s['victim']} -> {s['new_leader']}, first order"
                    f" {s['first_order_ms']:.1f} ms after its election ({s['kill_to_order_ms']:.0f} ms after the kill)"
                )
            else:
                log(f"takeover {n}/{self.opts.rounds}: FAILED: {s['error']}")
        ok = [s for s in samples if s["ok"]]
        return {
            "n": len(samples),
            "failed": len(samples) - len(ok),
            "open_positions": self.opts.open_positions,
            "first_order_ms": summary([s["first_order_ms"] for s in ok]),
            "kill_to_order_ms": summary([s["kill_to_order_ms"] for s in ok]),
            "samples": samples,
        }

    def idle_phase(self) -> dict[str, Any]:
        for r in self.replicas:
            if not r.alive():
                raise BenchError(f"{r.instance_id} is not running before the idle phase")
            r.wait_ready(READY_TIMEOUT_S)
        # Steady means past a takeover's one-off work (SCRIPT LOAD, reconciliation, first
        # renewals), which would otherwise be charged to the idle rates.
        if wait_until(self._leader_settled, READY_TIMEOUT_S, 0.05) is None:
            raise BenchError("the leader did not settle before the idle phase")
        leader = self.find_leader()
        if leader is None:
            raise BenchError("no single leader before the idle phase")
        before = self.record()
        instances = [r.instance_id for r in self.replicas]
        counter = RedisCommandCounter(self.servers.redis_url, instances)
        counter.start()
        pg_log = self.servers.pg_log_path()
        offset = log_offset(pg_log) if pg_log is not None else 0
        coord0, rows0 = pg_stat_writes(self.db)
        xid0 = current_xid(self.db)
        t0 = time.time()
        log(f"idle: measuring {self.opts.idle_seconds:g}s, leader {leader.instance_id}")
        wait_window(self.opts.idle_seconds)
        t1 = time.time()
        xid1 = current_xid(self.db)
        coord1, rows1 = pg_stat_writes(self.db)
        counter.stop(self.ctl)
        if counter.error is not None:
            raise BenchError(f"MONITOR failed: {counter.error}")
        after = self.record()
        window = t1 - t0
        tally = counter.tally(t0, t1)

        per_s = {i: round(tally.total(i) / window, 3) for i in instances}
        followers = [i for i in instances if i != leader.instance_id]
        detail = {i: {kind: dict(cmds) for kind, cmds in tally.commands.get(i, {}).items()} for i in instances}
        out: dict[str, Any] = {
            "window_s": round(window, 3),
            "leader_instance": leader.instance_id,
            "leadership_changed": after.epoch != before.epoch,
            "redis_cmds_per_s": per_s,
            "follower_max": max((per_s[i] for i in followers), default=None),
            "leader": per_s[leader.instance_id],
            "redis_cmds_detail": detail,
            "redis_script_cmds_per_s": {
                i: round(sum(tally.script_commands.get(i, {}).values()) / window, 3) for i in instances
            },
            "redis_cmds_unattributed": dict(tally.foreign),
            # Rows, not statements: an UPDATE that matches nothing counts here as 0.
            "pg_stat_writes_per_s": round((coord1 - coord0) / window, 3),
            "pg_stat_rows_all_tables_per_s": round((rows1 - rows0) / window, 3),
            # Write transactions of anyone on the server (on a bench-owned one: the replicas).
            "db_write_xacts_per_s": round((xid1 - xid0 - 1) / window, 3),
        }
        if pg_log is not None:
            writes = [w for w in logged_writes(pg_log, offset, self.opts.trace) if t0 <= w.at < t1]
            by_app: dict[str, int] = {}
            by_sql: dict[str, int] = {}
            for w in writes:
                by_app[w.application] = by_app.get(w.application, 0) + 1
                if w.application == f"haexec-ha-{leader.instance_id}":
                    by_sql[w.sql] = by_sql.get(w.sql, 0) + 1
            mine = sorted(w.at for w in writes if w.application == f"haexec-ha-{leader.instance_id}")
            out["db_method"] = "log_statement"
            out["leader_db_writes_per_s"] = round(len(mine) / window, 3)
            out["leader_db_writes"] = by_sql
            # A periodic writer gives 30 or 31 writes in a 30 s window depending on its phase:
            # the mean interval between them is the rate without that +-1 quantisation.
            gaps = [b - a for a, b in zip(mine, mine[1:], strict=False)]
            out["leader_db_write_interval_ms"] = round(1000.0 * sum(gaps) / len(gaps), 1) if gaps else None
            out["db_writes_per_s_by_session"] = {k: round(v / window, 3) for k, v in sorted(by_app.items())}
            # Every session of the leader (HA, view, engine...), not only the coordinator's.
            out["leader_db_writes_all_sessions_per_s"] = round(
                sum(v for k, v in by_app.items() if k.startswith("haexec-") and k.endswith(f"-{leader.instance_id}"))
                / window,
                3,
            )
        else:
            # Only the leader writes while the cluster is steady, so the tables' counters are its
            # writes (of every cluster on that database: a shared server inflates this).
            out["db_method"] = "pg_stat_user_tables"
            out["leader_db_writes_per_s"] = out["pg_stat_writes_per_s"]
        return out

    def rss(self) -> dict[str, Any]:
        now = time.monotonic()
        rss: dict[str, float] = {}
        detail: dict[str, dict[str, float]] = {}
        for r in self.replicas:
            if not r.alive():
                continue
            mem = r.memory_kb()
            rss[r.instance_id] = round(mem.get("VmRSS", 0) / 1024.0, 1)
            detail[r.instance_id] = {
                "peak_mb": round(mem.get("VmHWM", 0) / 1024.0, 1),
                "age_s": round(now - r.started_at, 1),
            }
        return {"rss_mb": rss, "rss_detail": detail}

    def run(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "lease_ms": self.opts.lease_ms,
            "rounds": self.opts.rounds,
            "replicas": self.opts.replicas,
            "cluster": self.cluster,
            "code": code_version(),
            # Tail latencies here are as much the machine's as the protocol's: say how busy it was.
            "host": {"cpus": os.cpu_count(), "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
            "kill": None,
            "sigterm": None,
            "takeover": None,
            "idle": None,
        }
        tracer: RedisCommandCounter | None = None
        if self.opts.trace:
            tracer = RedisCommandCounter(self.servers.redis_url, [r.instance_id for r in self.replicas], keep_text=True)
            tracer.start()
        try:
            self._phases(result)
        finally:
            if tracer is not None:
                tracer.stop(self.ctl)
                tracer.dump(self.servers.workdir / "redis-monitor.log")
        return result

    def _phases(self, result: dict[str, Any]) -> None:
        self.seed_book()
        self.start_all()
        if "kill" in self.opts.only:
            result["kill"] = self.kill_phase()
        if "sigterm" in self.opts.only:
            result["sigterm"] = self.sigterm_phase()
        if "takeover" in self.opts.only:
            result["takeover"] = self.takeover_phase()
        if "idle" in self.opts.only:
            result["idle"] = self.idle_phase()
        result["host"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        mem = self.rss()
        result["rss_mb"] = mem["rss_mb"]
        result["rss_detail"] = mem["rss_detail"]


# ---- output ----


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _goal(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def render(result: dict[str, Any]) -> str:
    lines = [
        f"haexec failover bench: {result['replicas']} replicas, lease {result['lease_ms']} ms, "
        f"cluster {result['cluster']}, code {result['code']}",
        f"host: {result['host']['cpus']} CPUs, load average {result['host']['loadavg_start'][0]:.2f} at start, "
        f"{result['host'].get('loadavg_end', ['-'])[0]} at end",
    ]
    if result["kill"] or result["sigterm"] or result["takeover"]:
        lines += ["", f"{'':<22}{'n':>4}{'failed':>8}{'p50':>10}{'p99':>10}{'max':>10}"]

    def row(label: str, phase: dict[str, Any], key: str) -> None:
        s = phase[key] or {}
        lines.append(
            f"{label:<22}{phase['n'] - phase['failed']:>4}{phase['failed']:>8}"
            f"{_fmt(s.get('p50')):>10}{_fmt(s.get('p99')):>10}{_fmt(s.get('max')):>10}"
        )

    if result["kill"]:
        row("kill failover_ms", result["kill"], "failover_ms")
        row("kill lag_ms", result["kill"], "lag_ms")
    if result["sigterm"]:
        row("sigterm handover_ms", result["sigterm"], "handover_ms")
    takeover = result["takeover"]
    if takeover:
        row("takeover first_order_ms", takeover, "first_order_ms")
        row("takeover kill_to_order", takeover, "kill_to_order_ms")
        p99 = (takeover["first_order_ms"] or {}).get("p99")
        lines.append(
            f"  takeover to first order with {takeover['open_positions']} open positions: p99 {_fmt(p99)} ms"
            f"   goal < {GOAL_FIRST_ORDER_P99_MS:g}: {_goal(p99 is not None and p99 < GOAL_FIRST_ORDER_P99_MS)}"
        )
    idle = result["idle"]
    if idle:
        lines += [
            "",
            f"idle window {idle['window_s']:.1f} s, leader {idle['leader_instance']}"
            + (" (LEADERSHIP CHANGED during the window)" if idle["leadership_changed"] else ""),
        ]
        for inst, rate in idle["redis_cmds_per_s"].items():
            role = "leader" if inst == idle["leader_instance"] else "follower"
            detail = ", ".join(
                f"{kind}: " + " ".join(f"{c}={n}" for c, n in sorted(cmds.items()))
                for kind, cmds in sorted(idle["redis_cmds_detail"].get(inst, {}).items())
            )
            lines.append(f"  redis cmds/s {inst:<14}{rate:>7.2f}  {role:<9} ({detail})")
        fmax = idle["follower_max"]
        if fmax is not None:
            lines.append(
                f"  follower max {fmax:.2f} cmds/s   goal <= {GOAL_FOLLOWER_REDIS_PER_S:g}: "
                f"{_goal(fmax <= GOAL_FOLLOWER_REDIS_PER_S)}"
            )
        lines.append(f"  leader       {idle['leader']:.2f} cmds/s")
        w = idle["leader_db_writes_per_s"]
        extra = ""
        if idle.get("leader_db_write_interval_ms"):
            extra = f", one every {idle['leader_db_write_interval_ms']:.1f} ms"
        lines.append(
            f"  leader DB writes/s {w:.3f} ({idle['db_method']}{extra})   goal <= "
            f"{GOAL_LEADER_DB_WRITES_PER_S:g}: {_goal(w <= GOAL_LEADER_DB_WRITES_PER_S)}"
        )
        lines.append(
            f"  cross-checks: pg_stat {idle['pg_stat_writes_per_s']:.3f} rows/s in the coordinator tables; "
            f"{idle['db_write_xacts_per_s']:.3f} write transactions/s on the server (transaction ids)"
        )
        if idle["db_method"] == "log_statement":
            others = {k: v for k, v in idle["db_writes_per_s_by_session"].items() if not k.startswith("haexec-ha-")}
            if others:
                each = ", ".join(f"{k} {v:.3f}" for k, v in others.items())
                lines.append(
                    f"  other write statements/s: {each} (all of the leader's sessions "
                    f"{idle['leader_db_writes_all_sessions_per_s']:.3f}; rows written in all tables "
                    f"{idle['pg_stat_rows_all_tables_per_s']:.3f}/s)"
                )
    if result["rss_mb"]:
        lines.append("")
        worst = max(result["rss_mb"].values())
        each = "  ".join(
            f"{i} {mb:.1f} (peak {result['rss_detail'][i]['peak_mb']:.1f}, up {result['rss_detail'][i]['age_s']:.0f}s)"
            for i, mb in result["rss_mb"].items()
        )
        lines.append(f"RSS MB  max {worst:.1f}  goal <= {GOAL_RSS_MB:g}: {_goal(worst <= GOAL_RSS_MB)}")
        lines.append(f"  {each}")
    return "\n".join(lines)


# ---- command line ----


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {n})")
    return n


def _phases(value: str) -> tuple[str, ...]:
    chosen = tuple(p.strip() for p in value.split(",") if p.strip())
    unknown = [p for p in chosen if p not in PHASES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {','.join(PHASES)} (got {value!r})")
    return chosen


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=_positive_int, default=20, help="rounds of kill and of sigterm")
    p.add_argument("--lease-ms", type=_positive_int, default=3000, help="HAEXEC_LEASE_MS of the replicas")
    p.add_argument("--replicas", type=_positive_int, default=3)
    p.add_argument("--idle-seconds", type=float, default=30.0, help="length of the idle window")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--only", type=_phases, default=PHASES, help="comma-separated: kill,sigterm,takeover,idle")
    p.add_argument(
        "--open-positions",
        type=int,
        default=5000,
        help="open paper positions during the takeover phase (default 5000)",
    )
    p.add_argument("--redis-url", help="an existing Redis (default: a bench-owned redis-server)")
    p.add_argument("--database-url", help="an existing PostgreSQL database at schema head")
    p.add_argument("--keep", action="store_true", help="keep the work directory (replica logs)")
    p.add_argument(
        "--trace",
        action="store_true",
        help="also log every SQL statement and every Redis command of the run into the kept work directory",
    )
    a = p.parse_args(argv)
    if a.replicas < 2 and ({"kill", "sigterm", "takeover"} & set(a.only)):
        p.error("--replicas must be >= 2 for the kill, sigterm and takeover phases")
    if a.open_positions < 0:
        p.error("--open-positions must be >= 0")
    if a.idle_seconds <= 0:
        p.error("--idle-seconds must be positive")
    return Options(
        rounds=a.rounds,
        lease_ms=a.lease_ms,
        replicas=a.replicas,
        idle_seconds=a.idle_seconds,
        json=a.json,
        only=a.only,
        redis_url=a.redis_url,
        database_url=a.database_url,
        keep=a.keep or a.trace,
        trace=a.trace,
        open_positions=a.open_positions,
    )


def _interrupt(signum: int, _frame: object) -> None:
    # SIGTERM/SIGHUP take the same way out as Ctrl-C: through every `finally`, so replicas
    # and servers are stopped.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    result: dict[str, Any] | None = None
    failed = False
    try:
        with Servers(opts.redis_url, opts.database_url, keep=opts.keep, trace=opts.trace) as servers:
            bench = Bench(opts, servers)
            try:
                result = bench.run()
            except BenchError as e:
                log(f"error: {e}")
                failed = True
                servers.keep = True  # the replica logs explain what went wrong
            finally:
                # A second Ctrl-C must not cut the teardown short and leave processes behind.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                log("stopping replicas and servers")
                bench.close()
            if result is not None:
                failed = failed or any(
                    result[p] is not None and result[p]["failed"] for p in ("kill", "sigterm", "takeover")
                )
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
