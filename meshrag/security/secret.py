"""The cluster secret: read from a file (--secret-file), or created in the data directory.

Secure by default, as Elasticsearch 8 is: a node started with neither a secret
nor --dev creates ``<data_dir>/cluster.secret`` (32 random bytes, hex, mode
0600) on its first start and reuses it afterwards; other nodes join with
``--secret-file`` pointing at a copy of it. A secret given on the command line
(--secret) works too but is visible in the process list.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import sys
from pathlib import Path

from meshrag.errors import ConfigError
from meshrag.security.keyring import KEYRING_FILE_NAME, Keyring, KeyringError

log = logging.getLogger(__name__)

SECRET_FILE_NAME = "cluster.secret"
MIN_SECRET_CHARS = 16


def new_secret() -> str:
    return secrets.token_hex(32)


def read_secret_file(path: Path, field: str = "node.secret_file") -> str:
    """The secret in ``path`` (surrounding whitespace stripped); ConfigError naming ``field`` if
    it cannot be read, is too short, or other users may read it."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the cluster secret file {path}: {exc.strerror or exc}", field=field) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"the cluster secret file {path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
                          f"chmod 600 {path}", field=field)
    if len(text) < MIN_SECRET_CHARS:
        raise ConfigError(f"the cluster secret in {path} is shorter than {MIN_SECRET_CHARS} characters", field=field)
    return text


def write_secret_file(path: Path, secret: str) -> None:
    """Create ``path`` with mode 0600 from the start (never world-readable, not even briefly);
    refuses to overwrite an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")


def load_or_create(data_dir: Path) -> tuple[str, bool]:
    """``(secret, created)`` for a node started without a secret: the one in
    ``data_dir/cluster.secret``, made now if there is none."""
    path = data_dir / SECRET_FILE_NAME
    if path.exists():
        return read_secret_file(path, field="node.data_dir"), False
    secret = new_secret()
    write_secret_file(path, secret)
    return secret, True


def join_hint(path: Path, seed: str) -> str:
    """What to tell the operator after creating a secret: how another node joins."""
    return (f"created the cluster secret {path} (mode 0600). Other nodes join with a copy of it:\n"
            f"    meshrag start --join {seed} --secret-file /path/to/{SECRET_FILE_NAME}")


def node_keyring(data_dir: Path, secret: str, secret_file: str, dev: bool, advertise: str) -> Keyring | None:
    """The keyring a node runs with: None in dev mode (nothing signed); otherwise the persisted
    keyring (data_dir/keyring.json) with the configured secret added: from --secret-file, from
    --secret, or data_dir/cluster.secret, created now on a first start (the join command is
    logged and printed)."""
    if dev:
        return None
    if secret_file:
        configured = read_secret_file(Path(secret_file))
    elif secret:
        configured = secret
    else:
        configured, created = load_or_create(data_dir)
        if created:
            hint = join_hint(data_dir / SECRET_FILE_NAME, advertise)
            log.warning("%s", hint)
            print(f"meshrag: {hint}", file=sys.stderr, flush=True)
    path = data_dir / KEYRING_FILE_NAME
    try:
        ring = Keyring.load(path, configured)
        ring.save(path)
    except (KeyringError, OSError) as exc:
        raise ConfigError(f"the keyring {path}: {exc}", field="node.data_dir") from None
    return ring
