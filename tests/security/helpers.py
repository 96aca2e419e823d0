"""Signed /_mesh/ traffic in tests: an RpcAuth for one secret, on the real clock."""

from __future__ import annotations

from meshrag.clock import SystemClock
from meshrag.security.keyring import Keyring
from meshrag.security.mesh_auth import RpcAuth


def rpc_auth(secret: str, sender: str = "test-node", window_s: float = 60.0) -> RpcAuth:
    return RpcAuth(Keyring([secret]), sender, SystemClock(), window_s)
