"""Known peers: whom a node saw alive, kept across restarts so it can rejoin without seeds."""

from __future__ import annotations

import json
from pathlib import Path

from meshrag.gossip.known_peers import MAX_PEERS, PEERS_FILE, KnownPeers

OWN = "127.0.0.1:7000"


def test_remembered_addresses_survive_a_restart_most_recent_first(tmp_path: Path) -> None:
    peers = KnownPeers(tmp_path, OWN)
    assert peers.load() == []
    assert peers.remember("127.0.0.1:7001") and peers.remember("127.0.0.1:7002")
    assert peers.remember("127.0.0.1:7001")  # seen again: first once more
    assert not (tmp_path / PEERS_FILE).exists()  # remember() touches no file; save() writes
    peers.save()
    assert KnownPeers(tmp_path, OWN).load() == ["127.0.0.1:7001", "127.0.0.1:7002"]


def test_its_own_address_and_a_repeat_of_the_latest_are_no_news(tmp_path: Path) -> None:
    peers = KnownPeers(tmp_path, OWN)
    assert not peers.remember(OWN)
    assert peers.load() == []
    assert peers.remember("127.0.0.1:7001")
    assert not peers.remember("127.0.0.1:7001")


def test_only_the_most_recent_are_kept(tmp_path: Path) -> None:
    peers = KnownPeers(tmp_path, OWN)
    for port in range(MAX_PEERS + 10):
        peers.remember(f"10.0.0.1:{port}")
    peers.save()
    kept = KnownPeers(tmp_path, OWN).load()
    assert len(kept) == MAX_PEERS and kept[0] == f"10.0.0.1:{MAX_PEERS + 9}"


def test_a_damaged_file_is_ignored_and_replaced(tmp_path: Path) -> None:
    (tmp_path / PEERS_FILE).write_text("{not json")
    peers = KnownPeers(tmp_path, OWN)
    assert peers.load() == []
    peers.remember("127.0.0.1:7001")
    peers.save()
    assert json.loads((tmp_path / PEERS_FILE).read_text()) == ["127.0.0.1:7001"]
    (tmp_path / PEERS_FILE).write_text(json.dumps({"not": "a list"}))
    assert KnownPeers(tmp_path, OWN).load() == []
    (tmp_path / PEERS_FILE).write_text(json.dumps([OWN, 7, "", "127.0.0.1:7003"]))
    assert KnownPeers(tmp_path, OWN).load() == ["127.0.0.1:7003"]
