"""One account's XMPP session against a real Prosody: security, presence lifetime, roster policy."""

from __future__ import annotations

import pytest

from agi_xmpp.jid import parse_jid

from service_harness import eventually, running_harness, service_config, with_account_options

pytestmark = pytest.mark.integration


def code_of(svc, jid: str) -> int:
    return svc.services.presence.status("asterisk", parse_jid(jid)).code


async def test_session_uses_scram_over_verified_tls(prosody, xmpp_accounts, tmp_path):
    """The session authenticates with SCRAM over TLS verified against the configured cafile."""
    jid, password = xmpp_accounts("asterisk")
    async with running_harness(service_config(prosody, jid, password, tmp_path)) as svc:
        session = svc.pool.session("asterisk")
        assert session.sasl_mechanism.startswith("SCRAM-")
        assert session.encrypted


async def test_unverifiable_certificate_is_refused_by_default(prosody, xmpp_accounts, tmp_path):
    """Without a cafile the self-signed server is refused (tls_verify defaults to yes)."""
    jid, password = xmpp_accounts("asterisk")
    config = with_account_options(service_config(prosody, jid, password, tmp_path), cafile=None)
    async with running_harness(config, wait_online=False) as svc:
        session = svc.pool.session("asterisk")
        await eventually(lambda: session.last_error, what="a connection error")
        assert not session.online
        assert "certificate" in session.last_error.lower() or "ssl" in session.last_error.lower()


async def test_tls_verify_no_accepts_the_self_signed_server(prosody, xmpp_accounts, tmp_path):
    """tls_verify=no connects to a server whose certificate cannot be verified."""
    jid, password = xmpp_accounts("asterisk")
    config = with_account_options(
        service_config(prosody, jid, password, tmp_path), cafile=None, tls_verify=False
    )
    async with running_harness(config) as svc:
        assert svc.pool.session("asterisk").encrypted


async def test_wrong_password_keeps_retrying_and_reports_it(prosody, xmpp_accounts, tmp_path):
    """An authentication failure leaves the account auth_failed with the reason, retrying slowly."""
    jid, _ = xmpp_accounts("asterisk")
    async with running_harness(service_config(prosody, jid, "wrong", tmp_path), wait_online=False) as svc:
        session = svc.pool.session("asterisk")
        await eventually(lambda: "authentication" in session.last_error, what="the auth failure")
        await eventually(lambda: session.state == "auth_failed", what="the auth_failed state")
        assert session.next_retry_delay is not None


async def test_presence_dropped_when_session_ends_and_restored_after(private_prosody, tmp_path, xmpp_client):
    """A server restart ends the session: contacts read 6 until the server re-sends presence."""
    server = private_prosody
    jid = server.register("asterisk", "pw-a")
    bob_jid = server.register("bob", "pw-b")
    config = service_config(
        server, jid, "pw-a", tmp_path, general={"reconnect_max_delay": 1, "keepalive_interval": 3}
    )
    async with running_harness(config) as svc:
        bob = await xmpp_client(bob_jid, "pw-b", server=server)
        bob.subscribe(jid)
        await eventually(lambda: code_of(svc, bob_jid) == 1, what="bob available")
        server.kill()
        await eventually(lambda: not svc.pool.session("asterisk").online, what="the session to drop")
        await eventually(lambda: code_of(svc, bob_jid) == 6, what="bob's presence to be dropped")
        server.restart()
        await svc.wait_online(30)
        bob2 = await xmpp_client(bob_jid, "pw-b", server=server, resource="again")
        bob2.send_presence(show="chat")
        await eventually(lambda: code_of(svc, bob_jid) == 2, 60, what="presence after the restart")


