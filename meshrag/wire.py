"""Message encoding: JSON for people, msgpack for speed.

Public endpoints accept and return either, chosen by Content-Type / Accept.
numpy arrays travel as raw little-endian float32 bytes inside msgpack (no
per-element boxing); in JSON they are lists of numbers.

It also says what every node can carry, so the API accepts nothing a replica
would fail to store or send on: integers are signed 64-bit (msgpack stops at
-2**63..2**64-1, SQLite INTEGER and JSON at signed 64-bit), strings encode as
UTF-8 (no lone surrogates) and hold no NUL, and a public body nests at most
MAX_BODY_DEPTH containers deep (a deeper one would reach Python's recursion
limit in json, in repr or in any recursive check).
"""

from __future__ import annotations

import json
from typing import Any

import msgpack  # type: ignore[import-untyped]  # no stubs published
import numpy as np

from meshrag.errors import ValidationError

JSON = "application/json"
MSGPACK = "application/msgpack"
MSGPACK_TYPES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})
_NDARRAY_EXT = 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Objects and arrays nested in one public body. The deepest valid request, a filter at
# store/filters.MAX_DEPTH (8) levels, is about 18; the rest is margin for new fields.
MAX_BODY_DEPTH = 32


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
    # A client may send any bytes under our code: malformed ones are a bad body (ValueError), not a crash.
    if not data or len(data) < 1 + 4 * data[0]:
        raise ValueError("truncated ndarray extension")
    ndim = data[0]
    shape = tuple(int.from_bytes(data[1 + 4 * i : 5 + 4 * i], "little") for i in range(ndim))
    return np.frombuffer(data[1 + 4 * ndim :], dtype="<f4").reshape(shape)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_pack_default, use_bin_type=True)


def unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, ext_hook=_unpack_ext, raw=False, strict_map_key=True)
    except msgpack.StackError:
        raise ValidationError(f"body nests deeper than {MAX_BODY_DEPTH} levels", field="body") from None
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise ValidationError(f"body is not valid msgpack: {exc}", field="body") from None


def stream_unpacker(max_buffer_bytes: int = 16 * 1024 * 1024) -> msgpack.Unpacker:
    """Decodes msgpack objects written one after another (a streamed reply) as bytes arrive."""
    return msgpack.Unpacker(ext_hook=_unpack_ext, raw=False, strict_map_key=True, max_buffer_size=max_buffer_bytes)


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
    except RecursionError:
        # The C scanner recurses per nesting level and gives up cleanly at the interpreter's limit.
        raise ValidationError(f"body nests deeper than {MAX_BODY_DEPTH} levels", field="body") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4300 digits
        raise ValidationError(f"body is not valid JSON: {exc}", field="body") from None


# ------------------------------------------------ what every node can carry
def check_depth(body: Any, limit: int = MAX_BODY_DEPTH) -> None:
    """Reject a body nested deeper than ``limit`` objects/arrays, without recursing itself."""
    stack = [(body, 1)] if isinstance(body, (dict, list)) else []
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            raise ValidationError(f"body nests deeper than {limit} levels", field="body")
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def check_text(value: str, field: str) -> None:
    """Reject a string that some replica could not store or send on, naming ``field``."""
    if "\x00" in value:
        # SQLite's text functions and C libraries (FTS5, llama.cpp) end a string at NUL.
        raise ValidationError(f"{field} contains NUL (U+0000) at index {value.index(chr(0))}", field=field)
    if value.isascii():  # O(1) in CPython, and true of most ids and keys
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(
            f"{field} contains a lone surrogate U+{ord(value[exc.start]):04X} at index {exc.start}, which UTF-8 cannot encode",
            field=field,
        ) from None


def printable(key: Any) -> str:
    """``key`` as it may appear in an error's field path: a path that itself could not
    be encoded would turn a 400 into a 500 while the error is rendered."""
    text = str(key)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else f"\\u{ord(char):04x}" for char in text)


def is_int64(value: int) -> bool:
    return INT64_MIN <= value <= INT64_MAX


def decode_body(data: bytes, content_type: str) -> Any:
    """A public request body, bounded in depth so that no later step can exhaust the stack."""
    body = unpack(data) if content_type in MSGPACK_TYPES else loads_json(data)
    check_depth(body)
    return body


def encode_body(obj: Any, accept: str) -> tuple[bytes, str]:
    """Encode for the client's Accept header; JSON unless msgpack is asked for."""
    if any(kind in accept for kind in MSGPACK_TYPES):
        return pack(obj), MSGPACK
    return dumps_json(obj), JSON
