"""The leadership protocol, step by step: `Elector.step()` called by hand on a FakeClock,
real `RedisLease` Lua scripts on fakeredis, an in-memory epoch store with the SQL's rules.

fakeredis TTLs run on real time (these tests take milliseconds, so no key expires by
itself): an expired key is simulated by deleting it, a Redis restart by FLUSHALL, a lost
token by writing another value, Redis errors by `server.connected = False` or a script
that raises."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

import pytest
import redis
from prometheus_client import REGISTRY

from coordinator.elector import Elector, Role
from coordinator.fencing import NotLeader
from coordinator.lease import TOKEN_BYTES
from tests.unit.conftest import Cluster, Events

CB_DEADLINE_S = 5.0
OTHER = "b|" + "0" * 32  # a value some other replica put in the key


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def split_brains() -> float:
    return counter("haexec_split_brain_total")


def cas_lost() -> float:
    return counter("haexec_epoch_cas_lost_total")


def reasserted() -> float:
    return counter("haexec_lease_reasserted_total")


def lead(cl: Cluster, instance: str = "a", **kwargs: object) -> Elector:
    """A fresh elector that has just become leader (epoch = store epoch + 1)."""
    elector = cl.elector(instance, **kwargs)  # type: ignore[arg-type]
    expected = cl.store.row.epoch + 1
    assert elector.step() == elector.cfg.renew_ms
    assert elector.role is Role.LEADER and elector.epoch == expected
    return elector


def raise_connection_error(*args: object, **kwargs: object) -> None:
    raise redis.ConnectionError("injected: connection reset by peer")


def assert_not_leader(elector: Elector) -> None:
    assert elector.role is Role.FOLLOWER
    assert elector.epoch is None
    assert not elector.is_leader()
    assert elector.lease_remaining_ms() == 0.0
    with pytest.raises(NotLeader):
        elector.fence()


# ---- 1. first acquisition ----


def test_first_acquisition(cl: Cluster) -> None:
    a = cl.elector("a")
    b = cl.elector("b")
    cfg = a.cfg

    assert a.step() == cfg.renew_ms  # next renew is one renew interval after the SET

    assert a.role is Role.LEADER and a.epoch == 1
    value = cl.holder()
    assert value is not None
    match = re.fullmatch(r"a\|([0-9a-f]+)", value)
    assert match, value
    assert len(bytes.fromhex(match.group(1))) >= TOKEN_BYTES >= 16
    assert 0 < cl.redis.pttl(cl.key) <= cfg.lease_ms
    fence = a.fence()
    assert fence.epoch == 1
    assert fence.remaining_ms == cfg.lease_ms - cfg.drift_margin_ms
    assert a.is_leader()
    assert cl.reasons() == [("a", 1, "acquired")]
    assert [(h.event, h.reason) for h in cl.store.history(5)] == [("acquired", "acquired")]
    assert cl.store.row.instance_id == "a" and cl.store.row.epoch == 1

    before = cl.redis.pttl(cl.key)
    wait = b.step()
    after = cl.redis.pttl(cl.key)
    assert after <= wait <= before + cfg.jitter_ms  # sleeps until the key's PTTL runs out
    assert_not_leader(b)
    assert cl.holder() == value
    assert cl.store.calls.count("claim") == 1  # only a's
    assert cl.store.row.epoch == 1


def test_tokens_are_fresh_per_acquisition(cl: Cluster) -> None:
    a = lead(cl)
    first = cl.holder()
    a.release("released:sigterm")
    cl.clock.advance(a.cfg.cooldown_ms)
    a.step()
    assert a.epoch == 2
    assert cl.holder() not in (None, first)


def test_follower_waits_renew_interval_on_key_without_ttl(cl: Cluster) -> None:
    b = cl.elector("b")
    cl.redis.set(cl.key, OTHER)  # no TTL: PTTL -1
    wait = b.step()
    assert b.cfg.renew_ms <= wait <= b.cfg.renew_ms + b.cfg.jitter_ms
    assert cl.store.calls == []


# ---- 2. lost token ----


def test_lost_token_steps_down_and_counts_split_brain(
    cl: Cluster, events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    a = lead(cl)
    cl.redis.set(cl.key, OTHER, px=a.cfg.lease_ms)
    sb = split_brains()
    cl.clock.advance(a.cfg.renew_ms)

    assert a.step() == a.cfg.cooldown_ms

    assert_not_leader(a)
    assert split_brains() == sb + 1  # the DB heartbeat still named a: Redis and DB disagree
    assert any(r.levelname == "CRITICAL" and "split brain" in r.getMessage() for r in caplog.records)
    assert cl.reasons()[-1] == ("a", 1, "demoted:split_brain")
    assert cl.store.row.released_at is not None  # a gave the record up
    assert cl.holder() == OTHER  # compare-and-delete left the other value alone
    assert events.drain() == []  # nothing deleted, nothing announced


def test_lost_token_while_db_down_is_not_a_split_brain(cl: Cluster) -> None:
    a = lead(cl)
    cl.redis.set(cl.key, OTHER, px=a.cfg.lease_ms)
    cl.store.down = True
    sb = split_brains()
    cl.clock.advance(a.cfg.renew_ms)

    a.step()

    assert_not_leader(a)
    assert split_brains() == sb  # the DB did not confirm a, so nothing disagreed
    assert cl.reasons() == [("a", 1, "acquired")]  # the row is pending
    assert cl.holder() == OTHER


def test_sits_out_cooldown_after_stepping_down(cl: Cluster) -> None:
    a = lead(cl)
    cl.redis.set(cl.key, OTHER, px=a.cfg.lease_ms)
    cl.clock.advance(a.cfg.renew_ms)
    a.step()
    cl.redis.delete(cl.key)
    calls = len(cl.store.calls)

    cl.clock.advance(400)
    assert a.step() == a.cfg.cooldown_ms - 400
    assert len(cl.store.calls) == calls  # did not even read the record
    assert cl.holder() is None


# ---- 3. CAS lost to a faster rival ----


def test_cas_lost_releases_key_quietly_and_backs_off(
    cl: Cluster, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = cl.elector("a")
    real_claim = cl.store.claim

    def rival_first(expected_epoch: int, me: str) -> int | None:
        assert cl.holder() is not None and cl.holder().startswith("a|")  # a won the key
        assert real_claim(expected_epoch, "rival") == expected_epoch + 1
        return real_claim(expected_epoch, me)

    monkeypatch.setattr(cl.store, "claim", rival_first)
    lost = cas_lost()

    wait = a.step()

    assert_not_leader(a)
    assert cas_lost() == lost + 1
    assert a.cfg.renew_ms * 0.5 <= wait <= a.cfg.renew_ms
    assert cl.holder() is None  # compare-and-delete of its own key
    assert events.drain() == []  # ... without waking anyone
    assert cl.store.row.epoch == 1 and cl.store.row.instance_id == "rival"
    assert cl.reasons() == [("rival", 1, "acquired")]

    # Next look: the rival holds a fresh record; a neither takes the key nor claims.
    monkeypatch.setattr(cl.store, "claim", real_claim)
    wait = a.step()
    assert cl.holder() is None
    assert a.role is Role.FOLLOWER
    assert cl.store.calls.count("claim") == 2  # the rival's and a's first one
    assert a.cfg.renew_ms <= wait <= a.cfg.renew_ms + a.cfg.jitter_ms


def test_cas_lost_with_redis_failing_on_release(cl: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    a = cl.elector("a")
    real_claim = cl.store.claim

    def rival_first(expected_epoch: int, me: str) -> int | None:
        real_claim(expected_epoch, "rival")
        cl.server.connected = False
        return real_claim(expected_epoch, me)

    monkeypatch.setattr(cl.store, "claim", rival_first)
    wait = a.step()
    assert_not_leader(a)
    assert a.cfg.renew_ms * 0.5 <= wait <= a.cfg.renew_ms
    assert a.last_error is not None and a.last_error.startswith("redis:")


def test_key_taken_between_pttl_and_set(cl: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    a = cl.elector("a")
    real_read = cl.store.read

    def read_then_rival_sets() -> object:
        record = real_read()
        cl.redis.set(cl.key, OTHER, px=a.cfg.lease_ms)
        return record

    monkeypatch.setattr(cl.store, "read", read_then_rival_sets)
    wait = a.step()
    assert_not_leader(a)
    assert 0 <= wait <= a.cfg.jitter_ms
    assert "claim" not in cl.store.calls
    assert cl.holder() == OTHER


def test_claim_db_error_releases_key(cl: Cluster) -> None:
    a = cl.elector("a")
    cl.store.failing.add("claim")
    assert a.step() == a.cfg.renew_ms / 2
    assert_not_leader(a)
    assert cl.holder() is None
    assert a.last_error is not None and a.last_error.startswith("database:")


def test_set_reply_lost_but_landed_still_wins(cl: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    a = cl.elector("a")
    real_acquire = a._lease._acquire

    def set_then_lose_reply(*args: object, **kwargs: object) -> object:
        real_acquire(*args, **kwargs)
        raise redis.TimeoutError("injected: reply lost")

    monkeypatch.setattr(a._lease, "_acquire", set_then_lose_reply)
    a.step()
    assert a.role is Role.LEADER and a.epoch == 1
    assert cl.holder().startswith("a|")


def test_set_error_not_landed_stays_follower(cl: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    a = cl.elector("a")
    monkeypatch.setattr(a._lease, "_acquire", raise_connection_error)
    assert a.step() == a.cfg.renew_ms / 2
    assert_not_leader(a)
    assert "claim" not in cl.store.calls
    assert cl.holder() is None


def test_follower_redis_down(cl: Cluster) -> None:
    a = cl.elector("a")
    cl.server.connected = False
    assert a.step() == a.cfg.renew_ms / 2
    assert_not_leader(a)
    assert cl.store.calls == []
    assert a.last_error is not None and a.last_error.startswith("redis:")


# ---- 4. renew errors until the deadline ----


@pytest.mark.parametrize("how", ["script", "server"])
def test_renew_errors_until_deadline(cl: Cluster, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    a = lead(cl)
    cfg = a.cfg
    t0 = cl.clock.now_ms()
    value = cl.holder()
    if how == "script":
        monkeypatch.setattr(cl.leases["a"], "_renew", raise_connection_error)
    else:
        cl.server.connected = False

    cl.clock.advance(1000)
    assert a.step() == cfg.renew_ms / 4  # retry sooner
    assert a.role is Role.LEADER
    assert a.fence().epoch == 1
    assert a.fence().remaining_ms == cfg.trusted_ms - 1000  # validity not extended

    cl.clock.advance(cfg.renew_deadline_ms - 1000 - 100)
    assert a.step() == 100  # min(renew/4, time to the deadline)
    assert a.fence().epoch == 1

    cl.clock.advance(101)
    assert cl.clock.now_ms() - t0 > cfg.renew_deadline_ms
    assert cl.clock.now_ms() < t0 + cfg.trusted_ms  # the lease itself would still be valid
    assert a.step() == cfg.cooldown_ms

    assert_not_leader(a)
    assert cl.reasons()[-1] == ("a", 1, "lost:renew_deadline")
    assert cl.store.row.released_at is not None
    cl.server.connected = True
    if how == "script":
        assert cl.holder() is None  # the release script still worked
    else:
        assert cl.holder() == value  # Redis was unreachable: the key just expires


def test_renew_success_replaces_ttl(cl: Cluster) -> None:
    a = lead(cl)
    cl.redis.pexpire(cl.key, 500)
    cl.clock.advance(a.cfg.renew_ms)
    assert a.step() == a.cfg.renew_ms
    assert a.cfg.lease_ms - 100 < cl.redis.pttl(cl.key) <= a.cfg.lease_ms
    assert a.fence().remaining_ms == a.cfg.trusted_ms


# ---- 5. drift margin ----


def test_fence_trusted_until_drift_margin_without_steps(cl: Cluster) -> None:
    a = lead(cl)
    cfg = a.cfg
    cl.clock.advance(700)
    a.step()  # renewed at t
    t = cl.clock.now_ms()

    cl.clock.advance(cfg.lease_ms - cfg.drift_margin_ms - 1)
    assert a.fence().epoch == 1
    assert a.fence().remaining_ms == 1
    assert a.is_leader()

    cl.clock.advance(1)  # t + lease - drift: no step ran (paused), still refused
    assert cl.clock.now_ms() == t + cfg.lease_ms - cfg.drift_margin_ms
    with pytest.raises(NotLeader, match="expired"):
        a.fence()
    assert not a.is_leader()
    assert a.lease_remaining_ms() == 0.0
    assert a.role is Role.FOLLOWER  # the role follows the lease, not the loop

    cl.clock.advance(10_000)
    with pytest.raises(NotLeader):
        a.fence()


# ---- 6. pause past the lease ----


def test_pause_past_lease(cl: Cluster, events: Events) -> None:
    a = lead(cl)
    cl.clock.advance(a.cfg.trusted_ms)  # valid_until reached
    heartbeats = cl.store.calls.count("heartbeat")

    assert a.step() == a.cfg.cooldown_ms

    assert_not_leader(a)
    assert cl.store.calls.count("heartbeat") == heartbeats  # did not renew anything first
    assert cl.reasons()[-1] == ("a", 1, "lost:lease_expired")
    assert cl.store.row.released_at is not None
    assert cl.holder() is None
    assert events.drain() == ["released|a|1"]


# ---- 7. stale leader ----


def test_stale_leader_replaced_only_after_stale_after(cl: Cluster) -> None:
    a = lead(cl)
    b = cl.elector("b")
    cfg = b.cfg
    t0 = cl.clock.now_ms()
    cl.redis.delete(cl.key)  # a died; its key expired

    wait = b.step()
    assert cfg.renew_ms <= wait <= cfg.renew_ms + cfg.jitter_ms
    assert cl.holder() is None  # did not SET
    assert cl.store.calls.count("claim") == 1  # only a's

    cl.clock.advance(cfg.stale_after_ms - 500)
    wait = b.step()
    assert 500 <= wait <= 500 + cfg.jitter_ms  # until the holder turns stale
    assert cl.holder() is None
    assert cl.store.calls.count("claim") == 1

    cl.clock.advance(500)  # age == stale_after: not stale yet (strictly older is)
    b.step()
    assert cl.holder() is None
    assert cl.store.calls.count("claim") == 1

    cl.clock.advance(1)
    assert cl.clock.now_ms() - t0 > cfg.stale_after_ms
    b.step()
    assert b.role is Role.LEADER and b.epoch == 2
    assert cl.holder().startswith("b|")
    assert cl.store.row.instance_id == "b" and cl.store.row.epoch == 2
    assert cl.reasons() == [("a", 1, "acquired"), ("b", 2, "acquired")]

    # a wakes from its pause: its lease ran out; it must not touch b's key or record.
    a.step()
    assert_not_leader(a)
    assert cl.reasons()[-1] == ("a", 1, "lost:lease_expired")
    assert cl.store.row.released_at is None and cl.store.row.instance_id == "b"
    assert cl.holder().startswith("b|")
    assert b.fence().epoch == 2


# ---- 8. DB heartbeat matches zero rows ----


def supersede(cl: Cluster) -> None:
    """Someone else moved the record on (epoch 2, held by b, fresh)."""
    cl.store.row.epoch, cl.store.row.instance_id = 2, "b"
    cl.store.row.heartbeat_at = cl.clock.now_ms()


def test_epoch_superseded_redis_unreachable(cl: Cluster) -> None:
    a = lead(cl)
    value = cl.holder()
    sb = split_brains()
    supersede(cl)
    cl.server.connected = False
    cl.clock.advance(a.cfg.renew_ms)

    assert a.step() == a.cfg.cooldown_ms

    assert_not_leader(a)
    assert split_brains() == sb  # Redis did not say "a", so nobody disagreed with the DB
    assert cl.reasons()[-1] == ("a", 1, "lost:epoch_superseded")
    assert cl.store.history(1)[0].event == "lost"
    row = cl.store.row
    assert (row.epoch, row.instance_id, row.released_at) == (2, "b", None)  # untouched
    cl.server.connected = True
    assert cl.holder() == value  # could not delete it: it expires on its own


def test_epoch_superseded_with_own_key_is_split_brain(cl: Cluster, events: Events) -> None:
    a = lead(cl)
    sb = split_brains()
    supersede(cl)
    cl.clock.advance(a.cfg.renew_ms)

    a.step()

    assert_not_leader(a)
    assert split_brains() == sb + 1
    assert cl.reasons()[-1] == ("a", 1, "demoted:split_brain")
    assert cl.store.history(1)[0].event == "demoted"
    row = cl.store.row
    assert (row.epoch, row.instance_id, row.released_at) == (2, "b", None)  # not "released" by a
    assert cl.holder() is None  # its own key, compare-and-deleted
    assert events.drain() == ["released|a|1"]


def test_epoch_superseded_and_key_taken(cl: Cluster) -> None:
    """Redis and DB agree a is out: a plain loss, not a split brain."""
    a = lead(cl)
    sb = split_brains()
    supersede(cl)
    cl.redis.set(cl.key, OTHER, px=a.cfg.lease_ms)
    cl.clock.advance(a.cfg.renew_ms)

    a.step()

    assert_not_leader(a)
    assert split_brains() == sb
    assert cl.reasons()[-1] == ("a", 1, "lost:token_mismatch")
    row = cl.store.row
    assert (row.epoch, row.instance_id, row.released_at) == (2, "b", None)
    assert cl.holder() == OTHER


def test_epoch_superseded_key_absent(cl: Cluster) -> None:
    """Key gone *and* the DB moved on (only by hand: a's last heartbeat is fresh, so no claim
    could have succeeded). The leader renews before its heartbeat, so it re-creates its key
    first; what matters is that it steps down, leaves the record alone and no key behind."""
    a = lead(cl)
    sb = split_brains()
    supersede(cl)
    cl.redis.delete(cl.key)
    cl.clock.advance(a.cfg.renew_ms)

    a.step()

    assert_not_leader(a)
    reason = cl.reasons()[-1]
    assert reason in {("a", 1, "lost:epoch_superseded"), ("a", 1, "demoted:split_brain")}
    assert split_brains() == sb + (reason[2] == "demoted:split_brain")
    row = cl.store.row
    assert (row.epoch, row.instance_id, row.released_at) == (2, "b", None)
    assert cl.holder() is None


def test_released_record_means_superseded(cl: Cluster) -> None:
    """The record was marked released behind a's back: the heartbeat no longer matches."""
    a = lead(cl)
    cl.store.row.released_at = cl.clock.now_ms()
    cl.clock.advance(a.cfg.renew_ms)
    a.step()
    assert_not_leader(a)
    assert cl.reasons()[-1] == ("a", 1, "demoted:split_brain")
    assert cl.holder() is None


