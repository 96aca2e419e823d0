"""`meshrag keys install|use|remove|list`, applied cluster-wide (memberlist's keyring operations).

The CLI signs a request to /_mesh/keys of one node with a secret that node has
installed (--secret-file); that node applies the operation to its own keyring
and fans it out, signed, to every alive member, then answers one result per
node. Rotation without downtime:

    meshrag keys install NEW.secret --generate   every node accepts the new key
    meshrag keys use KEYID                        every node sends with it
    meshrag keys remove OLDID                     the old key is refused

`use` first asks every alive member for its keyring and refuses (naming them)
if one lacks the key: a node would otherwise refuse its peers' signatures.
`remove` likewise refuses a key that is some member's primary. A new secret
never travels in clear: it rides AES-GCM-wrapped under the sender's primary
(the key-wrap subkey), inside a signed request. Each change is persisted
(data_dir/keyring.json) before it is answered.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshrag import wire
from meshrag.errors import MeshragError, ValidationError
from meshrag.security.keyring import KEY_WRAP, Keyring, KeyringError

KEYS_PATH = "/_mesh/keys"
OPS = ("list", "install", "use", "remove")
_WRAP_AAD = b"meshrag/keys-install/v1"


class KeyConflict(MeshragError):
    status = 409
    code = "key_conflict"


def wrap_secret(keyring: Keyring, secret: str) -> dict[str, str]:
    kid, key = keyring.primary(KEY_WRAP)
    nonce = os.urandom(12)
    return {"wrapped_with": kid, "nonce": nonce.hex(), "secret": AESGCM(key).encrypt(nonce, secret.encode(), _WRAP_AAD).hex()}


def unwrap_secret(keyring: Keyring, body: Mapping[str, Any]) -> str:
    key = keyring.key(str(body.get("wrapped_with")), KEY_WRAP)
    if key is None:
        raise ValidationError("the new secret is wrapped with a key not installed here", field="wrapped_with")
    try:
        return AESGCM(key).decrypt(bytes.fromhex(body["nonce"]), bytes.fromhex(body["secret"]), _WRAP_AAD).decode()
    except (InvalidTag, ValueError, KeyError, TypeError):
        raise ValidationError("the wrapped secret does not open", field="secret") from None


Call = Callable[[str, str, dict[str, Any]], Awaitable[Any]]


class KeyRotation:
    """The /_mesh/keys route of one node. ``members()`` gives (name, address) of the alive
    others; ``call(address, path, body)`` is the node's signed peer client; ``save()`` persists
    the keyring off the loop."""

    def __init__(self, keyring: Keyring, name: str, members: Callable[[], list[tuple[str, str]]], call: Call,
                 save: Callable[[], Awaitable[None]]) -> None:
        self._keyring = keyring
        self._name = name
        self._members = members
        self._call = call
        self._save = save

    def routes(self) -> list[web.RouteDef]:
        return [web.post(KEYS_PATH, self.handle)]

    async def handle(self, request: web.Request) -> web.Response:
        body = wire.unpack(await request.read())
        if not isinstance(body, dict) or body.get("op") not in OPS:
            raise ValidationError(f"op must be one of {', '.join(OPS)}", field="op")
        if body.get("fan_out", True):
            reply = await self._fan_out(body)
        else:
            reply = {"results": [await self._apply(body)]}
        return web.Response(body=wire.pack(reply), content_type=wire.MSGPACK)

    async def _apply(self, body: Mapping[str, Any]) -> dict[str, Any]:
        op, ring = body["op"], self._keyring
        try:
            if op == "install":
                ring.install(unwrap_secret(ring, body))
            elif op == "use":
                ring.use(str(body.get("key_id")))
            elif op == "remove":
                ring.remove(str(body.get("key_id")))
        except KeyringError as exc:
            return {"node": self._name, "ok": False, "error": str(exc), "keyring": ring.describe()}
        if op != "list":
            await self._save()
        return {"node": self._name, "ok": True, "keyring": ring.describe()}

    async def _everyone(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """``body`` applied to every alive other member (not fanned out further)."""
        async def one(name: str, address: str) -> dict[str, Any]:
            try:
                return (await self._call(address, KEYS_PATH, {**body, "fan_out": False}))["results"][0]
            except Exception as exc:  # PeerError and a malformed answer alike: reported per node
                return {"node": name, "ok": False, "error": str(exc)}
        return list(await asyncio.gather(*(one(name, address) for name, address in self._members())))

    async def _fan_out(self, body: dict[str, Any]) -> dict[str, Any]:
        op, kid = body["op"], str(body.get("key_id"))
        if op in ("use", "remove"):
            views = [await self._apply({"op": "list"}), *await self._everyone({"op": "list"})]
            if op == "use":
                lacking = [v["node"] for v in views if not v.get("ok") or kid not in v["keyring"]["keys"]]
                if lacking:
                    raise KeyConflict(f"key {kid} is not installed on {', '.join(lacking)}: `keys install` it there first",
                                      field="key_id")
            else:
                using = [v["node"] for v in views if not v.get("ok") or v["keyring"]["primary"] == kid]
                if using:
                    raise KeyConflict(f"key {kid} is the primary of (or unknown state on) {', '.join(using)}: "
                                      "`keys use` another key first", field="key_id")
        if op == "install":
            body = {"op": "install", **wrap_secret(self._keyring, unwrap_secret(self._keyring, body))}
        local = await self._apply(body)
        return {"results": [local, *await self._everyone(body)]}


def keyring_saver(keyring: Keyring, path: Path, run: Callable[[Callable[[], None]], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    async def save() -> None:
        await run(lambda: keyring.save(path))
    return save
