"""security/api_keys.py: tokens, hashing, revocation, the cluster-wide merge, the file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from meshrag.security.api_keys import KEYS_FILE, ApiKeyError, ApiKeyStore, parse_scopes, split_token


def test_a_token_is_verified_by_its_hash_and_carries_its_scopes(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path)
    token, key = store.create("indexer", ("write", "read"), version=1)
    assert key.scopes == ("read", "write")  # canonical order
    assert token.split("_")[2] not in key.secret_sha256 and len(key.secret_sha256) == 64
    assert store.verify(token) == key


@pytest.mark.parametrize("token", ["", "mrk", "mrk__x", "xyz_abc_def", "mrk_unknown_secret"])
def test_malformed_and_unknown_tokens_verify_to_nothing(tmp_path: Path, token: str) -> None:
    store = ApiKeyStore(tmp_path)
    store.create("a", ("read",), version=1)
    assert store.verify(token) is None


def test_the_right_id_with_the_wrong_secret_is_refused(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path)
    token, _ = store.create("a", ("read",), version=1)
    key_id, secret = split_token(token) or ("", "")
    assert store.verify(f"mrk_{key_id}_{secret[:-1]}x") is None


def test_a_revoked_key_is_refused_and_forgets_its_hash(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path)
    token, key = store.create("a", ("admin",), version=1)
    revoked = store.revoke(key.id, version=2)
    assert store.verify(token) is None and revoked.revoked and revoked.secret_sha256 == ""
    assert store.live() == [] and [k.id for k in store.entries()] == [key.id]
    with pytest.raises(ApiKeyError, match="no API key"):
        store.revoke("nope", version=3)


def test_keys_spread_by_merging_and_a_revocation_never_comes_back(tmp_path: Path) -> None:
    one, two = ApiKeyStore(tmp_path / "1"), ApiKeyStore(tmp_path / "2")
    token, key = one.create("a", ("read",), version=10)
    assert two.merge(one.to_wire()) and two.verify(token) is not None
    before_revocation = one.to_wire()
    two.revoke(key.id, version=20)
    assert one.merge(two.to_wire()) and one.verify(token) is None
    assert not one.merge(before_revocation)  # the older live copy loses
    assert one.verify(token) is None


def test_a_malformed_entry_from_a_peer_is_skipped_not_fatal(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path)
    good = ApiKeyStore(tmp_path / "other")
    token, _ = good.create("ok", ("read",), version=1)
    assert store.merge([{"id": "x"}, {"id": "y", "name": "n", "scopes": ["root"], "secret_sha256": "", "version": 1},
                        *good.to_wire()])
    assert store.verify(token) is not None and len(store.entries()) == 1


def test_the_file_is_private_and_survives_a_restart(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path)
    token, _ = store.create("a", ("read", "admin"), version=1)
    store.save()
    assert stat.S_IMODE((tmp_path / KEYS_FILE).stat().st_mode) == 0o600
    assert token not in (tmp_path / KEYS_FILE).read_text()
    again = ApiKeyStore(tmp_path)
    again.load()
    assert again.verify(token) is not None


def test_scopes_are_named_from_a_fixed_set() -> None:
    assert parse_scopes("admin, read") == ("read", "admin")
    for bad in ("", "root", "read,superuser"):
        with pytest.raises(ApiKeyError, match="scopes must be some of read, write, admin"):
            parse_scopes(bad)
