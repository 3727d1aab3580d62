"""Facts from the venue that the database could not take (a close the venue made, seen while
PostgreSQL is away): appended to a local file, fsynced before the caller goes on, and
replayed once the database is back. Replay must be idempotent (the store records a close
once), so a fact replayed twice, or recorded by another replica meanwhile, is harmless.

One JSON object per line. A line cut short by a crash is the last one and is skipped (the
fact it held was never acknowledged as kept, and the venue still has it: the next loop sees
the close again).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("haexec.engine.positions")


class Fallback:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, fact: Mapping[str, Any]) -> None:
        """Keep `fact` durably: written and fsynced (the directory too, when the file is new)."""
        line = json.dumps(fact, default=str, sort_keys=True) + "\n"
        with self._lock:
            new = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(line)
                out.flush()
                os.fsync(out.fileno())
            if new:
                fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return self._read()

    def _read(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        facts = []
        for n, line in enumerate(text.splitlines(), 1):
            try:
                fact = json.loads(line)
            except ValueError:
                log.error("journal fallback %s line %d is not a fact (cut short by a crash?): skipped", self.path, n)
                continue
            if isinstance(fact, dict):
                facts.append(fact)
        return facts

    def replay(self, apply: Callable[[dict[str, Any]], None]) -> int:
        """Apply every kept fact, oldest first; the file keeps those that failed (and stops at
        the first failure: the database is likely still away). How many were applied."""
        with self._lock:
            facts = self._read()
            if not facts:
                return 0
            done = 0
            for fact in facts:
                try:
                    apply(fact)
                except Exception as e:  # the database still away: keep it and the rest
                    log.warning("journal fallback replay stopped at %d of %d: %s", done + 1, len(facts), e)
                    break
                done += 1
            rest = facts[done:]
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w", encoding="utf-8") as out:
                out.writelines(json.dumps(f, default=str, sort_keys=True) + "\n" for f in rest)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
            return done
