"""Positions across a killed and a paused leader, on real replica processes, the paper venue
and a moving feed (a replayed EURUSD rising a point every 250 ms tick): 50 positions, half
bought, trailing 15 points behind from +0 R with a profit lock, the leader SIGKILLed and then
the next one SIGSTOPped while the bought ones' stops trail.
After each fault every open position has its stop; no stop was ever loosened (the venue's
modify deals, in order); no stop change was written under an epoch already superseded; and
trailing resumes under the new epoch. How long it took to resume is printed (a drill
figure, not an assertion: `pytest -s tests/drills/test_positions_failover.py`)."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg

from db.urls import libpq_url
from tests.support import LEASE_MS, ReplicaProcess, Spawn, cluster_env, epoch_of, the_leader, wait_for, wait_ready

POSITIONS = 50
MANAGE = {"trailing": {"distance_points": 15, "activation_rr": 0}, "lock": [[0.2, 0.05]]}
STOP_CHANGES = ("trailing", "lock", "breakeven", "stop_moved")
START = Decimal("1.10000")  # the feed's first bid; the spread is 10 points


def rising_feed(path: Path, minutes: int = 10) -> None:
    """EURUSD ticks every 250 ms, the bid a point higher each time."""
    t0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    rows = ["time,symbol,bid,ask"]
    for n in range(minutes * 240):
        at = (t0 + timedelta(milliseconds=250 * n)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        bid = START + Decimal(n) / 100_000
        rows.append(f"{at},EURUSD,{bid:.5f},{bid + Decimal('0.00010'):.5f}")
    path.write_text("\n".join(rows) + "\n")


def post_signal(r: ReplicaProcess, i: int, bid: Decimal) -> int:
    buy = i % 2 == 0
    body = {
        "source": "drill",
        "signal_id": f"p{i}",
        "symbol": "EURUSD",
        "side": "buy" if buy else "sell",
        "type": "market",
        "volume": "0.01",
        "price": str(bid),
        "sl": str(bid - Decimal("0.0050") if buy else bid + Decimal("0.0050")),
        "manage": MANAGE,
    }
    req = urllib.request.Request(
        r.base + "/signals", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return int(resp.status)


def one(conn: psycopg.Connection, sql: str, *args: object) -> tuple:
    row = conn.execute(sql, args).fetchone()
    assert row is not None, sql
    return row


def naked(conn: psycopg.Connection, cluster: str) -> list[int]:
    rows = conn.execute(
        "SELECT ticket FROM paper_positions WHERE cluster = %s AND closed_at IS NULL AND sl IS NULL", (cluster,)
    ).fetchall()
    return [r[0] for r in rows]


def first_change_under(conn: psycopg.Connection, cluster: str, epoch: int) -> float | None:
    """When the first stop change under `epoch` was journalled (epoch seconds), if yet."""
    row = conn.execute(
        "SELECT extract(epoch FROM min(at)) FROM trade_journal WHERE cluster = %s AND epoch = %s AND kind = ANY(%s)",
        (cluster, epoch, list(STOP_CHANGES)),
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def test_fifty_trailing_positions_keep_their_stops_through_a_kill_and_a_pause(
    spawn: Spawn, cluster: str, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    feed = tmp_path / "rising.csv"
    rising_feed(feed)
    env = {
        **cluster_env(cluster, redis_url, database_url),
        "HAEXEC_MARKET": f"replay:{feed}",
        "HAEXEC_SWEEP_MS": "200",
        "HAEXEC_RISK_MAX_OPEN_POSITIONS": "1000",
    }
    replicas = [spawn(env, f"r{i}") for i in range(1, 4)]
    wait_ready(replicas)
    leader = the_leader(replicas)
    for i in range(POSITIONS):  # filled at the feed's price of the moment, within the deviation allowed
        assert post_signal(leader, i, START) == 202
    resumed: dict[str, float] = {}
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:

        def all_managed() -> bool:
            n = one(
                conn,
                "SELECT count(*) FROM plan_execution_state WHERE cluster = %s AND verified_sl IS NOT NULL",
                cluster,
            )[0]
            return n == POSITIONS

        wait_for(all_managed, 30, f"{POSITIONS} positions managed with verified stops", interval_s=0.2)
        epoch = epoch_of(leader)
        wait_for(lambda: first_change_under(conn, cluster, epoch), 30, "stops trailing", interval_s=0.2)

        alive = list(replicas)
        for fault, sig in (("kill", signal.SIGKILL), ("pause", signal.SIGSTOP)):
            victim = the_leader(alive)
            old = epoch_of(victim)
            struck = time.time()
            victim.signal(sig)
            alive = [r for r in alive if r is not victim]
            successor = the_leader(alive, timeout_s=LEASE_MS / 1000 * 6)
            new = epoch_of(successor)
            assert new > old
            at = wait_for(lambda e=new: first_change_under(conn, cluster, e), 30, f"trailing under epoch {new}")
            resumed[fault] = (at - struck) * 1000
            assert naked(conn, cluster) == [], f"after the {fault}: positions without a stop"
            if sig is signal.SIGSTOP:
                victim.signal(signal.SIGCONT)  # it wakes, finds itself deposed, and follows
                alive.append(victim)
        the_leader(alive)

        # No stop ever loosened: each position's stops at the venue, in the order they were set.
        rows = conn.execute(
            "SELECT d.ticket, p.side, d.sl FROM paper_deals d JOIN paper_positions p"
            " ON p.cluster = d.cluster AND p.ticket = d.ticket"
            " WHERE d.cluster = %s AND d.kind IN ('open', 'fill', 'modify') ORDER BY d.id",
            (cluster,),
        ).fetchall()
        last: dict[int, Decimal] = {}
        looser = []
        for ticket, side, sl in rows:
            if sl is None:
                continue
            was = last.get(ticket)
            if was is not None and (sl < was if side == "buy" else sl > was):
                looser.append((ticket, side, was, sl))
            last[ticket] = sl
        assert looser == [], f"stops loosened: {looser[:5]}"
        # ... and as the journal tells it: every change it recorded tightened the stop.
        loosened = conn.execute(
            """
            SELECT j.ticket, e.side, j.detail ->> 'from', j.detail ->> 'to' FROM trade_journal j
            JOIN plan_execution_state e ON e.cluster = j.cluster AND e.ticket = j.ticket
            WHERE j.cluster = %s AND j.kind = ANY(%s) AND j.detail ->> 'from' IS NOT NULL
              AND CASE e.side WHEN 'buy' THEN (j.detail ->> 'to')::numeric <= (j.detail ->> 'from')::numeric
                              ELSE (j.detail ->> 'to')::numeric >= (j.detail ->> 'from')::numeric END
            """,
            (cluster, list(STOP_CHANGES)),
        ).fetchall()
        assert loosened == [], f"journalled changes that did not tighten: {loosened[:5]}"
        journalled = one(
            conn,
            "SELECT count(*) FROM trade_journal WHERE cluster = %s AND kind = ANY(%s)"
            " AND detail ->> 'from' IS NOT NULL",
            cluster,
            list(STOP_CHANGES),
        )[0]
        assert journalled > 0
        moved = one(conn, "SELECT count(*) FROM paper_deals WHERE cluster = %s AND kind = 'modify'", cluster)[0]
        assert moved > 0
        # No stop change journalled under an epoch that had been superseded when it was written.
        stale = conn.execute(
            """
            SELECT j.ticket, j.epoch, j.at FROM trade_journal j
            WHERE j.cluster = %s AND j.kind = ANY(%s) AND EXISTS (
                SELECT 1 FROM leadership_history h
                WHERE h.cluster = j.cluster AND h.reason = 'acquired' AND h.epoch > j.epoch AND h.at < j.at)
            """,
            (cluster, list(STOP_CHANGES)),
        ).fetchall()
        assert stale == [], f"stop changes under superseded epochs: {stale[:5]}"
        assert naked(conn, cluster) == []
    print(
        f"\npositions drill: {POSITIONS} positions, {moved} stop changes at the venue; trailing resumed "
        f"{resumed['kill']:.0f} ms after the kill and {resumed['pause']:.0f} ms after the pause "
        f"(lease {LEASE_MS} ms; goal lease + 1 s = {LEASE_MS + 1000} ms)"
    )
