"""The chaos suite's network mode: planning and rule text (pure), and, as root, real namespaces:
made and removed, a partition that stops real packets and a heal that lets them through, the
sweep after a runner died with kill -9, and the cleanup on SIGINT and SIGTERM."""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from chaos.netns import (MAX_NODES, Network, bridge_address, bridge_name, leftovers, netns_name, node_address,
                         owner_pid, pick_subnet, rules_script, sweep, veth_name)
from chaos.network_faults import SHAPES, plan_cut
from chaos.scenarios import SCENARIOS, RunSettings, run_scenario

REPO = Path(__file__).resolve().parents[2]
MAX_PID = 4194304  # Linux's pid_max ceiling: the longest pid a name can carry


# ------------------------------------------------------------ pure: names, addresses, rules, cuts
def test_names_fit_linux_interface_names_and_carry_the_runner_pid() -> None:
    names = [netns_name(MAX_PID, MAX_NODES), veth_name(MAX_PID, MAX_NODES), bridge_name(MAX_PID)]
    assert all(len(name) <= 15 for name in names)
    assert [owner_pid(name) for name in names] == [MAX_PID] * 3
    assert owner_pid("eth0") is None and owner_pid("mrc12x3") is None and owner_pid("mrc12n") is None


def test_the_subnet_avoids_every_route_and_depends_on_the_pid() -> None:
    first = pick_subnet([], 7)
    assert first.prefixlen == 24 and first.subnet_of(ipaddress.IPv4Network("10.192.0.0/10"))
    taken = [first, ipaddress.IPv4Network("10.200.8.0/22")]
    chosen = pick_subnet(taken, 7)
    assert not any(chosen.overlaps(net) for net in taken)
    assert pick_subnet([], 8) != first
    with pytest.raises(RuntimeError, match="no free /24"):
        pick_subnet([ipaddress.IPv4Network("10.192.0.0/10")], 7)


def test_the_bridge_has_the_first_address_and_node_k_the_next_ones() -> None:
    subnet = ipaddress.IPv4Network("10.201.3.0/24")
    assert bridge_address(subnet) == "10.201.3.1"
    assert [node_address(subnet, k) for k in (1, 2, MAX_NODES)] == ["10.201.3.2", "10.201.3.3", "10.201.3.251"]
    with pytest.raises(ValueError):
        node_address(subnet, 0)


def test_rules_accept_the_runner_and_drop_the_cut_sources_and_a_random_share() -> None:
    script = rules_script(["10.201.3.1", "10.201.3.2"], ["10.201.3.4", "10.201.3.3", "10.201.3.1"], 25)
    lines = [line.strip() for line in script.splitlines()]
    assert lines[:2] == ["table inet meshrag_chaos {}", "delete table inet meshrag_chaos"]  # one transaction
    accepts = lines.index("ip saddr 10.201.3.1 accept")
    assert lines.index("ip saddr { 10.201.3.3, 10.201.3.4 } drop") > accepts  # the runner is never cut
    assert lines[-3] == "numgen random mod 100 < 25 drop"
    assert rules_script([], loss_percent=100).splitlines()[-3].strip() == "drop"
    healed = rules_script(["10.201.3.1"])
    assert "drop" not in healed and "policy accept" in healed
    with pytest.raises(ValueError):
        rules_script([], loss_percent=101)


def test_isolate_cuts_one_node_both_ways() -> None:
    cut = plan_cut("isolate", ["n1", "n2", "n3"], random.Random(1))
    victim = next(name for name, senders in cut.drops.items() if len(senders) == 2)
    assert all(cut.drops[other] == {victim} for other in {"n1", "n2", "n3"} - {victim})


@pytest.mark.parametrize("names, small", [(["n1", "n2", "n3"], 1), (["n1", "n2", "n3", "n4", "n5"], 2)])
def test_minority_and_majority_cannot_hear_each_other(names: list[str], small: int) -> None:
    cut = plan_cut("minority", names, random.Random(4))
    sizes = sorted(len(senders) for senders in cut.drops.values())
    assert sizes.count(small) == len(names) - small and sizes.count(len(names) - small) == small
    assert all(name not in cut.drops[name] for name in names)


def test_the_bridge_node_hears_both_sides_that_cannot_hear_each_other() -> None:
    cut = plan_cut("bridge", ["n1", "n2", "n3", "n4"], random.Random(2))
    bridge = ({"n1", "n2", "n3", "n4"} - set(cut.drops)).pop()
    assert all(bridge not in senders for senders in cut.drops.values())
    assert all(cut.drops[receiver].isdisjoint({receiver}) and cut.drops[receiver] for receiver in cut.drops)
    with pytest.raises(ValueError, match="at least 3"):
        plan_cut("bridge", ["n1", "n2"], random.Random(2))


def test_one_way_only_the_victim_drops() -> None:
    cut = plan_cut("one-way", ["n1", "n2", "n3"], random.Random(3))
    ((victim, senders),) = cut.drops.items()
    assert senders == {"n1", "n2", "n3"} - {victim}


