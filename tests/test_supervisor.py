"""Supervised background jobs: a failure restarts the job with back-off and is visible."""

from __future__ import annotations

import asyncio

from agi_xmpp.supervisor import Supervisor


async def test_failed_job_is_restarted_and_shown():
    """A job that raises is logged, shown as restarting, and runs again (expiry after a DB error)."""
    supervisor = Supervisor(first_delay=0.01)
    runs = 0
    second_run = asyncio.Event()

    async def job() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("database is locked")
        second_run.set()
        await asyncio.sleep(3600)

    supervisor.start("outbox-expiry", job)
    await asyncio.wait_for(second_run.wait(), 30)
    assert supervisor.status() == {
        "outbox-expiry": {"state": "running", "restarts": 1, "last_error": "RuntimeError: database is locked"}
    }
    await supervisor.stop()


async def test_job_that_returns_is_done_and_not_restarted():
    """A job that ends normally is not run again and not listed as a problem."""
    supervisor = Supervisor(first_delay=0.01)
    runs = 0

    async def job() -> None:
        nonlocal runs
        runs += 1

    await supervisor.start("once", job)
    assert runs == 1 and supervisor.jobs["once"].state == "done" and supervisor.status() == {}
    await supervisor.stop()
