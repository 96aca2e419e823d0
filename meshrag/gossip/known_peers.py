"""Addresses of the members this node has seen alive, kept in its data directory.

Gossip joins through seeds, and only at start. A node restarted without seeds
(the cluster's first node, started with no --join) came back alone: the others
had marked it left or dead and never probe such a member, and it knew nobody to
call, so it stayed out of replication until someone restarted with it as a
seed (found by chaos/run rolling-restart). Like Serf's snapshot, the node now
remembers whom it saw alive and joins them, besides its seeds, on start.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

PEERS_FILE = "peers.json"
MAX_PEERS = 64  # the most recently seen; enough to find any cluster this node was part of


class KnownPeers:
    def __init__(self, data_dir: Path, own_address: str) -> None:
        self.path = Path(data_dir) / PEERS_FILE
        self._own = own_address
        self._addresses: list[str] = self._read()

    def load(self) -> list[str]:
        """Remembered addresses, most recently seen first."""
        return list(self._addresses)

    def remember(self, address: str) -> bool:
        """Note ``address`` as seen alive now, in memory; True when ``save`` has news to write."""
        if not address or address == self._own or (self._addresses and self._addresses[0] == address):
            return False
        self._addresses = [address, *(a for a in self._addresses if a != address)][:MAX_PEERS]
        return True

    def _read(self) -> list[str]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:  # a damaged file costs the rejoin hint, not the start
            log.warning("ignoring %s: %s", self.path, exc)
            return []
        if not isinstance(raw, list):
            return []
        return [a for a in raw if isinstance(a, str) and a and a != self._own][:MAX_PEERS]

    def save(self) -> None:
        """Write the addresses atomically. File I/O: node.py runs it in its offload thread
        (one thread, so saves never overlap), never on the event loop."""
        tmp = self.path.with_suffix(".tmp")
        addresses = list(self._addresses)  # the list remember() replaces, not one it mutates
        try:
            tmp.write_text(json.dumps(addresses), encoding="utf-8")
            os.replace(tmp, self.path)  # never a half-written file
        except OSError as exc:
            log.warning("could not save known peers to %s: %s", self.path, exc)