# ---- 9. Redis restarted empty ----


def test_redis_restart_leader_reasserts_follower_waits(cl: Cluster) -> None:
    a = lead(cl)
    b = cl.elector("b")
    value = cl.holder()
    cl.clock.advance(500)
    cl.redis.flushall()
    count = reasserted()

    wait = b.step()  # the follower looks first
    assert b.role is Role.FOLLOWER
    assert cl.holder() is None
    assert cl.store.calls.count("claim") == 1
    assert b.cfg.renew_ms <= wait <= b.cfg.renew_ms + b.cfg.jitter_ms

    cl.clock.advance(500)
    assert a.step() == a.cfg.renew_ms
    assert reasserted() == count + 1
    assert cl.holder() == value  # same token
    assert 0 < cl.redis.pttl(cl.key) <= a.cfg.lease_ms
    assert a.role is Role.LEADER and a.epoch == 1
    assert a.fence().remaining_ms == a.cfg.trusted_ms
    assert cl.store.row.epoch == 1

    b.step()
    assert b.role is Role.FOLLOWER
    assert cl.store.calls.count("claim") == 1


def test_redis_restart_while_db_down_reasserts_while_heartbeat_young(cl: Cluster) -> None:
    """The last matching heartbeat is younger than stale_after - drift: no rival can have
    claimed, so the key is re-set even though the DB does not answer right now."""
    a = lead(cl)
    value = cl.holder()
    cl.store.down = True
    count = reasserted()
    cl.clock.advance(1000)
    cl.redis.flushall()

    assert a.step() == a.cfg.renew_ms
    assert reasserted() == count + 1
    assert cl.holder() == value
    assert a.fence().epoch == 1

    cl.clock.advance(a.cfg.db_grace_ms - 1000 + 1)
    a.step()
    assert_not_leader(a)
    assert cl.reasons()[-1][2] != "released:db_unreachable"  # pending: the DB is down
    assert cl.holder() is None


