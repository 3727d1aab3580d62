"""`haexec drill` end to end: every scenario once on a throwaway cluster (lease 1500 ms, three
replicas), a short random schedule, the PNG timeline, bad input, and Ctrl-C leaving nothing
running. Each drill starts its own Redis and PostgreSQL (the command's default)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from haexec.drill.cluster import find_libfaketime, free_port
from haexec.drill.run import exit_status, missed_goals
from haexec.drill.scenarios import FAILOVER, SCENARIOS
from tests.support import REPO, wait_for

LEASE = 1500
LEASE_ARGS = ["--lease-ms", str(LEASE), "--replicas", "3"]


def drill_env() -> dict[str, str]:
    # The drill must not pick up the session's HAEXEC_* settings (it ignores them anyway).
    return {k: v for k, v in os.environ.items() if not k.startswith("HAEXEC_")}


def run_drill(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haexec.cli", "drill", *args],
        env=drill_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=str(REPO),
    )


def json_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The report; its exit status must be what the report says. A timing goal missed on a
    busy machine exits 1 without any invariant broken: the callers check the invariants."""
    why = f"exit {done.returncode}\nstdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}"
    assert done.returncode in (0, 1), why
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, f"--json must print exactly one line, got {len(lines)}\n{why}"
    doc = json.loads(lines[0])
    assert done.returncode == exit_status(doc), (missed_goals(doc), why)
    return doc


@pytest.mark.timeout(400)
def test_every_scenario_once_with_no_violation_and_a_timeline(tmp_path: Path) -> None:
    report = tmp_path / "report"
    doc = json_of(run_drill(["all", "--rounds", "1", *LEASE_ARGS, "--json", "--report", str(report)], 360))
    summary = doc["summary"]
    assert summary["violations"] == 0, doc["check"]
    assert summary["duplicates"] == 0 and summary["lost"] == 0
    assert summary["failed_rounds"] == 0
    assert summary["signals_checked"] > 200  # 20/s for the whole drill
    assert set(doc["scenarios"]) == set(SCENARIOS)
    for name, per in doc["scenarios"].items():
        (rnd,) = per["rounds"]
        assert rnd["ok"], (name, rnd)
        if rnd.get("skipped"):
            assert name == "clock-jump" and find_libfaketime() is None, (name, rnd)
            continue
        assert rnd["lost"] == 0 and rnd["duplicated"] == 0, (name, rnd)
        if name in FAILOVER:
            assert rnd["new_epoch"] > rnd["epoch_before"], (name, rnd)
            assert 0 < rnd["failover_ms"] < 8 * LEASE, (name, rnd)
    s = {name: per["summary"] for name, per in doc["scenarios"].items()}
    for name in ("kill", "pause"):
        (rnd,) = doc["scenarios"][name]["rounds"]
        # The new leader waits out the victim's lease: failover is about the PTTL left, plus a little.
        assert 0 < rnd["pttl_ms"] <= LEASE, rnd
        assert -20 < rnd["lag_ms"] < 600, rnd
    assert s["switchover"]["failover_ms_p50"] < 1000
    assert not doc["scenarios"]["redis-restart"]["rounds"][0]["leadership_changed"]
    for name in ("latency-redis", "latency-db"):
        assert not doc["scenarios"][name]["rounds"][0]["leadership_changed"], name
    jump = doc["scenarios"]["clock-jump"]["rounds"][0]
    if not jump.get("skipped"):
        assert jump["leader_throughout"] and not jump["leadership_changed"], jump
        assert [round(x / 3600) for x in jump["offsets_seen_s"]] == [1, -1], jump  # the clock really jumped
    png = Path(doc["timeline_png"])
    assert png.parent == report and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000


@pytest.mark.timeout(200)
def test_one_scenario_prints_a_table_per_round() -> None:
    done = run_drill(["switchover", "--rounds", "2", *LEASE_ARGS], 180)
    out = done.stdout
    assert done.returncode == (1 if "MISSED" in out else 0), done.stderr[-3000:]
    assert "== switchover" in out and "violations: none" in out
    rows = [ln for ln in out.splitlines() if re.match(r"^\s+[12]\s+r\d", ln)]
    assert len(rows) == 2, out
    assert "goal switchover_p99_le_100ms" in out


