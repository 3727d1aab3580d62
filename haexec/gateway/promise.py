"""The gateway's promise: the highest (epoch, instance) it has accepted, on disk before any
answer that depends on it.

The rule (HDFS JournalNodes keep the same promise for the same reason): a call under a lower
epoch is refused; a call under the promised epoch from another instance is refused and pages
(two replicas believe they hold one epoch: the database lost a commit, or someone copied an
instance id); a higher epoch is accepted only after the database confirms it was granted to
that instance (coordinator.fencing.check_granted), and only once it is written: a temporary
file, fsync, rename over the old one, fsync of the directory. The in-memory promise moves
only after the write succeeded, so a crash at any point leaves the old promise or the new
one on disk, never a torn file and never an answer the disk does not back.

`check` is the comparison the terminal's worker makes immediately before order_send; it is
exact (the promise itself), so a call accepted under epoch e that waited while epoch e+1
was accepted is refused there.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coordinator.fencing import EpochSuperseded
from engine.brokers.gateway_wire import Fence

log = logging.getLogger("haexec.gateway.promise")

FILE = "promise.json"


class Reason(enum.StrEnum):
    """Why a call was refused (the label of haexec_gateway_refusals_total)."""

    LOWER_EPOCH = "lower_epoch"
    EQUAL_EPOCH_OTHER_INSTANCE = "equal_epoch_other_instance"
    NOT_GRANTED = "not_granted"
    WRONG_CLUSTER = "wrong_cluster"


@dataclass(frozen=True)
class Promise:
    epoch: int = 0
    instance: str | None = None

    def as_json(self) -> dict[str, object]:
        return {"epoch": self.epoch, "instance": self.instance}


class Refused(Exception):
    """The promise refuses this call; nothing was sent."""

    def __init__(self, reason: Reason, message: str, promise: Promise, stage: str = "gateway") -> None:
        super().__init__(message)
        self.reason = reason
        self.promise = promise
        self.stage = stage  # "gateway" (on arrival) or "worker" (immediately before order_send)


class Unconfirmed(Exception):
    """The database could not be asked whether the epoch was granted; nothing was promised."""


class PromiseWriteFailed(Exception):
    """The new promise could not be made durable; nothing was promised."""


class PromiseFileError(Exception):
    """The promise on disk cannot be read: the gateway must not start without it."""


Confirm = Callable[[Fence], None]  # raises EpochSuperseded (refused) or Unconfirmed (database unreachable)


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # Windows cannot open a directory; its rename is durable once it returns
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PromiseKeeper:
    def __init__(self, directory: Path, cluster: str, confirm: Confirm, floor: Promise | None = None) -> None:
        self._path = directory / FILE
        self._cluster = cluster
        self._confirm = confirm
        self._lock = threading.Lock()  # guards the in-memory promise and the file together
        self._promise = self._load()
        if floor is not None and floor.epoch > self._promise.epoch:
            # The journal saw a later epoch than the file holds (the file was lost or restored
            # from an old copy): never promise less than a send already went out under.
            log.error(
                "promise file at epoch %d, the journal at %d: taking the journal's", self._promise.epoch, floor.epoch
            )
            self._write(floor)
            self._promise = floor

    @property
    def current(self) -> Promise:
        return self._promise

    @property
    def path(self) -> Path:
        return self._path

    def _load(self) -> Promise:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return Promise()
        except OSError as e:
            raise PromiseFileError(f"cannot read {self._path}: {e.strerror}") from None
        try:
            data = json.loads(raw)
            epoch, instance, cluster = data["epoch"], data["instance"], data["cluster"]
            if type(epoch) is not int or epoch < 0 or not (instance is None or isinstance(instance, str)):
                raise ValueError("bad field types")
        except (ValueError, KeyError, TypeError) as e:
            raise PromiseFileError(f"{self._path} is not a promise file ({e}); refusing to start without it") from None
        if cluster != self._cluster:
            raise PromiseFileError(f"{self._path} holds the promise of cluster {cluster!r}, not {self._cluster!r}")
        return Promise(epoch, instance)

    def _write(self, promise: Promise) -> None:
        body = json.dumps({"cluster": self._cluster, **promise.as_json()}).encode()
        tmp = self._path.with_name(FILE + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self._path)
            _fsync_dir(self._path.parent)
        except OSError as e:
            raise PromiseWriteFailed(f"cannot persist the promise to {self._path}: {e.strerror}") from None

    def verdict(self, fence: Fence) -> Reason | None:
        """None: the call may go (the promise is this fence, or lower and may advance to it)."""
        if fence.cluster != self._cluster:
            return Reason.WRONG_CLUSTER
        p = self._promise
        if fence.epoch < p.epoch:
            return Reason.LOWER_EPOCH
        if fence.epoch == p.epoch and fence.instance != p.instance:
            return Reason.EQUAL_EPOCH_OTHER_INSTANCE
        return None

    def refusal(self, reason: Reason, fence: Fence, stage: str = "gateway") -> Refused:
        p = self._promise
        text = {
            Reason.WRONG_CLUSTER: f"this gateway serves cluster {self._cluster!r}, not {fence.cluster!r}",
            Reason.LOWER_EPOCH: f"epoch superseded: {fence} is below the promised epoch {p.epoch} of {p.instance}",
            Reason.EQUAL_EPOCH_OTHER_INSTANCE: (
                f"epoch superseded: epoch {fence.epoch} is promised to {p.instance}, not {fence.instance}"
            ),
            Reason.NOT_GRANTED: f"epoch superseded: the database did not grant {fence}",
        }[reason]
        return Refused(reason, text, p, stage)

    def check(self, fence: Fence) -> None:
        """Exactly the promise, or Refused (the worker's check before order_send)."""
        p = self._promise
        if fence.cluster == self._cluster and fence.epoch == p.epoch and fence.instance == p.instance:
            return
        reason = self.verdict(fence) or Reason.LOWER_EPOCH  # a higher epoch never got here unaccepted
        raise self.refusal(reason, fence, stage="worker")

    def accept(self, fence: Fence) -> bool:
        """Let `fence` act: refuse it, or advance the promise to it (confirmed, then durable).
        Returns True when the promise moved."""
        reason = self.verdict(fence)
        if reason is not None:
            raise self.refusal(reason, fence)
        if fence.epoch == self._promise.epoch:
            return False  # the promise already is this fence
        try:
            self._confirm(fence)  # outside the lock: the worker's check must never wait on the database
        except EpochSuperseded as e:
            raise Refused(Reason.NOT_GRANTED, f"epoch superseded: {e}", self._promise) from None
        with self._lock:
            reason = self.verdict(fence)  # another call may have advanced meanwhile
            if reason is not None:
                raise self.refusal(reason, fence)
            if fence.epoch == self._promise.epoch:
                return False
            new = Promise(fence.epoch, fence.instance)
            self._write(new)
            self._promise = new
        log.warning("promise advanced to epoch %d of %s", new.epoch, new.instance)
        return True
