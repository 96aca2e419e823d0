"""The chaos suite's network mode: one Linux network namespace per node, veth pairs to a bridge.

Every node runs in its own namespace (``mrc<pid>n<k>``) with one interface,
``eth0``, whose peer (``mrc<pid>v<k>``) is a port of the bridge ``mrc<pid>br``
in the root namespace. The bridge holds the first address of a private /24
that clashes with no route on the host, so the runner (clients, checker) reaches
every node, and node k has the (k+1)-th address. The runner's pid is in every
name: a sweep at the start of each run removes what a runner that died with
kill -9 left behind (its pid is no longer alive), and ``chaos/run --cleanup``
runs the same sweep by hand.

Faults are nftables rules on the *receiving* side: each namespace has one table
(``inet meshrag_chaos``) with an input chain, rewritten atomically on every
change, that drops packets from the source addresses a partition cuts off and a
random share (``numgen random mod 100 < P``) of what other nodes send. Traffic
from the runner (the bridge address) and from the node itself is always
accepted: a partition or loss is between nodes, and the workload's clients
measure how the cluster copes with it.

Needs root. ``nft`` is installed with apt-get when missing.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Callable, Iterable, Sequence

PREFIX = "mrc"
TABLE = "meshrag_chaos"
MAX_NODES = 250  # addresses .2 .. .251 of the /24; the bridge has .1
COMMAND_TIMEOUT_S = 20.0
# 10.200.0.0/24 .. 10.255.255.0/24: private, and far from the 10.0.x / 10.1.x nets hosts tend to use.
_CANDIDATE_BASE = int(ipaddress.IPv4Address("10.200.0.0")) >> 8
_CANDIDATES = 56 * 256
_OWNED = re.compile(rf"^{PREFIX}(\d+)(?:n\d+|v\d+|br)$")


class NetworkUnavailable(RuntimeError):
    """Network mode cannot run here (not root, no namespaces, no nft)."""


# ------------------------------------------------------------ pure planning: names, addresses, rules
def netns_name(pid: int, k: int) -> str:
    return f"{PREFIX}{pid}n{k}"


def veth_name(pid: int, k: int) -> str:
    return f"{PREFIX}{pid}v{k}"


def bridge_name(pid: int) -> str:
    return f"{PREFIX}{pid}br"


def owner_pid(name: str) -> int | None:
    """The runner pid a namespace or link name of ours carries; None for names that are not ours."""
    match = _OWNED.match(name)
    return int(match.group(1)) if match else None


def pick_subnet(taken: Iterable[ipaddress.IPv4Network], pid: int) -> ipaddress.IPv4Network:
    """A /24 in 10.200.0.0-10.255.255.0 that overlaps no network in ``taken``. The search starts
    at a place derived from the pid, so two runners at once rarely try the same one."""
    used = list(taken)
    for step in range(_CANDIDATES):
        index = (pid + step) % _CANDIDATES
        subnet = ipaddress.IPv4Network(((_CANDIDATE_BASE + index) << 8, 24))
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise NetworkUnavailable("no free /24 under 10.200.0.0-10.255.255.0 for the chaos network")


def bridge_address(subnet: ipaddress.IPv4Network) -> str:
    return str(subnet.network_address + 1)


def node_address(subnet: ipaddress.IPv4Network, k: int) -> str:
    """Node k (1-based) has the (k+1)-th address of the subnet."""
    if not 1 <= k <= MAX_NODES:
        raise ValueError(f"node number {k} outside 1..{MAX_NODES}")
    return str(subnet.network_address + 1 + k)


def rules_script(always: Sequence[str], blocked: Iterable[str] = (), loss_percent: int = 0) -> str:
    """The nft script that replaces the namespace's table: accept ``always`` (the runner's
    bridge address, the node's own), drop everything from ``blocked``, and drop
    ``loss_percent`` % of the rest at random. The empty ``table`` line first makes the
    ``delete`` valid when the table does not exist yet, so the whole script is one transaction."""
    if not 0 <= loss_percent <= 100:
        raise ValueError(f"loss {loss_percent} % outside 0..100")
    lines = [f"table inet {TABLE} {{}}", f"delete table inet {TABLE}", f"table inet {TABLE} {{",
             "  chain input {", "    type filter hook input priority 0; policy accept;", '    iifname "lo" accept']
    lines += [f"    ip saddr {address} accept" for address in always]
    cut = sorted(set(blocked) - set(always), key=ipaddress.IPv4Address)
    if cut:
        lines.append(f"    ip saddr {{ {', '.join(cut)} }} drop")
    if loss_percent == 100:
        lines.append("    drop")  # numgen's comparison only takes 0..99
    elif loss_percent:
        lines.append(f"    numgen random mod 100 < {loss_percent} drop")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------ running commands
def _run(command: Sequence[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(command), input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def require_root() -> None:
    if os.geteuid() != 0:
        raise NetworkUnavailable("network mode needs root (namespaces, veth pairs, a bridge, nftables); "
                                 "run as root, or use a loopback scenario")
    if shutil.which("ip") is None:
        raise NetworkUnavailable("network mode needs the ip command (apt-get install iproute2)")


def ensure_nft() -> None:
    """Install nftables with apt-get when nft is missing (these hosts have no tc netem, nft is the tool)."""
    if shutil.which("nft") is not None:
        return
    print("chaos: nft not found; installing nftables with apt-get", file=sys.stderr, flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "nftables"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)  # an old or missing package list
        subprocess.run(install, env=env, capture_output=True)
    if shutil.which("nft") is None:
        raise NetworkUnavailable("nft is missing and apt-get could not install nftables")


def _routes() -> list[ipaddress.IPv4Network]:
    routes = []
    for line in _run(["ip", "-4", "route", "show", "table", "all"]).stdout.splitlines():
        destination = line.split()[0] if line.split() else ""
        if destination in ("default", "broadcast", "local", "unreachable"):
            destination = line.split()[1] if len(line.split()) > 1 else ""
        try:
            routes.append(ipaddress.IPv4Network(destination, strict=False))
        except ValueError:
            continue
    return [r for r in routes if r.prefixlen > 0]  # the default route overlaps everything and says nothing


# ------------------------------------------------------------ leftovers of dead runners
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _run(["ip", "netns", "list"]).stdout.splitlines() if line.strip()]


def _links() -> list[str]:
    names = []
    for line in _run(["ip", "-o", "link", "show"]).stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            names.append(parts[1].strip().split("@")[0])
    return names


def _remove_namespace(name: str) -> None:
    """Kill what still runs in it (the nodes of a runner that died: they run in no other
    namespace, so nothing else is touched), then delete it; its veth and nft table go with it."""
    pids = _run(["ip", "netns", "pids", name], check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _run(["ip", "netns", "delete", name], check=False)


def sweep(keep: Callable[[int], bool] = _alive) -> list[str]:
    """Remove every namespace and link of ours whose owning runner pid is not ``keep``-ed
    (by default: no longer alive). Returns the names removed. A dead runner's pid that the
    kernel has given to a new process keeps its leftovers until that process ends too."""
    removed = []
    for name in _namespaces():
        pid = owner_pid(name)
        if pid is not None and not keep(pid):
            _remove_namespace(name)
            removed.append(name)
    for name in _links():
        pid = owner_pid(name)
        if pid is not None and not keep(pid):
            _run(["ip", "link", "delete", name], check=False)  # a veth whose namespace is gone, a bridge
            removed.append(name)
    return removed


def leftovers(pid: int) -> list[str]:
    """Namespaces and links that carry ``pid`` (for tests and for checking a cleanup)."""
    return [name for name in _namespaces() + _links() if owner_pid(name) == pid]


# ------------------------------------------------------------ the network
@dataclass
class _Node:
    k: int
    namespace: str
    address: str
    blocked: set[str] = field(default_factory=set)
    loss_percent: int = 0


class Network:
    """The namespaces, veth pairs and bridge of one run, and the nft rules in them.

    Use as a context manager: everything it made is removed on exit, on an exception, and
    on SIGINT, SIGTERM or SIGHUP (the handler removes the network, then raises
    KeyboardInterrupt or SystemExit so the runner's own cleanup still runs)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid if pid is not None else os.getpid()
        self.bridge = bridge_name(self.pid)
        self.subnet: ipaddress.IPv4Network | None = None
        self._nodes: dict[str, _Node] = {}
        self._previous: dict[int, Any] = {}
        self._open = False

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Network":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> "Network":
        require_root()
        ensure_nft()
        removed = sweep()
        if removed:
            print(f"chaos: removed leftovers of dead runners: {' '.join(removed)}", file=sys.stderr, flush=True)
        self._install_handlers()
        self._open = True
        try:
            self._make_bridge()
        except Exception:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Remove every namespace and link this network made (idempotent; errors are ignored:
        a cleanup half done by a signal handler must not stop the rest)."""
        if self._open:
            self._open = False
            for node in self._nodes.values():
                _remove_namespace(node.namespace)
            for k in range(1, len(self._nodes) + 1):
                _run(["ip", "link", "delete", veth_name(self.pid, k)], check=False)
            _run(["ip", "link", "delete", self.bridge], check=False)
        self._restore_handlers()

    def _make_bridge(self) -> None:
        self.subnet = pick_subnet(_routes(), self.pid)
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{bridge_address(self.subnet)}/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])

    # ------------------------------------------------------------ signals
    def _install_handlers(self) -> None:
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        except ValueError:
            self._previous.clear()  # not the main thread: the with-block's exit still cleans up

    def _restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.close()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    # ------------------------------------------------------------ nodes
    def add(self, name: str) -> str:
        """A namespace for node ``name`` (made on first use), joined to the bridge; its address."""
        if name in self._nodes:
            return self._nodes[name].address
        assert self.subnet is not None, "open() the network first"
        k = len(self._nodes) + 1
        node = _Node(k, netns_name(self.pid, k), node_address(self.subnet, k))
        self._nodes[name] = node  # recorded first: close() removes it even if a step below fails
        veth = veth_name(self.pid, k)
        _run(["ip", "netns", "add", node.namespace])
        _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", node.namespace])
        _run(["ip", "link", "set", veth, "master", self.bridge, "up"])
        _run(["ip", "-n", node.namespace, "addr", "add", f"{node.address}/24", "dev", "eth0"])
        _run(["ip", "-n", node.namespace, "link", "set", "eth0", "up"])
        _run(["ip", "-n", node.namespace, "link", "set", "lo", "up"])  # a node talks to itself through its address
        self._apply(node)
        return node.address

    def address(self, name: str) -> str:
        return self._nodes[name].address

    def addresses(self) -> dict[str, str]:
        return {name: node.address for name, node in self._nodes.items()}

    def namespace(self, name: str) -> str:
        return self._nodes[name].namespace

    def prefix(self, name: str) -> tuple[str, ...]:
        """The command prefix that runs a program inside node ``name``'s namespace."""
        return ("ip", "netns", "exec", self._nodes[name].namespace)

    @property
    def runner_address(self) -> str:
        assert self.subnet is not None
        return bridge_address(self.subnet)

    # ------------------------------------------------------------ faults (receiving side)
    def block(self, name: str, sources: Iterable[str]) -> None:
        """Node ``name`` drops every packet from these node names (their addresses)."""
        node = self._nodes[name]
        node.blocked |= {self._nodes[source].address for source in sources}
        self._apply(node)

    def lose(self, name: str, percent: int) -> None:
        """Node ``name`` drops ``percent`` % of the packets other nodes send it, at random."""
        node = self._nodes[name]
        node.loss_percent = percent
        self._apply(node)

    def heal(self, name: str) -> None:
        node = self._nodes[name]
        node.blocked.clear()
        node.loss_percent = 0
        self._apply(node)

    def rules(self, name: str) -> str:
        """The ruleset in force in node ``name``'s namespace, as nft lists it."""
        return _run([*self.prefix(name), "nft", "list", "table", "inet", TABLE]).stdout

    def _apply(self, node: _Node) -> None:
        script = rules_script([self.runner_address, node.address], node.blocked, node.loss_percent)
        _run(["ip", "netns", "exec", node.namespace, "nft", "-f", "-"], stdin=script)
