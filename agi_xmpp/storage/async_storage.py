"""``AsyncStorage``: ``Storage`` for the event loop, every call on ONE worker thread, each within a
deadline, and the append-only writes group-committed.

Group commit (decision)
-----------------------
``AsyncStorage`` batches the append-only writes (``outbox_add``, ``archive_add``,
``presence_log_add``): callers enqueue their row and wait; the worker thread takes everything
queued so far (up to ``_MAX_BATCH`` rows) and inserts it in ONE transaction, then resolves each
caller only after that commit. Nobody waits for a batch to fill: while one commit is in progress
the next batch accumulates by itself, so an idle system commits each row at once and a busy one
amortises the commit (an fsync on PostgreSQL/MariaDB) over many rows. If the batch fails because
of one row (a duplicate stanza id, a constraint), the rows are retried one by one so only the
offending caller gets the error; if the database is unreachable every caller gets it at once.
It is kept because it is small and the 1,000 ``jabber_send``/s target needs it: measured
(docs/storage.md), one sender gets ~1,000 sends/s on SQLite and ~250 on PostgreSQL, where every
commit waits for a disk flush; 100 concurrent senders get ~12,000 and ~5,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import DataError, IntegrityError

from ..config import DirectoryEntry
from ..errors import StorageError
from .archive import ArchivedMessage, archive_insert
from .core import RowInsert
from .directory import EntryLike
from .outbox import OutboxItem, outbox_insert
from .presence_log import PresenceRecord, presence_insert
from .repository import Storage

P = ParamSpec("P")
T = TypeVar("T")

# Bound on rows per group-commit transaction.
_MAX_BATCH = 1000


class AsyncStorage:
    """``Storage`` for the event loop: each method is a coroutine run on ONE worker thread.

    One thread means SQLite sees a single writer and calls run in the order they were made.
    ``outbox_add``, ``archive_add`` and ``presence_log_add`` are group-committed (module
    docstring). ``aclose()`` waits for queued work, then closes the wrapped ``Storage``.
    """

    def __init__(self, storage: Storage, *, deadline: float = 10.0) -> None:
        self.storage = storage
        # Every call answers within ``deadline`` seconds or raises StorageError: a hung database
        # must not hang jabber_send, /metrics or /api/presence with it (the worker thread may
        # still be stuck; later calls queue behind it and time out the same way).
        self.deadline = deadline
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agi-xmpp-storage")
        self._lock = threading.Lock()
        self._queued: list[tuple[RowInsert, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._flush_scheduled = False
        self._closed = False
        self.group_commits = 0  # transactions used by group-committed writes
        self.group_commit_rows = 0  # rows they carried

    def __repr__(self) -> str:
        return (
            f"<AsyncStorage {self.storage} [{len(self._queued)} queued, "
            f"{self.group_commit_rows} rows in {self.group_commits} group commits]>"
        )

    async def __aenter__(self) -> AsyncStorage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Finish everything queued, close the ``Storage``, stop the worker thread."""
        if self._closed:
            return
        self._closed = True
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._drain_and_close)
        finally:
            self._executor.shutdown(wait=False)

    # Explicit one-liners rather than __getattr__, so type checkers and readers see every method;
    # tests/test_storage.py checks that none of Storage's public methods is missing here.

    async def create_all(self) -> None:
        return await self._call(self.storage.create_all, deadline=None)

    async def outbox_add(
        self, account: str, to: str, body: str, stanza_id: str, kind: str = "chat"
    ) -> None:
        await self._group_commit(outbox_insert(account, to, body, stanza_id, kind))

    async def outbox_pending(self, account: str, created_after: datetime) -> list[OutboxItem]:
        return await self._call(self.storage.outbox_pending, account, created_after)

    async def outbox_get(self, stanza_id: str) -> OutboxItem | None:
        return await self._call(self.storage.outbox_get, stanza_id)

    async def outbox_in_states(self, states: Iterable[str]) -> list[OutboxItem]:
        return await self._call(self.storage.outbox_in_states, list(states))

    async def outbox_acked(self, stanza_ids: Iterable[str]) -> int:
        return await self._call(self.storage.outbox_acked, list(stanza_ids))

    async def outbox_bounced(self, stanza_id: str, *, permanent: bool, reason: str) -> OutboxItem | None:
        return await self._call(self.storage.outbox_bounced, stanza_id, permanent=permanent, reason=reason)

    async def outbox_attempted(self, stanza_id: str) -> None:
        return await self._call(self.storage.outbox_attempted, stanza_id)

    async def outbox_expire(self, created_before: datetime) -> int:
        return await self._call(self.storage.outbox_expire, created_before)

    async def outbox_purge(self, created_before: datetime) -> int:
        return await self._call(self.storage.outbox_purge, created_before)

    async def outbox_counts(self) -> dict[tuple[str, str], int]:
        return await self._call(self.storage.outbox_counts)

    async def archive_add(
        self, direction: str, account: str, peer: str, body: str, stanza_id: str | None
    ) -> None:
        await self._group_commit(archive_insert(direction, account, peer, body, stanza_id))

    async def archive_purge(self, created_before: datetime) -> int:
        return await self._call(self.storage.archive_purge, created_before)

    async def archive_delivered(self, stanza_id: str) -> int:
        return await self._call(self.storage.archive_delivered, stanza_id)

    async def archive_recent(
        self, account: str, peer_bare: str, limit: int = 3
    ) -> list[ArchivedMessage]:
        return await self._call(self.storage.archive_recent, account, peer_bare, limit)

    async def directory_list(self) -> list[DirectoryEntry]:
        return await self._call(self.storage.directory_list)

    async def directory_get(self, extension: str) -> DirectoryEntry | None:
        return await self._call(self.storage.directory_get, extension)

    async def directory_find_jid(self, bare: str) -> DirectoryEntry | None:
        return await self._call(self.storage.directory_find_jid, bare)

    async def directory_find_mailbox(self, mailbox: str) -> DirectoryEntry | None:
        return await self._call(self.storage.directory_find_mailbox, mailbox)

    async def directory_put(self, entry: EntryLike, replace: bool = False) -> None:
        return await self._call(self.storage.directory_put, entry, replace)

    async def directory_remove(self, extension: str) -> bool:
        return await self._call(self.storage.directory_remove, extension)

    async def directory_load_config(self, entries: Iterable[EntryLike]) -> tuple[str, ...]:
        return await self._call(self.storage.directory_load_config, list(entries))

    async def presence_log_add(
        self,
        account: str,
        jid: str,
        show: str,
        priority: int,
        status: str,
        at: datetime | None = None,
    ) -> None:
        await self._group_commit(presence_insert(account, jid, show, priority, status, at))

    async def presence_log_recent(
        self, account: str, bare: str, limit: int = 20
    ) -> list[PresenceRecord]:
        return await self._call(self.storage.presence_log_recent, account, bare, limit)

    async def voicemail_notified(self, mailbox: str, msg_ids: Iterable[str]) -> set[str]:
        return await self._call(self.storage.voicemail_notified, mailbox, list(msg_ids))

    async def voicemail_mark_notified(self, mailbox: str, msg_id: str) -> bool:
        return await self._call(self.storage.voicemail_mark_notified, mailbox, msg_id)

    # -- internals ---------------------------------------------------------------------------------

    async def _call(
        self, fn: Callable[P, T], /, *args: P.args, deadline: float | None | bool = True, **kwargs: P.kwargs
    ) -> T:
        if self._closed:
            raise StorageError("storage is closed")
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        return await self._within_deadline(work, fn.__name__, deadline)

    async def _within_deadline(self, work: Awaitable[T], op: str, deadline: float | None | bool = True) -> T:
        limit = self.deadline if deadline is True else deadline
        if limit is None or limit is False:
            return await work
        # asyncio.timeout(), not wait_for(): on Python 3.11 wait_for() returns the result when the
        # work completes in the pass its caller is cancelled, and the cancellation is lost (a
        # background job then went on and the service's stop waited for it; CPython gh-86296).
        try:
            async with asyncio.timeout(limit):
                return await work
        except TimeoutError:
            raise StorageError(f"{op}: the database did not answer within {limit:g} s") from None

    async def _group_commit(self, item: RowInsert) -> None:
        """Queue one row; return once the transaction carrying it has committed."""
        if self._closed:
            raise StorageError("storage is closed")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._queued.append((item, loop, done))
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
        if schedule:
            # Not awaited on purpose: _flush never raises; its outcome reaches every caller
            # through their own future.
            self._executor.submit(self._flush)
        # A caller cancelled (or timed out) here may still have its row committed: at-least-once,
        # never lost; shielded so the commit's outcome still reaches the worker's bookkeeping.
        await self._within_deadline(asyncio.shield(done), item.op)

    def _drain_and_close(self) -> None:
        """Worker thread, last job: commit whatever is still queued, then close the Storage."""
        while self._queued:
            self._flush(resubmit=False)
        self.storage.close()

    def _flush(self, resubmit: bool = True) -> None:
        """Worker thread: commit everything queued so far (up to _MAX_BATCH) in one transaction."""
        with self._lock:
            batch, self._queued = self._queued[:_MAX_BATCH], self._queued[_MAX_BATCH:]
            more = resubmit and bool(self._queued)
            self._flush_scheduled = more
        if more:
            # The rest goes to the back of the queue, so reads queued meanwhile are not starved.
            self._executor.submit(self._flush)
        if not batch:
            return
        outcomes: list[BaseException | None]
        try:
            self.storage._insert_many([item for item, _, _ in batch])
            outcomes = [None] * len(batch)
            self.group_commits += 1
            self.group_commit_rows += len(batch)
        except StorageError as exc:
            if len(batch) > 1 and isinstance(exc.__cause__, (IntegrityError, DataError)):
                outcomes = [self._insert_one(item) for item, _, _ in batch]
            elif len(batch) == 1:
                outcomes = [exc]
            else:  # the database itself failed: every caller gets its own copy of the error
                outcomes = [_copy_error(exc) for _ in batch]
        except BaseException as exc:  # a bug: still answer every caller rather than hang them
            outcomes = [exc for _ in batch]
        for (_, loop, done), outcome in zip(batch, outcomes, strict=True):
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(_settle, done, outcome)

    def _insert_one(self, item: RowInsert) -> StorageError | None:
        try:
            self.storage._insert_many([item])
        except StorageError as exc:
            return exc
        self.group_commits += 1
        self.group_commit_rows += 1
        return None


def _copy_error(exc: StorageError) -> StorageError:
    copy = StorageError(str(exc))
    copy.__cause__ = exc.__cause__
    return copy


def _settle(done: asyncio.Future[None], outcome: BaseException | None) -> None:
    if done.done():  # the caller was cancelled
        return
    if outcome is None:
        done.set_result(None)
    else:
        done.set_exception(outcome)

