"""The Redis lease: who *should* lead. Liveness only; PostgreSQL decides who may act.

One key per cluster, `haexec:{cluster}:leader`, holding `<instance_id>|<random token>`.
Every change of an owned key goes through a Lua script that first compares the value,
so a replica can only ever touch a key it still holds.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass

import redis

from common.clock import Clock
from coordinator.keys import events_channel, leader_key, lease_value, reserved_value
from coordinator.redis_url import make_client

TOKEN_BYTES = 16

# Replaces the TTL (never adds to it). With reassert=1 an *absent* key is set again: the
# caller allows that only right after its DB heartbeat proved it still holds the epoch
# (Redis restarted or failed over and lost the key).
RENEW_SCRIPT = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, v}
end
if not v then
  if ARGV[3] == '1' then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return {2, ARGV[1]}
  end
  return {0, ''}
end
return {-1, v}
"""

# SET NX, except that a key reserved for this replica by a switchover also counts as free.
ACQUIRE_SCRIPT = """
local v = redis.call('GET', KEYS[1])
if (not v) or v == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# Switchover: swap our own key for `reserved:<target>|` so that only the target may take
# it until the reservation expires, and wake the target at once.
HANDOFF_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('PUBLISH', KEYS[2], ARGV[4])
  return 1
end
return 0
"""


# Compare-and-delete; publishes on the events channel only when asked (a lost CAS must not
# wake every follower).
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] ~= '' then redis.call('PUBLISH', KEYS[2], ARGV[2]) end
  return 1
end
return 0
"""


class RenewStatus(enum.Enum):
    """Ownership as a result, not an exception: TAKEN (another token) and ABSENT are ordinary
    answers the elector acts on every tick."""

    RENEWED = 1
    REASSERTED = 2
    ABSENT = 0
    TAKEN = -1


@dataclass(frozen=True)
class Grant:
    value: str
    sent_ms: float


@dataclass(frozen=True)
class RenewResult:
    status: RenewStatus
    holder: str | None
    sent_ms: float


def redis_client(url: str, timeout_s: float | None, name: str | None = None) -> redis.Redis:
    """A client that never retries on its own: a retried SET NX whose first reply was lost
    would make a replica believe it failed while its token sits in the key. The name shows
    in CLIENT LIST, so an operator can tell each replica's connections apart. `url` may also
    name a master behind Sentinel (`redis+sentinel://`): see `coordinator.redis_url`."""
    return make_client(url, timeout_s, name)


class RedisLease:
    def __init__(self, client: redis.Redis, cluster: str, instance_id: str, lease_ms: int, clock: Clock) -> None:
        self._r = client
        self.key = leader_key(cluster)
        self.events = events_channel(cluster)
        self._instance = instance_id
        self._lease_ms = lease_ms
        self._clock = clock
        self._acquire = client.register_script(ACQUIRE_SCRIPT)
        self._renew = client.register_script(RENEW_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)
        self._handoff = client.register_script(HANDOFF_SCRIPT)

    def new_value(self) -> str:
        return lease_value(self._instance, secrets.token_hex(TOKEN_BYTES))

    def try_acquire(self) -> Grant | None:
        value = self.new_value()
        sent = self._clock.now_ms()
        try:
            ok = self._acquire(keys=[self.key], args=[value, self._lease_ms, reserved_value(self._instance)])
        except redis.RedisError:
            # The SET may have landed with its reply lost: our token in the key means we won.
            if self._r.get(self.key) == value:
                return Grant(value, sent)
            raise
        return Grant(value, sent) if ok else None

    def renew(self, value: str, reassert: bool) -> RenewResult:
        sent = self._clock.now_ms()
        status, holder = self._renew(keys=[self.key], args=[value, self._lease_ms, "1" if reassert else "0"])
        return RenewResult(RenewStatus(int(status)), holder or None, sent)

    def release(self, value: str, event: str = "") -> bool:
        return bool(self._release(keys=[self.key, self.events], args=[value, event]))

    def hand_off(self, value: str, target: str, handoff_ms: int, event: str) -> bool:
        return bool(
            self._handoff(keys=[self.key, self.events], args=[value, reserved_value(target), handoff_ms, event])
        )

    def holder(self) -> str | None:
        value = self._r.get(self.key)
        return value.decode() if isinstance(value, bytes) else value

    def pttl_ms(self) -> int:
        """-2: no key; -1: no TTL; else the remaining milliseconds."""
        return int(self._r.pttl(self.key))
