"""`meshrag` command line: start a node, or talk to one over HTTP.

    meshrag start [--config FILE] [--name NAME] [--bind HOST:PORT] ...
    meshrag status [--watch [S]] | verify | search QUERY | ask QUESTION   [--node URL]
    meshrag ingest PATH... [--node URL]... [--no-discover] [--concurrency N] [--max-wait S]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from meshrag import cli_apikeys, cli_keys, cli_status, cli_snapshot
from meshrag.errors import ConfigError

if TYPE_CHECKING:
    from meshrag.ingest_client import ParallelIngest

DEFAULT_NODE = os.environ.get("MESHRAG_NODE", "http://127.0.0.1:7070")

# Flag name -> config key. These names are a contract (ARCHITECTURE.md).
START_FLAGS = {
    "name": "node.name",
    "bind": "node.bind",
    "advertise": "node.advertise",
    "join": "node.join",
    "data_dir": "node.data_dir",
    "roles": "node.roles",
    "zone": "node.zone",
    "secret": "node.secret",
    "secret_file": "node.secret_file",
    "tls_cert": "node.tls_cert",
    "tls_key": "node.tls_key",
    "tls_ca": "node.tls_ca",
    "partitions": "cluster.partitions",
    "replicas": "cluster.replicas",
}


def _add_start(sub: Any) -> None:
    start = sub.add_parser("start", help="run a node in the foreground")
    start.add_argument("--config", help="TOML config file (default conf/meshrag.toml when present)")
    start.add_argument("--name", help="node name (default: host name)")
    start.add_argument("--bind", help="HOST:PORT to listen on (default 127.0.0.1:7070)")
    start.add_argument("--advertise", help="HOST:PORT other nodes use to reach this one")
    start.add_argument("--join", help="seed nodes, HOST:PORT,...")
    start.add_argument("--data-dir", help="data directory (default ./meshrag-data)")
    start.add_argument("--roles", help="storage,coordinator,generator (default: all)")
    start.add_argument("--zone", help="failure zone")
    group = start.add_mutually_exclusive_group()
    group.add_argument("--secret", help="cluster secret (>= 16 characters)")
    group.add_argument("--secret-file", help="file holding the cluster secret (e.g. a copy of the first node's cluster.secret)")
    group.add_argument("--dev", action="store_true", default=None, help="development mode: no authentication, loopback only")
    start.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (with --tls-key and --tls-ca)")
    start.add_argument("--tls-key", help="PEM private key of --tls-cert")
    start.add_argument("--tls-ca", help="the cluster CA (PEM) that node-to-node HTTPS calls trust")
    start.add_argument("--partitions", type=int, help="partitions (fixed at cluster creation)")
    start.add_argument("--replicas", type=int, help="replicas per partition (fixed at cluster creation)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_client_commands(sub: Any) -> None:
    cli_status.add_parsers(sub)  # status, verify

    ingest = sub.add_parser("ingest", help="ingest files (txt, md, html, jsonl) or directories")
    ingest.add_argument("paths", nargs="+", type=Path)
    ingest.add_argument("--node", dest="nodes", action="append", metavar="URL",
                        help=f"node URL; repeat for several (default {DEFAULT_NODE})")
    ingest.add_argument("--no-discover", action="store_true",
                        help="send only to the --node URLs instead of every alive storage/coordinator node of their cluster")
    ingest.add_argument("--batch-size", type=_positive_int, default=32)
    ingest.add_argument("--concurrency", type=_positive_int, default=2,
                        help="batches in flight per node (keeps each embedder's batches full)")
    ingest.add_argument("--max-wait", type=float, default=600.0,
                        help="seconds a batch may wait in all for busy or unreachable nodes before the run gives up")
    ingest.add_argument("--consistency", choices=("one", "quorum", "all"))
    ingest.add_argument("--json", action="store_true")

    decommission = sub.add_parser("decommission", help="stream this node's data to its next owners, then leave the ring")
    decommission.add_argument("--no-wait", action="store_true", help="return at once instead of following the hand-off")
    decommission.add_argument("--timeout", type=float, default=3600.0, help="seconds to follow the hand-off")

    remove = sub.add_parser("remove", help="take a dead node out of the ring; survivors re-replicate its data")
    remove.add_argument("target", metavar="NODE", help="name or id of the dead node")

    search = sub.add_parser("search", help="search the index")
    search.add_argument("query")
    search.add_argument("--k", type=int, default=10)
    search.add_argument("--mode", choices=("dense", "bm25", "hybrid"), default="hybrid")
    search.add_argument("--filter", help='metadata filter as JSON, e.g. \'{"year": {"$gte": 2020}}\'')
    search.add_argument("--json", action="store_true")

    ask = sub.add_parser("ask", help="answer a question from the index, streaming")
    ask.add_argument("question")
    ask.add_argument("--k", type=int, default=None)
    ask.add_argument("--max-tokens", type=int, default=None)
    ask.add_argument("--json", action="store_true", help="wait for the whole answer and print JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshrag", description="Peer-to-peer retrieval-augmented generation")
    parser.add_argument("--version", action="version", version="meshrag " + __import__("meshrag").__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_start(sub)
    _add_client_commands(sub)
    cli_apikeys.add_parser(sub, DEFAULT_NODE)
    cli_keys.add_parser(sub, DEFAULT_NODE)
    cli_snapshot.add_parser(sub, DEFAULT_NODE)
    for name in ("status", "verify", "search", "ask", "decommission", "remove"):  # ingest: repeatable, above
        sub.choices[name].add_argument("--node", default=DEFAULT_NODE, help=f"node URL (default {DEFAULT_NODE})")
    for name in ("status", "verify", "ingest", "search", "ask", "decommission", "remove"):
        sub.choices[name].add_argument("--api-key", help="the API key to send (default $MESHRAG_API_KEY)")
    return parser


def cmd_start(args: argparse.Namespace) -> int:
    from meshrag.config import load_config
    from meshrag.node import run_node

    overrides: dict[str, Any] = {key: getattr(args, flag) for flag, key in START_FLAGS.items()}
    overrides["node.dev"] = args.dev
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"meshrag: configuration error: {exc.message}", file=sys.stderr)
        return 2
    return run_node(config)


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])


def _since(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    seconds = max(0, int(time.time() - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def render_ring(ring: dict[str, Any]) -> str:
    nodes = ring.get("nodes") or []
    if not nodes:
        return ""
    rows = [
        (n["name"], n["id"][:12], n["zone"], n["status"], "yes" if n["alive"] else "NO", n["partitions"], n["target_partitions"])
        for n in nodes
    ]
    hints = ring.get("pending_hints") or {}
    repair = ring.get("repair") or {}
    under = ring.get("under_replicated") or []
    lines = [
        "",
        "",
        _table(rows, ("RING NODE", "ID", "ZONE", "STATUS", "ALIVE", "PARTITIONS", "TARGET")),
        f"Under-replicated partitions: {len(under)}" + (f" ({', '.join(map(str, under[:16]))}{' ...' if len(under) > 16 else ''})" if under else ""),
        "Pending hints: " + (", ".join(f"{name} {h['documents']} docs ({h['hints']} hints)" for name, h in hints.items()) or "none"),
        f"Repair: {'running' if repair.get('running') else 'idle'}, partitions {repair.get('partitions_done', 0)}/{repair.get('partitions_total', 0)}"
        f", passes {repair.get('passes', 0)}, docs in/out {repair.get('docs_in', 0)}/{repair.get('docs_out', 0)}"
        f", {_mb(repair.get('bytes_in', 0) + repair.get('bytes_out', 0))} moved, dropped {repair.get('dropped', 0)}"
        + (f", last error: {repair['last_error']}" if repair.get("last_error") else ""),
    ]
    return "\n".join(lines)


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def render_status(view: dict[str, Any]) -> str:
    """One node's own /v1/cluster view (`meshrag status` against a node without /v1/cluster/status)."""
    node = view["node"]
    storage = view.get("storage") or {}
    ring = view.get("ring") or {}
    summary = [
        f"Node {node['name']} ({node['id']}) at {node['address']}, zone {node['zone']}, generation {node['generation']}",
        f"Ready: {'yes' if node['ready'] else 'no'}  " + "  ".join(f"{k}={'ok' if v else 'loading'}" for k, v in node["components"].items()),
        f"Ring: {ring.get('partitions')} partitions, {ring.get('replicas')} replicas; this node is {ring.get('status') or '-'} and has data in {ring.get('local_partitions', 0)} partitions"
        f"  |  documents {storage.get('documents', 0)}, chunks {storage.get('chunks', 0)}, tombstones {storage.get('tombstones', 0)}",
        "",
    ]
    rows = [
        (m["name"], m["id"][:12], m["address"], m["zone"], ",".join(m["roles"]), m["state"], m["incarnation"], _since(m.get("since")))
        for m in view["members"]
    ]
    members = _table(rows, ("NAME", "ID", "ADDRESS", "ZONE", "ROLES", "STATE", "INCARNATION", "SINCE"))
    return "\n".join(summary) + members + render_ring(ring)


