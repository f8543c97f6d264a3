"""Break 8: answering a subscription request never sends a redundant `subscribe` (ejabberd's
mod_pres_counter allows 5 subscription stanzas per minute)."""

from __future__ import annotations

import pytest

from service_harness import eventually

pytestmark = pytest.mark.integration


async def test_accepting_a_request_does_not_resubscribe_to_a_contact_we_already_follow(
    prosody, xmpp_accounts, xmpp_client, service_via
):
    """A buddy we subscribed to asks back: we approve, and send no second subscribe."""
    jid, password = xmpp_accounts("svc")
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)  # approves, then asks back (slixmpp defaults)
    async with service_via(prosody, prosody.c2s_port, jid, password, buddies=(bob_jid,),
                           wait_online=False) as svc:
        session = svc.pool.session("asterisk")
        sent: list[str] = []

        def spy(stanza):
            if stanza.name == "presence" and stanza["type"] == "subscribe":
                sent.append(str(stanza["to"]))
            return stanza

        await eventually(lambda: session._client is not None, 30, "the client")
        session._client.add_filter("out", spy)
        await svc.wait_online(30)

        def mutual() -> bool:
            roster = session._client.client_roster
            return bob_jid in roster and roster[bob_jid]["to"] and roster[bob_jid]["from"]

        await eventually(mutual, 30, "a mutual subscription")
        await bob.next_presence(10, sender=jid, type="subscribed")
        assert sent.count(bob_jid) == 1, sent