async def test_resumed_stream_keeps_presence(prosody, xmpp_accounts, xmpp_client, tmp_path):
    """After a TCP drop the stream resumes (XEP-0198) and the cached presence is kept."""
    jid, password = xmpp_accounts("asterisk")
    config = service_config(prosody, jid, password, tmp_path, general={"reconnect_max_delay": 1})
    async with running_harness(config) as svc:
        bob_jid, bob_pw = xmpp_accounts("bob")
        bob = await xmpp_client(bob_jid, bob_pw)
        bob.subscribe(jid)
        await eventually(lambda: code_of(svc, bob_jid) == 1, what="bob available")
        session = svc.pool.session("asterisk")
        reconnects = session.reconnects
        session._client.transport.abort()  # the network drops under us; the server keeps the session
        await eventually(lambda: session.reconnects > reconnects and session.online, 60, what="a resumed session")
        assert code_of(svc, bob_jid) == 1


async def test_buddies_are_subscribed_when_autoregister(prosody, xmpp_accounts, xmpp_client, tmp_path):
    """buddy= entries are asked for presence at login (autoregister=yes) and then reported."""
    jid, password = xmpp_accounts("asterisk")
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw, show="xa")  # slixmpp approves subscription requests
    config = service_config(prosody, jid, password, tmp_path, buddies=(bob_jid,))
    async with running_harness(config) as svc:
        await eventually(lambda: code_of(svc, bob_jid) == 4, what="bob's presence via the buddy subscription")
    del bob


async def test_auth_policy_deny_refuses_subscription_requests(prosody, xmpp_accounts, xmpp_client, tmp_path):
    """auth_policy=deny answers a stranger's subscription request with 'unsubscribed'."""
    jid, password = xmpp_accounts("asterisk")
    config = service_config(prosody, jid, password, tmp_path, auth_policy="deny")
    async with running_harness(config) as svc:
        bob_jid, bob_pw = xmpp_accounts("bob")
        bob = await xmpp_client(bob_jid, bob_pw)
        bob.subscribe(jid)
        refusal = await bob.next_presence(10, sender=jid, type="unsubscribed")
        assert refusal is not None
        assert code_of(svc, bob_jid) != 1


async def test_autoprune_removes_contacts_not_listed_as_buddies(prosody, xmpp_accounts, xmpp_client, tmp_path):
    """autoprune=yes removes roster entries that are not configured buddies at login."""
    jid, password = xmpp_accounts("asterisk")
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    config = service_config(prosody, jid, password, tmp_path)
    async with running_harness(config) as svc:
        bob.subscribe(jid)
        await eventually(lambda: bob_jid in svc.services.presence.contacts("asterisk"), what="bob in roster")
    pruned = with_account_options(config, autoprune=True)
    async with running_harness(pruned) as svc:
        await eventually(
            lambda: bob_jid not in svc.services.presence.contacts("asterisk"), what="bob pruned from the roster"
        )


async def test_dns_srv_finds_the_server_when_serverhost_is_absent(prosody, xmpp_accounts, tmp_path, monkeypatch):
    """Without serverhost the server is found by an _xmpp-client._tcp SRV lookup of the domain."""
    import asyncio
    from types import SimpleNamespace

    import slixmpp.xmlstream.xmlstream as xmlstream

    asked: list[str] = []

    class SrvOnlyResolver:
        """Answers SRV queries as a DNS server would; addresses come from the system resolver."""

        def query(self, name: str, kind: str):
            asked.append(f"{kind} {name}")
            answer = asyncio.get_running_loop().create_future()
            if name == "_xmpp-client._tcp.localhost":
                answer.set_result([SimpleNamespace(host="localhost.", port=prosody.c2s_port, priority=0, weight=0)])
            else:
                answer.set_exception(OSError("NXDOMAIN"))
            return answer

    monkeypatch.setattr(xmlstream, "default_resolver", lambda loop=None: SrvOnlyResolver())
    jid, password = xmpp_accounts("asterisk")
    config = with_account_options(service_config(prosody, jid, password, tmp_path), serverhost=None)
    async with running_harness(config) as svc:
        assert svc.pool.session("asterisk").encrypted
    assert "SRV _xmpp-client._tcp.localhost" in asked


