"""Persistent node identity: an id that survives restarts and a generation per start.

The id is what other nodes (and the ring) know this node by, whatever address
it has; the generation tells them a restarted node apart from its previous life.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from meshrag.errors import ConfigError

IDENTITY_FILE = "node.json"


@dataclass(frozen=True)
class NodeIdentity:
    node_id: str
    name: str
    generation: int


def _write_atomically(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_or_create(data_dir: Path, name: str) -> NodeIdentity:
    """Read the identity from data_dir (creating it the first time) and bump the generation."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / IDENTITY_FILE
    if path.exists():
        try:
            stored = json.loads(path.read_text())
            node_id, generation = str(stored["node_id"]), int(stored["generation"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is damaged ({exc}); restore it or start with an empty data directory", field="node.data_dir") from None
    else:
        node_id, generation = uuid.uuid4().hex, 0
    identity = NodeIdentity(node_id=node_id, name=name, generation=generation + 1)
    _write_atomically(path, asdict(identity))
    return identity
