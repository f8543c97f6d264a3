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


async def test_task_set_logs_a_failure_and_leaves_nothing_pending_at_close():
    """A failing task of a TaskSet is logged with its name; aclose() lets running tasks finish
    within the grace, cancels the rest and awaits them, so none is left pending."""
    from structlog.testing import capture_logs

    from agi_xmpp.supervisor import TaskSet

    tasks = TaskSet()
    finished = []

    async def fails() -> None:
        raise RuntimeError("database is locked")

    async def quick() -> None:
        await asyncio.sleep(0.01)
        finished.append("quick")

    async def forever() -> None:
        await asyncio.sleep(3600)

    before = asyncio.all_tasks()
    with capture_logs() as logs:
        tasks.spawn(fails(), "archive-in")
        tasks.spawn(quick(), "quick")
        slow = tasks.spawn(forever(), "forever")
        await asyncio.sleep(0)
        await tasks.aclose(grace=0.5)
        assert tasks.spawn(forever(), "late") is None  # closed: nothing new starts
    assert finished == ["quick"] and slow.cancelled()
    assert asyncio.all_tasks() - before == set()
    failures = [e for e in logs if e["event"] == "background_task_failed"]
    assert failures == [{"event": "background_task_failed", "log_level": "error", "task": "archive-in",
                         "error": "RuntimeError: database is locked"}]
    assert any(e["event"] == "background_task_refused" and e["task"] == "late" for e in logs)
