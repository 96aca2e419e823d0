"""TLS for the HTTP listener and for node-to-node calls, from certificate paths in config.

``node.tls_cert`` and ``node.tls_key`` turn the listener to HTTPS (the public
API and /_mesh/ alike: one port). ``node.tls_ca`` is the cluster's CA: a node
that serves TLS calls its peers over HTTPS and trusts exactly the certificates
that CA signed, with host names checked against the addresses nodes advertise
(so node certificates carry their IP addresses or DNS names as SANs). Gossip
datagrams stay UDP, authenticated and encrypted by the gossip codec.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from meshrag.errors import ConfigError


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path

    @classmethod
    def from_config(cls, cert: str, key: str, ca: str) -> "TlsFiles | None":
        """None when TLS is off (no paths at all); a ConfigError naming the field when half set or unreadable."""
        if not (cert or key or ca):
            return None
        for field, value in (("node.tls_cert", cert), ("node.tls_key", key), ("node.tls_ca", ca)):
            if not value:
                raise ConfigError(f"{field} is missing: TLS needs node.tls_cert, node.tls_key and node.tls_ca "
                                  "(the cluster's CA, which node-to-node calls trust)", field=field)
            if not Path(value).is_file():
                raise ConfigError(f"{field} = {value!r} is not a readable file", field=field)
        return cls(Path(cert), Path(key), Path(ca))


def server_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert, files.key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load node.tls_cert/node.tls_key: {exc}", field="node.tls_cert") from None
    return context


def client_context(ca: Path) -> ssl.SSLContext:
    """Trusts the cluster CA only (not the system's store): a peer must hold a certificate
    that CA signed for the address we dial."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name; no system store
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load node.tls_ca: {exc}", field="node.tls_ca") from None
    return context
