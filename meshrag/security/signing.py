"""Signed node-to-node requests and responses (pure: the clock comes in as an argument).

A request carries five headers:

    X-Meshrag-Key        key id of the keyring key it was signed with
    X-Meshrag-Node       the sender's node id (or "cli:..." for `meshrag keys`)
    X-Meshrag-Time       milliseconds since the epoch, the sender's wall clock
    X-Meshrag-Nonce      128 random bits, hex
    X-Meshrag-Signature  hex HMAC-SHA256, with the key's rpc subkey, of

        "meshrag-req/v1\n" method \n path \n hex(sha256(body)) \n time \n nonce \n node \n key

The receiver checks, in this order, and names the first failure (REASONS):
missing headers, a malformed one, an unknown key id (another cluster secret),
the signature, then the time against its clock window (stale) and the nonce
against its replay cache (replayed). Signature first: nothing unauthenticated
ever enters the replay cache.

A response is signed over the request's nonce, so it cannot be replayed onto
another request, and its own body digest:

        "meshrag-res/v1\n" status \n request nonce \n hex(sha256(body)) \n key

A streamed response (/_mesh/generate) is signed when its headers go out, over
the marker STREAMED instead of a body digest: that proves who answered which
request, not the frames that follow (over plain HTTP those are as good as the
connection; TLS is what protects a stream's content).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Callable, Mapping

from meshrag.security.replay import ReplayCache

KEY_HEADER = "X-Meshrag-Key"
NODE_HEADER = "X-Meshrag-Node"
TIME_HEADER = "X-Meshrag-Time"
NONCE_HEADER = "X-Meshrag-Nonce"
SIGNATURE_HEADER = "X-Meshrag-Signature"
REQUEST_HEADERS = (KEY_HEADER, NODE_HEADER, TIME_HEADER, NONCE_HEADER, SIGNATURE_HEADER)

MISSING, MALFORMED, UNKNOWN_KEY, BAD_SIGNATURE, STALE, REPLAYED = (
    "missing", "malformed", "unknown_key", "bad_signature", "stale", "replayed")
REASONS = (MISSING, MALFORMED, UNKNOWN_KEY, BAD_SIGNATURE, STALE, REPLAYED)
STREAMED = "streamed"
MAX_NODE_CHARS = 128

KeyLookup = Callable[[str], "bytes | None"]


class AuthError(Exception):
    """A request or response that failed its check; ``reason`` is one of REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Verified:
    key_id: str
    sender: str
    nonce: str


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def new_nonce() -> str:
    return secrets.token_hex(16)


def _request_string(method: str, path: str, body_digest: str, time_ms: str, nonce: str, sender: str, kid: str) -> bytes:
    return "\n".join(("meshrag-req/v1", method.upper(), path, body_digest, time_ms, nonce, sender, kid)).encode()


def _response_string(status: int, request_nonce: str, body_digest: str, kid: str) -> bytes:
    return "\n".join(("meshrag-res/v1", str(status), request_nonce, body_digest, kid)).encode()


def _mac(key: bytes, message: bytes) -> str:
    return hmac.digest(key, message, "sha256").hex()


def sign_request(key: bytes, kid: str, sender: str, method: str, path: str, body_digest: str, now_s: float,
                 nonce: str | None = None) -> dict[str, str]:
    nonce = nonce or new_nonce()
    time_ms = str(int(now_s * 1000))
    signature = _mac(key, _request_string(method, path, body_digest, time_ms, nonce, sender, kid))
    return {KEY_HEADER: kid, NODE_HEADER: sender, TIME_HEADER: time_ms, NONCE_HEADER: nonce, SIGNATURE_HEADER: signature}


def verify_request(headers: Mapping[str, str], method: str, path: str, body_digest: str, keys: KeyLookup,
                   now_s: float, replay: ReplayCache) -> Verified:
    """The verified sender, or AuthError naming why not. ``replay`` holds the clock window."""
    values = [headers.get(name) for name in REQUEST_HEADERS]
    if not all(values):
        absent = [name for name, value in zip(REQUEST_HEADERS, values) if not value]
        raise AuthError(MISSING, f"unsigned request (no {', '.join(absent)})")
    kid, sender, time_ms, nonce, signature = (str(v) for v in values)
    if not time_ms.isdigit() or len(time_ms) > 16 or len(nonce) > 64 or len(sender) > MAX_NODE_CHARS or len(signature) != 64:
        raise AuthError(MALFORMED, "malformed signature headers")
    key = keys(kid)
    if key is None:
        raise AuthError(UNKNOWN_KEY, f"signed with key {kid}, which is not installed here (another cluster secret?)")
    expected = _mac(key, _request_string(method, path, body_digest, time_ms, nonce, sender, kid))
    if not hmac.compare_digest(expected, signature.lower()):
        raise AuthError(BAD_SIGNATURE, f"the signature of key {kid} does not match the request")
    sent_s = int(time_ms) / 1000
    outcome = replay.check(nonce, sent_s, now_s)
    if outcome == STALE:
        raise AuthError(STALE, f"signed {now_s - sent_s:+.1f} s from this node's clock; the window is "
                               f"±{replay.window_s:.0f} s (clocks out of sync, or a captured request)")
    if outcome == REPLAYED:
        raise AuthError(REPLAYED, "this request was already received (a replay)")
    return Verified(kid, sender, nonce)


def sign_response(key: bytes, kid: str, status: int, request_nonce: str, body_digest: str) -> dict[str, str]:
    return {KEY_HEADER: kid, SIGNATURE_HEADER: _mac(key, _response_string(status, request_nonce, body_digest, kid))}


def verify_response(headers: Mapping[str, str], status: int, request_nonce: str, body_digest: str, keys: KeyLookup) -> None:
    kid, signature = headers.get(KEY_HEADER), headers.get(SIGNATURE_HEADER)
    if not kid or not signature:
        raise AuthError(MISSING, "unsigned response")
    key = keys(kid)
    if key is None:
        raise AuthError(UNKNOWN_KEY, f"response signed with key {kid}, which is not installed here")
    if not hmac.compare_digest(_mac(key, _response_string(status, request_nonce, body_digest, kid)), signature.lower()):
        raise AuthError(BAD_SIGNATURE, "the response's signature does not match")
