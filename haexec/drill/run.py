"""Running a drill end to end: cluster, monitor, producer, rounds (or a random schedule),
settling, the checker, the report. Every process started is stopped on the way out, whether
the drill ends, fails, or is interrupted (Ctrl-C, SIGTERM, SIGHUP)."""

from __future__ import annotations

import atexit
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haexec.drill import checker, report, scenarios
from haexec.drill.alert_sink import AlertSink
from haexec.drill.cluster import DrillCluster, DrillError, log, wait_until
from haexec.drill.monitor import Monitor
from haexec.drill.producer import Producer, Target

EXIT_OK = 0
EXIT_FAILED = 1
SETTLE_S = 90.0


@dataclass(frozen=True)
class Options:
    scenario: str
    replicas: int
    rounds: int
    lease_ms: int
    seed: int
    seconds: int
    json: bool
    report_dir: Path | None
    redis_url: str | None
    database_url: str | None
    rate: float
    keep: bool

    @property
    def names(self) -> list[str]:
        if self.scenario == "all":
            return list(scenarios.SCENARIOS)
        if self.scenario == "random":
            return []
        return [self.scenario]


def _interrupt(signum: int, _frame: object) -> None:
    # SIGTERM/SIGHUP take the way of Ctrl-C: through every `finally`, so every process stops.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _ignore_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def execute(opts: Options) -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    faked = opts.scenario in ("clock-jump", "all", "random")
    # `all` runs clock-jump last and puts the replica under libfaketime only then (see
    # DrillCluster.ensure_faked); random needs it from the start.
    sink = AlertSink()  # every replica's webhook: the checker holds its alerts to the truth
    sink.start()
    cluster = DrillCluster(
        opts.replicas,
        opts.lease_ms,
        opts.redis_url,
        opts.database_url,
        faked,
        keep=opts.keep,
        faked_from_start=opts.scenario != "all",
        env_extra={"HAEXEC_ALERT_WEBHOOK": sink.url},
    )
    atexit.register(cluster.close)
    monitor: Monitor | None = None
    producer: Producer | None = None
    try:
        try:
            cluster.start()
        except DrillError as e:
            # A replica that failed to start: its log tail is in the message; keep the logs too.
            cluster.keep = bool(cluster.replicas)
            print(f"haexec drill: {e}", file=sys.stderr)
            return EXIT_FAILED
        monitor = Monitor(cluster)
        monitor.start()
        producer = Producer(
            lambda: [Target(r.instance_id, r.port) for r in cluster.replicas], cluster.cluster, opts.rate
        )
        ctx = scenarios.Context(cluster, monitor)
        began = time.time()
        producer.start()
        log(f"{opts.replicas} replicas ready (lease {opts.lease_ms} ms); producer at {opts.rate:g} signals/s")
        if cluster.faketime_note and faked:
            log(cluster.faketime_note)
        result = _random(opts, ctx) if opts.scenario == "random" else _rounds(opts, ctx)
        producer.stop()
        _settle(ctx)
        ended = time.time()
        _stop_replicas(cluster)
        facts = checker.read_facts(cluster.servers.database_url, cluster.cluster)
        answers = producer.snapshot()
        verdict = checker.check(facts, answers, sink.snapshot())
        doc = _document(opts, ctx, result, facts, answers, verdict, producer, began, ended)
        if opts.report_dir is not None:
            doc["timeline_png"] = _timeline(opts, ctx, facts, answers, began, ended)
        failed_rounds = doc["summary"].get("failed_rounds", 0)
        if not verdict.ok or failed_rounds:
            cluster.keep = True  # the logs explain it
            doc["workdir"] = str(cluster.workdir)
        if opts.json:
            print(json.dumps(doc, default=str))
        else:
            print("\n".join(_human(opts, doc)))
        return exit_status(doc)
    except KeyboardInterrupt as e:
        _ignore_signals()
        log(f"interrupted ({e or 'SIGINT'}); stopping replicas, proxies and servers")
        return 130
    except DrillError as e:
        _ignore_signals()
        cluster.keep = True
        print(f"haexec drill: {e}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        # A second Ctrl-C must not cut the teardown short and leave processes behind.
        _ignore_signals()
        if producer is not None:
            producer.stop()
        if monitor is not None:
            monitor.stop()
        cluster.close()
        sink.stop()
        atexit.unregister(cluster.close)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)


def missed_goals(doc: dict[str, Any]) -> list[str]:
    """The goals the report prints as MISSED (`scenario.goal` under `all`)."""
    return sorted(name for name, ok in doc["summary"].get("goals", {}).items() if not ok)


def exit_status(doc: dict[str, Any]) -> int:
    """1 when the checker found a violation, a round did not recover, or a goal was missed:
    a drill that prints MISSED must not pass in a script or CI."""
    if doc["check"]["violations"] or doc["summary"].get("failed_rounds") or missed_goals(doc):
        return EXIT_FAILED
    return EXIT_OK


# --------------------------------------------------------------------------- phases


