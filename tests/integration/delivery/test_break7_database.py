"""Break 7: database trouble never strands messages or hangs the dialplan.

- The database is locked (SQLite write lock held by another process) when the session comes
  back: the resend fails, is restarted with back-off (visible in /health), and every QUEUED
  message is delivered once the lock is gone (before: 9/10 lost).
- A database that does not answer: jabber_send answers FAILURE with a reason within the deadline
  instead of hanging.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import aiohttp
import pytest

from service_harness import eventually

pytestmark = pytest.mark.integration


async def test_resend_survives_a_locked_database_and_delivers_everything(
    prosody, xmpp_accounts, xmpp_client, proxy_to, service_via
):
    """QUEUED rows are delivered after a resend that first met a locked database."""
    jid, password = xmpp_accounts("svc")
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    proxy = await proxy_to(prosody)
    async with service_via(prosody, proxy.port, jid, password, http=True,
                           general={"keepalive_interval": 2}) as svc:
        proxy.refuse = True
        proxy.reset()
        await eventually(lambda: not svc.pool.all_online(), 30, "the link to go down")
        bodies = [f"queued {n}" for n in range(10)]
        for body in bodies:
            result = await svc.call("jabber_send", "asterisk", bob_jid, body)
            assert result.variables["JABBER_SEND_STATUS"] == "QUEUED"
        db_path = Path(svc.config.general.state_dir) / "agi-xmpp.sqlite3"
        locked, release = threading.Event(), threading.Event()

        def hold_lock() -> None:
            conn = sqlite3.connect(db_path, timeout=30)
            conn.execute("BEGIN EXCLUSIVE")
            locked.set()
            release.wait(120)
            conn.rollback()
            conn.close()

        holder = threading.Thread(target=hold_lock, daemon=True)
        holder.start()
        assert locked.wait(30)
        try:
            proxy.refuse = False  # the session comes back while the database is locked
            jobs = svc.pool.supervisor.jobs

            def resend_failed() -> bool:
                job = jobs.get("outbox-resend-asterisk")
                return job is not None and job.restarts >= 1

            await eventually(resend_failed, 90, "the resend to meet the lock and be restarted")
            host, port = svc.config.general.http_bind
            async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{port}/health") as resp:
                shown = (await resp.json())["jobs"]
            assert shown["outbox-resend-asterisk"]["restarts"] >= 1
        finally:
            release.set()
            holder.join(30)
        for _ in bodies:
            await bob.next_message(timeout=90, sender=jid)

        async def all_acked() -> bool:
            counts = await svc.services.storage.outbox_counts()
            return counts.get(("asterisk", "pending"), 0) == 0

        await eventually(all_acked, 60, "every row to be acked")


async def test_jabber_send_answers_failure_when_the_database_hangs(prosody, xmpp_accounts, service_via):
    """With the database worker stuck, jabber_send answers FAILURE naming the database."""
    jid, password = xmpp_accounts("svc")
    async with service_via(prosody, prosody.c2s_port, jid, password) as svc:
        storage = svc.services.storage
        storage.deadline = 1.0
        stuck = threading.Event()
        # A stand-in for a hung PostgreSQL: the one worker thread does not come back.
        storage._executor.submit(stuck.wait, 60)
        try:
            result = await asyncio.wait_for(svc.call("jabber_send", "asterisk", jid, "hello"), 30)
            assert result.variables["JABBER_SEND_STATUS"] == "FAILURE"
            assert "database" in result.variables["JABBER_SEND_ERROR"]
        finally:
            stuck.set()
