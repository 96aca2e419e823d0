"""wire.py: JSON and msgpack bodies, numpy arrays as raw bytes."""

from __future__ import annotations

import numpy as np
import pytest

from meshrag.errors import ValidationError
from meshrag.wire import MSGPACK, decode_body, encode_body, pack, unpack


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