def test_redis_restart_no_reassert_once_heartbeat_old(make_cluster: Callable[..., Cluster]) -> None:
    """Past stale_after - drift since the last matching heartbeat, an absent key is not re-set
    (a rival may have claimed by now); the leader rides out its lease and demotes."""
    cl = make_cluster(db_grace_ms=2950)
    a = lead(cl)
    cfg = a.cfg
    cl.store.down = True
    count = reasserted()
    cl.clock.advance(1000)
    assert a.step() == cfg.renew_ms
    cl.clock.advance(1000)
    assert a.step() == cfg.renew_ms  # last renew at t0 + 2000
    cl.clock.advance(cfg.stale_after_ms - cfg.drift_margin_ms - 2000)
    cl.redis.flushall()

    assert a.step() == cfg.renew_ms / 4  # ABSENT: not renewed, retry sooner
    assert cl.holder() is None
    assert reasserted() == count
    assert a.role is Role.LEADER and a.fence().epoch == 1  # lease still valid (t0 + 4900)

    cl.clock.advance(cfg.db_grace_ms - (cfg.stale_after_ms - cfg.drift_margin_ms) + 1)
    a.step()
    assert_not_leader(a)
    assert cl.holder() is None


# ---- 10. DB unreachable ----


def test_db_unreachable_grace_then_release_and_flush(make_cluster: Callable[..., Cluster]) -> None:
    # A longer stale_after, so the record is still held when a looks again and only the
    # flushing of the pending history row is observed (not a re-acquisition).
    cl = make_cluster(stale_after_ms=5000)
    events = Events(cl.redis, cl.events)
    a = lead(cl)
    b = cl.elector("b")
    cfg = a.cfg
    cl.store.down = True
    failures = counter("haexec_db_sync_failures_total")

    cl.clock.advance(1000)
    assert a.step() == cfg.renew_ms  # the key is still renewed
    assert a.fence().epoch == 1
    assert a.last_error is not None and a.last_error.startswith("database:")
    assert counter("haexec_db_sync_failures_total") == failures + 1

    cl.clock.advance(cfg.db_grace_ms - 1000 - 1)
    a.step()
    assert a.role is Role.LEADER and a.fence().epoch == 1

    cl.clock.advance(2)
    assert a.step() == cfg.cooldown_ms
    assert_not_leader(a)
    assert cl.holder() is None
    assert events.drain() == ["released|a|1"]
    assert cl.reasons() == [("a", 1, "acquired")]  # could not be written

    # A follower without the DB does not take the (absent) key.
    assert b.step() == cfg.renew_ms / 2
    assert cl.holder() is None and b.role is Role.FOLLOWER

    cl.store.down = False
    calls = len(cl.store.calls)
    a.step()  # sitting out: nothing happens yet
    assert len(cl.store.calls) == calls
    cl.clock.advance(cfg.cooldown_ms)
    a.step()  # as follower: writes the pending release first, which frees the record too
    assert cl.reasons()[:2] == [("a", 1, "acquired"), ("a", 1, "released:db_unreachable")]
    assert cl.store.history(10)[-2].event == "released"
    # The record was released, so the key is free for anyone at once: here a itself.
    assert cl.reasons()[2:] == [("a", 2, "acquired")]
    cl.clock.advance(cfg.renew_ms)
    a.step()
    assert cl.reasons().count(("a", 1, "released:db_unreachable")) == 1  # written once
    events.close()


