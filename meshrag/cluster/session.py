"""Session tokens: read-your-writes without waiting for every replica.

A write answers with a token naming, per partition it touched, the replicas
that had acknowledged it when the client got its answer. A read presenting
the token is sent, for those partitions, to one of those replicas, so it sees
the session's writes even at consistency ONE while other replicas lag.
A later write in the same session keeps, per partition, the replicas that
took both writes (the intersection), falling back to the newest write's set.

Tokens are opaque to clients: base64url of msgpack ``{partition: [node ids]}``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Mapping

import msgpack

from meshrag.errors import ValidationError

SessionMap = dict[int, list[str]]
MAX_TOKEN_CHARS = 64 * 1024


def encode_session(acked: Mapping[int, list[str]]) -> str:
    packed = msgpack.packb({int(pid): list(nodes) for pid, nodes in acked.items()}, use_bin_type=True)
    return base64.urlsafe_b64encode(packed).decode().rstrip("=")


def decode_session(token: str | None, field: str = "session") -> SessionMap:
    if not token:
        return {}
    if len(token) > MAX_TOKEN_CHARS:
        raise ValidationError(f"session token longer than {MAX_TOKEN_CHARS} characters", field=field)
    try:
        raw = msgpack.unpackb(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)), raw=False, strict_map_key=False)
        return {int(pid): [str(node) for node in nodes] for pid, nodes in raw.items()}
    except (binascii.Error, ValueError, TypeError, AttributeError, msgpack.UnpackException):
        raise ValidationError("session is not a token this cluster issued (pass back the 'session' of a write)", field=field) from None


def merge_sessions(earlier: Mapping[int, list[str]], newer: Mapping[int, list[str]]) -> SessionMap:
    merged = {pid: list(nodes) for pid, nodes in earlier.items()}
    for pid, nodes in newer.items():
        both = [node for node in nodes if node in merged.get(pid, nodes)]
        merged[pid] = both or list(nodes)
    return merged
