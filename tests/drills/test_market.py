"""Market data on real replica processes: GET /market/{symbol} and the feed's age on /health
and /metrics of leader and follower alike; the default paper venue filling at the sim's ask
and bid (the same prices this test computes: the sim is a function of seed and time); a
replay that ran out going stale (503 on /market, a detail on /health, never a 503 there;
signals rejected, not filled) with its cursor in PostgreSQL; start-up refusing an unusable
market setting in one line."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from decimal import Decimal
from pathlib import Path

import psycopg

from db.urls import libpq_url
from engine.market.sim import SimSource, wall_ms
from tests.support import ReplicaProcess, Spawn, cluster_env, run_cli, the_leader, wait_for, wait_ready

ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def post(r: ReplicaProcess, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        r.base + "/signals", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def signal(database_url: str, cluster: str, fp: str) -> tuple[str, Decimal | None, str | None, str | None]:
    with psycopg.connect(libpq_url(database_url)) as conn:
        found = conn.execute(
            "SELECT status, fill_price, error, tag FROM signals WHERE cluster = %s AND fingerprint = %s", (cluster, fp)
        ).fetchone()
    assert found is not None
    return found


def settled(database_url: str, cluster: str, fp: str) -> tuple | None:
    found = signal(database_url, cluster, fp)
    return found if found[0] not in ("received", "executing") else None


def test_market_on_every_replica_and_the_paper_venue_fills_at_the_sims_ask_and_bid(
    spawn: Spawn, redis_url: str, database_url: str, cluster: str
) -> None:
    env = {**cluster_env(cluster, redis_url, database_url), "HAEXEC_SWEEP_MS": "200"}
    replicas = [spawn(env, "m1"), spawn(env, "m2")]
    wait_ready(replicas)
    leader = the_leader(replicas)
    for r in replicas:
        status, body = r.get("/market/EURUSD")
        assert status == 200, body
        assert body["symbol"] == "EURUSD" and body["source"] == "sim"
        tick, spec = body["tick"], body["spec"]
        assert ISO_MS_Z.match(tick["time"]), tick
        assert Decimal(tick["bid"]) < Decimal(tick["ask"]) and tick["last"] is None
        assert isinstance(tick["bid"], str) and 0 <= tick["age_ms"] <= 5000
        assert spec["contract_size"] == "100000" and spec["tick_size"] == "0.00001" and spec["digits"] == 5
        assert spec["trade_mode"] == "full"
        status, body = r.get("/market/EURXYZ")
        assert status == 404 and body["error"].startswith("unknown symbol 'EURXYZ'")
        assert r.get("/market/EURUSD?max_age_ms=soon")[0] == 400
        status, body = r.get("/health")
        assert status == 200 and body["market"] == "ok", body
        status, text = r.get("/metrics")
        assert 'haexec_market_data_up{source="sim"} 1.0' in text
        age = re.search(r'^haexec_market_tick_age_seconds\{symbol="EURUSD"\} (\S+)$', text, re.M)
        assert age is not None and 0 <= float(age.group(1)) < 5, text[-2000:]
        assert 'haexec_market_cache_requests_total{result="hit"}' in text

    # Orders priced 5 pips off the market: the venue fills at the sim's ask (buy) and bid
    # (sell) of the moment it quoted, which this process can compute for itself.
    sim = SimSource(0)
    sent_ms = wall_ms()
    now = sim.tick("EURUSD")
    pip = Decimal("0.0001")
    buy = {"source": "t", "signal_id": "b", "symbol": "EURUSD", "side": "buy", "type": "market", "volume": "0.01"}
    buy |= {"price": str(now.ask + 5 * pip), "sl": str(now.ask - 100 * pip)}
    sell = {**buy, "signal_id": "s", "side": "sell", "price": str(now.bid - 5 * pip), "sl": str(now.bid + 100 * pip)}
    fps = [post(leader, body)[1]["fingerprint"] for body in (buy, sell)]
    results = [wait_for(lambda fp=fp: settled(database_url, cluster, fp), 15, "the signal settled") for fp in fps]
    window = sim.ticks("EURUSD", sent_ms - 1000, wall_ms(), 1000)
    asks = {window.tick(i).ask for i in range(len(window))}
    bids = {window.tick(i).bid for i in range(len(window))}
    (b_status, b_fill, b_error, b_tag), (s_status, s_fill, s_error, s_tag) = results
    assert (b_status, s_status) == ("executed", "executed"), (b_error, s_error)
    assert b_fill in asks and s_fill in bids, (b_fill, s_fill, asks, bids)
    assert b_fill != Decimal(buy["price"]) and s_fill != Decimal(sell["price"])
    with psycopg.connect(libpq_url(database_url)) as conn:
        positions = dict(
            conn.execute(
                "SELECT tag, price FROM paper_positions WHERE cluster = %s AND tag = ANY(%s)", (cluster, [b_tag, s_tag])
            ).fetchall()
        )
    assert positions == {b_tag: b_fill, s_tag: s_fill}


TICKS = (
    "time,symbol,bid,ask\n"
    "2026-01-05T10:00:00Z,EURUSD,1.10000,1.10010\n"
    "2026-01-05T10:00:00.500Z,EURUSD,1.10002,1.10012\n"
)


def test_a_replay_that_ran_out_is_stale_on_market_a_detail_on_health_and_refused_by_the_venue(
    spawn: Spawn, redis_url: str, database_url: str, cluster: str, tmp_path: Path
) -> None:
    path = tmp_path / "ticks.csv"
    path.write_text(TICKS)
    env = {
        **cluster_env(cluster, redis_url, database_url),
        "HAEXEC_MARKET": f"replay:{path}",
        "HAEXEC_MARKET_MAX_AGE_MS": "1000",
        "HAEXEC_SWEEP_MS": "200",
    }
    replicas = [spawn(env, "p1"), spawn(env, "p2")]
    wait_ready(replicas)
    leader = the_leader(replicas)

    def stale_everywhere() -> bool:
        return all(r.get("/market/EURUSD")[0] == 503 for r in replicas)

    wait_for(stale_everywhere, 10, "the replay's last tick older than 1 s")
    for r in replicas:
        status, body = r.get("/market/EURUSD")
        assert status == 503 and body["age_ms"] > body["max_age_ms"] == 1000, body
        assert body["error"].startswith("EURUSD tick at 2026-01-05T10:00:00.500Z is ")
        status, body = r.get("/health")
        assert status == 200, body  # stale market data is shown, never a 503 by itself
        assert re.fullmatch(r"stale: EURUSD tick \d+\.\d s old", body["market"]), body["market"]
        assert r.get("/market/EURUSD?max_age_ms=86400000")[0] == 200
    order = {"source": "t", "symbol": "EURUSD", "side": "buy", "type": "market", "volume": "0.01"}
    fp = post(leader, order | {"price": "1.1001", "sl": "1.0901"})[1]["fingerprint"]
    status, fill, error, _ = wait_for(lambda: settled(database_url, cluster, fp), 15, "the signal settled")
    assert (status, fill) == ("rejected", None)
    assert error.startswith("risk symbol_spec: no fresh price for EURUSD: EURUSD tick at 2026-01-05T10:00:00.500Z")
    for r in replicas:
        r.proc.terminate()
        r.proc.wait(10)
    with psycopg.connect(libpq_url(database_url)) as conn:
        cursor = conn.execute(
            "SELECT path, position FROM market_replay_cursor WHERE cluster = %s", (cluster,)
        ).fetchall()
    assert cursor == [(str(path), 2)]  # both ticks played, kept for the next start


def test_start_up_refuses_an_unusable_market_setting_in_one_line(
    redis_url: str, database_url: str, cluster: str, tmp_path: Path
) -> None:
    unsorted = tmp_path / "unsorted.csv"
    unsorted.write_text(
        "time,symbol,bid,ask\n2026-01-05T10:00:01Z,EURUSD,1.1,1.2\n2026-01-05T10:00:00Z,EURUSD,1.1,1.2\n"
    )
    env = cluster_env(cluster, redis_url, database_url)
    for extra, expected in (
        (
            {"HAEXEC_MARKET": f"replay:{unsorted}"},
            f"HAEXEC_MARKET: replay file {unsorted} line 3: time 2026-01-05T10:00:00.000Z",
        ),
        ({"HAEXEC_MARKET": "replay:/no/such.csv"}, "HAEXEC_MARKET: replay file '/no/such.csv' does not exist"),
        ({"HAEXEC_PAPER_PRICES": "mid"}, "HAEXEC_PAPER_PRICES: must be one of market, signal (got 'mid')"),
        ({"HAEXEC_MARKET_SYMBOLS": "EURUSD,NOPE"}, "HAEXEC_MARKET_SYMBOLS: the sim source has no NOPE"),
    ):
        started = time.monotonic()
        done = run_cli(["run"], {**env, **extra}, timeout_s=30)
        assert done.returncode == 2, (extra, done.stderr)
        assert done.stderr.startswith(f"haexec run: configuration: {expected}"), done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert time.monotonic() - started < 20


def test_mt5_market_data_goes_over_the_mt5_brokers_terminal(
    spawn: Spawn, redis_url: str, database_url: str, cluster: str
) -> None:
    """HAEXEC_BROKER=mt5 with HAEXEC_MARKET=mt5, against the fake MetaTrader5 module: the
    replica reads market data through the broker's one connection (the package allows one
    per process); that the reads run on the broker's worker thread is shown in
    tests/unit/test_market_hooks.py."""
    fakes = str(Path(__file__).resolve().parents[1] / "fakes")
    env = {
        **cluster_env(cluster, redis_url, database_url),
        "PYTHONPATH": fakes,
        "HAEXEC_BROKER": "mt5",
        "HAEXEC_MARKET": "mt5",
        "HAEXEC_MARKET_SYMBOLS": "EURUSD",
    }
    (r,) = [spawn(env, "t1")]
    wait_ready([r])
    status, body = r.get("/market/EURUSD")
    assert status == 200, body
    assert (body["source"], body["tick"]["bid"], body["tick"]["ask"]) == ("mt5", "1.10000", "1.10010")
    assert body["spec"]["contract_size"] == "100000.0"
    assert r.get("/market/GER40")[0] == 404  # at the terminal, but not among the symbols named
    assert r.log().count("MT5 connected") == 1 and "market feed" not in r.log()  # no failed pump
