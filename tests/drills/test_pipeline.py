"""The signal pipeline on three real replicas, paper broker, with a SIGKILL and a SIGSTOP of
the leader while signals arrive: every distinct signal executed exactly once."""

from __future__ import annotations

import json
import random
import signal
import urllib.error
import urllib.request

import psycopg

from db.urls import libpq_url
from tests.support import LEASE_MS, ReplicaProcess, Spawn, cluster_env, the_leader, wait_for, wait_ready


def post(r: ReplicaProcess, body: dict, timeout_s: float = 0.3) -> tuple[int, dict] | None:
    req = urllib.request.Request(
        r.base + "/signals", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except (urllib.error.URLError, OSError):
        return None


def make_signal(i: int) -> dict:
    return {
        "source": "drill",
        "signal_id": f"s{i}",
        "symbol": "EURUSD",
        "side": "buy" if i % 2 else "sell",
        "type": "market",
        "volume": "0.01",
        "price": "1.1000",
        "sl": "1.0900" if i % 2 else "1.1100",
    }


def test_two_hundred_signals_through_a_kill_and_a_pause_execute_exactly_once(
    spawn: Spawn, cluster: str, redis_url: str, database_url: str
) -> None:
    env = {
        **cluster_env(cluster, redis_url, database_url),
        "HAEXEC_SWEEP_MS": "200",
        "HAEXEC_RISK_MAX_OPEN_POSITIONS": "1000",
        "HAEXEC_PAPER_PRICES": "signal",  # fixed prices (1.1), as the drills send them
    }
    replicas = [spawn(env, f"r{i}") for i in range(1, 4)]
    wait_ready(replicas)
    rng = random.Random(7)
    answers: dict[str, int] = {}
    sent: list[tuple[int, int]] = []  # (signal index, replica index)

    def deliver(i: int, start: int) -> None:
        for k in range(len(replicas)):  # a paused or dead replica: the producer tries the next
            target = (start + k) % len(replicas)
            got = post(replicas[target], make_signal(i))
            if got is not None and got[0] in (200, 202):
                assert got[1]["duplicate"] is (got[0] == 200), got
                answers[got[1]["fingerprint"]] = got[0]
                sent.append((i, target))
                return
        raise AssertionError(f"no replica accepted signal {i}")

    def produce(indexes: range) -> None:
        for i in indexes:
            deliver(i, i)
            if rng.random() < 0.2:  # re-sent to other replicas, once or twice
                for extra in range(rng.choice([1, 2])):
                    deliver(i, i + 1 + extra)

    produce(range(0, 70))
    killed = the_leader(replicas)
    killed.signal(signal.SIGKILL)
    killed.proc.wait()
    produce(range(70, 140))
    alive = [r for r in replicas if r is not killed]
    paused = the_leader(alive, timeout_s=LEASE_MS / 1000 * 5)
    paused.signal(signal.SIGSTOP)
    produce(range(140, 200))
    the_leader([r for r in alive if r is not paused], timeout_s=LEASE_MS / 1000 * 5)
    paused.signal(signal.SIGCONT)

    with psycopg.connect(libpq_url(database_url)) as conn:

        def settled() -> bool:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'executed'), count(*) FROM signals WHERE cluster = %s",
                (cluster,),
            ).fetchone()
            return row == (200, 200)

        wait_for(settled, 60, "all 200 signals executed", interval_s=0.2)
        fps = {r[0] for r in conn.execute("SELECT fingerprint FROM signals WHERE cluster = %s", (cluster,))}
        assert set(answers) <= fps, "an answered signal is missing from the database"
        assert len(answers) == 200
        orders = conn.execute(
            "SELECT tag, count(*) FROM paper_orders WHERE cluster = %s GROUP BY tag", (cluster,)
        ).fetchall()
        assert len(orders) == 200 and all(n == 1 for _, n in orders), "a signal was booked twice"
        tags = {r[0] for r in conn.execute("SELECT tag FROM signals WHERE cluster = %s", (cluster,))}
        assert {t for t, _ in orders} == tags
        # No order was placed under an epoch that had already been superseded.
        stale = conn.execute(
            """
            SELECT o.ticket, o.epoch, o.placed_at FROM paper_orders o
            WHERE o.cluster = %s AND EXISTS (
                SELECT 1 FROM leadership_history h
                WHERE h.cluster = o.cluster AND h.reason = 'acquired' AND h.epoch > o.epoch
                  AND h.at < o.placed_at)
            """,
            (cluster,),
        ).fetchall()
        assert stale == [], f"orders placed under superseded epochs: {stale}"
        epochs = [
            r[0]
            for r in conn.execute(
                "SELECT epoch FROM leadership_history WHERE cluster = %s AND reason = 'acquired' ORDER BY id",
                (cluster,),
            )
        ]
        assert epochs == sorted(set(epochs)) and len(epochs) >= 3, epochs
    assert any(t for _, t in sent), "all signals went to one replica"
