"""cluster/session.py: opaque session tokens and how a session's writes combine."""

from __future__ import annotations

import pytest

from meshrag.cluster.session import MAX_TOKEN_CHARS, decode_session, encode_session, merge_sessions
from meshrag.errors import ValidationError


def test_a_token_round_trips() -> None:
    acked = {3: ["node-a", "node-b"], 17: ["node-c"]}
    assert decode_session(encode_session(acked)) == acked


def test_no_token_is_an_empty_session() -> None:
    assert decode_session(None) == {} and decode_session("") == {}


@pytest.mark.parametrize("token", ["not a token!", "AAAA", "bm90IG1zZ3BhY2s"])
def test_a_foreign_token_is_a_400_naming_the_field(token: str) -> None:
    with pytest.raises(ValidationError) as failure:
        decode_session(token)
    assert failure.value.field == "session" and failure.value.status == 400


def test_an_oversized_token_is_refused() -> None:
    with pytest.raises(ValidationError, match="longer than"):
        decode_session("A" * (MAX_TOKEN_CHARS + 1))


def test_merging_keeps_the_replicas_that_took_both_writes() -> None:
    merged = merge_sessions({1: ["a", "b"], 2: ["c"]}, {1: ["b", "c"], 3: ["a"]})
    assert merged == {1: ["b"], 2: ["c"], 3: ["a"]}


def test_with_no_replica_in_common_the_newer_write_wins() -> None:
    assert merge_sessions({1: ["a"]}, {1: ["b", "c"]}) == {1: ["b", "c"]}
