"""The drill's producer: distinct signals at a steady rate, round-robin over the replicas,
failing over to the next replica on a timeout, an error or a 503. Every 202/200 answer is
recorded (fingerprint, time, replica); the checker holds the database to them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from haexec.drill.cluster import http_call

# A replica that failed is skipped for this long (unless every replica is), so a paused one
# does not cost a timeout on every signal.
PENALTY_S = 1.0
# How long one signal is retried over all replicas before it is counted as unanswered.
GIVE_UP_S = 15.0


@dataclass(frozen=True)
class Answer:
    seq: int
    signal_id: str
    fingerprint: str
    status: int
    duplicate: bool
    sent_at: float  # wall time of the first attempt
    at: float  # wall time of this answer
    replica: str
    attempts: int


@dataclass
class Target:
    name: str
    port: int


def make_signal(run: str, seq: int) -> dict[str, object]:
    buy = seq % 2 == 1
    return {
        "source": "drill",
        "signal_id": f"{run}-{seq}",
        "symbol": "EURUSD",
        "side": "buy" if buy else "sell",
        "type": "market",
        "volume": "0.01",
        "price": "1.1000",
        "sl": "1.0900" if buy else "1.1100",
    }


@dataclass
class Producer:
    targets: Callable[[], list[Target]]
    run: str
    rate_per_s: float = 20.0
    timeout_s: float = 1.0
    answers: list[Answer] = field(default_factory=list)
    unanswered: list[tuple[int, str, float]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._penalty: dict[str, float] = {}
        self._thread = threading.Thread(target=self._loop, name="haexec-drill-producer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(GIVE_UP_S + 5)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def _loop(self) -> None:
        interval = 1.0 / self.rate_per_s
        next_at = time.monotonic()
        seq = 0
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            self._deliver(seq)
            seq += 1
            next_at += interval
            # Behind by more than a second (a long failover): resume the rate, do not burst.
            next_at = max(next_at, time.monotonic() - 1.0)

    def _count(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def _deliver(self, seq: int) -> None:
        body = make_signal(self.run, seq)
        signal_id = str(body["signal_id"])
        first = time.time()
        give_up = time.monotonic() + GIVE_UP_S
        attempts = 0
        while not self._stop.is_set() or attempts == 0:
            targets = self.targets()
            if not targets:
                time.sleep(0.05)
                continue
            now = time.monotonic()
            n = len(targets)
            order = [targets[(seq + k) % n] for k in range(n)]
            fresh = [t for t in order if self._penalty.get(t.name, 0.0) <= now]
            for t in fresh or order:
                attempts += 1
                status, data, _ = http_call(t.port, "POST", "/signals", body, timeout_s=self.timeout_s)
                if status in (200, 202) and isinstance(data, dict) and "fingerprint" in data:
                    self._penalty.pop(t.name, None)
                    with self._lock:
                        self.sent += 1
                        self.answers.append(
                            Answer(
                                seq,
                                signal_id,
                                str(data["fingerprint"]),
                                status,
                                bool(data.get("duplicate")),
                                first,
                                time.time(),
                                t.name,
                                attempts,
                            )
                        )
                    return
                self._count(f"http {status}" if status else "no answer")
                self._penalty[t.name] = time.monotonic() + PENALTY_S
            if time.monotonic() >= give_up or self._stop.is_set():
                break
            time.sleep(0.05)  # every replica refused (database down): a short pause, then again
        with self._lock:
            self.sent += 1
            self.unanswered.append((seq, signal_id, first))
