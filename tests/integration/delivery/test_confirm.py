"""confirm= on jabber_send and call_notify: the dialplan learns whether the message got there."""

from __future__ import annotations

import secrets

import pytest

from fake_asterisk import script_url
from service_harness import eventually

pytestmark = pytest.mark.integration


async def test_confirm_server_answers_success_only_once_acked(stock_server, accounts, service_via, peer):
    """confirm=server: SUCCESS means the server has it (the row is acked or proven in memory)."""
    make = accounts(stock_server)
    jid, password = make("svc")
    bob_jid, bob_pw = make("bob")
    await peer(stock_server, bob_jid, bob_pw)
    async with service_via(stock_server, stock_server.c2s_port, jid, password) as svc:
        result = await svc.call(script_url("jabber_send", confirm="server"), "asterisk", bob_jid, "sure?")
        assert result.variables["JABBER_SEND_STATUS"] == "SUCCESS"
        assert result.variables["JABBER_SEND_ERROR"] == ""
        assert svc.pool.counters.sent == 1


async def test_confirm_server_reports_a_bounce_as_failure(stock_server, accounts, service_via):
    """confirm=server to an account that does not exist: FAILURE with the server's error."""
    jid, password = accounts(stock_server)("svc")
    nobody = f"nobody-{secrets.token_hex(4)}@{stock_server.domain}"
    async with service_via(stock_server, stock_server.c2s_port, jid, password) as svc:
        result = await svc.call(script_url("jabber_send", confirm="server"), "asterisk", nobody, "hello?")
        assert result.variables["JABBER_SEND_STATUS"] == "FAILURE"
        assert "service-unavailable" in result.variables["JABBER_SEND_ERROR"]


async def test_confirm_receipt_answers_delivered_and_archives_it(stock_server, accounts, service_via, peer):
    """confirm=receipt with a client that sends XEP-0184 receipts: DELIVERED, recorded in the archive."""
    make = accounts(stock_server)
    jid, password = make("svc")
    bob_jid, bob_pw = make("bob")
    bob = await peer(stock_server, bob_jid, bob_pw)
    bob.xmpp.register_plugin("xep_0184")  # answers receipt requests automatically
    async with service_via(stock_server, stock_server.c2s_port, jid, password) as svc:
        result = await svc.call(script_url("call_notify", confirm="receipt", timeout="30"),
                                "asterisk", bob_jid, "please pick up")
        assert result.variables["CALL_NOTIFY_STATUS"] == "DELIVERED"

        async def archived() -> bool:
            [message] = await svc.services.storage.archive_recent("asterisk", bob_jid, limit=1)
            return message.delivered_at is not None

        await eventually(archived, 30, "the receipt in the archive")


async def test_confirm_receipt_without_a_receipt_answers_what_the_server_confirmed(
    stock_server, accounts, service_via, peer
):
    """A client without receipts: after timeout=, SUCCESS (the server has it), not DELIVERED."""
    make = accounts(stock_server)
    jid, password = make("svc")
    bob_jid, bob_pw = make("bob")
    await peer(stock_server, bob_jid, bob_pw)
    async with service_via(stock_server, stock_server.c2s_port, jid, password) as svc:
        result = await svc.call(script_url("jabber_send", confirm="receipt", timeout="2"),
                                "asterisk", bob_jid, "anyone?")
        assert result.variables["JABBER_SEND_STATUS"] == "SUCCESS"