def _rounds(opts: Options, ctx: scenarios.Context) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for name in opts.names:
        why = scenarios.refusal(name, ctx.cluster)
        rounds: list[dict[str, Any]] = []
        out[name] = rounds
        if why is not None:
            log(f"{name}: skipped: {why}")
            rounds.append({"scenario": name, "round": 0, "ok": True, "skipped": why})
            continue
        for n in range(1, opts.rounds + 1):
            r = scenarios.run_round(ctx, name, n)
            rounds.append(r)
            if r.get("skipped"):
                log(f"{name}: {r['skipped']}")
                break
            log(_progress(name, n, opts.rounds, r))
    return out


def _progress(name: str, n: int, total: int, r: dict[str, Any]) -> str:
    if not r.get("ok"):
        return f"{name} {n}/{total}: FAILED: {r.get('error')}"
    parts = [f"{name} {n}/{total}: {r.get('victim', '-')}"]
    if r.get("new_leader"):
        parts.append(f"-> {r['new_leader']} (epoch {r.get('new_epoch')})")
    if r.get("failover_ms") is not None:
        parts.append(f"in {r['failover_ms']:.1f} ms")
    if r.get("lag_ms") is not None:
        parts.append(f"lag {r['lag_ms']:.1f} ms (pttl {r.get('pttl_ms')})")
    if name in scenarios.STEADY and not r.get("new_leader"):
        parts.append("leader kept")
    return " ".join(parts)


def _random(opts: Options, ctx: scenarios.Context) -> dict[str, Any]:
    c = ctx.cluster
    kinds = [k for k in scenarios.RANDOM_WEIGHTS if scenarios.refusal(k, c) is None]
    plan = scenarios.random_schedule(
        opts.seed,
        float(opts.seconds),
        [r.instance_id for r in c.replicas],
        opts.lease_ms / 1000.0,
        kinds,
        c.faked.instance_id if c.faked else None,
    )
    log(f"random schedule (seed {opts.seed}, {opts.seconds} s, {len(plan)} faults):")
    for p in plan:
        print(f"  {p.describe()}", file=sys.stderr, flush=True)
    run = scenarios.RandomRun(ctx, plan)
    started = time.time()
    run.run()
    # Whatever the schedule left behind is healed; the cluster must come back to one leader.
    try:
        scenarios.prepare(ctx)
        recovered = True
    except scenarios.RoundFailed as e:
        log(f"random: the cluster did not recover after the schedule: {e}")
        recovered = False
    return {"plan": plan, "injected": run.injected, "started": started, "recovered": recovered}


def _settle(ctx: scenarios.Context) -> None:
    """Every stored signal in a final state (or the deadline: then the checker says which not)."""
    c = ctx.cluster
    c.heal_all()
    for r in c.replicas:
        if not r.alive():
            r.start()
    for r in c.replicas:
        try:
            c.wait_ready(r)
        except DrillError as e:
            log(str(e))

    def settled() -> bool:
        try:
            return checker.unsettled_count(c.servers.database_url, c.cluster) == 0
        except Exception:
            return False

    if wait_until(settled, SETTLE_S, 0.2) is None:
        log(f"signals still unsettled after {SETTLE_S:g}s")


def _stop_replicas(c: DrillCluster) -> None:
    for r in c.replicas:
        r.stop(timeout_s=10.0)


# --------------------------------------------------------------------------- the report


def _rel(r: dict[str, Any], began: float) -> dict[str, Any]:
    out = {}
    for k, v in r.items():
        if k in ("t_start", "t_end", "t_fault") and isinstance(v, float):
            out[k + "_s"] = round(v - began, 3)
        else:
            out[k] = v
    return out


def _attribute(verdict: checker.CheckResult, rounds: list[dict[str, Any]]) -> int:
    n = 0
    for v in verdict.violations:
        if v.at is not None and any(r.get("t_start", 0) <= v.at < r.get("t_end", 0) for r in rounds):
            n += 1
    return n


