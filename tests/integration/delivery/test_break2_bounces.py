"""Break 2: error stanzas for our messages are matched to their rows, never taken as delivery.

- Both stock servers bounce a message to an account that does not exist
  (``cancel``/``service-unavailable``): the row becomes ``failed`` with the reason.
- Debian's stock ejabberd keeps 100 offline messages per user; message 101 comes back as
  ``wait``/``resource-constraint``: those rows stay ``pending`` (retried with back-off until
  ``outbox_ttl``), never ``acked``.
Both are logged at warning, counted in /metrics, visible through GET /api/messages/{id}.
"""

from __future__ import annotations

import secrets

import aiohttp
import pytest
from structlog.testing import capture_logs

from service_harness import eventually

from agi_xmpp.jid import parse_jid
from agi_xmpp.state_files import read_token

pytestmark = pytest.mark.integration


async def _row(svc, stanza_id):
    return await svc.services.storage.outbox_get(stanza_id)


async def test_message_to_a_missing_account_is_marked_failed_not_acked(
    stock_server, accounts, service_via
):
    """A permanent bounce makes the row failed, counted, logged and shown by the HTTP API."""
    jid, password = accounts(stock_server)("svc")
    nobody = f"nobody-{secrets.token_hex(4)}@{stock_server.domain}"
    async with service_via(stock_server, stock_server.c2s_port, jid, password, http=True) as svc:
        with capture_logs() as logs:
            outcome, stanza_id = await svc.pool.submit("asterisk", parse_jid(nobody), "hello?")
            assert outcome == "SUCCESS"

            async def failed() -> bool:
                return (await _row(svc, stanza_id)).state == "failed"

            await eventually(failed, 30, "the bounce to mark the row failed")
        row = await _row(svc, stanza_id)
        assert row.last_error.startswith("cancel/service-unavailable")
        assert svc.pool.counters.failed == 1
        assert any(e["event"] == "outbox_bounced" and e["log_level"] == "warning" for e in logs)
        host, port = svc.config.general.http_bind
        token = read_token(svc.config.general.state_dir)  # the API reads no message without it
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            async with http.get(f"http://{host}:{port}/api/messages/{stanza_id}") as resp:
                body = await resp.json()
            assert body["state"] == "failed" and "service-unavailable" in body["error"]
            async with http.get(f"http://{host}:{port}/metrics") as resp:
                assert "agi_xmpp_messages_failed_total 1" in await resp.text()
        # a later confirmation of the same stanza must not turn it back into acked
        await svc.pool._flush_acks()
        assert (await _row(svc, stanza_id)).state == "failed"


@pytest.mark.parametrize("stock_server", ["ejabberd-stock"], indirect=True)
async def test_ejabberd_offline_limit_bounces_are_retried_not_acked(stock_server, accounts, service_via):
    """Message 101 to an offline user on stock ejabberd bounces with wait: pending, not acked."""
    make = accounts(stock_server)
    jid, password = make("svc")
    offline_jid, _ = make("offline")

    async with service_via(stock_server, stock_server.c2s_port, jid, password) as svc:
        ids = []
        for n in range(105):
            outcome, stanza_id = await svc.pool.submit("asterisk", parse_jid(offline_jid), f"m{n}")
            ids.append(stanza_id)

        async def settled() -> bool:
            rows = [await _row(svc, i) for i in ids]
            return sum(r.state == "acked" for r in rows) == 100 and svc.pool.counters.bounced_wait >= 5

        await eventually(settled, 120, "100 rows acked and 5 bounces")
        rows = [await _row(svc, i) for i in ids]
        bounced = [r for r in rows if r.state != "acked"]
        assert len(bounced) == 5
        assert all(r.state == "pending" and r.last_error.startswith("wait/resource-constraint") for r in bounced)
        assert all(svc.pool._retry_handles.get(r.stanza_id) for r in bounced)
