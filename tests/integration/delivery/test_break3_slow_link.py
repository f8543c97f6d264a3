"""Break 3: a link the server reads slowly (Debian's stock Prosody: mod_limits, 10 kB/s) is
slow, not dead. The keepalive counts any progress; the outbox keeps a bounded backlog; nothing
is sent twice."""

from __future__ import annotations

import collections

import pytest

from service_harness import eventually

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("stock_server", ["prosody-stock"], indirect=True)
async def test_backlog_on_a_rate_limited_link_is_not_mistaken_for_a_dead_link(
    stock_server, accounts, service_via, peer
):
    """4 x 60 KB plus 20 small messages through stock limits: no abort, each arrives once."""
    make = accounts(stock_server)
    jid, password = make("svc")
    bob_jid, bob_pw = make("bob")
    bob = await peer(stock_server, bob_jid, bob_pw)
    # keepalive every 2 s, answer due within 1 s: the backlog (~25 s at 10 kB/s) used to fail it
    async with service_via(stock_server, stock_server.c2s_port, jid, password,
                           general={"keepalive_interval": 2}) as svc:
        session = svc.pool.session("asterisk")
        bodies = [f"big {n} " + "x" * 60_000 for n in range(4)] + [f"small {n}" for n in range(20)]
        for body in bodies:
            result = await svc.call("jabber_send", "asterisk", bob_jid, body)
            assert result.variables["JABBER_SEND_STATUS"] == "SUCCESS"

        def all_arrived() -> bool:
            return {m.body for m in bob.messages} >= set(bodies)

        await eventually(all_arrived, 180, "every message at the recipient")

        async def all_acked() -> bool:
            counts = await svc.services.storage.outbox_counts()
            return counts.get(("asterisk", "acked"), 0) == len(bodies)

        await eventually(all_acked, 120, "every row acked")
        copies = collections.Counter(m.body for m in bob.messages)
        assert max(copies.values()) == 1, "a message was delivered twice"
        assert session.reconnects == 0, f"the link was dropped: {session.last_error}"
