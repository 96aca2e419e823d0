"""Who may use a data directory: one running node, or one offline restore, never both.

``<data_dir>/node.lock`` carries an exclusive ``flock`` for as long as its holder runs:
a node takes it at start (before it reads its identity) and keeps it until the
process ends; ``meshrag restore`` takes it while it writes. The kernel drops the
lock when the process dies (kill -9 included), so a stale lock file never blocks
anyone. Why a lock and not a pid file: a pid can be reused after a crash, a lock
cannot outlive its holder.

A restore also leaves ``<data_dir>/restore.incomplete`` while it moves files into
place, so a node refuses to start on a half-restored directory (an interrupted
restore is run again; it starts over from the verified snapshot).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import IO

from meshrag.errors import ConfigError

LOCK_FILE = "node.lock"
RESTORE_MARKER = "restore.incomplete"


class DataDirLocked(ConfigError):
    """Another process (a running node, a restore) uses the data directory."""


class DataDirLock:
    """An exclusive, non-blocking lock on a data directory, held until ``release``."""

    def __init__(self, data_dir: Path, holder: str) -> None:
        self.data_dir = Path(data_dir)
        self.holder = holder  # written into the file for the operator who finds it locked
        self._handle: IO[str] | None = None

    @property
    def path(self) -> Path:
        return self.data_dir / LOCK_FILE

    def acquire(self) -> "DataDirLock":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.seek(0)
            other = handle.read().strip() or "another process"
            handle.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DataDirLocked(f"{self.data_dir} is in use by {other}; stop it first", field="node.data_dir") from None
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"{self.holder} (pid {os.getpid()})\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor drops the flock
            self._handle = None

    def __enter__(self) -> "DataDirLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_for_node(data_dir: Path, name: str) -> DataDirLock:
    """The lock a starting node holds for its lifetime; refuses a half-restored directory."""
    lock = DataDirLock(data_dir, f"node {name}").acquire()
    if (Path(data_dir) / RESTORE_MARKER).exists():
        lock.release()
        raise ConfigError(
            f"{data_dir} holds an interrupted restore ({RESTORE_MARKER}); run `meshrag restore` again "
            "(it starts over from the snapshot) or empty the directory", field="node.data_dir")
    return lock
