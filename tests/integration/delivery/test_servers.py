"""The delivery test rig itself: stock servers, the fault proxy, the service through it."""

from __future__ import annotations

import pytest

from service_harness import eventually

pytestmark = pytest.mark.integration


async def test_service_delivers_through_proxy_and_reconnects_after_reset(
    stock_server, accounts, proxy_to, service_via, peer
):
    """Through the proxy to a stock server a message arrives; after a reset the link comes back."""
    make = accounts(stock_server)
    jid, password = make("svc")
    bob_jid, bob_pw = make("bob")
    bob = await peer(stock_server, bob_jid, bob_pw)
    proxy = await proxy_to(stock_server)
    async with service_via(stock_server, proxy.port, jid, password) as svc:
        result = await svc.call("jabber_send", "asterisk", bob_jid, "first")
        assert result.variables["JABBER_SEND_STATUS"] == "SUCCESS"
        await bob.next_message(timeout=30, sender=jid)
        proxy.reset()
        await eventually(lambda: proxy.connections >= 2 and svc.pool.all_online(), 60, "a new connection")
        result = await svc.call("jabber_send", "asterisk", bob_jid, "second")
        msg = await bob.next_message(timeout=30, sender=jid)
        assert msg.body == "second"