def test_pending_row_written_while_another_replica_leads(cl: Cluster) -> None:
    a = lead(cl)
    b = cl.elector("b")
    cl.store.down = True
    cl.clock.advance(1000)
    a.step()
    cl.clock.advance(cl.config("a").db_grace_ms - 1000 + 1)
    a.step()  # released:db_unreachable, row pending
    assert a.role is Role.FOLLOWER
    cl.store.down = False
    cl.clock.advance(a.cfg.cooldown_ms)
    b.step()  # a's record is stale by now: b takes over
    assert b.role is Role.LEADER and b.epoch == 2
    for _ in range(5):  # a follows the healthy leader; the DB has been back all along
        a.step()
        b.step()
        cl.clock.advance(a.cfg.renew_ms)
    assert ("a", 1, "released:db_unreachable") in cl.reasons()


def test_db_unreachable_then_back_within_grace(cl: Cluster) -> None:
    a = lead(cl)
    cl.store.down = True
    cl.clock.advance(1500)
    a.step()
    cl.store.down = False
    cl.clock.advance(1000)  # 2500 since the last heartbeat, but this one succeeds
    assert a.step() == a.cfg.renew_ms
    assert a.role is Role.LEADER
    cl.clock.advance(1900)  # grace counts from the new success
    cl.store.down = True
    a.step()
    assert a.role is Role.LEADER
    assert cl.store.row.heartbeat_at == cl.clock.now_ms() - 1900


