"""wire.py: JSON and msgpack bodies, numpy arrays as raw bytes; hostile bodies fail as a
400 on "body"; what every node can carry."""

from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest

from meshrag.errors import ValidationError
from meshrag.wire import (
    INT64_MAX,
    INT64_MIN,
    JSON,
    MAX_BODY_DEPTH,
    MSGPACK,
    check_text,
    decode_body,
    encode_body,
    is_int64,
    pack,
    printable,
    unpack,
)


def test_msgpack_roundtrips_numpy_arrays_exactly() -> None:
    vectors = np.random.default_rng(1).standard_normal((3, 384)).astype(np.float32)
    decoded = unpack(pack({"v": vectors, "n": np.int64(4)}))
    assert decoded["n"] == 4
    np.testing.assert_array_equal(decoded["v"], vectors)


def test_msgpack_array_is_compact() -> None:
    vector = np.ones(384, dtype=np.float32)
    assert len(pack(vector)) < 384 * 4 + 16


def test_accept_header_selects_encoding() -> None:
    body, kind = encode_body({"a": 1}, "application/msgpack")
    assert kind == MSGPACK and unpack(body) == {"a": 1}
    body, kind = encode_body({"a": 1}, "*/*")
    assert kind == "application/json" and body == b'{"a":1}'


@pytest.mark.parametrize("data,kind", [(b"{bad", "application/json"), (b"\xc1", MSGPACK), (b"\xff\xfe", "application/json")])
def test_malformed_bodies_are_validation_errors(data: bytes, kind: str) -> None:
    with pytest.raises(ValidationError) as err:
        decode_body(data, kind)
    assert err.value.field == "body"


def _body_error(data: bytes, content_type: str) -> ValidationError:
    with pytest.raises(ValidationError) as err:
        decode_body(data, content_type)
    return err.value


def _nested_list(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_json_nested_past_the_recursion_limit_is_a_400_on_body() -> None:
    error = _body_error(b"[" * 100_000 + b"]" * 100_000, JSON)
    assert error.field == "body" and str(MAX_BODY_DEPTH) in error.message


def test_json_integer_of_thousands_of_digits_is_a_400_on_body() -> None:
    assert _body_error(b'{"n": ' + b"9" * 5000 + b"}", JSON).field == "body"


@pytest.mark.parametrize("content_type", [JSON, MSGPACK])
def test_body_nested_to_the_limit_is_accepted_and_one_deeper_is_a_400(content_type: str) -> None:
    def encode(value: object) -> bytes:
        return json.dumps(value).encode() if content_type == JSON else msgpack.packb(value)

    assert decode_body(encode(_nested_list(MAX_BODY_DEPTH)), content_type) == _nested_list(MAX_BODY_DEPTH)
    assert _body_error(encode(_nested_list(MAX_BODY_DEPTH + 1)), content_type).field == "body"


def test_depth_counts_objects_and_arrays_alike() -> None:
    value: object = 1
    for level in range(MAX_BODY_DEPTH + 1):
        value = {"k": value} if level % 2 else [value]
    assert _body_error(msgpack.packb(value), MSGPACK).field == "body"


@pytest.mark.parametrize("payload", [b"", b"\x02\x01\x00\x00\x00", b"\x01\x05\x00\x00\x00abc"])
def test_malformed_ndarray_extension_is_a_400_on_body(payload: bytes) -> None:
    raw = msgpack.packb({"vector": msgpack.ExtType(1, payload)})
    assert _body_error(raw, MSGPACK).field == "body"


def test_other_extension_types_pass_through_for_the_schema_to_refuse() -> None:
    assert unpack(pack({"e": msgpack.ExtType(7, b"x")})) == {"e": msgpack.ExtType(7, b"x")}


@pytest.mark.parametrize(
    ("value", "says"),
    [("ab\ud800", "lone surrogate U+D800 at index 2"), ("\udfffx", "U+DFFF at index 0"), ("a\x00b", "NUL")],
)
def test_check_text_rejects_what_utf8_or_sqlite_cannot_carry(value: str, says: str) -> None:
    with pytest.raises(ValidationError) as err:
        check_text(value, "documents[0].text")
    assert err.value.field == "documents[0].text" and says in err.value.message
    err.value.message.encode("utf-8")  # the message itself can be sent


@pytest.mark.parametrize("value", ["plain", "naïve 東京 😀", "tab\tand\nnewline", ""])
def test_check_text_accepts_valid_unicode(value: str) -> None:
    check_text(value, "text")


def test_printable_escapes_what_a_field_path_could_not_carry() -> None:
    assert printable("\ud800key") == "\\ud800key"
    assert printable("a\x00b") == "a\\u0000b"
    assert printable("東京") == "東京" and printable(b"raw") == "b'raw'"
    printable("\ud800").encode("utf-8")


def test_int64_bounds() -> None:
    assert is_int64(INT64_MIN) and is_int64(INT64_MAX) and is_int64(0)
    assert not is_int64(INT64_MAX + 1) and not is_int64(INT64_MIN - 1) and not is_int64(2**64)
