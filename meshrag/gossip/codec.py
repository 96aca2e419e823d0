"""Wire format of gossip packets: msgpack bodies, authenticated with the cluster secret.

    version (1) | kind (1) | cluster tag (4) | HMAC-SHA256 tag, first 16 bytes | body

The HMAC covers everything but itself, keyed by a hash of the cluster name and
the secret. In --dev mode the secret is empty and the key is public: packets
are then checked for integrity (a flipped bit is still caught), not for origin.
The cluster tag lets a node tell "another cluster on this port" apart from
"forged or damaged" in its counters.

A datagram body is one msgpack array: sender id, generation, incarnation, then
the messages, each itself an array starting with its type. Messages are
encoded once and spliced into compounds as bytes, so a piggybacked update
costs no re-encoding per packet.

Decoding never raises anything but `Rejected`, whose `reason` is one of
`REJECT_REASONS`; the node exports the counts as a metric.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Any, Callable

import msgpack

VERSION = 1
KIND_DATAGRAM = 1
KIND_PUSH_PULL_REQUEST = 2
KIND_PUSH_PULL_REPLY = 3
MAC_BYTES = 16
HEADER_BYTES = 1 + 1 + 4 + MAC_BYTES
UDP_MAX_BYTES = 65507
DEV_SECRET = "meshrag-dev-mode-public-key"

PING, INDIRECT_PING, ACK, NACK, ALIVE, SUSPECT, DEAD, LEAVE, STALE_VIEW = range(1, 10)

REJECT_REASONS = ("too_short", "oversized", "bad_version", "wrong_kind", "wrong_cluster", "bad_mac", "malformed", "from_self")
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
def encode_ping(seq: int, target_id: str) -> bytes:
    return pack([PING, seq, target_id])


def encode_indirect_ping(seq: int, target_id: str, target_address: str, want_nack: bool) -> bytes:
    return pack([INDIRECT_PING, seq, target_id, target_address, want_nack])


def encode_ack(seq: int) -> bytes:
    return pack([ACK, seq])


def encode_nack(seq: int) -> bytes:
    return pack([NACK, seq])


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
    PING: (3, lambda m: _uint(m[1]) and _text(m[2], MAX_ID)),
    INDIRECT_PING: (5, lambda m: _uint(m[1]) and _text(m[2], MAX_ID) and _text(m[3], MAX_ADDRESS) and type(m[4]) is bool),
    ACK: (2, lambda m: _uint(m[1])),
    NACK: (2, lambda m: _uint(m[1])),
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
    """Seals and opens packets for one cluster and secret."""

    def __init__(self, cluster: str, secret: str, meta_limit: int = 512) -> None:
        material = b"meshrag/gossip/v1\0" + cluster.encode() + b"\0" + (secret or DEV_SECRET).encode()
        self._key = hashlib.sha256(material).digest()
        self._tag = hashlib.sha256(b"meshrag/cluster\0" + cluster.encode()).digest()[:4]
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

    def _header(self, kind: int) -> bytes:
        return bytes([VERSION, kind]) + self._tag

    def seal(self, kind: int, body: bytes) -> bytes:
        prefix = self._header(kind)
        mac = hmac.digest(self._key, prefix + body, "sha256")[:MAC_BYTES]
        return prefix + mac + body

    def open(self, data: bytes, kind: int, limit: int) -> Any:
        """Check header, size and MAC; return the decoded msgpack body."""
        if len(data) <= HEADER_BYTES:
            raise Rejected("too_short")
        if len(data) > limit:
            raise Rejected("oversized")
        if data[0] != VERSION:
            raise Rejected("bad_version")
        if data[1] != kind:
            raise Rejected("wrong_kind")
        if data[2:6] != self._tag:
            raise Rejected("wrong_cluster")
        body = data[HEADER_BYTES:]
        expected = hmac.digest(self._key, data[:6] + body, "sha256")[:MAC_BYTES]
        if not hmac.compare_digest(expected, data[6:HEADER_BYTES]):
            raise Rejected("bad_mac")
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
