"""security/: replay cache, signing, keyring and secret file, on virtual time (pure modules)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshrag.errors import ConfigError
from meshrag.security import secret as secret_file
from meshrag.security import signing
from meshrag.security.keyring import GOSSIP_ENC, GOSSIP_MAC, RPC, Keyring, KeyringError, key_id
from meshrag.security.replay import REPLAYED, STALE, ReplayCache

SECRET = "s" * 32


# --- replay.py ----------------------------------------------------------------------------
def test_a_nonce_is_accepted_once_inside_the_window_and_expires_with_it() -> None:
    cache = ReplayCache(window_s=30)
    assert cache.check("a", 100.0, 100.0) is None
    assert cache.check("a", 100.0, 110.0) == REPLAYED
    assert cache.check("b", 69.0, 100.0) == STALE and cache.check("c", 131.0, 100.0) == STALE
    assert cache.check("a", 100.0, 131.0) == STALE  # expired from the cache, refused by its time
    assert cache.check("d", 131.0, 131.0) is None and len(cache) == 1  # "a" expired


def test_a_full_cache_narrows_the_window_instead_of_forgetting_a_live_nonce() -> None:
    cache = ReplayCache(window_s=30, capacity=3)
    for i, ts in enumerate((100.0, 101.0, 102.0)):
        assert cache.check(f"n{i}", ts, 102.0) is None
    assert cache.check("n3", 103.0, 103.0) is None  # evicts n0 (ts 100): the floor is now 100
    assert cache.check("n0", 100.0, 103.0) == STALE  # its replay is still refused
    assert cache.check("x", 99.0, 103.0) == STALE and len(cache) == 3


@given(st.lists(st.tuples(st.integers(0, 50), st.floats(0, 100)), max_size=200))
def test_no_signed_request_is_ever_accepted_twice(events: list[tuple[int, float]]) -> None:
    """A replay repeats nonce and timestamp (both are signed): never accepted twice, whatever
    the order, the clock or the evictions of a small cache."""
    cache = ReplayCache(window_s=10, capacity=8)
    accepted: set[tuple[int, float]] = set()
    now = 0.0
    for nonce, ts in events:
        now = max(now, ts)  # time moves forward
        if cache.check(nonce, ts, now) is None:
            assert (nonce, ts) not in accepted
            accepted.add((nonce, ts))


# --- signing.py ---------------------------------------------------------------------------
def _verify(headers: dict[str, str], now: float = 1000.0, path: str = "/_mesh/x", body: bytes = b"body",
            cache: ReplayCache | None = None) -> signing.Verified:
    ring = Keyring([SECRET])
    return signing.verify_request(headers, "POST", path, signing.digest(body), lambda k: ring.key(k, RPC), now,
                                  cache if cache is not None else ReplayCache(60))


def _sign(now: float = 1000.0, path: str = "/_mesh/x", body: bytes = b"body", secret: str = SECRET) -> dict[str, str]:
    kid, key = Keyring([secret]).primary(RPC)
    return signing.sign_request(key, kid, "node-a", "POST", path, signing.digest(body), now)


def test_signing_round_trips_and_names_each_failure() -> None:
    assert _verify(_sign()).sender == "node-a"
    cases = {
        "missing": {},
        "unknown_key": _sign(secret="t" * 32),
        "bad_signature": _sign(path="/_mesh/y"),
        "stale": _sign(now=900.0),
        "malformed": {**_sign(), signing.SIGNATURE_HEADER: "zz"},
    }
    for reason, headers in cases.items():
        with pytest.raises(signing.AuthError) as error:
            _verify(headers)
        assert error.value.reason == reason
    cache = ReplayCache(60)
    headers = _sign()
    _verify(headers, cache=cache)
    with pytest.raises(signing.AuthError, match="already received"):
        _verify(headers, cache=cache)


@settings(max_examples=200)
@given(st.sampled_from(signing.REQUEST_HEADERS), st.text(min_size=1, max_size=20), st.binary(max_size=64))
def test_changing_any_signed_part_breaks_the_signature(header: str, value: str, body: bytes) -> None:
    headers = _sign(body=body)
    if headers[header] == value:
        return
    tampered = {**headers, header: value}
    with pytest.raises(signing.AuthError):
        _verify(tampered, body=body)
    with pytest.raises(signing.AuthError):
        _verify(headers, body=body + b"x")


# --- keyring.py ---------------------------------------------------------------------------
def test_the_keyring_derives_distinct_keys_and_rotates(tmp_path: Path) -> None:
    ring = Keyring([SECRET])
    old = ring.primary_id
    assert len({ring.key(old, p) for p in (GOSSIP_MAC, GOSSIP_ENC, RPC)}) == 3
    assert SECRET.encode() not in {ring.key(old, p) for p in (GOSSIP_MAC, GOSSIP_ENC, RPC)}
    new = ring.install("n" * 32)
    assert ring.primary_id == old and set(ring.ids()) == {old, new}
    with pytest.raises(KeyringError):
        ring.remove(old)  # the primary
    ring.use(new)
    ring.remove(old)
    assert ring.key(old, RPC) is None and ring.ids() == [new]
    path = tmp_path / "keyring.json"
    ring.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Keyring.load(path, SECRET)  # restarted with the old --secret: installed, not primary
    assert again.primary_id == new and set(again.ids()) == {new, key_id(SECRET)}


# --- secret.py ----------------------------------------------------------------------------
def test_a_secret_is_created_0600_once_and_a_loose_file_is_refused(tmp_path: Path) -> None:
    made, created = secret_file.load_or_create(tmp_path)
    assert created and len(made) == 64
    assert stat.S_IMODE((tmp_path / "cluster.secret").stat().st_mode) == 0o600
    assert secret_file.load_or_create(tmp_path) == (made, False)
    (tmp_path / "cluster.secret").chmod(0o644)
    with pytest.raises(ConfigError, match="readable by other users"):
        secret_file.read_secret_file(tmp_path / "cluster.secret")
    assert secret_file.node_keyring(tmp_path, "", "", True, "x:1") is None  # dev mode: no keys
