"""Wire format of gossip packets: msgpack bodies, authenticated (and optionally encrypted)
with keys derived from the cluster secret.

    version (1) | kind (1) | flags (1) | cluster tag (4) | key id (4) | time ms (8) | nonce (12)
    | body | tag (16)

Keys come from the keyring (security/keyring.py): a packet names the key it was
made with (key id), is made with the primary and accepted with any installed
key, so keys rotate without a gossip outage. Flags bit 0 set: the body is
AES-256-GCM ciphertext (gossip-enc key, the nonce as GCM nonce, the header as
associated data, the tag being GCM's); clear: the body is plain and the tag is
HMAC-SHA256 (gossip-mac key) over header and body, first 16 bytes. A receiver
accepts both forms (both are authenticated), so encryption can be switched on
node by node. In --dev mode the secret is a fixed public one: packets are then
checked for integrity (a flipped bit is still caught), not for origin.

Freshness (when the codec has a window; node.py gives it outside dev mode):
a packet whose time is further than the window from the receiver's clock is
`stale`, one whose nonce was already seen inside the window is `replayed`
(security/replay.py). Both checks follow the tag check, so forged packets
never fill the replay cache. The cluster tag lets a node tell "another
cluster on this port" apart from "another secret" (`unknown_key`) and
"forged or damaged" (`bad_mac`) in its counters.

A datagram body is one msgpack array: sender id, generation, incarnation, then
the messages, each itself an array starting with its type. Messages are
encoded once and spliced into compounds as bytes, so a piggybacked update
costs no re-encoding per packet. PING, INDIRECT_PING, ACK and NACK carry the
probe's random nonce beside its sequence number: an ack counts only for the
outstanding probe with that sequence number *and* nonce, from the member it
was expected from (probe.py), so a replayed or stray ack cannot keep a dead
member alive.

Decoding never raises anything but `Rejected`, whose `reason` is one of
`REJECT_REASONS`; the node exports the counts as a metric.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from typing import Any, Callable

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshrag.clock import Clock
from meshrag.security.keyring import GOSSIP_ENC, GOSSIP_MAC, Keyring
from meshrag.security.replay import ReplayCache

VERSION = 2
KIND_DATAGRAM = 1
KIND_PUSH_PULL_REQUEST = 2
KIND_PUSH_PULL_REPLY = 3
FLAG_ENCRYPTED = 1
MAC_BYTES = 16
NONCE_BYTES = 12
HEADER_BYTES = 1 + 1 + 1 + 4 + 4 + 8 + NONCE_BYTES
OVERHEAD_BYTES = HEADER_BYTES + MAC_BYTES  # what sealing adds to a body, either form
UDP_MAX_BYTES = 65507
DEV_SECRET = "meshrag-dev-mode-public-key"
_TIME = struct.Struct(">Q")

PING, INDIRECT_PING, ACK, NACK, ALIVE, SUSPECT, DEAD, LEAVE, STALE_VIEW = range(1, 10)

REJECT_REASONS = ("too_short", "oversized", "bad_version", "wrong_kind", "wrong_cluster", "unknown_key", "bad_mac",
                  "stale", "replayed", "malformed", "from_self")
MAX_ID = 64
MAX_NAME = 128
MAX_ADDRESS = 300
MAX_INT = (1 << 63) - 1


class Rejected(Exception):
    """A packet we drop; `reason` says why (one of REJECT_REASONS)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Packet:
    sender_id: str
    generation: int
    incarnation: int
    messages: list[list[Any]]


@dataclass(frozen=True, slots=True)
class StateExchange:
    """A push-pull payload: the sender and its whole member table."""

    sender_id: str
    generation: int
    incarnation: int
    join: bool
    records: list[list[Any]]  # [id, name, address, generation, incarnation, state code, meta bytes, meta dict]


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def array_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x90 | count])
    if count < 65536:
        return b"\xdc" + struct.pack(">H", count)
    return b"\xdd" + struct.pack(">I", count)


# --- message encoders: each returns the msgpack bytes of one message ------------------
def encode_ping(seq: int, target_id: str, nonce: int) -> bytes:
    return pack([PING, seq, target_id, nonce])


def encode_indirect_ping(seq: int, target_id: str, target_address: str, want_nack: bool, nonce: int) -> bytes:
    return pack([INDIRECT_PING, seq, target_id, target_address, want_nack, nonce])


def encode_ack(seq: int, nonce: int) -> bytes:
    return pack([ACK, seq, nonce])


def encode_nack(seq: int, nonce: int) -> bytes:
    return pack([NACK, seq, nonce])


def encode_alive(node_id: str, name: str, address: str, generation: int, incarnation: int, meta_bytes: bytes) -> bytes:
    return pack([ALIVE, node_id, name, address, generation, incarnation, meta_bytes])


def encode_suspect(node_id: str, generation: int, incarnation: int, accuser: str) -> bytes:
    return pack([SUSPECT, node_id, generation, incarnation, accuser])


