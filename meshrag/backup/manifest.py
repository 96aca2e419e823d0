"""The snapshot format: a directory that mirrors the data directory, plus manifest.json.

    <data_dir>/snapshots/<name>/
      manifest.json            written last: a directory without it is not a snapshot
      cluster.json api_keys.json peers.json      as the node last wrote them (when present)
      hints.sqlite             hinted handoff queue (SQLite backup)
      partitions/meta.json, index.usearch, index.json, p<id>/store.sqlite

Left out on purpose: holdings.json (a restored node must not answer for a
partition before repair finds it in sync again), node.json (the manifest
carries the identity; restore writes node.json with a new generation), the
secrets (cluster.secret, keyring.json, bootstrap_api_key: a snapshot is a copy
an operator moves around; the restored node is started with --secret-file),
models, logs, the lock and other snapshots.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from meshrag.errors import ValidationError
from meshrag.store.snapshot import file_sha256

FORMAT = 1
KIND = "meshrag-snapshot"
MANIFEST_FILE = "manifest.json"
SNAPSHOTS_DIR = "snapshots"
PARTIAL_SUFFIX = ".partial"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
COPIED_FILES = ("cluster.json", "api_keys.json", "peers.json")  # small JSON files, replaced by rename when written
HINTS_FILE = "hints.sqlite"
PARTITIONS_DIR = "partitions"


class SnapshotInvalid(Exception):
    """A snapshot directory that cannot be restored: no manifest, another format, a file
    missing or not matching its checksum."""


def check_name(name: Any) -> str:
    """A snapshot name: a single path segment, so a request can only write under snapshots/."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith(PARTIAL_SUFFIX):
        raise ValidationError(
            "name must be 1..64 letters, digits, '.', '_' or '-', starting with a letter or digit "
            f"(and not ending in {PARTIAL_SUFFIX})", field="name")
    return name


def read_manifest(snapshot_dir: Path) -> dict[str, Any]:
    path = Path(snapshot_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise SnapshotInvalid(f"{snapshot_dir} has no {MANIFEST_FILE}: not a snapshot, or one that did not finish") from None
    except (OSError, ValueError) as exc:
        raise SnapshotInvalid(f"{path} is unreadable: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise SnapshotInvalid(f"{path} is not a MeshRAG snapshot manifest")
    if manifest.get("format") != FORMAT:
        raise SnapshotInvalid(f"{path} has format {manifest.get('format')!r}; this version restores format {FORMAT}")
    return manifest


def write_manifest(snapshot_dir: Path, manifest: dict[str, Any]) -> None:
    tmp = snapshot_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(snapshot_dir / MANIFEST_FILE)


def file_entries(root: Path, paths: list[Path], on_bytes: Callable[[int], None] | None = None) -> dict[str, dict[str, Any]]:
    """relative path -> {bytes, sha256} of each file under ``root``."""
    return {
        path.relative_to(root).as_posix(): {"bytes": path.stat().st_size, "sha256": file_sha256(path, on_bytes)}
        for path in paths
    }


def safe_relative(relpath: str) -> Path:
    """A manifest path as a relative path that stays inside the directory it is joined to."""
    path = Path(relpath)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise SnapshotInvalid(f"manifest names a file outside the snapshot: {relpath!r}")
    return path
