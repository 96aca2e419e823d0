"""`meshrag snapshot` (through a node's admin API) and `meshrag restore` (offline, on the host).

    meshrag snapshot --node URL [--out NAME]       the node copies its data to <data_dir>/snapshots/NAME/
    meshrag restore SNAPSHOT_DIR --data-dir DIR [--force]

Both show progress on stderr while they run; backup/ has the design.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from meshrag.backup.manifest import SnapshotInvalid
from meshrag.errors import MeshragError

COMMANDS = ("snapshot", "restore")
POLL_S = 0.5


def add_parser(sub: Any, default_node: str) -> None:
    snapshot = sub.add_parser("snapshot", help="copy a node's data, consistently, while it serves (admin key)")
    snapshot.add_argument("--node", default=default_node, help=f"node URL (default {default_node})")
    snapshot.add_argument("--out", metavar="NAME",
                          help="snapshot name; it is written on the node's host under <data_dir>/snapshots/NAME (default: the time, UTC)")
    snapshot.add_argument("--api-key", help="an admin API key (default $MESHRAG_API_KEY)")
    snapshot.add_argument("--timeout", type=float, default=3600.0, help="seconds to follow the snapshot")
    snapshot.add_argument("--json", action="store_true", help="print the finished job as JSON")
    restore = sub.add_parser("restore", help="restore a snapshot into a stopped node's data directory (offline)")
    restore.add_argument("snapshot_dir", type=Path, help="a snapshot directory (with manifest.json)")
    restore.add_argument("--data-dir", type=Path, required=True, help="the data directory of the node to restore (stopped)")
    restore.add_argument("--force", action="store_true",
                         help="replace a directory of another node or cluster settings, or one that holds data")
    restore.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    return cmd_snapshot(args) if args.command == "snapshot" else cmd_restore(args)


def cmd_snapshot(args: argparse.Namespace) -> int:
    from meshrag.client import MeshClient, MeshClientError

    client = MeshClient(args.node, timeout=30.0, api_key=args.api_key)
    try:
        job = client.create_snapshot(args.out)
        deadline = time.monotonic() + args.timeout
        while job["state"] == "running" and time.monotonic() < deadline:
            _progress_line(f"snapshot {job['name']}: {job['phase']}, partitions {job['partitions_done']}/{job['partitions_total']}, "
                           f"{_mb(job['bytes'])}", args.json)
            time.sleep(POLL_S)
            job = client.snapshot_status(job["name"])
    except MeshClientError as exc:
        print(f"meshrag: {exc.message}" + (f" (field {exc.field})" if exc.field else ""), file=sys.stderr)
        return 1
    _end_progress(args.json)
    if args.json:
        print(json.dumps(job))
    if job["state"] == "done":
        if not args.json:
            print(f"snapshot {job['name']}: {job['documents']} documents in {job['partitions_total']} partitions, "
                  f"{_mb(job['bytes'])} in {job['seconds']:.1f} s, at {job['path']} on the node's host")
        return 0
    print(f"meshrag: snapshot {job['name']} {job['state']}" + (f": {job['error']}" if job.get("error") else ""), file=sys.stderr)
    return 1


def cmd_restore(args: argparse.Namespace) -> int:
    from meshrag.backup.restore import restore

    def progress(phase: str, files: int, files_total: int, done: int, total: int) -> None:
        _progress_line(f"restore: {phase} {files}/{files_total} files, {_mb(done)} of {_mb(total)}", args.json)

    try:
        result = restore(args.snapshot_dir, args.data_dir, force=args.force, progress=progress)
    except (MeshragError, SnapshotInvalid) as exc:
        _end_progress(args.json)
        print(f"meshrag: restore refused: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    _end_progress(args.json)
    if args.json:
        print(json.dumps(result.__dict__))
        return 0
    print(f"restored node {result.node_id} (generation {result.generation}): {result.documents} documents in "
          f"{result.partitions} partitions, {result.files} files, {_mb(result.bytes)} in {result.seconds:.1f} s, into {args.data_dir}")
    print("start the node as before (same --name, --join, --secret-file); it answers for each partition once repair "
          "has caught it up with its replicas (`meshrag verify`)")
    return 0


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _progress_line(text: str, quiet: bool) -> None:
    """One line rewritten in place on a terminal, one line per update otherwise (logs, tests)."""
    if quiet:
        return
    if sys.stderr.isatty():
        print("\r" + text.ljust(78), end="", file=sys.stderr, flush=True)
    else:
        print(text, file=sys.stderr, flush=True)


def _end_progress(quiet: bool) -> None:
    if not quiet and sys.stderr.isatty():
        print(file=sys.stderr)


__all__ = ["COMMANDS", "add_parser", "run"]
