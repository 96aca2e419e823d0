"""The partitions this node answers searches for: those it has caught up on.

Having a partition on disk is not enough. A node that became an owner (after
`remove`, say) creates the partition with the first write or read repair that
reaches it, long before repair has brought the rest of its documents; an
answer from it would count as coverage while missing most of the partition.
So a partition is *held* only once repair found it in sync with another
current owner, or this node is its only owner (repair.py's ``_claim_owned``),
and stops being held the moment this node's ring no longer lists it among
the partition's write owners: from then on writes stop reaching it, so a copy
it keeps for hand-off goes stale, and if the ring gives the partition back
later, repair must find it in sync again before it answers for it.

Persisted in ``<data_dir>/holdings.json`` (atomically, by rename), so a
restarted node answers for what it had caught up on. Methods that write block:
run them in the storage executor.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

HOLDINGS_FILE = "holdings.json"


class Holdings:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / HOLDINGS_FILE
        self._held: frozenset[int] = frozenset()
        self._lock = threading.Lock()

    def load(self) -> None:
        try:
            self._held = frozenset(int(pid) for pid in json.loads(self.path.read_text()))
        except FileNotFoundError:
            self._held = frozenset()
        except (OSError, ValueError, TypeError) as exc:
            # Only costs coverage until the next repair pass claims them again.
            log.warning("%s unreadable (%s); partitions are claimed again by the next repair pass", self.path, exc)
            self._held = frozenset()

    def __contains__(self, pid: object) -> bool:
        return pid in self._held

    def mark(self, pid: int, still_owned: Callable[[int], bool] = lambda pid: True) -> bool:
        """Hold ``pid`` if ``still_owned(pid)`` says so under the lock release_unowned takes: a
        repair pass that started before the ring moved the partition away must not claim it
        back after the release. True if held now."""
        with self._lock:
            if not still_owned(pid):
                return False
            self._save(self._held | {pid})
            return True

    def forget(self, pid: int) -> None:
        with self._lock:
            self._save(self._held - {pid})

    def release_unowned(self, owned: set[int]) -> bool:
        """Stop answering for held partitions outside ``owned``, in memory at once (no
        file access: safe on the event loop); True when ``save()`` should persist it."""
        with self._lock:
            kept = self._held & owned
            released, self._held = kept != self._held, kept
        return released

    def save(self) -> None:
        """Persist the held set as it is now (blocks: run it in the storage executor)."""
        with self._lock:
            self._write(self._held)

    def _save(self, held: frozenset[int]) -> None:
        if held == self._held:
            return
        self._write(held)
        self._held = held

    def _write(self, held: frozenset[int]) -> None:
        tmp = self.path.with_name(HOLDINGS_FILE + ".tmp")
        tmp.write_text(json.dumps(sorted(held)) + "\n")
        tmp.replace(self.path)
