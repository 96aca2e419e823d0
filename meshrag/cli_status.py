"""`meshrag status` and `meshrag verify`: the whole cluster from any one node, as tables.

Both ask one node, which gathers the rest over /_mesh/ (cluster/inspection.py):
GET /v1/cluster/status and GET /v1/cluster/verify. ``--json`` prints the
document as served. Colour marks health (green fine, yellow on its way or
uneven, red needs a person) on a terminal only: not when output is piped, not
with NO_COLOR set (https://no-color.org), not with ``--no-color``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any, Callable, Sequence, TextIO

from meshrag.cluster.verify import DIVERGED, EXIT_UNREACHABLE, IN_SYNC, REPAIRING, UNREACHABLE, exit_status

BALANCED = (0.8, 1.25)  # copies/target shown green (cluster/overview.py's, without importing the ring)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen: --watch redraws in place

VERIFY_HELP = """compare every partition's replicas by digest.
exit status: 0 every partition in sync; 1 replicas differ somewhere (diverged, or repairing: still moving);
2 usage error, the node cannot be reached, or some replica did not answer (and none differ)"""


class Paint:
    """ANSI colours, or none."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def _wrap(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.enabled else text

    def green(self, text: str) -> str:
        return self._wrap("32", text)

    def yellow(self, text: str) -> str:
        return self._wrap("33", text)

    def red(self, text: str) -> str:
        return self._wrap("31", text)

    def bold(self, text: str) -> str:
        return self._wrap("1", text)


