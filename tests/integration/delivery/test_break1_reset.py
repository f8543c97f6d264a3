"""Break 1: a message answered SUCCESS is never marked acked unless the server really has it.

The race from the field: ``jabber_send`` hands the stanza to slixmpp's send queue while the
session still counts as online; the link drops before the queue writes it (slixmpp raises
``NotConnectedError`` and forgets it); XEP-0198 resumes the stream; a barrier after
``<resumed/>`` then "confirmed" a stanza that was never written. The field saw it in ~2 of 45
runs of a reset mid-burst; here it is made certain with an ``out`` filter that holds our message
until the link is gone, which is exactly the order of events in those runs.
"""

from __future__ import annotations

import asyncio

import pytest

from service_harness import eventually

from agi_xmpp.jid import parse_jid

pytestmark = pytest.mark.integration


def hold_until_link_gone(client, proxy, stanza_id: str) -> None:
    """Before ``stanza_id`` leaves slixmpp's queue, reset the link and wait until it is gone."""

    done = False

    async def hold(stanza):
        nonlocal done
        if not done and getattr(stanza, "name", "") == "message" and stanza["id"] == stanza_id:
            done = True  # once: the retransmission must go through
            proxy.reset()
            for _ in range(100):  # < 1 s: slixmpp would otherwise treat this filter as "slow"
                if client.transport is None:
                    break
                await asyncio.sleep(0.005)
        return stanza

    client.add_filter("out", hold)


async def test_message_dropped_by_a_reset_before_it_was_written_still_arrives(
    stock_server, accounts, proxy_to, service_via, peer
):
    """A SUCCESS whose stanza the dead link dropped is resent after <resumed/>, not marked acked."""
    make = accounts(stock_server)
    jid, password = make("svc")
    bob_jid, bob_pw = make("bob")
    bob = await peer(stock_server, bob_jid, bob_pw)
    proxy = await proxy_to(stock_server)
    async with service_via(stock_server, proxy.port, jid, password) as svc:
        await svc.call("jabber_send", "asterisk", bob_jid, "warm-up")
        await bob.next_message(timeout=30, sender=jid)
        session = svc.pool.session("asterisk")
        client = session._client
        resumed_before = session.resumptions

        # the next stanza id the pool will use: ask the pool to tell us (it is random)
        original_write = svc.pool._write
        ids: list[str] = []

        def spy(sess, to, body, stanza_id, kind):
            if body == "dropped by the reset" and not ids:
                ids.append(stanza_id)
                hold_until_link_gone(client, proxy, stanza_id)
            return original_write(sess, to, body, stanza_id, kind)

        svc.pool._write = spy
        result = await svc.call("jabber_send", "asterisk", bob_jid, "dropped by the reset")
        assert result.variables["JABBER_SEND_STATUS"] == "SUCCESS"
        await eventually(lambda: session.resumptions > resumed_before and session.online, 60,
                         "the stream to be resumed")
        msg = await bob.next_message(timeout=60, sender=jid)
        assert msg.body == "dropped by the reset" and msg.id == ids[0]

        async def acked() -> bool:
            row = await svc.services.storage.outbox_get(ids[0])
            return row.state == "acked"

        await eventually(acked, 30, "the row to be acked once it really arrived")


@pytest.mark.parametrize("stock_server", ["ejabberd-stock"], indirect=True)
async def test_outage_longer_than_our_grace_still_resumes_within_the_servers_max(
    stock_server, accounts, proxy_to, service_via, peer
):
    """ejabberd keeps a detached stream 300 s: a 40 s outage resumes instead of starting fresh,
    and the contacts' presence, dropped as stale meanwhile, is asked for again."""
    make = accounts(stock_server)
    jid, password = make("svc")
    bob_jid, bob_pw = make("bob")
    bob = await peer(stock_server, bob_jid, bob_pw)
    proxy = await proxy_to(stock_server)
    async with service_via(stock_server, proxy.port, jid, password) as svc:
        session = svc.pool.session("asterisk")
        bob.subscribe(jid)

        def bob_code() -> int:
            return svc.services.presence.status("asterisk", parse_jid(bob_jid)).code

        await eventually(lambda: bob_code() == 1, 60, "bob available")
        proxy.refuse = True
        proxy.reset()
        await eventually(lambda: not session.online, 30, "the link to go down")
        await asyncio.sleep(40)  # past our own 30 s grace, well within ejabberd's 300 s
        assert bob_code() == 6  # stale after our own 30 s grace
        proxy.refuse = False
        await eventually(lambda: session.online, 90, "the session to come back")
        assert session.resumptions == 1
        await eventually(lambda: bob_code() == 1, 30, "bob's presence asked for again")