def test_unrecorded_row_survives_failed_flush(cl: Cluster) -> None:
    a = lead(cl)
    cl.store.failing.add("release")
    cl.clock.advance(a.cfg.trusted_ms)
    a.step()  # lost:lease_expired, release() failed
    assert cl.reasons() == [("a", 1, "acquired")]
    cl.store.failing = {"release", "record"}
    cl.clock.advance(a.cfg.cooldown_ms)
    a.step()  # read ok, flush fails
    assert cl.reasons() == [("a", 1, "acquired")]
    cl.store.failing = set()
    a.step()
    assert cl.reasons()[:2] == [("a", 1, "acquired"), ("a", 1, "lost:lease_expired")]


# ---- 11. release ----


def test_release_hands_over_immediately(cl: Cluster, events: Events) -> None:
    a = lead(cl)
    b = cl.elector("b")
    b.step()
    cl.clock.advance(100)

    assert a.release("released:sigterm") is True

    assert_not_leader(a)
    assert cl.store.row.released_at == cl.clock.now_ms()
    assert cl.store.row.handoff_to is None
    assert cl.reasons()[-1] == ("a", 1, "released:sigterm")
    assert cl.store.history(1)[0].event == "released"
    assert cl.holder() is None
    assert events.drain() == ["released|a|1"]
    assert a.release("released:sigterm") is False  # nothing left to release

    assert b.step() == b.cfg.renew_ms  # no clock advance needed
    assert b.role is Role.LEADER and b.epoch == 2
    assert cl.holder().startswith("b|")

    assert a.step() == a.cfg.cooldown_ms  # the releaser sits out
    assert a.role is Role.FOLLOWER


