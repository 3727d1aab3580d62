"""The epoch check. Every fenced write goes through `fenced`.

The epoch comparisons that exist, and none other:
- here: a fenced write commits only while its epoch is the leader record's, unreleased
  (`fenced`; `Coordinator.fenced` is it under the replica's current epoch; the paper venue
  books, cancels and closes through it under the order's epoch);
- coordinator/epoch.py: the leader record's own compare-and-sets (claim expects the epoch it
  read; heartbeat and release name the epoch they hold);
- engine/store.py: the attempt-epoch compare-and-sets on signals (an outcome, a hand-back, a
  stamp, a take-over or a settlement applies only to the attempt of the epoch it names), so a
  stale attempt never overwrites a newer one;
- the lease: `Coordinator.fence(min_remaining_ms)` is the trusted epoch, and the executor acts
  at a venue for an attempt only while that is the attempt's epoch;
- the MT5 gateway's promise (haexec/gateway/promise.py): the highest (epoch, instance) it
  accepted, which moves up only to an epoch `check_granted` confirms here.

The row is read FOR KEY SHARE: it does not wait behind the leader's heartbeat (an UPDATE of
non-key columns), but it does conflict with the FOR UPDATE that every epoch change and
release takes first. So a claim either commits before a takeover or sees the new epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

CHECK_EPOCH_SQL = "SELECT epoch, released_at IS NULL FROM leader_record WHERE cluster = %s FOR KEY SHARE"
GRANTED_SQL = "SELECT epoch, instance_id, released_at IS NULL FROM leader_record WHERE cluster = %s"


class NotLeader(Exception):
    """This replica may not act: it is not leader, or its lease is no longer trusted."""


class EpochSuperseded(Exception):
    """The epoch this write was fenced with is no longer the cluster's current, held epoch."""

    def __init__(self, cluster: str, epoch: int, current: int | None, released: bool) -> None:
        state = "released" if released else f"current epoch is {current}"
        super().__init__(f"epoch {epoch} of cluster {cluster!r} is superseded ({state})")
        self.epoch = epoch
        self.current = current


def check_epoch(cur: psycopg.Cursor, cluster: str, epoch: int) -> None:
    """Raise EpochSuperseded unless `epoch` is current and unreleased. Call inside a transaction."""
    row = cur.execute(CHECK_EPOCH_SQL, (cluster,)).fetchone()
    if row is None or row[0] != epoch or not row[1]:
        raise EpochSuperseded(cluster, epoch, row[0] if row else None, bool(row and not row[1]))


@contextmanager
def fenced(conn: psycopg.Connection, cluster: str, epoch: int) -> Iterator[psycopg.Cursor]:
    """One transaction whose writes commit only if `epoch` still holds the cluster."""
    with conn.transaction(), conn.cursor() as cur:
        check_epoch(cur, cluster, epoch)
        yield cur


class EpochNotGranted(EpochSuperseded):
    """The database never granted this epoch to this instance, or has moved on from it."""

    def __init__(self, cluster: str, epoch: int, instance: str, row: tuple[int, str | None, bool] | None) -> None:
        if row is None:
            state = "the cluster has no leader record"
        else:
            state = f"the leader record has epoch {row[0]}, {row[1]!r}" + ("" if row[2] else ", released")
        Exception.__init__(self, f"epoch {epoch} of cluster {cluster!r} is not held by {instance!r} ({state})")
        self.epoch = epoch
        self.current = row[0] if row else None


def check_granted(conn: psycopg.Connection, cluster: str, epoch: int, instance: str) -> None:
    """Raise EpochNotGranted unless the leader record names `epoch`, held by `instance` and not
    released. A plain read: a gatekeeper outside the database (the MT5 gateway) asks it before
    it promises an epoch; it writes nothing, so it needs no lock."""
    row = conn.execute(GRANTED_SQL, (cluster,)).fetchone()
    got = (int(row[0]), row[1], bool(row[2])) if row is not None else None
    if got is None or got[0] != epoch or got[1] != instance or not got[2]:
        raise EpochNotGranted(cluster, epoch, instance, got)
