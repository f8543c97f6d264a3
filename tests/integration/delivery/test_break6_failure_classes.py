"""Break 6: each connection failure is named (DNS, TCP, TLS with its reason, auth), shown in
/health, and ``usetls = no`` really connects to a server without TLS."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from tools.local_prosody import LocalProsody
from service_harness import eventually
from xmpp_servers import StockProsody

pytestmark = pytest.mark.integration

class PlaintextProsody(LocalProsody):
    """A Prosody that offers no STARTTLS (mod_tls off) and accepts SASL on a plaintext stream."""

    def render_config(self) -> str:
        text = super().render_config().replace('"tls", ', "")
        return text.replace("c2s_require_encryption = true", "c2s_require_encryption = false")

    _wait_ready = StockProsody._wait_ready  # the readiness probe of LocalProsody expects STARTTLS


@pytest.fixture
def plaintext_prosody(tmp_path):
    server = PlaintextProsody(tmp_path / "plain", extra_config="allow_unencrypted_plain_auth = true")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def health(svc) -> dict:
    host, port = svc.config.general.http_bind
    async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{port}/health") as resp:
        return await resp.json()


async def failure_of(svc, failure: str) -> tuple[str, dict]:
    session = svc.pool.session("asterisk")
    await eventually(lambda: session.failure == failure, 60, f"a {failure} failure")
    return session.last_error, (await health(svc))["failures"]["asterisk"]


async def test_unverifiable_certificate_is_a_tls_failure_with_its_reason(prosody, xmpp_accounts, service_via):
    """A certificate that fails verification is reported as TLS, with the reason, not as auth."""
    jid, password = xmpp_accounts("svc")
    async with service_via(prosody, prosody.c2s_port, jid, password, cafile=None,
                           wait_online=False, http=True) as svc:
        reason, shown = await failure_of(svc, "tls")
    assert "self-signed" in reason or "certificate" in reason
    assert shown["class"] == "tls"


async def test_nothing_listening_is_a_tcp_failure(prosody, xmpp_accounts, service_via):
    """A refused TCP connection is named TCP."""
    jid, password = xmpp_accounts("svc")
    async with service_via(prosody, unused_port(), jid, password, wait_online=False, http=True) as svc:
        _reason, shown = await failure_of(svc, "tcp")
    assert shown["class"] == "tcp"


async def test_unknown_host_is_a_dns_failure(prosody, xmpp_accounts, service_via):
    """A server name that does not resolve is named DNS."""
    jid, password = xmpp_accounts("svc")
    async with service_via(prosody, 5222, jid, password, serverhost="no-such-host.invalid",
                           wait_online=False, http=True) as svc:
        _reason, shown = await failure_of(svc, "dns")
    assert shown["class"] == "dns"


async def test_server_without_starttls_is_a_tls_failure_when_tls_is_required(plaintext_prosody, service_via):
    """usetls = yes against a server offering no STARTTLS: TLS, not 'authentication failed'."""
    jid = plaintext_prosody.register("svc", "pw-plain")
    async with service_via(plaintext_prosody, plaintext_prosody.c2s_port, jid, "pw-plain",
                           wait_online=False, http=True) as svc:
        reason, _shown = await failure_of(svc, "tls")
    assert "STARTTLS" in reason


async def test_usetls_no_connects_without_tls(plaintext_prosody, service_via):
    """usetls = no logs in over a plaintext stream (SCRAM), as res_xmpp does."""
    jid = plaintext_prosody.register("svc", "pw-plain")
    async with service_via(plaintext_prosody, plaintext_prosody.c2s_port, jid, "pw-plain",
                           usetls=False) as svc:
        session = svc.pool.session("asterisk")
        assert session.online and not session.encrypted