def test_switchover_handoff_only_target_may_claim(cl: Cluster) -> None:
    a = lead(cl)
    b = cl.elector("b")
    c = cl.elector("c")
    a.release("released:switchover", handoff_to="c")
    assert cl.store.row.handoff_to == "c"
    assert cl.holder() == "reserved:c|"  # only c may replace it

    b.wake("handoff|a|1|c")  # the event names c: b keeps sleeping on the key's PTTL
    assert b.step() > 0
    assert b.role is Role.FOLLOWER
    assert cl.store.calls.count("claim") == 1

    c.wake("handoff|a|1|c")  # c tries at once, without waiting for the reservation to expire
    c.step()
    assert c.role is Role.LEADER and c.epoch == 2
    assert cl.holder().startswith("c|")


def test_switchover_target_absent_others_claim_after_handoff_window(cl: Cluster) -> None:
    a = lead(cl)
    b = cl.elector("b")
    a.release("released:switchover", handoff_to="c")
    cl.redis.delete(cl.key)  # the reservation expired
    cl.clock.advance(a.cfg.handoff_ms)
    b.step()
    assert b.role is Role.FOLLOWER  # released exactly handoff_ms ago: the record is still c's
    cl.clock.advance(1)
    b.step()
    assert b.role is Role.LEADER and b.epoch == 2


