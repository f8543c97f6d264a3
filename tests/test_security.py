"""Who may talk to the service, whom it trusts, and what it writes down.

- FastAGI: only allowlisted peers (agi_allow) get a script run.
- HTTP API: loopback callers may read the board, /health and /metrics; everything else, and
  anyone not on loopback, needs the bearer token (tests/test_http_security.py has the rest:
  Host, Origin, content types, the token file; tests/integration/test_browser_defences.py the
  real browser).
- TLS: the XMPP server's certificate is verified unless tls_verify = no.
- Logs: no password, secret or message body at info level.

The guard checks run without a server (aiohttp's test client, with the peer address faked); the
others drive the real service (subprocess or in-process) against a real Prosody.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from service_harness import (
    eventually,
    running_harness,
    service_config,
    with_account_options,
)
from fakes import FakePool
from service_process import ServiceProcess
from structlog.testing import capture_logs

from agi_xmpp.config import (
    AccountConfig,
    BindAddress,
    Config,
    GeneralConfig,
    load_config,
)
from agi_xmpp.http_api import make_app
from tools.local_prosody import LocalProsody
from agi_xmpp.services import Services

TOKEN = "tok-" + secrets.token_urlsafe(16)


# -- the HTTP guard, with the caller's address faked -------------------------------------------


def _services(token: str | None) -> Services:
    general = GeneralConfig(http_bind=BindAddress("0.0.0.0", 4580), http_token=token)
    config = Config(path=None, general=general, accounts={})
    return Services(config=config, storage=None, presence=None, pool=FakePool())  # type: ignore[arg-type]


@web.middleware
async def _remote_from_header(request: web.Request, handler):
    """Pretend the TCP peer is X-Test-Peer (aiohttp's own request.clone(remote=...))."""
    peer = request.headers.get("X-Test-Peer")
    return await handler(request.clone(remote=peer) if peer else request)


async def _client(token: str | None) -> TestClient:
    app = make_app(_services(token))
    app.middlewares.insert(0, _remote_from_header)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def http() -> AsyncIterator[TestClient]:
    client = await _client(TOKEN)
    yield client
    await client.close()


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
async def test_loopback_callers_need_no_token(http, peer):
    """A caller on a loopback address (an IPv4-mapped one too: a dual-stack listener's view)
    reads /health without the token."""
    response = await http.get("/health", headers={"X-Test-Peer": peer})
    assert response.status == 200


@pytest.mark.parametrize("peer", ["192.0.2.7", "10.1.2.3", "2001:db8::5", "::ffff:192.0.2.1", "fe80::1%eth0"])
@pytest.mark.parametrize("auth", [None, "", "Bearer ", "Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}"])
async def test_other_callers_without_the_right_token_are_refused(http, peer, auth):
    """Any other caller without exactly the configured bearer token gets 401 on every route,
    whatever X-Forwarded-For or Forwarded claim."""
    headers = {"X-Test-Peer": peer, "X-Forwarded-For": "127.0.0.1", "Forwarded": "for=127.0.0.1"}
    if auth is not None:
        headers["Authorization"] = auth
    for method, path in (("GET", "/health"), ("GET", "/api/directory"), ("POST", "/api/messages"),
                         ("DELETE", "/api/directory/100"), ("GET", "/metrics")):
        response = await http.request(method, path, headers=headers, json={})
        assert response.status == 401, (method, path)
        assert (await response.json())["error"].startswith("unauthorized")


async def test_other_callers_with_the_token_are_served(http):
    """The configured bearer token lets a non-loopback caller in."""
    response = await http.get("/health", headers={"X-Test-Peer": "192.0.2.7",
                                                  "Authorization": f"Bearer {TOKEN}"})
    assert response.status == 200


@pytest.mark.parametrize("token", [None, ""])
async def test_without_a_configured_token_nobody_remote_gets_in(token):
    """With no token configured (or an empty one), a remote caller is refused even when it
    sends an empty bearer token."""
    client = await _client(token)
    try:
        for auth in ("", "Bearer ", "Bearer None"):
            response = await client.get("/health", headers={"X-Test-Peer": "192.0.2.7", "Authorization": auth})
            assert response.status == 401
    finally:
        await client.close()


# -- the real service on a real non-loopback address -----------------------------------------------


def _non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (and can be bound), or None."""
    candidates: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            candidates.append(probe.getsockname()[0])
        except OSError:
            pass
    try:
        candidates += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    except OSError:
        pass
    for address in candidates:
        if not address.startswith("127.") and address != "0.0.0.0":
            try:
                with socket.socket() as sock:
                    sock.bind((address, 0))
                return address
            except OSError:
                continue
    return None


@pytest.mark.integration
async def test_service_on_a_network_address_refuses_strangers(prosody, xmpp_accounts, tmp_path):
    """The real service bound to this machine's non-loopback address: the HTTP API answers 401
    without the token and 200/503 with it; FastAGI refuses the same caller (not on agi_allow's
    default loopback list), runs no script and logs the refusal."""
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    jid, password = xmpp_accounts("asterisk")
    service = ServiceProcess(tmp_path, prosody, jid, password, host=address, http_token=TOKEN)
    try:
        await service.start()
        assert (await service.http("GET", "/health", token=None))[0] == 401
        assert (await service.http("POST", "/api/messages", token=None, json={"to": "bob@localhost", "body": "x"}))[0] == 401
        assert (await service.http("GET", "/health", token="wrong"))[0] == 401
        assert (await service.http("GET", "/health", token=TOKEN))[0] == 200
        lines = await _agi_from(None, service.agi_port, "jabber_send", "asterisk", "bob@localhost",
                                "must not be queued", host=address)
        assert lines in ([], [b"FAILURE\n"])
        await eventually(lambda: "agi_peer_refused" in service.log_text(), 60, "the refusal in the log")
    finally:
        await service.close()
    assert service.outbox_states() == {}
    assert f'"peer": "{address}:' in service.log_text()


# -- the FastAGI allowlist, on loopback ------------------------------------------------------------


async def _agi_from(source: str | None, port: int, script: str, *args: str,
                    host: str = "127.0.0.1") -> list[bytes]:
    """A FastAGI call from ``source`` (a local address; None: the kernel's choice): every line
    the server sent, each answered with 200 result=1."""
    local = (source, 0) if source else None
    reader, writer = await asyncio.open_connection(host, port, local_addr=local)
    env = [b"agi_network: yes", f"agi_network_script: {script}".encode(), b"agi_version: 22.6.0",
           *(f"agi_arg_{n}: {a}".encode() for n, a in enumerate(args, 1))]
    lines: list[bytes] = []
    try:
        writer.write(b"\n".join(env) + b"\n\n")
        async with asyncio.timeout(10):
            while line := await reader.readline():
                lines.append(line)
                writer.write(b"200 result=1\n")
    except ConnectionError:
        pass
    finally:
        writer.close()
    return lines


@pytest.mark.integration
async def test_agi_allow_admits_only_the_listed_peers(prosody, xmpp_accounts, tmp_path):
    """With agi_allow = 127.0.0.2/32, a call from 127.0.0.1 gets FAILURE (or a closed socket)
    and runs nothing, while the same call from 127.0.0.2 is served."""
    jid, password = xmpp_accounts("asterisk")
    bob_jid, _ = xmpp_accounts("bob")
    service = ServiceProcess(tmp_path, prosody, jid, password, extra_general="agi_allow = 127.0.0.2/32")
    try:
        await service.start()
        # bob exists: a message to a JID the server does not know would bounce and read 'failed'
        refused = await _agi_from("127.0.0.1", service.agi_port, "jabber_send", "asterisk", bob_jid, "no")
        served = await _agi_from("127.0.0.2", service.agi_port, "jabber_send", "asterisk", bob_jid, "yes")
    finally:
        await service.close()
    assert refused in ([], [b"FAILURE\n"])
    assert served == [b'SET VARIABLE "JABBER_SEND_STATUS" "SUCCESS"\n', b'SET VARIABLE "JABBER_SEND_ERROR" ""\n']
    assert service.outbox_states() in ({"pending": 1}, {"acked": 1})


# -- TLS ------------------------------------------------------------------------------------------


def test_tls_verification_is_on_unless_turned_off(tmp_path):
    """An account that says nothing about TLS verifies the server's certificate."""
    assert AccountConfig(name="a", username="a@example.com", secret="s").tls_verify is True
    path = tmp_path / "agi_xmpp.conf"
    path.write_text("[asterisk]\nusername = a@example.com\nsecret = s\n")
    assert load_config(path).accounts["asterisk"].tls_verify is True


async def _tls_outcome(config: Config) -> tuple[bool, list[str]]:
    """Run the service until it is online or has failed to connect twice."""
    with capture_logs() as logs:
        async with running_harness(config, wait_online=False) as svc:

            def settled() -> bool:
                failures = [e for e in logs if e["event"] == "xmpp_connect_failed"]
                return svc.pool.all_online() or len(failures) >= 2

            await eventually(settled, 60, "a session or two failed attempts")
            online = svc.pool.all_online()
    return online, [str(e["error"]) for e in logs if e["event"] == "xmpp_connect_failed"]


@pytest.mark.integration
async def test_self_signed_server_without_cafile_is_refused(prosody, xmpp_accounts, tmp_path):
    """Without cafile the system trust store is used: Prosody's self-signed certificate fails
    verification and no session is ever established."""
    jid, password = xmpp_accounts("asterisk")
    config = with_account_options(service_config(prosody, jid, password, tmp_path), cafile=None)
    online, errors = await _tls_outcome(config)
    assert not online
    assert errors and all("CERTIFICATE_VERIFY_FAILED" in e for e in errors)


@pytest.mark.integration
async def test_cafile_of_another_server_is_refused(prosody, xmpp_accounts, tmp_path):
    """A cafile that is not the server's own certificate fails verification too."""
    other = LocalProsody(tmp_path / "other")
    other.write_config()  # makes its own self-signed certificate; never started
    jid, password = xmpp_accounts("asterisk")
    config = with_account_options(service_config(prosody, jid, password, tmp_path), cafile=str(other.cert_path))
    online, errors = await _tls_outcome(config)
    assert not online
    assert errors and all("CERTIFICATE_VERIFY_FAILED" in e for e in errors)


@pytest.mark.integration
async def test_tls_verify_no_connects_to_a_self_signed_server(prosody, xmpp_accounts, tmp_path):
    """tls_verify = no (without cafile) accepts the self-signed certificate: online."""
    jid, password = xmpp_accounts("asterisk")
    config = with_account_options(service_config(prosody, jid, password, tmp_path), cafile=None, tls_verify=False)
    online, errors = await _tls_outcome(config)
    assert online, errors


# -- what the logs may hold ------------------------------------------------------------------------


@pytest.mark.integration
async def test_no_secret_or_body_in_info_logs(prosody, xmpp_accounts, xmpp_client, tmp_path):
    """A service at log_level = info sends (live, queued, through the HTTP API), receives and
    fails to log in: its whole log output holds neither a password nor any message body, in
    plain text or base64."""
    jid, password = xmpp_accounts("asterisk")
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    secrets_seen = {
        "password": password,
        "outgoing": "outgoing-body-" + secrets.token_hex(8),
        "via var": "var-body-" + secrets.token_hex(8),
        "via http": "http-body-" + secrets.token_hex(8),
        "incoming": "incoming-body-" + secrets.token_hex(8),
        "failed send": "failed-body-" + secrets.token_hex(8),
    }
    service = ServiceProcess(tmp_path / "good", prosody, jid, password)
    wrong_password = "wrong-" + secrets.token_urlsafe(12)
    refused = ServiceProcess(tmp_path / "bad", prosody, jid, wrong_password)
    try:
        await service.start()
        sent = await service.call("jabber_send", "asterisk", bob_jid, secrets_seen["outgoing"])
        assert sent.variables["JABBER_SEND_STATUS"] == "SUCCESS"
        via_var = await service.call("jabber_send?var=NOTE", "asterisk", bob_jid,
                                     channel_vars={"NOTE": secrets_seen["via var"]})
        assert via_var.variables["JABBER_SEND_STATUS"] == "SUCCESS"
        status, reply = await service.http("POST", "/api/messages", json={
            "account": "asterisk", "to": bob_jid, "body": secrets_seen["via http"]})
        assert (status, reply["status"]) == (200, "SUCCESS") and reply["id"].startswith("agx-")
        for key in ("outgoing", "via var", "via http"):
            assert (await bob.next_message(10, sender=jid)).body == secrets_seen[key]
        bob.send_message(jid, secrets_seen["incoming"])
        received = await service.call("jabber_receive", "asterisk", bob_jid, "10")
        assert received.variables["JABBER_RECEIVE"] == secrets_seen["incoming"]
        bad = await service.call("jabber_send", "asterisk", "not a jid@", secrets_seen["failed send"])
        assert bad.variables["JABBER_SEND_STATUS"] == "FAILURE"
        await refused.start(wait_online=False)
        await eventually(lambda: "authentication failed" in refused.log_text(), 60, "the refused login")
    finally:
        await service.close()
        await refused.close()
    logs = service.log_text() + refused.log_text()
    assert '"level": "info"' in logs and '"level": "debug"' not in logs
    for what, value in {**secrets_seen, "wrong password": wrong_password}.items():
        for form in (value, base64.b64encode(value.encode()).decode()):
            assert form not in logs, f"the {what} appears in the log"