@pytest.mark.timeout(200)
def test_a_short_random_schedule_is_reproducible_and_checked_clean() -> None:
    done = run_drill(["random", "--seconds", "20", "--seed", "11", *LEASE_ARGS, "--json"], 180)
    doc = json_of(done)
    summary = doc["summary"]
    assert summary["violations"] == 0, doc["check"]
    assert summary["faults_injected"] >= 5 and summary["recovered"]
    assert summary["signals_checked"] > 150
    # The schedule is printed, and the same seed gives the same schedule.
    for line in doc["schedule"]:
        assert line in done.stderr
    from haexec.drill.scenarios import RANDOM_WEIGHTS, random_schedule

    again = random_schedule(11, 20.0, ["r1", "r2", "r3"], LEASE / 1000, list(RANDOM_WEIGHTS), "r3")
    assert [p.describe() for p in again] == doc["schedule"] or find_libfaketime() is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuch"], "unknown scenario 'nosuch'"),
        (["kill", "--rounds", "0"], "--rounds must be >= 1"),
        (["kill", "--replicas", "1"], "--replicas must be >= 2"),
        (["kill", "--replicas", "1000"], "--replicas must be >= 2 and <= 16"),
        (["kill", "--rounds", "99999999999999999999"], "--rounds must be >= 1 and <= 1000"),
        (["random", "--seconds", "99999999"], "--seconds must be >= 1 and <= 86400"),
        (["kill", "--rate", "inf"], "--rate must be positive and <= 10000"),
        (["random", "--seconds", "0"], "--seconds must be >= 1"),
        (["kill", "--rounds", "many"], "invalid int value"),
        (["redis-restart", "--redis-url", "redis://127.0.0.1:6399/0"], "cannot be run with --redis-url"),
        (["db-restart", "--database-url", "postgresql://x@127.0.0.1:5999/d"], "cannot be run with --database-url"),
        (["kill", "--lease-ms", "10"], "--lease-ms 10"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    done = run_drill(args, 30)
    assert done.returncode == 2, done
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert done.stdout == ""


def test_servers_that_cannot_be_reached_are_one_line_and_exit_1() -> None:
    port = free_port()  # nothing listens there
    done = run_drill(["kill", "--rounds", "1", "--database-url", f"postgresql://postgres@127.0.0.1:{port}/x"], 60)
    assert done.returncode == 1, done
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("haexec drill: database at"), done.stderr


def _procs() -> dict[int, tuple[int, str, str, str]]:
    """pid -> (ppid, cwd, cmdline, environ) of every process we may read."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (entry / "environ").read_bytes().replace(b"\0", b"\n").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except (OSError, IndexError, ValueError):
            continue
        out[int(entry.name)] = (ppid, cwd, cmd, env)
    return out


def _descendants(root: int, procs: dict[int, tuple[int, str, str, str]]) -> set[int]:
    found = {root}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, *_rest) in procs.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return found - {root}


@pytest.mark.timeout(200)
def test_sigint_during_a_drill_leaves_no_process_behind() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "haexec.cli", "drill", "kill", "--rounds", "50", *LEASE_ARGS],
        env=drill_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(REPO),
    )
    workdir = cluster = None
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 120
        for line in proc.stderr:
            m = re.search(r"workdir (\S+) cluster (\S+)", line)
            if m:
                workdir, cluster = m.group(1), m.group(2)
            if "kill 1/50" in line:
                break  # a round done; the next one is under way
            assert time.monotonic() < deadline, "the drill did not get going"
        assert workdir and cluster

        def replica_pids() -> set[int]:
            now = _procs()
            pids = {pid for pid, (_, _, _, env) in now.items() if f"HAEXEC_CLUSTER={cluster}\n" in env}
            return pids if len(pids) == 3 else set()

        # The round's victim may still be coming back when its line is printed.
        replicas = wait_for(replica_pids, 60, "three replica processes")
        procs = _procs()
        ours = _descendants(proc.pid, procs) | {pid for pid, (_, cwd, _, _) in procs.items() if cwd.startswith(workdir)}
        assert any("postgres" in procs[p][2] for p in ours) and any("redis-server" in procs[p][2] for p in ours)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 130
        stderr_tail = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    def left_running() -> dict[int, str]:
        after = _procs()
        return {
            pid: after[pid][2]
            for pid in after
            if (
                pid in ours
                or pid in replicas
                or after[pid][1].startswith(workdir)
                or f"HAEXEC_CLUSTER={cluster}\n" in after[pid][3]
            )
        }

    # Reaped children vanish from /proc a moment after the drill exits: wait, with a deadline.
    try:
        wait_for(lambda: left_running() == {}, 10, "every process of the drill gone")
    except AssertionError:
        raise AssertionError(f"processes left running: {left_running()}\n{stderr_tail}") from None
    assert not Path(workdir).exists(), "the work directory should be removed"
