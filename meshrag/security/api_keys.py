"""Public API keys: scoped bearer tokens, stored hashed, the same on every node.

A key is shown once, when it is created: ``mrk_<id>_<secret>``. Nodes keep
only its id, scopes and the SHA-256 of its secret (the secret is 32 random
bytes, so a fast hash is enough: nothing here can be guessed offline, unlike a
password). Scopes are independent and each allows exactly what it names:
``read`` (search, ask, read documents, the OpenAI-compatible routes),
``write`` (upsert and delete documents), ``admin`` (the cluster routes:
status, decommission, remove, the API keys themselves), ``status`` (only the
read-only cluster views, /v1/cluster/status and /v1/cluster/verify: a
dashboard's or an on-call script's key). A key may hold several; the one
implication is that ``admin`` allows what ``status`` allows (``grants``).

Every node holds the whole key set in ``<data_dir>/api_keys.json`` (mode
0600). The set is a last-writer-wins map of entries by id, versioned with the
node's hybrid logical clock, merged with each peer on the ring exchange
(cluster/loops.py), so a key created or revoked on one node reaches every node
within a ring-sync interval, and a joining node gets the set with its first
exchange. A revoked key stays as a tombstone (a few bytes) so that no older
copy of it can come back through a merge.

Pure apart from ``load``/``save`` (file access: run them off the event loop).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable

SCOPES = ("read", "write", "admin", "status")
IMPLIED = {"admin": frozenset({"status"})}  # a scope -> the scopes it also allows
# The first key's scopes. Not SCOPES: a node from before the status scope skips a key naming a scope it
# does not know (merge), and admin implies status anyway.
BOOTSTRAP_SCOPES = ("read", "write", "admin")
KEYS_FILE = "api_keys.json"
BOOTSTRAP_KEY_FILE = "bootstrap_api_key"  # the first admin key's token, for its operator to read once
TOKEN_PREFIX = "mrk"
ID_BYTES = 6
SECRET_BYTES = 32
MAX_NAME = 128


class ApiKeyError(ValueError):
    """A key request that cannot be honoured (unknown scope, unknown id, malformed name)."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: tuple[str, ...]
    secret_sha256: str  # hex; "" once revoked
    version: int  # HLC of the last change: the later entry wins a merge
    revoked: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {**asdict(self), "scopes": list(self.scopes)}

    @classmethod
    def from_wire(cls, item: dict[str, Any]) -> "ApiKey":
        scopes = tuple(str(s) for s in item["scopes"])
        if not set(scopes) <= set(SCOPES):
            raise ApiKeyError(f"unknown scope in {scopes}")
        return cls(str(item["id"]), str(item["name"])[:MAX_NAME], scopes, str(item["secret_sha256"]),
                   int(item["version"]), bool(item.get("revoked", False)))

    def public(self) -> dict[str, Any]:
        """What listing a key shows: never its hash."""
        return {"id": self.id, "name": self.name, "scopes": list(self.scopes), "revoked": self.revoked}


def parse_scopes(text: str | Iterable[str]) -> tuple[str, ...]:
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    unknown = [s for s in items if s not in SCOPES]
    if unknown or not items:
        raise ApiKeyError(f"scopes must be some of {', '.join(SCOPES)}; got {items or 'none'}")
    return tuple(s for s in SCOPES if s in items)


def grants(scopes: Iterable[str], needed: str) -> bool:
    """Whether a key holding ``scopes`` may use a route that needs ``needed``."""
    return any(scope == needed or needed in IMPLIED.get(scope, ()) for scope in scopes)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None."""
    parts = token.split("_")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


class ApiKeyStore:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / KEYS_FILE
        self._keys: dict[str, ApiKey] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ queries (safe on the loop)
    def verify(self, token: str) -> ApiKey | None:
        """The live key this bearer token belongs to, or None; constant-time on the secret."""
        parts = split_token(token)
        if parts is None:
            return None
        key = self._keys.get(parts[0])
        if key is None or key.revoked or not hmac.compare_digest(key.secret_sha256, _digest(parts[1])):
            return None
        return key

    def live(self) -> list[ApiKey]:
        return sorted((k for k in self._keys.values() if not k.revoked), key=lambda k: k.id)

    def entries(self) -> list[ApiKey]:
        return sorted(self._keys.values(), key=lambda k: k.id)

    def to_wire(self) -> list[dict[str, Any]]:
        return [key.to_wire() for key in self.entries()]

    # ------------------------------------------------------------ changes (in memory; save() persists)
    def create(self, name: str, scopes: tuple[str, ...], version: int) -> tuple[str, ApiKey]:
        """A new key: its token (shown once) and its stored entry."""
        if not name or len(name) > MAX_NAME:
            raise ApiKeyError(f"name must be 1..{MAX_NAME} characters")
        key_id = secrets.token_hex(ID_BYTES)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=").replace("_", "-")
        key = ApiKey(key_id, name, parse_scopes(scopes), _digest(secret), version)
        with self._lock:
            self._keys[key_id] = key
        return f"{TOKEN_PREFIX}_{key_id}_{secret}", key

    def revoke(self, key_id: str, version: int) -> ApiKey:
        with self._lock:
            key = self._keys.get(key_id)
            if key is None:
                raise ApiKeyError(f"no API key {key_id!r}")
            revoked = replace(key, secret_sha256="", version=max(version, key.version + 1), revoked=True)
            self._keys[key_id] = revoked
        return revoked

    def merge(self, items: Iterable[dict[str, Any]]) -> bool:
        """Fold in a peer's entries (later version wins, a tombstone at equal versions); True if anything changed."""
        changed = False
        with self._lock:
            for item in items:
                try:
                    theirs = ApiKey.from_wire(item)
                except (KeyError, TypeError, ValueError):
                    continue  # one malformed entry from a peer does not poison the rest
                mine = self._keys.get(theirs.id)
                if mine is None or (theirs.version, theirs.revoked) > (mine.version, mine.revoked):
                    self._keys[theirs.id] = theirs
                    changed = True
        return changed

    # ------------------------------------------------------------ file (blocking)
    def load(self) -> None:
        try:
            items = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        self.merge(items)

    def save(self) -> None:
        """Atomically, readable by the node's user only (the hashes are secrets of a kind too)."""
        with self._lock:
            text = json.dumps(self.to_wire(), indent=1) + "\n"
        tmp = self.path.with_name(KEYS_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        tmp.replace(self.path)


def write_bootstrap_key(store: ApiKeyStore, data_dir: Path, version: int) -> tuple[Path, ApiKey]:
    """The first admin key of a cluster with API keys on and none yet: made, saved, and its token
    written to a 0600 file in the data directory (a log would keep the secret). Blocks (files)."""
    token, key = store.create("bootstrap-admin", BOOTSTRAP_SCOPES, version)
    store.save()
    path = Path(data_dir) / BOOTSTRAP_KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return path, key