async def test_reconnects_make_no_dns_channels(prosody, xmpp_accounts, xmpp_client, tmp_path, monkeypatch):
    """No pycares channel is made per connection: none with a serverhost however often the
    session reconnects, one for the client's life without one (SRV), and aiohttp (XEP-0363
    uploads) resolves with threads. pycares destroys channels on a thread of its own, and that
    destruction froze a whole test run (every thread waiting for the GIL; docs/dependencies.md)."""
    import asyncio

    import aiodns
    import aiohttp
    from structlog.testing import capture_logs

    made: list[object] = []
    real_init = aiodns.DNSResolver.__init__

    def counting_init(self, *args, **kwargs):
        made.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(aiodns.DNSResolver, "__init__", counting_init)
    jid, password = xmpp_accounts("asterisk")
    config = service_config(prosody, jid, password, tmp_path)
    async with running_harness(config) as svc:
        session = svc.pool.session("asterisk")
        for n in range(3):  # drop the link three times: three reconnects
            session._client.abort()  # noqa: SLF001 - the transport, as a link reset would
            await eventually(lambda: not session.online, what="the drop to be noticed")
            await svc.wait_online(60)
        assert session.reconnects >= 3
    assert made == []

    async def srv_answer(self, name, kind):  # the one lookup the SRV path makes, answered here
        raise aiodns.error.DNSError(4, "not found")

    monkeypatch.setattr(aiodns.DNSResolver, "query_dns", srv_answer, raising=False)
    no_host = with_account_options(config, serverhost=None)
    with capture_logs() as logs:
        async with running_harness(no_host, wait_online=False):
            await eventually(lambda: sum(e["event"] == "xmpp_connecting" for e in logs) >= 3,
                             timeout=120, what="three connection attempts")
    assert len(made) == 1
    assert isinstance(aiohttp.TCPConnector(loop=asyncio.get_running_loop())._resolver, aiohttp.ThreadedResolver)


async def test_stopping_the_service_leaves_no_task_pending(prosody, xmpp_accounts, tmp_path):
    """After sends (acks, barriers), a bounce, an archived incoming message and a room join,
    stopping the services leaves no task pending: every background task had an owner."""
    import asyncio
    import secrets
    from dataclasses import replace

    from agi_xmpp.config import AccountConfig

    jid, password = xmpp_accounts("asterisk")
    bob_jid, bob_password = xmpp_accounts("bob")
    config = service_config(prosody, jid, password, tmp_path)
    bob = AccountConfig(name="bob", username=bob_jid, secret=bob_password, serverhost=prosody.host,
                        port=prosody.c2s_port, cafile=str(prosody.cert_path))
    config = replace(config, accounts={**config.accounts, "bob": bob})
    before = asyncio.all_tasks()
    async with running_harness(config) as svc:
        for n in range(5):
            result = await svc.call("jabber_send", "asterisk", bob_jid, f"hello {n}")
            assert result.variables["JABBER_SEND_STATUS"] == "SUCCESS"
        nobody = f"nobody-{secrets.token_hex(4)}@{prosody.domain}"
        await svc.call("jabber_send", "asterisk", nobody, "anyone?")
        joined = await svc.call("jabber_join", "asterisk", f"lobby-{secrets.token_hex(4)}@{prosody.muc_domain}")
        assert joined.variables["JABBER_JOIN_STATUS"] == "SUCCESS"
        await eventually(lambda: svc.pool.counters.received >= 5, what="bob's session to receive")
        await eventually(lambda: svc.pool.counters.acked >= 5, what="the server's confirmations")
        await eventually(lambda: svc.pool.counters.failed >= 1, what="the bounce")
    left = [task for task in asyncio.all_tasks() - before if not task.done()]
    assert left == []