def _batches(documents: Iterator[Any], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for doc in documents:
        batch.append({"id": doc.id, "text": doc.text, "metadata": doc.metadata})
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _ingest_nodes(args: argparse.Namespace) -> list[str]:
    """The --node URLs, or (unless --no-discover) the ingest nodes of their cluster."""
    from meshrag.client import MeshClient
    from meshrag.ingest_client import discover_nodes

    if args.no_discover:
        return list(dict.fromkeys(args.nodes))
    return discover_nodes(args.nodes, lambda url: MeshClient(url, timeout=10).cluster())


def _ingest_summary(counts: dict[str, int], skipped: int, elapsed: float, ingest: "ParallelIngest") -> dict[str, Any]:
    """The --json summary; the text line is built from it too."""
    documents = sum(counts.values())
    return {
        "documents": documents, "by_status": counts, "skipped": skipped, "seconds": round(elapsed, 2),
        "docs_per_s": round(documents / elapsed, 1) if elapsed > 0 else 0.0, "nodes": ingest.nodes_used, "retries": ingest.retries,
    }


def cmd_ingest(args: argparse.Namespace, client: Any) -> int:
    """Batches from the sources, spread over the nodes (ingest_client.py); counts and a summary here."""
    from tqdm import tqdm

    from meshrag.client import MeshClient
    from meshrag.ingest_client import IngestGaveUp, ParallelIngest
    from meshrag.sources import SourceError, count_documents, iter_documents

    urls = _ingest_nodes(args)
    clients = {url: MeshClient(url) for url in urls}
    ingest = ParallelIngest(urls, lambda url, batch: clients[url].upsert(batch, consistency=args.consistency),
                            concurrency=args.concurrency, max_wait_s=args.max_wait)
    counts: dict[str, int] = {}
    skipped: list[str] = []
    started = time.perf_counter()
    total = count_documents(args.paths)
    documents = iter_documents(args.paths, on_skip=lambda path, why: skipped.append(f"{path}: {why}"))
    with tqdm(total=total, unit="doc", desc="ingest", disable=args.json, file=sys.stderr) as bar:
        try:
            for _, response in ingest.run(_batches(documents, args.batch_size)):
                for result in response["results"]:
                    counts[result["status"]] = counts.get(result["status"], 0) + 1
                bar.update(len(response["results"]))
        except SourceError as exc:
            print(f"meshrag: {exc} (documents before it were ingested; fix it and re-run: re-runs are idempotent)", file=sys.stderr)
            return 1
        except IngestGaveUp as exc:
            print(f"meshrag: {exc}", file=sys.stderr)
            return 1
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    summary = _ingest_summary(counts, len(skipped), time.perf_counter() - started, ingest)
    if args.json:
        print(json.dumps(summary))
    else:
        parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        nodes = len(summary["nodes"])
        retried = f", {ingest.retries} batches re-sent" if ingest.retries else ""
        print(f"ingested {summary['documents']} documents in {summary['seconds']:.1f} s ({parts}; "
              f"{summary['docs_per_s']:g} docs/s over {nodes} node{'' if nodes == 1 else 's'}{retried})")
    return 0


def cmd_search(args: argparse.Namespace, client: Any) -> int:
    flt = json.loads(args.filter) if args.filter else None
    result = client.search(args.query, k=args.k, mode=args.mode, filter=flt)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    rows = [(i + 1, f"{h['score']:.4f}", h["doc_id"], textwrap.shorten(h["text"], 70)) for i, h in enumerate(result["hits"])]
    print(_table(rows, ("#", "SCORE", "DOCUMENT", "TEXT")))
    print(f"\ncoverage {result['coverage']:.0%}, {result['timings'].get('total_ms', 0):.1f} ms")
    return 0


def _print_sources(sources: list[dict[str, Any]]) -> None:
    print("\nSources:")
    for source in sources:
        print(f"  [{source['n']}] {source['doc_id']}  (score {source['score']:.3f})  {textwrap.shorten(source['text'], 80)}")


def cmd_ask(args: argparse.Namespace, client: Any) -> int:
    if args.json:
        print(json.dumps(client.ask(args.question, k=args.k, max_tokens=args.max_tokens), indent=2))
        return 0
    sources: list[dict[str, Any]] = []
    for event, data in client.ask_stream(args.question, k=args.k, max_tokens=args.max_tokens):
        if event == "sources":
            sources = data["sources"]
        elif event == "token":
            print(data["text"], end="", flush=True)
        elif event == "error":
            print(f"\nmeshrag: generation failed: {data['error']['message']}", file=sys.stderr)
            return 1
        elif event == "done":
            print()
            for failover in (data.get("generation") or {}).get("failover") or []:
                print(f"(the answer continued on another generator after {failover['after_tokens']} tokens: "
                      f"{failover['reason']})", file=sys.stderr)
    _print_sources(sources)
    return 0


def cmd_decommission(args: argparse.Namespace, client: Any) -> int:
    """Start the hand-off, then follow it until the node is out of the ring and holds nothing."""
    client.decommission()
    print("decommission started: this node streams its partitions to their next owners", flush=True)
    if args.no_wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        ring = client.cluster()["ring"]
        repair = ring.get("repair") or {}
        print(f"  status {ring.get('status')}, holds {ring.get('local_partitions')} partitions, "
              f"sent {repair.get('docs_out', 0)} documents ({_mb(repair.get('bytes_out', 0))})", flush=True)
        if ring.get("status") == "removed" and ring.get("local_partitions") == 0:
            print("decommissioned: every partition is with its new owners; this node can be stopped")
            return 0
        time.sleep(2.0)
    print("meshrag: decommission still running (check `meshrag status`)", file=sys.stderr)
    return 1


def cmd_remove(args: argparse.Namespace, client: Any) -> int:
    ring = client.remove(args.target)["ring"]
    print(f"removed {args.target} from the ring; {len(ring.get('under_replicated') or [])} partitions are being re-replicated")
    return 0


COMMANDS = {"status": cli_status.cmd_status, "verify": cli_status.cmd_verify, "decommission": cmd_decommission, "remove": cmd_remove, "ingest": cmd_ingest, "search": cmd_search,
            "ask": cmd_ask, "apikeys": cli_apikeys.run}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "start":
        return cmd_start(args)
    if args.command in cli_snapshot.COMMANDS:  # its own client and messages; restore is offline
        return cli_snapshot.run(args)
    if args.command == "keys":  # signs with the cluster secret itself; no API client
        return cli_keys.run(args)
    from meshrag.client import MeshClient, MeshClientError

    if args.command == "ingest":
        args.nodes = args.nodes or [DEFAULT_NODE]
    if args.api_key:
        os.environ["MESHRAG_API_KEY"] = args.api_key  # every client this command makes sends it
    client = MeshClient(args.nodes[0] if args.command == "ingest" else args.node)
    try:
        return COMMANDS[args.command](args, client)
    except MeshClientError as exc:
        where = f" (field {exc.field})" if exc.field else ""
        print(f"meshrag: {exc.message}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
