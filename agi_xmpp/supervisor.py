"""Background work that must not die quietly: each job is restarted with back-off, and seen.

``Supervisor.start(name, job)`` runs ``await job()`` in a task. If it raises, the error is
logged, counted and shown (``status()``, in ``/health``), and the job starts again after a
back-off (1 s doubling to 60 s; reset once a run has lasted a minute). A job that returns ends
for good; ``stop()`` cancels everything and waits for it. Used for the XMPP sessions, the outbox
resend after a reconnect and the outbox expiry: one database error used to end the expiry for
the life of the process, and a resend that met an unavailable database left ``QUEUED`` rows to
expire unsent (issue 9, break 7).

``TaskSet`` owns short-lived background work that is not restarted (an archive write, a bounce
record, a barrier ping, a room re-join): ``spawn`` starts it, its failure is logged (never lost
with the task), and ``aclose`` waits a grace for what is still running, cancels the rest and
awaits it, so nothing started is left pending when its owner stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)

Job = Callable[[], Awaitable[None]]
T = TypeVar("T")


@dataclass(slots=True)
class JobState:
    state: str = "running"  # running / restarting / done / cancelled
    restarts: int = 0
    last_error: str = ""


class Supervisor:
    """Named jobs, each restarted with back-off after a failure (module docstring)."""

    def __init__(self, *, first_delay: float = 1.0, max_delay: float = 60.0, stable_after: float = 60.0) -> None:
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.stable_after = stable_after
        self.jobs: dict[str, JobState] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, job: Job) -> asyncio.Task[None]:
        """Run ``job`` under supervision as ``name``; a job of that name still running is replaced."""
        previous = self._tasks.get(name)
        if previous is not None and not previous.done():
            previous.cancel()
        self.jobs[name] = JobState()
        task = asyncio.create_task(self._keep_running(name, job), name=name)
        self._tasks[name] = task
        return task

    def status(self) -> dict[str, dict[str, object]]:
        """Every job that is not simply running or finished: for ``/health``."""
        return {
            name: {"state": job.state, "restarts": job.restarts, "last_error": job.last_error}
            for name, job in self.jobs.items()
            if job.state == "restarting" or job.restarts
        }

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def _keep_running(self, name: str, job: Job) -> None:
        state = self.jobs[name]
        delay = self.first_delay
        while True:
            started = time.monotonic()
            state.state = "running"
            try:
                await job()
            except asyncio.CancelledError:
                state.state = "cancelled"
                raise
            except Exception as exc:  # noqa: BLE001 - the point of a supervisor
                state.restarts += 1
                state.last_error = f"{type(exc).__name__}: {exc}"
                state.state = "restarting"
                if time.monotonic() - started >= self.stable_after:
                    delay = self.first_delay
                log.error("background_job_failed", job=name, error=state.last_error,
                          restart_in=round(delay, 1), restarts=state.restarts)
                await asyncio.sleep(delay)
                delay = min(self.max_delay, delay * 2)
                continue
            state.state = "done"
            if self._tasks.get(name) is asyncio.current_task():
                del self._tasks[name]
            return


class TaskSet:
    """Background tasks with one owner: each failure logged, all awaited or cancelled at close.

    ``log`` is the owner's logger (bound to its account, say); ``event`` names the failure."""

    __slots__ = ("_log", "_event", "_tasks", "_closed")

    def __init__(self, logger: Any = None, event: str = "background_task_failed") -> None:
        self._log = logger if logger is not None else log
        self._event = event
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T] | None:
        """Run ``coro`` as a task owned by this set; None (and a warning) once it is closed."""
        if self._closed:  # a late event after stop: start nothing that nobody would await
            coro.close()
            self._log.warning("background_task_refused", task=name, reason="stopping")
            return None
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._log.error(self._event, task=task.get_name(), error=f"{type(exc).__name__}: {exc}")

    async def aclose(self, grace: float = 0.0) -> None:
        """Let running tasks finish for ``grace`` seconds, cancel the rest, await them all."""
        self._closed = True
        if self._tasks and grace > 0:
            await asyncio.wait(list(self._tasks), timeout=grace)
        while self._tasks:  # a task may spawn another while it is cancelled: until none is left
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)
