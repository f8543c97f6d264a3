"""Break 8: jabber_status while the account's link is down says so, and knows its buddies."""

from __future__ import annotations

import pytest

from service_harness import eventually

pytestmark = pytest.mark.integration


async def test_status_while_offline_is_6_for_a_buddy_and_says_account_offline(
    prosody, xmpp_accounts, proxy_to, service_via
):
    """Fresh start with the link down: a configured buddy reads 6 (not 7), with the reason."""
    jid, password = xmpp_accounts("svc")
    buddy, _ = xmpp_accounts("buddy")
    stranger, _ = xmpp_accounts("stranger")
    proxy = await proxy_to(prosody)
    proxy.refuse = True
    async with service_via(prosody, proxy.port, jid, password, buddies=(buddy,), wait_online=False) as svc:
        await eventually(lambda: svc.pool.session("asterisk").reconnects >= 0 and proxy.connections >= 1, 30,
                         "a connection attempt")
        known = await svc.call("jabber_status", "asterisk", buddy)
        assert known.variables["JABBER_STATUS"] == "6"
        assert known.variables["JABBER_STATUS_ERROR"].startswith("account offline")
        other = await svc.call("jabber_status", "asterisk", stranger)
        assert other.variables["JABBER_STATUS"] == "7"
        assert other.variables["JABBER_STATUS_ERROR"].startswith("account offline")
        proxy.refuse = False
        await svc.wait_online(60)
        live = await svc.call("jabber_status", "asterisk", stranger)
        assert live.variables["JABBER_STATUS_ERROR"] == ""
