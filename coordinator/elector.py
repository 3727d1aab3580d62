"""The leader elector: one state machine, one thread, nothing else in the process on its path.

Follower: sleep until the key's PTTL runs out (plus jitter; a release event only wakes it
early), read the DB record, SET NX the key, then compare-and-set the epoch in PostgreSQL.
Leader, every renew interval: renew the key, then the DB heartbeat (epoch *and* instance).
Each tick is also the split-brain check: the renew names the Redis holder, the heartbeat
names the DB holder, and both must be this replica.

The lease is trusted until `t_sent + lease - drift_margin` of the last successful SET or
PEXPIRE, on CLOCK_BOOTTIME. `fence()` answers from that alone, so a replica that wakes from a
pause refuses to act before its HA loop has even run.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import psycopg
import psycopg_pool
import redis

from common.clock import SYSTEM_CLOCK, Clock
from common.errors import first_line
from coordinator import metrics
from coordinator.config import ElectionConfig
from coordinator.epoch import EpochStore, LeaderRecord, Reason
from coordinator.fencing import NotLeader
from coordinator.keys import handoff_event, holder_instance, parse_event, released_event
from coordinator.lease import RedisLease, RenewStatus

log = logging.getLogger("haexec.coordinator")

DB_ERRORS = (psycopg.Error, psycopg_pool.PoolTimeout)
REDIS_ERRORS = (redis.RedisError,)


class Role(enum.Enum):
    FOLLOWER = "follower"
    LEADER = "leader"


@dataclass(frozen=True)
class Fence:
    epoch: int
    remaining_ms: float


@dataclass(frozen=True)
class _Leadership:
    epoch: int
    value: str
    valid_until_ms: float
    last_renew_ms: float
    last_db_ok_ms: float


@dataclass(frozen=True)
class _Claimed:
    """The key and the epoch both won: the leadership to begin."""

    leading: _Leadership
    sent_ms: float  # when the winning SET was sent: the renew schedule counts from it


@dataclass(frozen=True)
class _Renewal:
    leading: _Leadership  # extended when renewed, else as it was
    renewed: bool
    taken: bool = False  # another token in the key: it is not ours any more
    holder: str | None = None  # that token's instance, where the key names one


OnStarted = Callable[[int], None]
OnStopped = Callable[[int, str], None]


class Elector:
    def __init__(
        self,
        cfg: ElectionConfig,
        lease: RedisLease,
        epochs: EpochStore,
        clock: Clock = SYSTEM_CLOCK,
        on_started_leading: OnStarted | None = None,
        on_stopped_leading: OnStopped | None = None,
        rng: random.Random | None = None,
        may_lead: Callable[[], bool] | None = None,
    ) -> None:
        self.cfg = cfg
        # False while this replica must not lead (a supervised loop failed): a leader
        # releases at its next step, a follower claims nothing until it turns True again.
        self._may_lead = may_lead or (lambda: True)
        self._lease = lease
        self._epochs = epochs
        self._clock = clock
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._rng = rng or random.Random()
        self._leading: _Leadership | None = None
        self._sit_out_until_ms = 0.0
        # Step-downs whose DB write failed: (epoch, reason, release_record), retried later.
        self._unrecorded: list[tuple[int, str, bool]] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stop_reason: str = Reason.SIGTERM
        self._stop_handoff: str | None = None
        self._handover: tuple[str | None] | None = None  # a switchover asked of this leader: (target,)
        self._handed_to_me = False  # a switchover named this follower: try now, not at PTTL
        # Callbacks run off the HA thread: trading code must never delay a renewal.
        self._callbacks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="haexec-leader-cb")
        self.last_redis_ok_ms: float | None = None
        self.last_db_ok_ms: float | None = None
        self.last_loop_ms: float | None = None
        self.last_error: str | None = None

    # ---- what the rest of the process may ask ----

    @property
    def role(self) -> Role:
        return Role.LEADER if self.is_leader() else Role.FOLLOWER

    @property
    def epoch(self) -> int | None:
        leading = self._leading
        return leading.epoch if leading else None

    def lease_remaining_ms(self) -> float:
        leading = self._leading
        if leading is None:
            return 0.0
        return max(0.0, leading.valid_until_ms - self._clock.now_ms())

    def is_leader(self) -> bool:
        return self.lease_remaining_ms() > 0

    def fence(self) -> Fence:
        """The epoch to fence a write with, only while the lease is trusted."""
        leading = self._leading
        if leading is None:
            raise NotLeader(f"{self.cfg.instance_id} is not the leader")
        remaining = leading.valid_until_ms - self._clock.now_ms()
        if remaining <= 0:
            raise NotLeader(f"{self.cfg.instance_id}: lease of epoch {leading.epoch} expired")
        return Fence(leading.epoch, remaining)

    def wake(self, message: str = "") -> None:
        """Look again now (a release was announced). Never trusted, only hurries."""
        event = parse_event(message)
        if event.kind == "handoff" and event.target == self.cfg.instance_id:
            self._handed_to_me = True
        self._wake.set()

    def request_handover(self, target: str | None) -> bool:
        """Switchover: release on the election thread, naming `target` as the successor (or
        none: whoever is first). False when this replica is not leading."""
        if not self.is_leader():
            return False
        self._handover = (target,)
        self._wake.set()
        return True

    def stop(self, reason: str = Reason.SIGTERM, handoff_to: str | None = None) -> None:
        self._stop_reason = reason
        self._stop_handoff = handoff_to
        self._stop.set()
        self._wake.set()

    # ---- the loop ----

    def run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            wait_ms = self.step()
            self._wake.wait(max(0.0, wait_ms) / 1000.0)
        if self._leading is not None:
            self.release(self._stop_reason, self._stop_handoff)
        if self._unrecorded:
            self._try_flush_unrecorded()
        self._callbacks.shutdown(wait=True, cancel_futures=False)

    def step(self) -> float:
        """One iteration; returns how long to wait before the next, in milliseconds."""
        self.last_loop_ms = self._clock.now_ms()
        try:
            handover, self._handover = self._handover, None
            if handover is not None and self._leading is not None:
                self.release(Reason.SWITCHOVER, handoff_to=handover[0])
                return float(self.cfg.cooldown_ms)
            if not self._may_lead():
                if self._leading is not None:
                    self.release(Reason.LOOP_FAILED)
                elif self._unrecorded:
                    self._try_flush_unrecorded()
                return float(self.cfg.renew_ms)
            if self._leading is not None:
                return self._lead()
            return self._follow()
        except Exception:  # the HA loop must outlive any bug in one iteration
            log.exception("unexpected error in the election loop")
            return float(self.cfg.renew_ms)

    def release(self, reason: str, handoff_to: str | None = None) -> bool:
        """Give up leadership on purpose: DB record first, then the key, then tell followers."""
        leading = self._leading
        if leading is None:
            return False
        self._step_down(leading, reason, release_record=True, handoff_to=handoff_to)
        return True

    # ---- follower: wait for the key to run out, claim, become leader ----
    #
    # Each transition returns what comes next (a record to claim, a new leadership, or how
    # long to wait) instead of setting it; `_follow` alone publishes a new leadership.

    def _jitter(self) -> float:
        return self._rng.uniform(0, self.cfg.jitter_ms)

    def _follow(self) -> float:
        ready = self._ready_to_claim()
        if not isinstance(ready, LeaderRecord):
            return ready
        claimed = self._claim(ready)
        if not isinstance(claimed, _Claimed):
            return claimed
        return self._become_leader(claimed)

    def _ready_to_claim(self) -> LeaderRecord | float:
        """The leader record once the lease is free to claim, else how long to wait: sitting
        out a cooldown, step-downs still unrecorded, the key still held, or its DB holder
        still alive although its key is gone."""
        cfg = self.cfg
        now = self._clock.now_ms()
        if now < self._sit_out_until_ms:
            return self._sit_out_until_ms - now
        if self._unrecorded and not self._try_flush_unrecorded():
            return float(cfg.renew_ms) / 2
        handed_to_me, self._handed_to_me = self._handed_to_me, False
        if not handed_to_me:
            try:
                pttl = self._lease.pttl_ms()
            except REDIS_ERRORS as e:
                return self._redis_failed(e)
            self._redis_ok()
            if pttl >= 0:
                # Redis answers 0 in a key's last millisecond: look again right after it, not a
                # whole renew interval later.
                return max(pttl, 1) + self._jitter()
            if pttl == -1:  # a key without a TTL is not ours to judge; check back later
                return cfg.renew_ms + self._jitter()

        try:
            metrics.DB_SYNC_ATTEMPTS.inc()
            record = self._epochs.read()
            self._db_ok()
        except DB_ERRORS as e:
            return self._db_failed(e)
        wait = record.ms_until_free(cfg.instance_id, cfg.stale_after_ms, cfg.handoff_ms)
        if wait > 0:
            # The DB holder is alive although its key is gone (Redis restarted, a handoff to
            # someone else, or the heartbeat trails the renew by a round trip): grabbing the
            # key now would only cost a failover. Look again when the record turns free.
            return min(wait, cfg.renew_ms)
        return record

    def _claim(self, record: LeaderRecord) -> _Claimed | float:
        """SET NX the key, then compare-and-set the next epoch over `record`. The key goes
        back when the epoch is not ours."""
        cfg = self.cfg
        try:
            grant = self._lease.try_acquire()
        except REDIS_ERRORS as e:
            return self._redis_failed(e)
        if grant is None:
            return self._jitter()
        claim_sent = self._clock.now_ms()
        try:
            metrics.DB_SYNC_ATTEMPTS.inc()
            epoch = self._epochs.claim(record.epoch, cfg.instance_id)
        except DB_ERRORS as e:
            self._quiet_release(grant.value)
            return self._db_failed(e)
        if epoch is None:
            metrics.CAS_LOST.inc()
            log.warning("won the Redis key but lost the epoch CAS at epoch %d; backing off", record.epoch)
            self._quiet_release(grant.value)
            return cfg.renew_ms * self._rng.uniform(0.5, 1.0)
        leading = _Leadership(epoch, grant.value, grant.sent_ms + cfg.trusted_ms, grant.sent_ms, claim_sent)
        return _Claimed(leading, grant.sent_ms)

    def _become_leader(self, claimed: _Claimed) -> float:
        cfg = self.cfg
        leading = claimed.leading
        now = self._clock.now_ms()
        self._leading = leading
        if now >= leading.valid_until_ms:
            # The CAS took longer than the lease: the key may already be someone else's.
            self._step_down(leading, Reason.CLAIM_TOO_LATE, release_record=True, notify=False)
            return self._jitter()
        self._db_ok()
        metrics.IS_LEADER.set(1)
        metrics.LEADER_EPOCH.set(leading.epoch)
        metrics.LEADERSHIP_CHANGES.labels(Reason.ACQUIRED).inc()
        metrics.LAST_HEARTBEAT.set(time.time())
        log.error("became leader: instance=%s epoch=%d", cfg.instance_id, leading.epoch)
        if self._on_started:
            self._callbacks.submit(self._on_started, leading.epoch)
        return max(0.0, claimed.sent_ms + cfg.renew_ms - now)

    # ---- leader: renew, heartbeat, judge the term ----

    def _lead(self) -> float:
        leading = self._leading
        assert leading is not None
        if self._clock.now_ms() >= leading.valid_until_ms:
            # Paused (or starved) past the lease: someone else may lead by now.
            return self._step_down(leading, Reason.LEASE_EXPIRED, release_record=True)
        renewal = self._renew(leading)
        # Published before the heartbeat, so fence() trusts the renewed lease at once.
        self._leading = leading = renewal.leading
        if renewal.taken:
            # Another token in the key: step down now. If PostgreSQL still names us, the
            # two stores disagree: a split brain, recorded as such.
            if self._heartbeat(leading)[0]:
                self._split_brain(leading, f"redis={renewal.holder} db=self")
                return self._step_down(leading, Reason.SPLIT_BRAIN, release_record=True)
            return self._step_down(leading, Reason.TOKEN_MISMATCH, release_record=True)
        matched, leading = self._heartbeat(leading)
        self._leading = leading
        return self._judge_term(leading, matched, renewal.renewed)

    def _renew(self, leading: _Leadership) -> _Renewal:
        """Renew the key first, so a slow database never delays the Redis lease. An absent key
        may be re-set only while our last matching heartbeat is younger than stale_after:
        until then no rival can have claimed the epoch."""
        cfg = self.cfg
        now = self._clock.now_ms()
        may_reassert = now - leading.last_db_ok_ms < cfg.stale_after_ms - cfg.drift_margin_ms
        try:
            result = self._lease.renew(leading.value, reassert=may_reassert)
        except REDIS_ERRORS as e:
            self._redis_failed(e)
            return _Renewal(leading, renewed=False)
        self._redis_ok()
        if result.status is RenewStatus.TAKEN:
            return _Renewal(leading, renewed=False, taken=True, holder=holder_instance(result.holder))
        if result.status not in (RenewStatus.RENEWED, RenewStatus.REASSERTED):
            return _Renewal(leading, renewed=False)
        metrics.LEASE_RENEW_SECONDS.observe((self._clock.now_ms() - result.sent_ms) / 1000.0)
        if result.status is RenewStatus.REASSERTED:
            metrics.LEASE_REASSERTED.inc()
            log.warning("lease key was gone (Redis restarted?); re-asserted it for epoch %d", leading.epoch)
        renewed = replace(leading, valid_until_ms=result.sent_ms + cfg.trusted_ms, last_renew_ms=result.sent_ms)
        return _Renewal(renewed, renewed=True)

    def _judge_term(self, leading: _Leadership, matched: bool | None, renewed: bool) -> float:
        """After a renew and a heartbeat: step down, or how long until the next renew."""
        cfg = self.cfg
        if matched is False:
            # Redis's answer counts only while it is still fresh: a heartbeat that stalled past
            # the lease met a record moved on for an ordinary reason, not a split brain.
            fresh = renewed and self._clock.now_ms() < leading.valid_until_ms
            return self._db_moved_on(leading, redis_says_self=fresh)
        now = self._clock.now_ms()
        if matched is None and now - leading.last_db_ok_ms > cfg.db_grace_ms:
            return self._step_down(leading, Reason.DB_UNREACHABLE, release_record=True)
        if now - leading.last_renew_ms > cfg.renew_deadline_ms:
            return self._step_down(leading, Reason.RENEW_DEADLINE, release_record=True)
        if renewed:
            return max(0.0, leading.last_renew_ms + cfg.renew_ms - now)
        return min(cfg.renew_ms / 4, leading.last_renew_ms + cfg.renew_deadline_ms - now)

    def _heartbeat(self, leading: _Leadership) -> tuple[bool | None, _Leadership]:
        """DB heartbeat matching epoch *and* instance, and the leadership it leaves. None: the
        database did not answer."""
        sent = self._clock.now_ms()
        try:
            metrics.DB_SYNC_ATTEMPTS.inc()
            matched = self._epochs.heartbeat(leading.epoch, self.cfg.instance_id)
        except DB_ERRORS as e:
            self._db_failed(e)
            return None, leading
        self._db_ok()
        if matched:
            # Counted from the send: the row's heartbeat_at is no older than that.
            leading = replace(leading, last_db_ok_ms=sent)
            metrics.LAST_HEARTBEAT.set(time.time())
        return matched, leading

    def _db_moved_on(self, leading: _Leadership, redis_says_self: bool) -> float:
        """The heartbeat matched no row: PostgreSQL has another leader or released us."""
        if redis_says_self:
            self._split_brain(leading, "redis=self db=other")
            return self._step_down(leading, Reason.SPLIT_BRAIN, release_record=False)
        return self._step_down(leading, Reason.EPOCH_SUPERSEDED, release_record=False)

    def _split_brain(self, leading: _Leadership, detail: str) -> None:
        metrics.SPLIT_BRAIN.inc()
        log.critical(
            "split brain: instance=%s epoch=%d %s; PostgreSQL wins, stepping down",
            self.cfg.instance_id,
            leading.epoch,
            detail,
        )

    def _step_down(
        self,
        leading: _Leadership,
        reason: str,
        release_record: bool,
        handoff_to: str | None = None,
        notify: bool = True,
    ) -> float:
        cfg = self.cfg
        self._leading = None  # fence() refuses from here on
        metrics.IS_LEADER.set(0)
        metrics.LEADER_EPOCH.set(0)
        metrics.LEADERSHIP_CHANGES.labels(reason).inc()
        if reason.startswith("released"):
            log.critical("released leadership: instance=%s epoch=%d reason=%s", cfg.instance_id, leading.epoch, reason)
        else:
            log.critical("lost leadership: instance=%s epoch=%d reason=%s", cfg.instance_id, leading.epoch, reason)
        if self._on_stopped and notify:
            self._callbacks.submit(self._on_stopped, leading.epoch, reason)
        try:
            metrics.DB_SYNC_ATTEMPTS.inc()
            if release_record:
                self._epochs.release(leading.epoch, cfg.instance_id, reason, handoff_to)
            else:
                self._epochs.record(leading.epoch, cfg.instance_id, reason)
        except DB_ERRORS as e:
            self._db_failed(e)
            self._unrecorded.append((leading.epoch, reason, release_record))
        try:
            if handoff_to is not None:
                event = handoff_event(cfg.instance_id, leading.epoch, handoff_to)
                self._lease.hand_off(leading.value, handoff_to, cfg.handoff_ms, event)
            else:
                self._lease.release(leading.value, released_event(cfg.instance_id, leading.epoch))
        except REDIS_ERRORS as e:
            self._redis_failed(e)
        self._sit_out_until_ms = self._clock.now_ms() + cfg.cooldown_ms
        return float(cfg.cooldown_ms)

    def _try_flush_unrecorded(self) -> bool:
        """Write what step-downs could not while the DB was away. Releasing late is still
        right: it matches only our own epoch, and frees the record sooner than staleness."""
        try:
            while self._unrecorded:
                epoch, reason, release_record = self._unrecorded[0]
                metrics.DB_SYNC_ATTEMPTS.inc()
                if release_record:
                    self._epochs.release(epoch, self.cfg.instance_id, reason)
                else:
                    self._epochs.record(epoch, self.cfg.instance_id, reason)
                self._unrecorded.pop(0)
        except DB_ERRORS as e:
            self._db_failed(e)
            return False
        self._db_ok()
        return True

    def _quiet_release(self, value: str) -> None:
        try:
            self._lease.release(value)
        except REDIS_ERRORS as e:
            self._redis_failed(e)

    # ---- health bookkeeping ----

    def _redis_ok(self) -> None:
        self.last_redis_ok_ms = self._clock.now_ms()

    def _db_ok(self) -> None:
        self.last_db_ok_ms = self._clock.now_ms()

    def _redis_failed(self, e: Exception) -> float:
        self.last_error = f"redis: {e}"
        log.warning("redis: %s", e)
        return float(self.cfg.renew_ms) / 2

    def _db_failed(self, e: Exception) -> float:
        metrics.DB_SYNC_FAILURES.inc()
        self.last_error = f"database: {first_line(e)}"
        log.warning("database: %s", first_line(e))
        return float(self.cfg.renew_ms) / 2