def encode_dead(node_id: str, generation: int, incarnation: int, accuser: str) -> bytes:
    return pack([DEAD, node_id, generation, incarnation, accuser])


def encode_leave(node_id: str, generation: int, incarnation: int) -> bytes:
    return pack([LEAVE, node_id, generation, incarnation])


def encode_stale_view(node_id: str, generation: int, incarnation: int, state_code: int) -> bytes:
    return pack([STALE_VIEW, node_id, generation, incarnation, state_code])


def encode_metadata(metadata: dict[str, Any]) -> bytes:
    return pack(metadata)


# --- field checks: one hand-written check per message type (this is the hot path) --------
def _uint(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_INT


def _text(value: Any, limit: int) -> bool:
    return type(value) is str and 0 < len(value) <= limit


def _version_fields(m: list[Any], first: int) -> bool:
    return _uint(m[first]) and _uint(m[first + 1])


FIELDS_CHECKS: dict[int, tuple[int, Callable[[list[Any]], bool]]] = {
    PING: (4, lambda m: _uint(m[1]) and _text(m[2], MAX_ID) and _uint(m[3])),
    INDIRECT_PING: (6, lambda m: _uint(m[1]) and _text(m[2], MAX_ID) and _text(m[3], MAX_ADDRESS) and type(m[4]) is bool
                    and _uint(m[5])),
    ACK: (3, lambda m: _uint(m[1]) and _uint(m[2])),
    NACK: (3, lambda m: _uint(m[1]) and _uint(m[2])),
    ALIVE: (7, lambda m: _text(m[1], MAX_ID) and _text(m[2], MAX_NAME) and _text(m[3], MAX_ADDRESS) and _version_fields(m, 4)),
    SUSPECT: (5, lambda m: _text(m[1], MAX_ID) and _version_fields(m, 2) and _text(m[4], MAX_ID)),
    DEAD: (5, lambda m: _text(m[1], MAX_ID) and _version_fields(m, 2) and _text(m[4], MAX_ID)),
    LEAVE: (4, lambda m: _text(m[1], MAX_ID) and _version_fields(m, 2)),
    STALE_VIEW: (5, lambda m: _text(m[1], MAX_ID) and _version_fields(m, 2) and type(m[4]) is int and 0 <= m[4] <= 3),
}


def decode_metadata(raw: Any, limit: int) -> dict[str, Any]:
    """Metadata bytes -> dict with string keys; Rejected("malformed") otherwise."""
    if type(raw) is not bytes or len(raw) > limit:
        raise Rejected("malformed")
    try:
        value = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception:
        raise Rejected("malformed") from None
    if not isinstance(value, dict):
        raise Rejected("malformed")
    return value


class Codec:
    """Seals and opens packets for one cluster and keyring.

    ``keys`` is the node's keyring (shared: a rotation applies at once), or a secret
    string for a keyring of one ("" = the public dev key). ``window_s`` (with ``clock``)
    turns on the freshness checks; ``encrypt`` seals with AES-GCM instead of a MAC.
    """

    def __init__(self, cluster: str, keys: Keyring | str = "", meta_limit: int = 512, *, clock: Clock | None = None,
                 window_s: float | None = None, encrypt: bool = False, replay_capacity: int = 100_000) -> None:
        self.keyring = keys if isinstance(keys, Keyring) else Keyring([keys or DEV_SECRET])
        self._tag = hashlib.sha256(b"meshrag/cluster\0" + cluster.encode()).digest()[:4]
        self._clock = clock
        self._replay = ReplayCache(window_s, replay_capacity) if window_s is not None and clock is not None else None
        self.encrypt = encrypt
        self._ciphers: dict[bytes, AESGCM] = {}
        self.meta_limit = meta_limit
        # The same metadata bytes arrive in many packets; decode each distinct value once.
        # Decoded dicts are shared and must never be mutated in place.
        self._meta_cache: dict[bytes, dict[str, Any]] = {}

    def metadata(self, raw: Any) -> dict[str, Any]:
        cached = self._meta_cache.get(raw) if type(raw) is bytes else None
        if cached is None:
            cached = decode_metadata(raw, self.meta_limit)
            if len(self._meta_cache) >= 4096:
                self._meta_cache.clear()
            self._meta_cache[raw] = cached
        return cached

    def check_message(self, message: Any) -> list[Any] | None:
        """A validated message (ALIVE gains its decoded metadata at the end), or None for an unknown type.

        Unknown types are skipped rather than rejected so that a newer node can add messages.
        """
        if type(message) is not list or not message or type(message[0]) is not int:
            raise Rejected("malformed")
        spec = FIELDS_CHECKS.get(message[0])
        if spec is None:
            return None
        if len(message) != spec[0] or not spec[1](message):
            raise Rejected("malformed")
        if message[0] == ALIVE:
            message.append(self.metadata(message[6]))
        return message

    def _mac_key(self, kid: bytes) -> bytes | None:
        return self.keyring.key(kid.hex(), GOSSIP_MAC)

    def _cipher(self, kid: bytes) -> AESGCM | None:
        cipher = self._ciphers.get(kid)
        if cipher is None:
            key = self.keyring.key(kid.hex(), GOSSIP_ENC)
            if key is None:
                return None
            if len(self._ciphers) > 16:  # removed keys: start over rather than keep them
                self._ciphers.clear()
            cipher = self._ciphers[kid] = AESGCM(key)
        return cipher

    def _now_ms(self) -> int:
        return int(self._clock.wall() * 1000) if self._clock is not None else 0

    def seal(self, kind: int, body: bytes) -> bytes:
        kid = bytes.fromhex(self.keyring.primary_id)
        flags = FLAG_ENCRYPTED if self.encrypt else 0
        nonce = os.urandom(NONCE_BYTES)
        header = bytes([VERSION, kind, flags]) + self._tag + kid + _TIME.pack(self._now_ms()) + nonce
        if self.encrypt:
            cipher = self._cipher(kid)
            assert cipher is not None
            return header + cipher.encrypt(nonce, body, header)
        key = self._mac_key(kid)
        assert key is not None
        return header + body + hmac.digest(key, header + body, "sha256")[:MAC_BYTES]

    def open(self, data: bytes, kind: int, limit: int) -> Any:
        """Check header, size, key, tag and freshness; return the decoded msgpack body."""
        if len(data) <= OVERHEAD_BYTES:
            raise Rejected("too_short")
        if len(data) > limit:
            raise Rejected("oversized")
        if data[0] != VERSION:
            raise Rejected("bad_version")
        if data[1] != kind:
            raise Rejected("wrong_kind")
        if data[3:7] != self._tag:
            raise Rejected("wrong_cluster")
        kid, header = data[7:11], data[:HEADER_BYTES]
        if data[2] & FLAG_ENCRYPTED:
            cipher = self._cipher(kid)
            if cipher is None:
                raise Rejected("unknown_key")
            try:
                body = cipher.decrypt(data[HEADER_BYTES - NONCE_BYTES:HEADER_BYTES], data[HEADER_BYTES:], header)
            except InvalidTag:
                raise Rejected("bad_mac") from None
        else:
            key = self._mac_key(kid)
            if key is None:
                raise Rejected("unknown_key")
            body = data[HEADER_BYTES:-MAC_BYTES]
            expected = hmac.digest(key, header + body, "sha256")[:MAC_BYTES]
            if not hmac.compare_digest(expected, data[-MAC_BYTES:]):
                raise Rejected("bad_mac")
        if self._replay is not None:
            assert self._clock is not None
            outcome = self._replay.check(data[HEADER_BYTES - NONCE_BYTES:HEADER_BYTES],
                                         _TIME.unpack_from(data, 11)[0] / 1000, self._clock.wall())
            if outcome is not None:
                raise Rejected(outcome)
        try:
            return msgpack.unpackb(body, raw=False, strict_map_key=True)
        except Exception:  # msgpack raises a zoo of types on bad input; all mean the same here
            raise Rejected("malformed") from None

    # --- datagrams ----------------------------------------------------------------
    @staticmethod
    def sender_prefix(node_id: str, generation: int, incarnation: int) -> bytes:
        return pack(node_id) + pack(generation) + pack(incarnation)

    def seal_datagram(self, sender_prefix: bytes, messages: list[bytes]) -> bytes:
        body = array_header(3 + len(messages)) + sender_prefix + b"".join(messages)
        return self.seal(KIND_DATAGRAM, body)

    def open_datagram(self, data: bytes, limit: int) -> Packet:
        body = self.open(data, KIND_DATAGRAM, limit)
        if type(body) is not list or len(body) < 3 or not _text(body[0], MAX_ID) or not _version_fields(body, 1):
            raise Rejected("malformed")
        messages = [m for m in map(self.check_message, body[3:]) if m is not None]
        return Packet(body[0], body[1], body[2], messages)

    # --- push-pull ------------------------------------------------------------------
    def seal_state(self, kind: int, sender: tuple[str, int, int], join: bool, records: list[list[Any]]) -> bytes:
        return self.seal(kind, pack([sender[0], sender[1], sender[2], join, records]))

    def open_state(self, data: bytes, kind: int, limit: int) -> StateExchange:
        body = self.open(data, kind, limit)
        if (type(body) is not list or len(body) != 5 or not _text(body[0], MAX_ID) or not _version_fields(body, 1)
                or type(body[3]) is not bool or type(body[4]) is not list):
            raise Rejected("malformed")
        return StateExchange(body[0], body[1], body[2], body[3], [self._check_record(r) for r in body[4]])

    def _check_record(self, record: Any) -> list[Any]:
        if type(record) is not list or len(record) != 7:
            raise Rejected("malformed")
        if not (_text(record[0], MAX_ID) and _text(record[1], MAX_NAME) and _text(record[2], MAX_ADDRESS)
                and _version_fields(record, 3) and type(record[5]) is int and 0 <= record[5] <= 3):
            raise Rejected("malformed")
        record.append(self.metadata(record[6]))
        return record