def test_stop_then_run_releases(cl: Cluster) -> None:
    """run() with a stop already requested: no iteration, just the release on the way out."""
    a = lead(cl)
    a.stop("released:switchover", handoff_to="b")
    a.run()
    assert_not_leader(a)
    assert cl.reasons()[-1] == ("a", 1, "released:switchover")
    assert cl.store.row.handoff_to == "b"
    assert cl.holder() == "reserved:b|"


def test_request_handover_releases_on_the_next_step(cl: Cluster, events: Events) -> None:
    a = lead(cl)
    b = cl.elector("b")
    assert b.request_handover("a") is False  # a follower has nothing to hand over
    assert a.request_handover("b") is True
    a.step()
    assert_not_leader(a)
    assert cl.reasons()[-1] == ("a", 1, "released:switchover")
    assert events.drain() == ["handoff|a|1|b"]


def test_a_leader_that_may_no_longer_lead_releases_and_claims_nothing_until_it_may(cl: Cluster, events: Events) -> None:
    """A supervised loop failed (engine/supervision.py): the leader releases at its next step
    and, as a follower, claims nothing, even with the record free, until it may lead again."""
    may = [True]
    a = lead(cl, may_lead=lambda: may[0])
    may[0] = False
    assert a.step() == a.cfg.renew_ms
    assert_not_leader(a)
    assert cl.reasons()[-1] == ("a", 1, "released:loop_failed")
    assert cl.store.row.released_at is not None and cl.holder() is None
    assert events.drain() == ["released|a|1"]
    cl.clock.advance(a.cfg.cooldown_ms + a.cfg.lease_ms)
    for _ in range(3):
        a.step()
        assert a.role is Role.FOLLOWER
    assert cl.store.calls.count("claim") == 1  # only the first acquisition
    b = cl.elector("b")
    b.step()
    assert b.role is Role.LEADER and b.epoch == 2  # a healthy replica takes over
    b.release("released:sigterm")
    may[0] = True
    cl.clock.advance(a.cfg.cooldown_ms)
    a.step()
    assert a.role is Role.LEADER and a.epoch == 3


def test_release_when_follower_is_noop(cl: Cluster) -> None:
    a = cl.elector("a")
    assert a.release("released:sigterm") is False
    assert cl.store.calls == []


# ---- 12. claim too late ----


@pytest.mark.parametrize("claim_ms", [2900, 10_000])
def test_claim_too_late(cl: Cluster, monkeypatch: pytest.MonkeyPatch, events: Events, claim_ms: int) -> None:
    started: list[int] = []
    a = cl.elector("a", on_started=started.append)
    assert a.cfg.trusted_ms == 2900
    real_claim = cl.store.claim

    def slow_claim(expected_epoch: int, me: str) -> int | None:
        epoch = real_claim(expected_epoch, me)
        cl.clock.advance(claim_ms)
        cl.redis.set(cl.key, OTHER, px=a.cfg.lease_ms)  # a's key expired, someone took it
        return epoch

    monkeypatch.setattr(cl.store, "claim", slow_claim)
    wait = a.step()

    assert_not_leader(a)
    assert 0 <= wait <= a.cfg.jitter_ms
    assert cl.reasons() == [("a", 1, "acquired"), ("a", 1, "released:claim_too_late")]
    assert cl.store.row.epoch == 1 and cl.store.row.released_at is not None
    assert cl.holder() == OTHER  # not ours any more: left alone
    assert events.drain() == []
    a._callbacks.shutdown(wait=True)
    assert started == []  # never announced as leader


