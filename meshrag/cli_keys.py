"""`meshrag keys list|install|use|remove`: the cluster's keyring, rotated without downtime.

The command signs its request to /_mesh/keys with a secret the node has
installed (--secret-file, default ./meshrag-data/cluster.secret); the node
applies the change and fans it out to every alive member (security/rotation.py).

    meshrag keys install new.secret --generate   # create new.secret (0600) and install it everywhere
    meshrag keys use KEYID                        # every node signs and seals with it
    meshrag keys remove OLDID                     # then the old secret is refused
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from meshrag.errors import ConfigError

DEFAULT_SECRET_FILE = "./meshrag-data/cluster.secret"


def add_parser(sub: Any, default_node: str) -> None:
    keys = sub.add_parser("keys", help="the cluster keyring: list, install, use, remove (cluster-wide)")
    keys.add_argument("op", choices=("list", "install", "use", "remove"))
    keys.add_argument("target", nargs="?", help="install: a secret file; use/remove: a key id")
    keys.add_argument("--generate", action="store_true", help="install: create the secret file first (mode 0600)")
    keys.add_argument("--secret-file", default=DEFAULT_SECRET_FILE,
                      help=f"a secret the node has installed, to sign with (default {DEFAULT_SECRET_FILE})")
    keys.add_argument("--node", default=default_node, help=f"node URL (default {default_node})")


def run(args: argparse.Namespace, _client: Any = None) -> int:
    from meshrag.security import secret as secrets_file
    from meshrag.security.keyring import Keyring, key_id

    try:
        signer = secrets_file.read_secret_file(Path(args.secret_file), field="--secret-file")
        body: dict[str, Any] = {"op": args.op}
        if args.op in ("install", "use", "remove") and not args.target:
            raise ConfigError(f"keys {args.op} needs a {'secret file' if args.op == 'install' else 'key id'}", field="target")
        if args.op == "install":
            path = Path(args.target)
            if args.generate:
                secrets_file.write_secret_file(path, secrets_file.new_secret())
            new = secrets_file.read_secret_file(path, field="target")
            from meshrag.security.rotation import wrap_secret
            body.update(wrap_secret(Keyring([signer]), new))
            print(f"installing key {key_id(new)} from {path}")
        elif args.op in ("use", "remove"):
            body["key_id"] = args.target
    except (ConfigError, OSError) as exc:
        print(f"meshrag keys: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    return asyncio.run(_send(args.node, signer, body))


async def _send(node_url: str, signer: str, body: dict[str, Any]) -> int:
    import aiohttp

    from meshrag.clock import SystemClock
    from meshrag.cluster.rpc import PeerClient, PeerError
    from meshrag.security.keyring import Keyring
    from meshrag.security.mesh_auth import RpcAuth
    from meshrag.security.rotation import KEYS_PATH
    from meshrag.security.tls import client_context

    url = urlsplit(node_url)
    address, scheme = url.netloc or node_url, url.scheme or "http"
    auth = RpcAuth(Keyring([signer]), "cli:meshrag-keys", SystemClock(), 60.0)
    # An https:// node: trust the cluster CA ($MESHRAG_CA_FILE), as node-to-node calls do.
    ca_file = os.environ.get("MESHRAG_CA_FILE")
    connector = aiohttp.TCPConnector(ssl=client_context(Path(ca_file))) if scheme == "https" and ca_file else None
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            reply = await PeerClient(session, auth, 30.0, scheme=scheme).call(address, KEYS_PATH, body)
        except PeerError as exc:
            hint = " (is --secret-file a secret this cluster has installed?)" if exc.auth_reason else ""
            print(f"meshrag keys: {exc}{hint}", file=sys.stderr)
            return 1
    failed = 0
    for result in reply["results"]:
        ring = result.get("keyring") or {}
        state = "ok" if result.get("ok") else f"FAILED: {result.get('error')}"
        print(f"{result.get('node', '?'):<20} {state:<10} primary={ring.get('primary', '?')} keys={','.join(ring.get('keys', []))}")
        failed += not result.get("ok")
    return 1 if failed else 0
