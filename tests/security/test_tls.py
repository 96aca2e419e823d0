"""security/tls.py: the listener's and the peers' TLS contexts, over a real socket (in-process)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from aiohttp import ClientConnectorCertificateError, ClientSession, TCPConnector, web
from aiohttp.test_utils import TestServer

from meshrag.errors import ConfigError
from meshrag.security.tls import TlsFiles, client_context, server_context
from tests.security.certs import make_ca, make_node_cert


def test_no_paths_means_no_tls_and_half_a_setting_is_refused_by_field(tmp_path: Path) -> None:
    assert TlsFiles.from_config("", "", "") is None
    ca, ca_key, ca_cert = make_ca(tmp_path)
    cert, key = make_node_cert(tmp_path, "n1", ca_key, ca_cert)
    with pytest.raises(ConfigError) as missing:
        TlsFiles.from_config(str(cert), str(key), "")
    assert missing.value.field == "node.tls_ca"
    with pytest.raises(ConfigError) as unreadable:
        TlsFiles.from_config(str(cert), str(tmp_path / "nope.key"), str(ca))
    assert unreadable.value.field == "node.tls_key"


async def _serve(tmp_path: Path, ips: tuple[str, ...]) -> tuple[TestServer, Path]:
    ca, ca_key, ca_cert = make_ca(tmp_path)
    cert, key = make_node_cert(tmp_path, "n1", ca_key, ca_cert, ips)
    app = web.Application()
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.add_routes([web.get("/health", health)])
    server = TestServer(app, host="127.0.0.1", scheme="https")
    await server.start_server(ssl=server_context(TlsFiles(cert, key, ca)))
    return server, ca


async def test_a_peer_signed_by_the_cluster_ca_is_trusted_over_https(tmp_path: Path) -> None:
    server, ca = await _serve(tmp_path, ("127.0.0.1",))
    try:
        async with ClientSession(connector=TCPConnector(ssl=client_context(ca))) as session:
            async with session.get(f"https://127.0.0.1:{server.port}/health") as response:
                assert response.status == 200 and (await response.json()) == {"ok": True}
    finally:
        await server.close()


async def test_a_certificate_from_another_ca_or_for_another_address_is_refused(tmp_path: Path) -> None:
    server, right_ca = await _serve(tmp_path, ("10.1.2.3",))  # a certificate for another address
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other_ca, _, _ = make_ca(other_dir, "another CA")
    try:
        for ca in (other_ca, right_ca):  # the wrong CA; the right CA, but not for 127.0.0.1
            async with ClientSession(connector=TCPConnector(ssl=client_context(ca))) as session:
                with pytest.raises(ClientConnectorCertificateError):
                    await session.get(f"https://127.0.0.1:{server.port}/health")
    finally:
        await server.close()


def test_the_client_context_trusts_only_the_cluster_ca(tmp_path: Path) -> None:
    ca, _, _ = make_ca(tmp_path)
    context = client_context(ca)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1