def test_claim_just_in_time(cl: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    a = cl.elector("a")
    real_claim = cl.store.claim

    def slow_claim(expected_epoch: int, me: str) -> int | None:
        epoch = real_claim(expected_epoch, me)
        cl.clock.advance(a.cfg.trusted_ms - 1)
        return epoch

    monkeypatch.setattr(cl.store, "claim", slow_claim)
    assert a.step() == 0  # the first renew is overdue
    assert a.role is Role.LEADER
    assert a.fence().remaining_ms == 1


# ---- 13. callbacks ----


def test_callbacks_run_off_the_ha_thread(cl: Cluster) -> None:
    calls: list[tuple[object, ...]] = []
    threads: list[str] = []
    gate = threading.Event()
    started = threading.Event()
    stopped = threading.Event()

    def on_started(epoch: int) -> None:
        threads.append(threading.current_thread().name)
        assert gate.wait(CB_DEADLINE_S)  # slow trading code must not delay the loop
        calls.append(("started", epoch))
        started.set()

    def on_stopped(epoch: int, reason: str) -> None:
        calls.append(("stopped", epoch, reason))
        stopped.set()

    a = cl.elector("a", on_started=on_started, on_stopped=on_stopped)
    a.step()
    assert a.role is Role.LEADER
    assert not started.is_set()  # step() returned while the callback is still blocked
    gate.set()
    assert started.wait(CB_DEADLINE_S)
    assert threads and threads[0] != threading.current_thread().name
    assert threads[0].startswith("haexec-leader-cb")

    a.release("released:sigterm")
    assert stopped.wait(CB_DEADLINE_S)
    assert calls == [("started", 1), ("stopped", 1, "released:sigterm")]


def test_stopped_callback_gets_loss_reason(cl: Cluster) -> None:
    got: list[tuple[int, str]] = []
    done = threading.Event()

    def on_stopped(epoch: int, reason: str) -> None:
        got.append((epoch, reason))
        done.set()

    a = lead(cl, on_stopped=on_stopped)
    cl.clock.advance(a.cfg.trusted_ms)
    a.step()
    assert done.wait(CB_DEADLINE_S)
    assert got == [(1, "lost:lease_expired")]


def test_failing_callback_does_not_break_the_loop(cl: Cluster) -> None:
    ran = threading.Event()

    def on_started(epoch: int) -> None:
        ran.set()
        raise RuntimeError("trading code bug")

    a = lead(cl, on_started=on_started)
    assert ran.wait(CB_DEADLINE_S)
    cl.clock.advance(a.cfg.renew_ms)
    assert a.step() == a.cfg.renew_ms
    assert a.role is Role.LEADER


# ---- the loop survives bugs ----


def test_unexpected_error_in_step_is_contained(cl: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    a = cl.elector("a")
    monkeypatch.setattr(cl.store, "read", raise_runtime_error)
    assert a.step() == a.cfg.renew_ms
    assert a.role is Role.FOLLOWER
    assert a.last_loop_ms == cl.clock.now_ms()


def raise_runtime_error(*args: object, **kwargs: object) -> None:
    raise RuntimeError("injected bug")


def test_follower_looks_again_right_after_a_key_in_its_last_millisecond(
    cl: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = cl.elector("b")
    monkeypatch.setattr(b._lease, "pttl_ms", lambda: 0)  # Redis answers 0 just before expiry
    assert b.step() <= 1 + b.cfg.jitter_ms
    monkeypatch.setattr(b._lease, "pttl_ms", lambda: -1)  # no TTL at all
    assert b.step() >= b.cfg.renew_ms


def test_a_heartbeat_that_stalls_past_the_lease_is_no_split_brain(cl: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The renew said "self", then the heartbeat hung past the lease while another replica
    took over: an ordinary loss, not a disagreement between the stores."""
    a = lead(cl)
    sb = split_brains()
    real_heartbeat = cl.store.heartbeat

    def stalled(epoch: int, me: str) -> bool:
        cl.clock.advance(a.cfg.lease_ms + 500)
        supersede(cl)
        return real_heartbeat(epoch, me)

    monkeypatch.setattr(cl.store, "heartbeat", stalled)
    cl.clock.advance(a.cfg.renew_ms)
    a.step()
    assert_not_leader(a)
    assert split_brains() == sb
    assert cl.reasons()[-1] == ("a", 1, "lost:epoch_superseded")
