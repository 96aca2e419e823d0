"""Snapshots of a node's data and offline restores (`meshrag snapshot`, `meshrag restore`).

    manifest.py   the snapshot format: names, manifest.json, file checksums, verification
    snapshot.py   the node's side: a consistent copy while it serves, one job at a time, progress
    restore.py    offline, on the host: verify, lock the data directory, put the files in place
"""
