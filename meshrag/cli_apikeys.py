"""`meshrag apikeys create|list|revoke`: the cluster's API keys, through any node (admin scope)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from meshrag.security.api_keys import SCOPES


def add_parser(sub: Any, default_node: str) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--node", default=default_node, help=f"node URL (default {default_node})")
    common.add_argument("--api-key", help="an admin API key (default $MESHRAG_API_KEY)")
    common.add_argument("--json", action="store_true")
    keys = sub.add_parser("apikeys", help="create, list or revoke the cluster's API keys (needs an admin key)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", parents=[common], help="a new key; its token is printed once, store it now")
    create.add_argument("name", help="who or what the key is for")
    create.add_argument("--scopes", default="read", help=f"comma-separated, some of {','.join(SCOPES)} (default read)")
    actions.add_parser("list", parents=[common], help="every key: id, name, scopes, revoked (never the secrets)")
    revoke = actions.add_parser("revoke", parents=[common], help="revoke a key on every node")
    revoke.add_argument("key_id")


def run(args: argparse.Namespace, client: Any) -> int:
    if args.action == "create":
        made = client.create_api_key(args.name, [s.strip() for s in args.scopes.split(",") if s.strip()])
        if not args.json:
            print(f"created API key {made['id']} ({made['name']}), scopes {','.join(made['scopes'])}")
            print(f"token (shown only now): {made['token']}")
            print("use it as: export MESHRAG_API_KEY=<token>  or  meshrag --api-key <token> ...")
            return 0
        print(json.dumps(made))
        return 0
    if args.action == "revoke":
        revoked = client.revoke_api_key(args.key_id)
        print(json.dumps(revoked) if args.json else f"revoked {revoked['id']} ({revoked['name']}) on every node")
        return 0
    listed = client.api_keys()["keys"]
    if args.json:
        print(json.dumps(listed))
        return 0
    print(f"{'id':<14} {'name':<24} {'scopes':<18} state")
    for key in listed:
        print(f"{key['id']:<14} {key['name'][:24]:<24} {','.join(key['scopes']):<18} {'revoked' if key['revoked'] else 'live'}")
    return 0
