"""The soak's long delays: after a link reset the service must not wait longer than it must.

The soak (bench/soak.py) resets the link every few seconds. Each session in between delivered
its messages, yet the reconnect back-off doubled at every reset (a session shorter than
``stable_after`` never reset it) up to the 60 s cap; and when stock Prosody ended the freshly
resumed stream (``<not-well-formed/>``, or a bare close), the fresh session waited the next,
longer back-off step. Messages answered ``SUCCESS`` arrived 60 to 120 s late
(docs/reliability.md). These tests look at the waits the service *decides* (its
``xmpp_reconnect_scheduled`` log), not at how long anything took.
"""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from service_harness import eventually

from agi_xmpp.jid import parse_jid

pytestmark = pytest.mark.integration


async def _acked(svc, stanza_id: str) -> bool:
    row = await svc.services.storage.outbox_get(stanza_id)
    return row is not None and row.state == "acked"


async def test_resets_between_working_sessions_do_not_grow_the_back_off(
    stock_server, accounts, proxy_to, service_via, peer
):
    """A link reset after a session the server acknowledged messages on retries at the first step."""
    make = accounts(stock_server)
    jid, password = make("svc")
    bob_jid, bob_pw = make("bob")
    bob = await peer(stock_server, bob_jid, bob_pw)
    proxy = await proxy_to(stock_server)
    async with service_via(stock_server, proxy.port, jid, password) as svc:
        session = svc.pool.session("asterisk")
        # Every session here lasts a few seconds, as in the soak; on a slow machine one could
        # pass the 10 s after which the back-off resets anyway, and hide what is tested.
        session._stable_after = 3600.0
        with capture_logs() as logs:
            for n in range(4):
                outcome, stanza_id = await svc.pool.submit("asterisk", parse_jid(bob_jid), f"before reset {n}")
                assert outcome == "SUCCESS"
                await eventually(lambda: _acked(svc, stanza_id), 60, "the server to acknowledge it")
                reconnects = session.reconnects
                proxy.reset()
                await eventually(lambda: session.reconnects > reconnects and session.online, 120,
                                 "the service to be back online")
        delays = [e["delay"] for e in logs
                  if e["event"] == "xmpp_reconnect_scheduled" and e["failure"] in ("tcp", "timeout")]
        assert len(delays) >= 4, logs
        # The back-off's first step is 1 s with jitter on its upper half; the old code doubled
        # it at each reset (1, 2, 4, 8 s).
        assert max(delays) <= 1.0, delays
        for n in range(4):
            assert (await bob.next_message(timeout=60, sender=jid)).body.startswith("before reset")


async def test_a_resumed_stream_the_server_ends_is_replaced_at_once_by_a_fresh_session(
    stock_server, accounts, proxy_to, service_via, peer
):
    """The server ends a just-resumed stream: a fresh session follows with no back-off wait."""
    make = accounts(stock_server)
    jid, password = make("svc")
    bob_jid, bob_pw = make("bob")
    bob = await peer(stock_server, bob_jid, bob_pw)
    proxy = await proxy_to(stock_server)
    async with service_via(stock_server, proxy.port, jid, password) as svc:
        session = svc.pool.session("asterisk")
        session._stable_after = 3600.0  # as above: short sessions, whatever the machine's pace
        client = session._client
        broken = []

        def break_the_resumed_stream(_event) -> None:
            # What stock Prosody was seen doing on its own: ending the stream it has just
            # resumed. Bytes that are not XML make any server end it with <not-well-formed/>.
            if not broken:
                broken.append(True)
                client.send_raw("<<not xml")

        client.add_event_handler("session_resumed", break_the_resumed_stream)
        with capture_logs() as logs:
            await svc.call("jabber_send", "asterisk", bob_jid, "warm-up")
            await bob.next_message(timeout=60, sender=jid)
            proxy.reset()
            await eventually(lambda: broken, 60, "the stream to be resumed once")
            await eventually(lambda: any(e["event"] == "xmpp_session_online" and not e["resumed"]
                                         for e in logs), 120, "a fresh session")
            result = await svc.call("jabber_send", "asterisk", bob_jid, "after the fresh session")
            assert result.variables["JABBER_SEND_STATUS"] == "SUCCESS"
            assert (await bob.next_message(timeout=60, sender=jid)).body == "after the fresh session"
        events = [(e["event"], e.get("resumed"), e.get("failure")) for e in logs
                  if e["event"] in ("xmpp_session_online", "xmpp_session_offline", "xmpp_reconnect_scheduled")]
        resumed_at = events.index(("xmpp_session_online", True, None))
        fresh_at = events.index(("xmpp_session_online", False, None), resumed_at)
        # between the resumed stream's end and the fresh session: no back-off step was waited
        assert not [e for e in events[resumed_at:fresh_at] if e[0] == "xmpp_reconnect_scheduled"], events
