"""Message encoding: JSON for people, msgpack for speed.

Public endpoints accept and return either, chosen by Content-Type / Accept.
numpy arrays travel as raw little-endian float32 bytes inside msgpack (no
per-element boxing); in JSON they are lists of numbers.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
import numpy as np

from meshrag.errors import ValidationError

JSON = "application/json"
MSGPACK = "application/msgpack"
MSGPACK_TYPES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})
_NDARRAY_EXT = 1


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        array = np.ascontiguousarray(obj, dtype="<f4")
        header = len(array.shape).to_bytes(1, "little") + b"".join(d.to_bytes(4, "little") for d in array.shape)
        return msgpack.ExtType(_NDARRAY_EXT, header + array.tobytes())
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _unpack_ext(code: int, data: bytes) -> Any:
    if code != _NDARRAY_EXT:
        return msgpack.ExtType(code, data)
    ndim = data[0]
    shape = tuple(int.from_bytes(data[1 + 4 * i : 5 + 4 * i], "little") for i in range(ndim))
    return np.frombuffer(data[1 + 4 * ndim :], dtype="<f4").reshape(shape)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_pack_default, use_bin_type=True)


def unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, ext_hook=_unpack_ext, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise ValidationError(f"body is not valid msgpack: {exc}", field="body") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def dumps_json(obj: Any) -> bytes:
    return json.dumps(obj, default=_json_default, ensure_ascii=False, separators=(",", ":")).encode()


def loads_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError(f"body is not valid JSON: {exc}", field="body") from None


def decode_body(data: bytes, content_type: str) -> Any:
    if content_type in MSGPACK_TYPES:
        return unpack(data)
    return loads_json(data)


def encode_body(obj: Any, accept: str) -> tuple[bytes, str]:
    """Encode for the client's Accept header; JSON unless msgpack is asked for."""
    if any(kind in accept for kind in MSGPACK_TYPES):
        return pack(obj), MSGPACK
    return dumps_json(obj), JSON
