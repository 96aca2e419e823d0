"""The keyring: every installed cluster secret, one of them primary, and the keys derived from them.

As memberlist's keyring: a node accepts anything made with any installed key
and sends with the primary. Rotation without downtime is then: install the new
secret everywhere, make it primary everywhere, remove the old one
(`meshrag keys install|use|remove`, security/rotation.py).

Secrets never travel and are never used directly: each purpose gets its own
key, HKDF-SHA256(secret, salt="meshrag/v1", info=purpose):

    gossip-mac  HMAC-SHA256 tag of gossip packets (and push-pull bodies)
    gossip-enc  AES-256-GCM of gossip packets, when encryption is on
    rpc         HMAC-SHA256 signatures of /_mesh/ requests and responses
    key-wrap    AES-256-GCM of a new secret on its way to `keys install` (rotation.py)

A key id (8 hex characters, a hash of the secret under its own label) travels
with every signed request and packet, so a receiver picks the right key at
once and can say "unknown key" (another secret) apart from "bad signature".

The keyring of a node is persisted in ``data_dir/keyring.json`` (0600): a
rotation survives restarts. At start the configured secret (--secret,
--secret-file, or the created cluster.secret) is added if missing; on a first
start it is the primary.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

GOSSIP_MAC = "gossip-mac"
GOSSIP_ENC = "gossip-enc"
RPC = "rpc"
KEY_WRAP = "key-wrap"
PURPOSES = (GOSSIP_MAC, GOSSIP_ENC, RPC, KEY_WRAP)
KEYRING_FILE_NAME = "keyring.json"
_SALT = b"meshrag/v1"


class KeyringError(ValueError):
    """A keyring operation that cannot be done (unknown key, removing the primary, ...)."""


def key_id(secret: str) -> str:
    return hashlib.sha256(b"meshrag/key-id/v1\0" + secret.encode()).hexdigest()[:8]


def derive(secret: str, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=purpose.encode()).derive(secret.encode())


class Keyring:
    def __init__(self, secrets: Iterable[str], primary: str | None = None) -> None:
        self._secrets: dict[str, str] = {}
        self._derived: dict[tuple[str, str], bytes] = {}
        for secret in secrets:
            self._secrets.setdefault(key_id(secret), secret)
        if not self._secrets:
            raise KeyringError("a keyring needs at least one secret")
        self._primary = primary if primary is not None else next(iter(self._secrets))
        if self._primary not in self._secrets:
            raise KeyringError(f"primary key {self._primary} is not installed")

    # ---------------------------------------------------------------- reading
    @property
    def primary_id(self) -> str:
        return self._primary

    def ids(self) -> list[str]:
        return list(self._secrets)

    def __contains__(self, kid: object) -> bool:
        return kid in self._secrets

    def key(self, kid: str, purpose: str) -> bytes | None:
        """The ``purpose`` key of installed key ``kid``; None if it is not installed."""
        cached = self._derived.get((kid, purpose))
        if cached is None:
            secret = self._secrets.get(kid)
            if secret is None:
                return None
            cached = self._derived[(kid, purpose)] = derive(secret, purpose)
        return cached

    def primary(self, purpose: str) -> tuple[str, bytes]:
        key = self.key(self._primary, purpose)
        assert key is not None
        return self._primary, key

    def describe(self) -> dict[str, object]:
        return {"primary": self._primary, "keys": self.ids()}

    # ---------------------------------------------------------------- changing
    def install(self, secret: str) -> str:
        kid = key_id(secret)
        self._secrets.setdefault(kid, secret)
        return kid

    def use(self, kid: str) -> None:
        if kid not in self._secrets:
            raise KeyringError(f"key {kid} is not installed here; install it first")
        self._primary = kid

    def remove(self, kid: str) -> None:
        if kid not in self._secrets:
            raise KeyringError(f"key {kid} is not installed here")
        if kid == self._primary:
            raise KeyringError(f"key {kid} is the primary; make another key primary first (keys use)")
        del self._secrets[kid]
        for purpose in PURPOSES:
            self._derived.pop((kid, purpose), None)

    # ---------------------------------------------------------------- persistence
    def save(self, path: Path) -> None:
        """Write atomically, mode 0600 from the start (the file holds the secrets)."""
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"primary": self._primary, "secrets": list(self._secrets.values())}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, configured: str) -> "Keyring":
        """The persisted keyring with ``configured`` added (primary on a first start)."""
        try:
            saved = json.loads(path.read_text())
        except FileNotFoundError:
            return cls([configured])
        except (OSError, ValueError) as exc:
            raise KeyringError(f"cannot read the keyring {path}: {exc}") from None
        ring = cls(saved.get("secrets") or [configured], saved.get("primary"))
        ring.install(configured)
        return ring