def _document(
    opts: Options,
    ctx: scenarios.Context,
    result: dict[str, Any],
    facts: checker.Facts,
    answers: list[Any],
    verdict: checker.CheckResult,
    producer: Producer,
    began: float,
    ended: float,
) -> dict[str, Any]:
    c = ctx.cluster
    counts = verdict.counts
    doc: dict[str, Any] = {
        "scenario": opts.scenario,
        "replicas": opts.replicas,
        "lease_ms": opts.lease_ms,
        "renew_ms": c.renew_ms,
        "seed": opts.seed,
        "cluster": c.cluster,
        "duration_s": round(ended - began, 1),
    }
    base = {
        "duplicates": counts.get("duplicated", 0),
        "lost": counts.get("lost", 0),
        "in_doubt": counts.get("in_doubt", 0),
        "violations": verdict.total_violations(),
        "violations_by_rule": verdict.by_rule(),
        "signals_checked": counts.get("signals", 0),
        "signals_executed": counts.get("executed", 0),
        "epochs": counts.get("epochs", 0),
    }
    if opts.scenario == "random":
        plan = result["plan"]
        injected = [i for i in result["injected"] if not i.get("skipped")]
        by_kind: dict[str, int] = {}
        for i in injected:
            by_kind[i["kind"]] = by_kind.get(i["kind"], 0) + 1
        doc.update(
            seconds=opts.seconds,
            schedule=[p.describe() for p in plan],
            injected=result["injected"],
            summary={
                **base,
                "faults_planned": len(plan),
                "faults_injected": len(injected),
                "faults_by_kind": by_kind,
                "recovered": result["recovered"],
                "failed_rounds": 0 if result["recovered"] else 1,
                "failover_ms_p50": None,
                "failover_ms_p99": None,
            },
        )
    else:
        per: dict[str, Any] = {}
        all_rounds: list[dict[str, Any]] = []
        for name, rounds in result.items():
            for r in rounds:
                if not r.get("skipped"):
                    scenarios.fill_round(r, facts, answers, ctx.monitor)
            s = report.summarize(name, rounds, c.renew_ms, _attribute(verdict, rounds))
            per[name] = {"rounds": [_rel(r, began) for r in rounds], "summary": s}
            all_rounds.extend(r for r in rounds if not r.get("skipped"))
        if opts.scenario == "all":
            fo = report.stats([r.get("failover_ms") for r in all_rounds if r["scenario"] in scenarios.FAILOVER])
            doc["scenarios"] = per
            doc["summary"] = {
                **base,
                "failover_ms_p50": fo["p50"],
                "failover_ms_p99": fo["p99"],
                "failover_ms_max": fo["max"],
                "failed_rounds": sum(p["summary"]["failed_rounds"] for p in per.values()),
                "goals": {f"{n}.{g}": ok for n, p in per.items() for g, ok in p["summary"]["goals"].items()},
            }
        else:
            only = per[opts.scenario]
            doc["rounds"] = only["rounds"]
            doc["summary"] = {**only["summary"], **base}
    doc["check"] = verdict.as_dict()
    doc["producer"] = {
        "signals": producer.sent,
        "answers": len(answers),
        "unanswered": len(producer.unanswered),
        "errors": producer.errors,
    }
    if c.faketime_note:
        doc["faketime"] = c.faketime_note
    return doc


def _timeline(
    opts: Options,
    ctx: scenarios.Context,
    facts: checker.Facts,
    answers: list[Any],
    began: float,
    ended: float,
) -> str | None:
    from haexec.drill.timeline import TimelineUnavailable, render

    assert opts.report_dir is not None
    name = f"drill-{opts.scenario}-{ctx.cluster.cluster}.png"
    title = (
        f"haexec drill {opts.scenario}: {opts.replicas} replicas, lease {opts.lease_ms} ms"
        + (f", seed {opts.seed}, {opts.seconds} s" if opts.scenario == "random" else f", {opts.rounds} round(s)")
        + f", cluster {ctx.cluster.cluster}"
    )
    try:
        path = render(
            opts.report_dir / name,
            title,
            [r.instance_id for r in ctx.cluster.replicas],
            facts,
            ctx.faults,
            answers,
            began,
            ended,
        )
    except TimelineUnavailable as e:
        log(f"no timeline: {e}")
        return None
    log(f"timeline: {path}")
    return str(path)


def _human(opts: Options, doc: dict[str, Any]) -> list[str]:
    lines = [
        f"haexec drill {opts.scenario}: {opts.replicas} replicas, lease {opts.lease_ms} ms, cluster {doc['cluster']}, "
        f"{doc['duration_s']:.0f} s"
    ]
    s = doc["summary"]
    if opts.scenario == "random":
        lines.append(
            f"seed {opts.seed}, {opts.seconds} s: {s['faults_injected']} faults injected {s['faults_by_kind']}"
        )
    else:
        per = doc.get("scenarios") or {opts.scenario: {"rounds": doc["rounds"], "summary": s}}
        for name, p in per.items():
            lines.append("")
            lines.extend(report.table(name, p["rounds"]))
        lines += ["", "summary"]
        for name, p in per.items():
            lines.extend(report.summary_lines(name, p["summary"]))
    lines.append("")
    lines.append(
        f"checked {s['signals_checked']} signals, {s['signals_executed']} executed once, {s['in_doubt']} in doubt, "
        f"{s['duplicates']} duplicated, {s['lost']} lost; {s['epochs']} epochs"
    )
    check = doc["check"]
    if check["violations"]:
        lines.append(f"VIOLATIONS: {check['violations']} {check['by_rule']}")
        for v in check["listed"]:
            lines.append(f"  [{v['rule']}] {v['detail']}")
            lines.append(f"      evidence: {json.dumps(v['evidence'], default=str)[:600]}")
    else:
        lines.append("violations: none")
    if doc.get("timeline_png"):
        lines.append(f"timeline: {doc['timeline_png']}")
    if doc.get("workdir"):
        lines.append(f"logs kept in {doc['workdir']}")
    return lines
