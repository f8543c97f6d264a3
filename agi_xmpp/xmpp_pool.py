"""The persistent pool of XMPP sessions, one per configured account, and the durable outbox.

Theory of operation
-------------------
Sending (``send``): the message is written to the ``outbox`` table *first* (committed), then
handed to the live session if there is one (``SUCCESS``) or left for later (``QUEUED``). A row
stays ``pending`` until the session confirms the server has it (``stanza_acked``). Nothing that
was accepted can be lost by a crash of ours or the server's: the row outlives both.

Retransmission: when a session comes up *fresh* (a new stream, not a resumed one), every pending
row of that account younger than ``outbox_ttl`` is sent again with its original stanza id, oldest
first, so a receiver can drop duplicates by id. On a *resumed* stream slixmpp replays its own
unacknowledged stanzas, so only rows never written on this stream are sent (those QUEUED while it
was down). Rows older than ``outbox_ttl`` become ``expired``.
Groupchat rows go to a room only after its join is confirmed (a room rejects messages from
non-occupants): the resend first joins every room they address, with the nick the session
remembers for it (else the default nick, e.g. after our own restart); a room that refuses keeps
its rows pending for the next fresh session.

Flow control: a session takes new messages only while its ``DeliveryTracker`` window has room
(what the server has not confirmed stays under 200 messages and 64 KB). A ``jabber_send`` made
while the window is full is still ``SUCCESS`` (stored, and the session is live) and waits in a
per-account line, written as confirmations arrive; the resend waits for room the same way.

Bounces: a ``<message type='error'>`` carrying one of our ids is matched to its row. ``wait``
(RFC 6120 §8.3.2: "retry after waiting", e.g. ejabberd's full offline queue) makes the row
pending again and it is written again after a back-off (5 s doubling to 5 min) until
``outbox_ttl``; any other type marks it ``failed`` with the condition and text. Both are logged
at warning and counted (``bounced_wait``, ``failed``).

Incoming: the sessions report roster, presence and messages here; presence goes to the
``PresenceCache``, messages to the account's ``Inbox`` (and the archive). This is the only place
where XMPP events meet storage.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import StrEnum

import structlog

from .archive_quota import ArchiveQuota
from .config import AccountConfig, Config
from .errors import InvalidJid, NotOnline, RoomJoinFailed, StorageError
from .inbox import InboundMessage, Inbox, Matcher
from .jid import Jid, parse_jid
from .presence import PresenceCache
from .storage import AsyncStorage, OutboxItem
from .supervisor import Supervisor, TaskSet
from .xmpp_session import Backoff, XmppSession

log = structlog.get_logger(__name__)


class SendOutcome(StrEnum):
    SUCCESS = "SUCCESS"
    QUEUED = "QUEUED"
    FAILURE = "FAILURE"  # only from confirm(): the server bounced it
    DELIVERED = "DELIVERED"  # only from confirm(receipt=True): the recipient's client has it


@dataclass(slots=True)
class _Confirmation:
    """What ``confirm()`` waits for about one message."""

    acked: asyncio.Event = field(default_factory=asyncio.Event)
    delivered: asyncio.Event = field(default_factory=asyncio.Event)
    failed: str = ""  # the bounce's reason


@dataclass(slots=True)
class PoolCounters:
    sent: int = 0
    queued: int = 0
    acked: int = 0
    retransmitted: int = 0
    received: int = 0
    expired: int = 0
    bounced_wait: int = 0  # error stanzas of type wait: the row is retried later
    failed: int = 0  # other error stanzas: the row is failed
    delivered: int = 0  # XEP-0184 receipts received


class XmppPool:
    """Accounts → sessions; the outbox; the bridge from XMPP events to cache, inbox and archive."""

    def __init__(
        self,
        config: Config,
        storage: AsyncStorage,
        presence: PresenceCache,
        *,
        session_factory: Callable[[AccountConfig, "XmppPool"], XmppSession] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.storage = storage
        self.presence = presence
        self.counters = PoolCounters()
        self._clock = clock
        general = config.general
        factory = session_factory or (
            lambda account, pool: XmppSession(
                account,
                pool,
                keepalive_interval=general.keepalive_interval,
                # a ping unanswered for a third of the interval (at most 20 s) means a dead link
                keepalive_timeout=min(20.0, max(1.0, general.keepalive_interval / 3)),
                # presence survives a link drop only while a resumption is plausible
                resume_grace=min(30.0, float(general.keepalive_interval)),
                backoff=Backoff(cap=float(general.reconnect_max_delay)),
            )
        )
        self.sessions: dict[str, XmppSession] = {
            name: factory(account, self) for name, account in config.accounts.items()
        }
        self.inboxes: dict[str, Inbox] = {
            name: Inbox(ttl=float(account.timeout), clock=clock) for name, account in config.accounts.items()
        }
        self.archive_quota: ArchiveQuota | None = None  # per-sender quota (archive_quota.py)
        self._retry_handles: dict[str, asyncio.TimerHandle] = {}
        # Accepted while the session's window was full: (stanza id, to, body, kind), in order.
        self._waiting: dict[str, collections.deque[tuple[str, str, str, str]]] = {
            name: collections.deque() for name in self.sessions
        }
        self._window_events: dict[str, asyncio.Event] = {name: asyncio.Event() for name in self.sessions}
        self._confirmations: dict[str, _Confirmation] = {}
        self._wants_receipt: set[str] = set()
        self.supervisor = Supervisor()
        # Archive writes, bounce records and retries, the ack flush: awaited (or cancelled) at stop.
        self._tasks = TaskSet(log, "pool_background_task_failed")
        self._message_hooks: list[Callable[[str, InboundMessage], bool]] = []
        self._presence_hooks: list[Callable[[str, str | None], None]] = []
        self._ack_batch: list[str] = []
        self._ack_flush: asyncio.Task[None] | None = None
        # Ids confirmed while a resend runs: its list of pending rows may predate their commit.
        self._acked_during_resend: dict[str, set[str]] = {}

    def __repr__(self) -> str:
        online = sum(1 for s in self.sessions.values() if s.online)
        return f"<XmppPool [{online} online, {len(self.sessions) - online} offline]>"

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        for session in self.sessions.values():
            self.supervisor.start(f"xmpp-{session.name}", session.run)
        self.supervisor.start("outbox-expiry", self._expire_loop)

    async def stop(self) -> None:
        for handle in self._retry_handles.values():
            handle.cancel()
        self._retry_handles.clear()
        await asyncio.gather(*(s.stop() for s in self.sessions.values()), return_exceptions=True)
        await self.supervisor.stop()
        await asyncio.gather(*(s.close_tasks() for s in self.sessions.values()))
        # The last confirmations and archive writes get 2 s; what is cancelled only costs a
        # duplicate after a restart (an unflushed ack) or one archive line.
        await self._tasks.aclose(grace=2.0)

    def session(self, account: str) -> XmppSession:
        return self.sessions[account]

    def add_message_hook(self, hook: Callable[[str, InboundMessage], bool]) -> None:
        """A hook sees each incoming message first; returning True consumes it (chat commands)."""
        self._message_hooks.append(hook)

    def add_presence_hook(self, hook: Callable[[str, str | None], None]) -> None:
        """``hook(account, bare)`` after each presence change; ``bare`` None: every contact
        changed (the session ended). Called synchronously: it must only note the change."""
        self._presence_hooks.append(hook)

    # -- sending --------------------------------------------------------------------------------

    async def send(self, account: str, to: Jid, body: str, kind: str = "chat") -> SendOutcome:
        """Durably accept one message; SUCCESS if a live session took it, else QUEUED."""
        outcome, _stanza_id = await self.submit(account, to, body, kind)
        return outcome

    async def submit(
        self, account: str, to: Jid, body: str, kind: str = "chat", *, confirm: bool = False,
        receipt: bool = False,
    ) -> tuple[SendOutcome, str]:
        """``send`` that also returns the stanza id (to follow the message: ``message_status``).
        ``confirm``: the caller will await ``confirm(id)``; ``receipt`` also asks the recipient's
        client for a XEP-0184 receipt."""
        stanza_id = f"agx-{uuid.uuid4().hex}"
        if confirm or receipt:
            self._confirmations[stanza_id] = _Confirmation()
        if receipt:
            self._wants_receipt.add(stanza_id)
        # Both rows ride the same group commit; the reply waits for the outbox row to be durable.
        try:
            await asyncio.gather(
                self.storage.outbox_add(account, to.full, body, stanza_id, kind=kind),
                self.storage.archive_add("out", account, to.bare, body, stanza_id),
            )
        except BaseException:
            self.forget_confirmation(stanza_id)
            raise
        session = self.sessions[account]
        waiting = self._waiting[account]
        if session.online and (waiting or not session.delivery.can_write()):
            waiting.append((stanza_id, to.full, body, kind))  # written as the window opens
            self.counters.sent += 1
            return SendOutcome.SUCCESS, stanza_id
        try:
            self._write(session, to.full, body, stanza_id, kind)
        except NotOnline:
            self.counters.queued += 1
            return SendOutcome.QUEUED, stanza_id
        self.counters.sent += 1
        return SendOutcome.SUCCESS, stanza_id

    async def message_status(self, stanza_id: str) -> dict[str, object] | None:
        """What happened to one message we sent (HTTP ``GET /api/messages/{id}``), or None."""
        row = await self.storage.outbox_get(stanza_id)
        if row is None:
            return None
        session = self.sessions.get(row.account)
        stage = session.delivery.stage(stanza_id) if session is not None else None
        return {
            "id": row.stanza_id,
            "account": row.account,
            "to": row.to_jid,
            "kind": row.kind.value,
            "state": row.state.value,
            "attempts": row.attempts,
            "created_at": row.created_at.isoformat(),
            "acked_at": row.acked_at.isoformat() if row.acked_at else None,
            "error": row.last_error,
            "stream": stage.value if stage is not None else None,
            "retry_scheduled": stanza_id in self._retry_handles,
        }

    def _write(self, session: XmppSession, to: str, body: str, stanza_id: str, kind: str) -> None:
        session.send_message(to, body, stanza_id, kind, receipt=stanza_id in self._wants_receipt)

    async def confirm(self, stanza_id: str, timeout: float, *, receipt: bool = False) -> tuple[SendOutcome, str]:
        """Wait (up to ``timeout``) for proof about a message ``submit`` accepted.

        (SUCCESS, "") once the server acknowledged it; (DELIVERED, "") once the recipient's client
        sent a receipt (``receipt``; SUCCESS if only the server confirmed in time); (FAILURE,
        reason) if it bounced; (QUEUED, why) when nothing was proven in time: the row stays
        pending and is sent on, as any QUEUED message."""
        waiting = self._confirmations.get(stanza_id)
        if waiting is None:
            raise KeyError(stanza_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        goal = waiting.delivered if receipt else waiting.acked
        try:
            with contextlib.suppress(TimeoutError):  # not wait_for(): storage/async_storage.py
                async with asyncio.timeout(timeout):
                    await goal.wait()
            if not waiting.failed and not goal.is_set() and receipt and waiting.acked.is_set():
                pass  # acked, no receipt in time: SUCCESS below
            # a bounce usually follows the server's ack at once: give it a moment to arrive
            if not waiting.failed and waiting.acked.is_set() and not receipt:
                await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))
        finally:
            self._confirmations.pop(stanza_id, None)
            self._wants_receipt.discard(stanza_id)
        if waiting.failed:
            return SendOutcome.FAILURE, waiting.failed
        if waiting.delivered.is_set():
            return SendOutcome.DELIVERED, ""
        if waiting.acked.is_set():
            return SendOutcome.SUCCESS, ""
        return SendOutcome.QUEUED, f"not confirmed by the server within {timeout:g} s (still queued)"

    def forget_confirmation(self, stanza_id: str) -> None:
        """The caller will not ``confirm()`` this id."""
        self._confirmations.pop(stanza_id, None)
        self._wants_receipt.discard(stanza_id)

    async def _resend_pending(self, account: str) -> None:
        """After a session comes online: send every pending row not in flight on this stream
        (all of them after a fresh session), with its original id."""
        session = self.sessions[account]
        if not session.online:
            return  # the next session_online starts a new resend
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=self.config.general.outbox_ttl)
        # Acks not yet handed to storage are not in the query's view; later ones add themselves.
        acked = self._acked_during_resend[account] = set(self._ack_batch)
        try:
            await self._resend_rows(account, session, cutoff, acked)
        finally:
            if self._acked_during_resend.get(account) is acked:
                del self._acked_during_resend[account]

    async def _resend_rows(
        self, account: str, session: XmppSession, cutoff: datetime, acked: set[str]
    ) -> None:
        pending = await self.storage.outbox_pending(account, cutoff)
        # Groupchat rows need their room joined first, or the room rejects them: the join is
        # sent and confirmed before any of them is written (shared with the session's re-join).
        refused = await self._join_rooms_for(session, pending)
        delivery = session.delivery
        sent = 0
        for item in pending:
            if delivery.on_stream(item.stanza_id) or item.stanza_id in acked or item.stanza_id in delivery.confirmed:
                continue  # on this stream already, or confirmed (maybe not yet committed)
            if item.stanza_id in self._retry_handles:
                continue  # bounced with type wait: its back-off decides when
            if item.kind == "groupchat" and item.to_jid in refused:
                continue  # stays pending: retried on the next fresh session, until outbox_ttl
            try:
                await self._wait_window(session)
                if delivery.on_stream(item.stanza_id) or item.stanza_id in delivery.confirmed:
                    continue  # written from the waiting line meanwhile
                self._write(session, item.to_jid, item.body, item.stanza_id, item.kind)
            except NotOnline:
                break  # the stream dropped again; the next fresh session resumes the job
            await self.storage.outbox_attempted(item.stanza_id)
            sent += 1
        if sent:
            self.counters.retransmitted += sent
            log.info("outbox_retransmitted", account=account, count=sent)

    async def _wait_window(self, session: XmppSession) -> None:
        """Until the session's window has room (raises NotOnline if the session goes away)."""
        event = self._window_events[session.name]
        while session.online and not session.delivery.can_write():
            event.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await event.wait()
        if not session.online:
            raise NotOnline(session.name)

    def _drain_waiting(self, account: str) -> None:
        """Write what waits for room, while there is room."""
        session = self.sessions[account]
        waiting = self._waiting[account]
        delivery = session.delivery
        while waiting and session.online and delivery.can_write():
            stanza_id, to, body, kind = waiting.popleft()
            if delivery.on_stream(stanza_id) or stanza_id in delivery.confirmed:
                continue
            try:
                self._write(session, to, body, stanza_id, kind)
            except NotOnline:
                return

    async def _join_rooms_for(self, session: XmppSession, items: list[OutboxItem]) -> set[str]:
        """Join every room that pending groupchat rows go to; returns the rooms that refused."""
        rooms = sorted({item.to_jid for item in items if item.kind == "groupchat"})

        async def join(room: str) -> str | None:
            try:
                await session.join_room(parse_jid(room))  # the remembered nick, else the default
            except (RoomJoinFailed, InvalidJid) as exc:
                log.warning("outbox_room_join_failed", account=session.name, room=room, error=str(exc))
                return room
            return None

        return {room for room in await asyncio.gather(*map(join, rooms)) if room is not None}

    async def _expire_loop(self) -> None:
        ttl = self.config.general.outbox_ttl
        while True:
            cutoff = datetime.now(timezone.utc) - timedelta(seconds=ttl)
            expired = await self.storage.outbox_expire(cutoff)
            if expired:
                self.counters.expired += expired
                log.warning("outbox_expired", count=expired, ttl=ttl)
            await asyncio.sleep(min(60.0, max(1.0, ttl / 10)))

    # -- receiving (for jabber_receive and chat_menu) -------------------------------------------

    async def receive(
        self, account: str, matcher: Matcher, timeout: float, cancelled: asyncio.Event
    ) -> InboundMessage | None:
        """The oldest buffered match, or the next one to arrive within ``timeout``; None if not.

        When ``cancelled`` is set (the caller hung up) the wait ends at once, and a message that
        arrives afterwards stays in the buffer for others."""
        inbox = self.inboxes[account]
        message = inbox.take(matcher)
        if message is not None:
            return message
        loop = asyncio.get_running_loop()
        future: asyncio.Future[InboundMessage] = loop.create_future()

        def deliver(msg: InboundMessage) -> bool:
            if future.done():
                return False
            future.set_result(msg)
            return True

        waiter = inbox.add_waiter(matcher, deliver)
        # Owned by this call: it ends with it (cancelled, or done when the caller hung up).
        cancel_wait = asyncio.ensure_future(cancelled.wait())
        try:
            await asyncio.wait((future, cancel_wait), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            cancel_wait.cancel()
        if future.done():
            return future.result()
        future.cancel()
        return None

    # -- SessionListener ------------------------------------------------------------------------

    def session_online(self, account: str, *, resumed: bool) -> None:
        # What waited for room is a pending row: the resend below writes it, in order.
        self._waiting[account].clear()
        # Resumed too: what was QUEUED while the stream was down was never written on it, so
        # slixmpp has nothing to replay; _resend_pending skips what is in flight on this stream.
        # Supervised: a database error restarts it with back-off while the session is online
        # (it used to end the resend, and QUEUED rows expired unsent).
        self.supervisor.start(f"outbox-resend-{account}", lambda: self._resend_pending(account))

    def session_offline(self, account: str, *, reason: str) -> None:
        self._waiting[account].clear()  # pending rows: resent when the session is back
        self._window_events[account].set()
        log.info("pool_session_offline", account=account, reason=reason)

    def session_ended(self, account: str) -> None:
        # docs/dialplan.md (jabber_status): an unresumed session's presence is stale; contacts read 6 until re-sent.
        self.presence.drop_presence(account)
        for hook in self._presence_hooks:
            hook(account, None)

    def presence_stale(self, account: str) -> None:
        """Offline past the grace (the stream may still be resumed): presence can't be trusted."""
        self.presence.drop_presence(account)

    def roster_replaced(self, account: str, bare_jids: set[str]) -> None:
        self.presence.set_roster(account, bare_jids)

    def presence_received(
        self, account: str, jid: Jid, *, available: bool, show: str | None, priority: int, status: str
    ) -> None:
        self.presence.update(account, jid, available=available, show=show, priority=priority, status=status)
        for hook in self._presence_hooks:
            hook(account, jid.bare)

    def message_received(self, account: str, message: InboundMessage) -> None:
        self.counters.received += 1
        for hook in self._message_hooks:
            if hook(account, message):
                return
        inbox = self.inboxes[account]
        inbox.put(message)
        quota = self.archive_quota  # per-sender archive quota (archive_quota.py, set by services)
        if quota is not None and not quota.admit(
            account, message.sender.bare, len(message.body), inbox.is_trusted is None or inbox.is_trusted(message)
        ):
            return
        self._tasks.spawn(
            self.storage.archive_add("in", account, message.sender.bare, message.body, message.stanza_id),
            "archive-in",
        )

    def stanza_acked(self, account: str, stanza_id: str) -> None:
        waiting = self._confirmations.get(stanza_id)
        if waiting is not None:
            waiting.acked.set()
        self._window_events[account].set()
        if self._waiting[account]:
            self._drain_waiting(account)
        resend_view = self._acked_during_resend.get(account)
        if resend_view is not None:
            resend_view.add(stanza_id)
        self._ack_batch.append(stanza_id)
        if self._ack_flush is None or self._ack_flush.done():
            self._ack_flush = self._tasks.spawn(self._flush_acks(), "outbox-ack-flush")

    async def _flush_acks(self) -> None:
        """Mark confirmed rows in batches: one UPDATE per burst, not one per message."""
        await asyncio.sleep(0)
        while self._ack_batch:
            batch, self._ack_batch = self._ack_batch, []
            try:
                count = await self.storage.outbox_acked(batch)
            except StorageError as exc:
                # Not lost: the rows stay pending (at worst re-sent with the same id later);
                # keep the ids so the next confirmation's flush tries them again.
                self._ack_batch[:0] = batch
                log.error("outbox_ack_failed", count=len(batch), error=str(exc))
                await asyncio.sleep(1.0)  # retried until the database answers again
                continue
            self.counters.acked += count
            for session in self.sessions.values():
                session.delivery.forget(batch)

    def stanza_bounced(
        self, account: str, stanza_id: str, *, error_type: str, condition: str, text: str
    ) -> None:
        """An error stanza for one of our messages: retry it later (wait) or mark it failed."""
        permanent = error_type != "wait"
        reason = f"{error_type}/{condition}" + (f": {text}" if text else "")
        waiting = self._confirmations.get(stanza_id)
        if waiting is not None:
            waiting.failed = reason
            waiting.acked.set()
            waiting.delivered.set()
        if stanza_id in self._ack_batch:
            self._ack_batch = [i for i in self._ack_batch if i != stanza_id]
        if permanent:
            self.counters.failed += 1
        else:
            self.counters.bounced_wait += 1
        log.warning("outbox_bounced", account=account, stanza_id=stanza_id, error=reason,
                    retry=not permanent)
        self._tasks.spawn(self._record_bounce(account, stanza_id, permanent, reason), "outbox-bounce")

    def receipt_received(self, account: str, stanza_id: str) -> None:
        """XEP-0184: the recipient's client confirmed one of our messages."""
        waiting = self._confirmations.get(stanza_id)
        if waiting is not None:
            waiting.delivered.set()
        self.counters.delivered += 1
        self._tasks.spawn(self.storage.archive_delivered(stanza_id), "archive-delivered")

    async def _record_bounce(self, account: str, stanza_id: str, permanent: bool, reason: str) -> None:
        row = await self.storage.outbox_bounced(stanza_id, permanent=permanent, reason=reason)
        if row is None or permanent or row.state != "pending":
            return
        # RFC 6120 §8.3.2 "wait": retry after waiting. Back-off from the attempts made so far.
        delay = min(300.0, 5.0 * 2 ** min(row.attempts, 6))
        previous = self._retry_handles.pop(stanza_id, None)
        if previous is not None:
            previous.cancel()
        loop = asyncio.get_running_loop()
        self._retry_handles[stanza_id] = loop.call_later(
            delay, lambda: self._tasks.spawn(self._retry_bounced(account, stanza_id), "outbox-bounce-retry")
        )

    async def _retry_bounced(self, account: str, stanza_id: str) -> None:
        self._retry_handles.pop(stanza_id, None)
        try:
            row = await self.storage.outbox_get(stanza_id)
        except StorageError as exc:
            log.error("outbox_retry_failed", stanza_id=stanza_id, error=str(exc))
            return
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=self.config.general.outbox_ttl)
        if row is None or row.state != "pending" or row.created_at < cutoff:
            return  # acked meanwhile, failed, or its time is up (the expiry marks it)
        session = self.sessions[account]
        try:
            self._write(session, row.to_jid, row.body, row.stanza_id, row.kind)
        except NotOnline:
            return  # stays pending: the next session's resend writes it
        await self.storage.outbox_attempted(stanza_id)
        self.counters.retransmitted += 1

    # -- views for show commands, health and metrics --------------------------------------------

    def connections(self) -> list[dict[str, object]]:
        now = asyncio.get_running_loop().time()
        rows = []
        for name, session in self.sessions.items():
            rows.append(
                {
                    "account": name,
                    "jid": session.bare_jid,
                    "state": session.state,
                    "connected_for": None
                    if session.connected_since is None
                    else round(now - session.connected_since, 1),
                    "reconnects": session.reconnects,
                    "last_error": session.last_error,
                    "failure": session.failure,
                    "retry_in": None if session.online or session.next_retry_delay is None
                    else round(session.next_retry_delay, 1),
                    "rooms": sorted(session.joined_rooms()),
                    "inbox": len(self.inboxes[name]),
                }
            )
        return rows

    def all_online(self) -> bool:
        return all(s.online for s in self.sessions.values())
