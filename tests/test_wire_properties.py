"""Property tests (hypothesis) for meshrag/wire.py's decoding of public bodies: any bytes are
a value or a ValidationError on ``body``, never another exception; whatever decodes nests at
most MAX_BODY_DEPTH levels; values every node can carry survive a round trip."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshrag.errors import ValidationError
from meshrag.wire import (
    INT64_MAX, INT64_MIN, JSON, MAX_BODY_DEPTH, MSGPACK, check_depth, check_text, decode_body, dumps_json, is_int64, pack, printable, unpack,
)

FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Strings with anything in them, lone surrogates and NUL included.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=20)
carried_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)
scalars = st.none() | st.booleans() | st.integers(INT64_MIN, INT64_MAX) | st.floats(allow_nan=False, allow_infinity=False) | carried_text
carried = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(carried_text, inner, max_size=4), max_leaves=30)


def nesting_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((nesting_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((nesting_depth(v) for v in value), default=0)
    return 0


@FAST
@given(data=st.binary(max_size=256), content_type=st.sampled_from([JSON, MSGPACK]))
def test_any_bytes_decode_to_a_bounded_value_or_a_400_on_body(data: bytes, content_type: str) -> None:
    try:
        value = decode_body(data, content_type)
    except ValidationError as exc:
        assert exc.status == 400 and exc.field == "body"
        dumps_json(exc.to_dict())  # the error itself renders
        return
    assert nesting_depth(value) <= MAX_BODY_DEPTH


@FAST
@given(value=carried)
def test_what_every_node_carries_round_trips_through_json_and_msgpack(value: Any) -> None:
    assert decode_body(dumps_json(value), JSON) == value
    assert decode_body(pack(value), MSGPACK) == value


@FAST
@given(value=carried, cut=st.integers(0, 10_000))
def test_truncated_or_corrupted_bodies_never_raise_anything_but_a_400(value: Any, cut: int) -> None:
    for raw, content_type in ((dumps_json(value), JSON), (pack(value), MSGPACK)):
        for data in (raw[: cut % (len(raw) + 1)], raw[:-1] + b"\xc1", b"\xff" + raw):
            try:
                decode_body(data, content_type)
            except ValidationError as exc:
                assert exc.field == "body"


@settings(max_examples=60, deadline=None)
@given(depth=st.integers(1, 5000), content_type=st.sampled_from([JSON, MSGPACK]))
def test_nesting_is_accepted_up_to_the_limit_and_refused_beyond(depth: int, content_type: str) -> None:
    """Arrays nested ``depth`` deep, built as bytes (encoding them would itself recurse)."""
    data = b"[" * depth + b"0" + b"]" * depth if content_type == JSON else b"\x91" * depth + b"\x00"
    if depth <= MAX_BODY_DEPTH:
        value: Any = 0
        for _ in range(depth):
            value = [value]
        assert decode_body(data, content_type) == value
    else:
        with pytest.raises(ValidationError) as raised:
            decode_body(data, content_type)
        assert raised.value.field == "body" and "nests deeper" in raised.value.message


@FAST
@given(value=st.integers(-(2**70), 2**70))
def test_int64_is_what_msgpack_and_sqlite_carry_signed(value: int) -> None:
    assert is_int64(value) == (INT64_MIN <= value <= INT64_MAX)
    if is_int64(value):
        assert unpack(pack(value)) == value


@FAST
@given(value=any_text)
def test_check_text_accepts_exactly_utf8_without_nul(value: str) -> None:
    try:
        value.encode("utf-8")
        encodable = True
    except UnicodeEncodeError:
        encodable = False
    try:
        check_text(value, "f")
        accepted = True
    except ValidationError as exc:
        accepted = False
        assert exc.field == "f"
        dumps_json(exc.to_dict())
    assert accepted == (encodable and "\x00" not in value)


@FAST
@given(key=any_text)
def test_printable_field_paths_always_encode(key: str) -> None:
    printable(key).encode("utf-8")


@FAST
@given(value=carried)
def test_check_depth_agrees_with_the_depth(value: Any) -> None:
    for limit in (1, 2, 3, MAX_BODY_DEPTH):
        try:
            check_depth(value, limit)
            assert nesting_depth(value) <= limit
        except ValidationError:
            assert nesting_depth(value) > limit