def test_cuts_follow_the_seed() -> None:
    for shape in SHAPES:
        assert plan_cut(shape, ["n1", "n2", "n3"], random.Random(9)) == plan_cut(shape, ["n1", "n2", "n3"], random.Random(9))


def test_the_network_scenarios_run_in_namespaces() -> None:
    network = {"partition-minority", "partition-bridge", "one-way", "packet-loss"}
    assert {name for name, s in SCENARIOS.items() if s.network == "netns"} == network
    assert SCENARIOS["partition-bridge"].min_nodes >= 3


# ------------------------------------------------------------ root: real namespaces
def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("nft") is None:
        return "needs the ip and nft commands (apt-get install iproute2 nftables)"
    probe = f"mrcprobe{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "ip netns add is not allowed here (no namespaces in this container)"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


_REASON = _netns_unavailable()
needs_netns = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")

ECHO_SERVER = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        conn.sendall(conn.recv(16))
"""

ECHO_CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.0) as conn:
        conn.sendall(b"ping")
        sys.exit(0 if conn.recv(16) == b"ping" else 1)
except OSError:
    sys.exit(1)
"""

# A runner that makes a network, puts a process in a namespace and waits to be killed.
RUNNER = """
import subprocess, sys, time
from chaos.netns import Network
network = Network().open()
network.add("a")
subprocess.Popen([*network.prefix("a"), "sleep", "60"], start_new_session=True)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def network() -> Iterator[Network]:
    with Network() as net:
        net.add("a")
        net.add("b")
        yield net
    assert leftovers(net.pid) == []


def _reaches(network: Network, source: str | None, address: str, port: int) -> bool:
    """A TCP echo round trip from node ``source``'s namespace (None: the runner) to ``address``."""
    prefix = network.prefix(source) if source else ()
    done = subprocess.run([*prefix, sys.executable, "-c", ECHO_CLIENT, address, str(port)], timeout=10)
    return done.returncode == 0


@pytest.fixture
def echo_on_b(network: Network) -> Iterator[int]:
    port = 7411
    server = subprocess.Popen([*network.prefix("b"), sys.executable, "-c", ECHO_SERVER, network.address("b"), str(port)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        yield port
    finally:
        server.kill()
        server.wait(timeout=10)


@needs_netns
def test_a_network_is_made_and_fully_removed() -> None:
    with Network() as net:
        net.add("a")
        assert set(leftovers(net.pid)) == {net.namespace("a"), veth_name(net.pid, 1), net.bridge}
        assert "policy accept" in net.rules("a")
    assert leftovers(net.pid) == []


@needs_netns
def test_a_partition_stops_real_packets_and_the_heal_lets_them_through(network: Network, echo_on_b: int) -> None:
    b = network.address("b")
    assert _reaches(network, "a", b, echo_on_b)
    network.block("b", ["a"])  # the receiving side drops what a sends
    assert not _reaches(network, "a", b, echo_on_b)
    assert _reaches(network, None, b, echo_on_b), "the runner's clients are never cut"
    network.heal("b")
    assert _reaches(network, "a", b, echo_on_b)
    network.lose("b", 100)
    assert not _reaches(network, "a", b, echo_on_b) and _reaches(network, None, b, echo_on_b)
    network.heal("b")
    assert "drop" not in network.rules("b")


def _start_runner() -> subprocess.Popen[str]:
    runner = subprocess.Popen([sys.executable, "-c", RUNNER], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert runner.stdout is not None and runner.stdout.readline().strip() == "ready", runner.stderr.read() if runner.stderr else ""
    return runner


@needs_netns
def test_the_sweep_removes_what_a_runner_killed_with_sigkill_left() -> None:
    runner = _start_runner()
    namespace = netns_name(runner.pid, 1)
    runner.kill()
    runner.wait(timeout=10)
    assert namespace in leftovers(runner.pid)
    stranded = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
    assert stranded, "the sleep the runner left in its namespace"
    assert namespace in sweep()
    assert leftovers(runner.pid) == []
    for pid in stranded:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


@needs_netns
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signalled_runner_removes_its_network(sig: signal.Signals) -> None:
    runner = _start_runner()
    runner.send_signal(sig)
    assert runner.wait(timeout=20) != 0
    deadline = time.monotonic() + 5
    while leftovers(runner.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers(runner.pid) == []


@needs_netns
@pytest.mark.slow
@pytest.mark.long  # about 45 s on 2 cores: beyond the default run's budget
def test_a_minority_partition_under_load_loses_nothing_and_heals() -> None:
    report = run_scenario(SCENARIOS["partition-minority"], RunSettings(duration_s=20.0, seed=3), progress=lambda line: None)
    assert [f["fault"].split()[:2] for f in report["faults"]] == [["partition", "minority:"]]
    assert report["writes"]["ok"] > 50 and report["writes"]["during_faults"]["ops"] > 0
    assert report["passed"], report