def colour_wanted(no_color: bool, stream: TextIO, environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    return not no_color and not environ.get("NO_COLOR") and stream.isatty()


def add_parsers(sub: Any) -> None:
    status = sub.add_parser("status", help="show the whole cluster from this node: members, balance, replication, hints, transfers")
    status.add_argument("--json", action="store_true", help="print the /v1/cluster/status document")
    status.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                        help="refresh in place every SECONDS (default 2) until Ctrl-C")
    status.add_argument("--count", type=int, default=0, help="with --watch: stop after this many refreshes (0: until Ctrl-C)")
    status.add_argument("--no-color", action="store_true", help="no colour (also off when piped or with NO_COLOR set)")
    verify = sub.add_parser("verify", help="compare every partition's replicas by digest (exit 0 in sync, 1 differ, 2 unreachable)",
                            description=VERIFY_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    verify.add_argument("--json", action="store_true", help="print the /v1/cluster/verify document")
    verify.add_argument("--no-color", action="store_true", help="no colour (also off when piped or with NO_COLOR set)")


# ------------------------------------------------------------------ tables
def visible_len(text: str) -> int:
    return len(_ANSI.sub("", text))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Columns padded by what shows on screen (colour codes take no width)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(visible_len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell + " " * (width - visible_len(cell)) for cell, width in zip(row, widths)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _mb(size: float) -> str:
    return f"{size / 1e6:.1f} MB"


# ------------------------------------------------------------------ status
def _state(paint: Paint, state: str) -> str:
    return {"alive": paint.green, "suspect": paint.yellow}.get(state, paint.red)(state)


def _members(doc: dict[str, Any], paint: Paint) -> str:
    reached = {p["id"]: p for p in doc.get("peers") or []}
    rows = []
    for m in doc.get("members") or []:
        peer = reached.get(m["id"])
        answer = "-" if peer is None else (paint.green("yes") if peer["reachable"] else paint.red("NO"))
        rows.append((m["name"], m["id"][:12], m.get("zone") or "-", ",".join(m.get("roles") or []), _state(paint, m["state"]),
                     m["address"], answer))
    return table(rows, ("NAME", "ID", "ZONE", "ROLES", "STATE", "ADDRESS", "ANSWERED"))


def _ratio(paint: Paint, node: dict[str, Any]) -> str:
    value = node.get("ratio")
    if value is None:
        return paint.yellow("-") if node["copies"] else "-"
    text = f"{value:.2f}"
    return paint.green(text) if BALANCED[0] <= value <= BALANCED[1] else paint.yellow(text)


def _balance(doc: dict[str, Any], paint: Paint) -> str:
    balance = doc.get("balance") or {}
    ring_nodes = {n["id"]: n for n in (doc.get("ring") or {}).get("nodes") or []}
    rows = []
    for n in balance.get("nodes") or []:
        alive = ring_nodes.get(n["id"], {}).get("alive")
        status = n["status"] if n["status"] == "normal" else paint.yellow(n["status"])
        rows.append((n["node"], n["id"][:12], n["zone"], status, paint.green("yes") if alive else paint.red("NO"),
                     n["copies"], f"{n['target']:g}", _ratio(paint, n), n["planned"]))
    ring = doc.get("ring") or {}
    title = (f"Ring: {ring.get('partitions')} partitions x {ring.get('replicas')} replicas; "
             f"even share {balance.get('even_share', 0):g} copies per node; {balance.get('copies', 0)} of "
             f"{balance.get('wanted_copies', 0)} copies placed")
    return title + "\n" + table(rows, ("RING NODE", "ID", "ZONE", "STATUS", "ALIVE", "COPIES", "TARGET", "RATIO", "PLANNED"))


def _replication(doc: dict[str, Any], paint: Paint) -> str:
    rep = doc.get("replication") or {}
    under = rep.get("under_replicated") or []
    if not under:
        return paint.green(f"Replication: all {rep.get('partitions', 0)} partitions have {rep.get('wanted', 0)} live in-sync replicas")
    listed = ", ".join(f"{u['partition']} ({u['in_sync']}/{rep['wanted']}{', moving' if u['moving'] else ''})" for u in under[:12])
    more = f" and {len(under) - 12} more" if len(under) > 12 else ""
    line = f"Replication: {len(under)} of {rep.get('partitions', 0)} partitions under-replicated: {listed}{more}"
    return paint.red(line) if any(u["in_sync"] <= 1 for u in under) else paint.yellow(line)


def _hints(doc: dict[str, Any], paint: Paint) -> str:
    hints = doc.get("hints") or {}
    if not hints:
        return "Pending hints: none"
    parts = [f"{target} {h['documents']} docs in {h['hints']} hints (held by {', '.join(f'{s} {n}' for s, n in h['from'].items())})"
             for target, h in hints.items()]
    return paint.yellow("Pending hints: " + "; ".join(parts))


def _transfers(doc: dict[str, Any], paint: Paint) -> str:
    rows = []
    for t in doc.get("transfers") or []:
        if not t["reachable"]:
            rows.append((t["node"], paint.red("no answer"), "-", "-", "-", "-", "-", t.get("error", "")))
            continue
        state = paint.yellow(f"running ({t['reason']})") if t["running"] else "idle"
        progress = f"{t['partitions_done']}/{t['partitions_total']}"
        rate = f"{t['rate_per_s']:g}/s" if t.get("rate_per_s") else "-"
        error = paint.red(t["last_error"]) if t.get("last_error") else ""
        rows.append((t["node"], state, progress, rate, duration(t.get("eta_s")), f"{t['docs_in']}/{t['docs_out']}",
                     _mb(t["bytes_in"] + t["bytes_out"]), error))
    return table(rows, ("REPAIR", "STATE", "PARTITIONS", "RATE", "ETA", "DOCS IN/OUT", "MOVED", "LAST ERROR"))


def _generators(doc: dict[str, Any], paint: Paint) -> str:
    generators = (doc.get("generation") or {}).get("generators") or []
    if not generators:
        return "Generators: none"
    rows = []
    for g in generators:
        breaker = {"closed": paint.green, "half_open": paint.yellow}.get(g["breaker"], paint.red)(g["breaker"])
        load = f"{g['load']}/{g['capacity']}"
        rows.append((g["node"], g["backend"], g["model"], paint.yellow(load) if g["load"] >= g["capacity"] else load, breaker))
    return table(rows, ("GENERATOR", "BACKEND", "MODEL", "LOAD", "BREAKER"))


def render_cluster_status(doc: dict[str, Any], paint: Paint) -> str:
    node = doc["node"]
    unreachable = [p for p in doc.get("peers") or [] if not p["reachable"]]
    other_ring = [p["node"] for p in doc.get("peers") or [] if p.get("same_ring") is False]
    head = [paint.bold(f"Cluster as seen from {node['name']} ({(node.get('id') or '')[:12]}) at {node['address']}"
                       f", zone {node['zone']}, ready: {'yes' if node['ready'] else 'no'}")]
    if unreachable:
        head.append(paint.red("Unreachable: " + ", ".join(f"{p['node']} ({p['error']})" for p in unreachable)))
    if other_ring:
        head.append(paint.yellow("Ring table differs on: " + ", ".join(other_ring) + " (a change is spreading)"))
    sections = ["\n".join(head), _members(doc, paint), _balance(doc, paint),
                "\n".join((_replication(doc, paint), _hints(doc, paint))), _transfers(doc, paint), _generators(doc, paint)]
    return "\n\n".join(sections)


def cmd_status(args: argparse.Namespace, client: Any) -> int:
    paint = Paint(colour_wanted(args.no_color, sys.stdout))
    if args.watch is None:
        print(_status_text(args, client, paint))
        return 0
    return watch(lambda: _status_text(args, client, paint), max(0.2, args.watch), args.count, redraw=sys.stdout.isatty() and not args.json)


def _status_text(args: argparse.Namespace, client: Any, paint: Paint) -> str:
    from meshrag.client import MeshClientError

    try:
        doc = client.cluster_status()
    except MeshClientError as exc:
        if exc.status != 404:
            raise
        from meshrag.cli import render_status  # a node from before /v1/cluster/status: its own view only

        view = client.cluster()
        return json.dumps(view, indent=None if args.watch is not None else 2) if args.json else render_status(view)
    if args.json:
        return json.dumps(doc, indent=None if args.watch is not None else 2)  # one line per refresh when watching
    return render_cluster_status(doc, paint)


def watch(frame: Callable[[], str], every_s: float, count: int, redraw: bool, sleep: Callable[[float], None] = time.sleep) -> int:
    """Print ``frame()`` every ``every_s`` seconds (in place on a terminal) until Ctrl-C or ``count`` frames."""
    shown = 0
    try:
        while count <= 0 or shown < count:
            text = frame()
            stamp = time.strftime("%H:%M:%S")
            print((_CLEAR if redraw else "") + (f"{text}\n\n(every {every_s:g} s, {stamp}; Ctrl-C to stop)" if redraw else text), flush=True)
            shown += 1
            if count <= 0 or shown < count:
                sleep(every_s)
    except KeyboardInterrupt:
        print()
    return 0


# ------------------------------------------------------------------ verify
def _verify_state(paint: Paint, state: str) -> str:
    return {IN_SYNC: paint.green, REPAIRING: paint.yellow, DIVERGED: paint.red}.get(state, paint.red)(state)


def _replica_cell(replica: dict[str, Any], paint: Paint) -> str:
    if replica["digest"] is None:
        return f"{replica['node']}:" + paint.red("unreachable")
    return f"{replica['node']}:{replica['digest'][:8]}/{replica['documents']}"


def render_verify(doc: dict[str, Any], paint: Paint) -> str:
    rows = [(p["partition"], _verify_state(paint, p["state"]), "  ".join(_replica_cell(r, paint) for r in p["replicas"]))
            for p in doc["partitions"]]
    s = doc["summary"]
    line = (f"{s['partitions']} partitions: {s['in_sync']} in sync, {s['repairing']} repairing, {s['diverged']} diverged, "
            f"{s['unreachable']} unreachable" + (f" (checked by {doc['checked_by']})" if doc.get("checked_by") else ""))
    if s.get("unreachable_nodes"):
        line += "; no answer from " + ", ".join(s["unreachable_nodes"])
    colour = paint.red if s["diverged"] or s["unreachable"] else (paint.yellow if s["repairing"] else paint.green)
    return table(rows, ("PARTITION", "STATE", "REPLICAS (node:digest/documents)")) + "\n\n" + colour(line)


def cmd_verify(args: argparse.Namespace, client: Any) -> int:
    from meshrag.client import MeshClientError

    try:
        doc = client.verify()
    except MeshClientError as exc:
        print(f"meshrag: {exc.message}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(json.dumps(doc, indent=2) if args.json else render_verify(doc, Paint(colour_wanted(args.no_color, sys.stdout))))
    summary = doc["summary"]
    return exit_status({state: summary[key] for state, key in
                        ((IN_SYNC, "in_sync"), (REPAIRING, "repairing"), (DIVERGED, "diverged"), (UNREACHABLE, "unreachable"))})
