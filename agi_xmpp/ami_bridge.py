"""The AMI side of the service (docs/ami.md): voicemail to chat, busy lamps, queue pause, click-to-call.

Theory of operation
-------------------
One :class:`~agi_xmpp.ami_link.AmiLink` owns the connection and puts every AMI event on one
queue. This bridge runs three long-lived tasks, each supervised (an exception is logged and the
task restarted after a back-off; none is created and forgotten):

- ``ami-link``: the connection itself.
- ``ami-events``: the only consumer of that queue, one event at a time, in order:
  ``LINK_UP`` (every (re)connect) and ``FullyBooted`` (Asterisk (re)started under us) trigger a
  *resync*: every directory mailbox is rescanned and every lamp and queue pause re-applied, so an
  Asterisk restart leaves nothing stale. ``MessageWaiting`` rescans that mailbox.
  ``OriginateResponse`` answers the click-to-call user.
- ``ami-state``: applies chat presence to hints and queue pauses. The pool's presence hook only
  marks a contact dirty and wakes it, so a burst of presence changes costs one write per
  extension with the latest state.
- ``ami-commands``: chat commands (``call``, ``help``) taken from the service account's chat by
  the pool's message hook.

Voicemail notifications are keyed by ``msg_id``: one is sent through the pool's durable outbox,
then recorded in ``voicemail_notified``; a rescan skips what is recorded. The window between the
two commits (a crash right there) can repeat one notification; it cannot lose one.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from . import click_to_call as c2c
from .ami_link import LINK_UP, AmiError, AmiEvent, AmiLink
from .busy_lamps import LampState, lamp_state, setvar_actions
from .config import AmiConfig, Config, DirectoryEntry
from .errors import InvalidJid, StorageError, UnknownAccount
from .inbox import InboundMessage
from .jid import parse_jid
from .presence import PresenceCache, Show
from .storage import AsyncStorage
from .voicemail import (
    Counts, Voicemail, check_spool, format_event_only, format_notification, non_negative_int, scan_mailbox,
)
from .xmpp_pool import XmppPool
from .xmpp_session import Backoff

log = structlog.get_logger(__name__)

PAUSE_REASON = "chat: dnd"
_ORIGINATE_TIMEOUT_S = 30  # how long the user's own phone rings
_PENDING_CALL_TTL_S = 120.0  # a call with no OriginateResponse after this is forgotten


@dataclass(slots=True)
class AmiCounters:
    voicemail_notified: int = 0
    voicemail_failed: int = 0
    lamps_applied: int = 0
    calls_requested: int = 0
    calls_refused: int = 0
    queue_pauses: int = 0
    resyncs: int = 0


@dataclass(slots=True)
class _PendingCall:
    user: str  # the bare JID to answer
    target: str
    started: float
    login: int  # the link's ``connects`` when placed: only that login's Asterisk will answer it
    # The outcome must never overtake "Calling your phone…", and the event consumer must never
    # wait for it: whichever of the two comes second sends the outcome.
    announced: bool = False
    outcome: str | None = None


class AmiBridge:
    """Owns the AMI link and everything done over it; ``start()``/``stop()``."""

    def __init__(
        self,
        config: Config,
        storage: AsyncStorage,
        presence: PresenceCache,
        pool: XmppPool,
        *,
        uploader: Callable[[str, Voicemail], Awaitable[str | None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert config.ami is not None
        self.ami: AmiConfig = config.ami
        self.config = config
        self.storage = storage
        self.presence = presence
        self.pool = pool
        self.account = _service_account(config)
        self.events: asyncio.Queue[AmiEvent] = asyncio.Queue()
        self.link = AmiLink(self.ami, self.events, backoff=Backoff(cap=float(config.general.reconnect_max_delay)))
        self.counters = AmiCounters()
        self.spool_error = check_spool(self.ami.voicemail_spool)
        self._uploader = uploader or self._upload_recording
        self._clock = clock
        self._commands: asyncio.Queue[InboundMessage] = asyncio.Queue()
        self._rate = c2c.RateLimit(self.ami.call_limit, clock=clock)
        self._calls: dict[str, _PendingCall] = {}
        self._state_wakeup = asyncio.Event()
        self._dirty: set[str] = set()
        self._all_dirty = True
        self._applied: dict[str, LampState] = {}
        self._paused: dict[str, bool] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._mailbox_errors: set[str] = set()
        self._unknown_mailboxes: set[str] = set()
        self._stopped = False  # the pool keeps our hooks: after stop() they pass everything on

    def __repr__(self) -> str:
        return f"<AmiBridge {self.link.state} [{len(self._calls)} calls pending]>"

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.spool_error:
            # One clear error at start, not a traceback per event (docs/ami.md).
            log.error("voicemail_spool_unreadable", detail=self.spool_error)
        self.pool.add_message_hook(self._message_hook)
        if self.ami.presence_to_hints or self.ami.queue_pause:
            self.pool.add_presence_hook(self._presence_hook)
        jobs: dict[str, Callable[[], Awaitable[None]]] = {
            "ami-link": self.link.run,
            "ami-events": self._consume_events,
            "ami-commands": self._serve_commands,
        }
        if self.ami.presence_to_hints or self.ami.queue_pause:
            jobs["ami-state"] = self._apply_states
        for name, job in jobs.items():
            self._tasks.append(asyncio.create_task(self._supervise(name, job), name=name))

    async def stop(self) -> None:
        self._stopped = True
        await self.link.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _supervise(self, name: str, job: Callable[[], Awaitable[None]]) -> None:
        backoff = Backoff(cap=30.0)
        while True:
            try:
                await job()
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad event or database error never stops it
                delay = backoff.next_delay()
                log.exception("ami_task_failed", task=name, restart_in=round(delay, 2))
                await asyncio.sleep(delay)

    # -- the event consumer ---------------------------------------------------------------------

    async def _consume_events(self) -> None:
        while True:
            event = await self.events.get()
            try:
                await self._handle(event)
            except (AmiError, StorageError, OSError) as exc:
                log.error("ami_event_failed", event_name=event.name, error=str(exc))

    async def _handle(self, event: AmiEvent) -> None:
        name = event.name
        if name in (LINK_UP, "FullyBooted"):
            await self.resync(name)
        elif name == "MessageWaiting":
            await self.mailbox_changed(event.get("Mailbox"), event)
        elif name == "OriginateResponse":
            await self._originate_response(event)

    async def resync(self, why: str) -> None:
        """Re-read everything mirrored: mailboxes, lamps, queue pauses."""
        log.info("ami_resync", reason="connected" if why == LINK_UP else why)
        await self._recheck_spool()
        # Asterisk's answer to calls placed on an earlier login went with that connection. A call
        # placed on the current login (after the reconnect, before this event was handled, or
        # while we reply below: the commands task runs meanwhile) will still be answered.
        login = self.link.connects
        lost = [c for c in self._calls.values() if c.login < login]
        self._calls = {k: c for k, c in self._calls.items() if c.login >= login}
        for call in lost:
            await self._reply(call.user, c2c.LOST.format(target=call.target))
        if self.ami.queue_pause:
            self._paused = await self._our_pauses()
        self._all_dirty = True
        self._applied.clear()
        self._state_wakeup.set()
        for entry in await self.storage.directory_list():
            if entry.mailbox:
                await self.mailbox_changed(entry.mailbox, None)
        self.counters.resyncs += 1  # counted once done: tests and metrics see a finished one

    # -- voicemail ------------------------------------------------------------------------------

    async def _recheck_spool(self) -> None:
        """The spool may have been fixed (permissions, a mount) or lost since start: look again
        at each resync (and at each event while it is broken), one log line per change."""
        error = await asyncio.to_thread(check_spool, self.ami.voicemail_spool)
        if error == self.spool_error:
            return
        if error:
            log.error("voicemail_spool_unreadable", detail=error)
        else:
            log.info("voicemail_spool_readable", spool=self.ami.voicemail_spool)
        self.spool_error = error

    async def mailbox_changed(self, mailbox: str, event: AmiEvent | None) -> None:
        """Notify the owner of ``mailbox`` about each new message not yet notified."""
        if not mailbox:
            return
        entry = await self.storage.directory_find_mailbox(mailbox)
        if entry is None:
            if mailbox not in self._unknown_mailboxes:  # once: other mailboxes are normal
                self._unknown_mailboxes.add(mailbox)
                log.info("voicemail_mailbox_not_in_directory", mailbox=mailbox)
            return
        counts = _counts(event)
        messages: list[Voicemail] = []
        if self.spool_error is not None:
            await self._recheck_spool()  # fixed since? (only looked at while it is broken)
        if self.spool_error is None:
            try:
                messages = await asyncio.to_thread(scan_mailbox, self.ami.voicemail_spool, mailbox)
            except (OSError, ValueError) as exc:
                if mailbox not in self._mailbox_errors:  # once per mailbox, not per event
                    self._mailbox_errors.add(mailbox)
                    log.error("voicemail_mailbox_unreadable", mailbox=mailbox, error=str(exc))
                messages = []
            else:
                self._mailbox_errors.discard(mailbox)
        done = await self.storage.voicemail_notified(mailbox, [m.msg_id for m in messages])
        fresh = [m for m in messages if m.msg_id not in done]
        if fresh and counts is None:
            counts = await self._mailbox_counts(mailbox)
        for message in fresh:
            await self._notify(entry, message, counts)
        if not fresh and event is not None and self.ami.voicemail_delete:
            await self._notify_from_event(entry, event, counts)

    async def _notify(self, entry: DirectoryEntry, message: Voicemail, counts: Counts | None) -> None:
        to = parse_jid(entry.jid)
        await self.pool.send(self.account, to, format_notification(message, counts))
        await self.storage.voicemail_mark_notified(message.mailbox, message.msg_id)
        self.counters.voicemail_notified += 1
        log.info("voicemail_notified", mailbox=message.mailbox, msg_id=message.msg_id, to=to.bare)
        if self.ami.voicemail_upload and self._uploader is not None and message.recording is not None:
            url = None
            try:
                url = await self._uploader(self.account, message)
            except Exception as exc:  # noqa: BLE001 - the text went out; the link is a bonus
                log.warning("voicemail_upload_failed", mailbox=message.mailbox, error=str(exc))
            if url:
                await self.pool.send(self.account, to, url)  # its own body: clients inline it
            else:
                self.counters.voicemail_failed += 1

    async def _upload_recording(self, account: str, message: Voicemail) -> str | None:
        """XEP-0363 upload of the recording through the account's own session."""
        assert message.recording is not None
        data = await asyncio.to_thread(message.recording.read_bytes)
        name = "voicemail-" + re.sub(r"[^A-Za-z0-9._-]", "_", message.msg_id) + message.recording.suffix.lower()
        url = await self.pool.session(account).upload(name, data, message.content_type)
        log.info("voicemail_uploaded", mailbox=message.mailbox, msg_id=message.msg_id, bytes=len(data))
        return url

    async def _notify_from_event(self, entry: DirectoryEntry, event: AmiEvent, counts: Counts | None) -> None:
        """``delete=yes``: the files are gone; the event's caller channel is all there is."""
        caller_num = event.get("CallerIDNum")
        uniqueid = event.get("Uniqueid")
        owner = (entry.mailbox or "").partition("@")[0]
        if not uniqueid or not caller_num or caller_num == owner:
            return  # no caller channel, or the owner's own session in VoiceMailMain
        key = f"event-{uniqueid}"
        if not await self.storage.voicemail_mark_notified(entry.mailbox or "", key):
            return
        name = event.get("CallerIDName")
        caller = f"{name} <{caller_num}>" if name and name != "<unknown>" else caller_num
        await self.pool.send(self.account, parse_jid(entry.jid), format_event_only(entry.mailbox or "", caller, counts))
        self.counters.voicemail_notified += 1

    async def _mailbox_counts(self, mailbox: str) -> Counts | None:
        try:
            reply = await self.link.action("MailboxCount", Mailbox=mailbox)
        except AmiError as exc:
            log.warning("mailbox_count_failed", mailbox=mailbox, error=str(exc))  # no counts line
            return None
        return Counts(new=non_negative_int(reply.get("NewMessages")) + non_negative_int(reply.get("UrgMessages")),
                      old=non_negative_int(reply.get("OldMessages")))

    # -- busy lamps and queue pause -------------------------------------------------------------

    def _presence_hook(self, account: str, bare: str | None) -> None:
        if account != self.account or self._stopped:
            return
        if bare is None:
            self._all_dirty = True
        else:
            self._dirty.add(bare)
        self._state_wakeup.set()

    async def _apply_states(self) -> None:
        while True:
            await self._state_wakeup.wait()
            self._state_wakeup.clear()
            if not self.link.connected:
                continue  # LINK_UP resyncs everything
            everything, dirty = self._all_dirty, self._dirty
            self._all_dirty, self._dirty = False, set()
            try:
                await self._apply_entries(everything, dirty)
            except (AmiError, StorageError) as exc:
                log.warning("ami_state_apply_failed", error=str(exc))
                self._all_dirty = True  # retried on the next wakeup or resync
                if self.link.connected:
                    await asyncio.sleep(1.0)
                    self._state_wakeup.set()

    async def _apply_entries(self, everything: bool, dirty: set[str]) -> None:
        for entry in await self.storage.directory_list():
            if not everything and entry.jid not in dirty:
                continue
            try:
                answer = self.presence.status(self.account, parse_jid(entry.jid))
            except InvalidJid:
                continue
            if self.ami.presence_to_hints:
                state = lamp_state(entry.extension, answer.show, answer.message)
                if self._applied.get(entry.extension) != state:
                    for headers in setvar_actions(state):
                        await self.link.action("Setvar", **headers)
                    self._applied[entry.extension] = state
                    self.counters.lamps_applied += 1
                    log.debug("busy_lamp_applied", extension=entry.extension, state=state.device_state)
            if self.ami.queue_pause:
                await self._apply_pause(entry, answer.show)

    async def _our_pauses(self) -> dict[str, bool]:
        """Queue members paused with our reason right now (they are ours to unpause)."""
        try:
            rows = await self.link.action_list("QueueStatus")
        except AmiError as exc:
            log.warning("queue_status_failed", error=str(exc))
            return {}
        return {
            row.get("StateInterface") or row.get("Location", ""): True
            for row in rows
            if row.get("Event") == "QueueMember" and row.get("Paused") == "1"
            and row.get("PausedReason") == PAUSE_REASON
        }

    async def _apply_pause(self, entry: DirectoryEntry, show: Show) -> None:
        """Pause while the show says so; unpause only a pause of ours (an agent may have paused
        from the phone for reasons of their own)."""
        paused = show.value in self.ami.queue_pause_shows
        if self._paused.get(entry.device, False) == paused:
            return
        try:
            await self.link.action(
                "QueuePause", Interface=entry.device, Paused="true" if paused else "false",
                Reason=PAUSE_REASON,
            )
        except AmiError as exc:
            # Not a member of any queue: nothing to pause (app_queue answers an error).
            log.debug("queue_pause_skipped", interface=entry.device, error=str(exc))
        else:
            self.counters.queue_pauses += 1
            log.info("queue_pause_applied", interface=entry.device, paused=paused)
        self._paused[entry.device] = paused

    # -- chat commands --------------------------------------------------------------------------

    def _message_hook(self, account: str, message: InboundMessage) -> bool:
        """Take ``call``/``help`` chats to the service account; everything else goes on to the
        inbox (jabber_receive and chat menus read the same account)."""
        if self._stopped or account != self.account or message.kind not in ("chat", "normal"):
            return False
        if not c2c.is_command(message.body):
            return False
        self._commands.put_nowait(message)
        return True

    async def _serve_commands(self) -> None:
        while True:
            message = await self._commands.get()
            try:
                await self._command(message)
            except (AmiError, StorageError, InvalidJid) as exc:
                log.error("chat_command_failed", sender=message.sender.bare, error=str(exc))

    async def _reply(self, to: str, text: str) -> None:
        await self.pool.send(self.account, parse_jid(to), text)

    async def _command(self, message: InboundMessage) -> None:
        sender = message.sender.bare
        entry = await self.storage.directory_find_jid(sender)
        if entry is None:
            self.counters.calls_refused += 1
            log.warning("chat_command_refused", sender=sender, reason="not in the directory")
            await self._reply(sender, c2c.REFUSED)
            return
        command = c2c.parse_command(message.body)
        if isinstance(command, c2c.Help):
            await self._reply(sender, c2c.HELP)
        elif isinstance(command, c2c.Invalid):
            await self._reply(sender, command.reply)
        else:
            await self._call(entry, sender, command)

    async def _call(self, entry: DirectoryEntry, sender: str, command: c2c.Call) -> None:
        number = command.target
        if command.is_jid:
            callee = await self.storage.directory_find_jid(command.target)
            if callee is None:
                await self._reply(sender, f"{command.target[:80]} is not in the directory.")
                return
            number = callee.extension
        if not self._rate.allow(sender):
            log.warning("click_to_call_rate_limited", sender=sender)
            await self._reply(sender, f"Too many calls: at most {self.ami.call_limit} a minute. Try again shortly.")
            return
        self._forget_stale_calls()
        call_id = f"agx-c2c-{secrets.token_hex(8)}"
        call = self._calls[call_id] = _PendingCall(sender, number, self._clock(), self.link.connects)
        self.counters.calls_requested += 1
        log.info("click_to_call", sender=sender, device=entry.device, number=number, call_id=call_id)
        try:
            await self.link.action(
                "Originate",
                ActionID=call_id,
                ChannelId=call_id,
                Channel=entry.device,
                Context=self.ami.originate_context,
                Exten=number,
                Priority="1",
                CallerID=f'"{number}" <{number}>',  # what the user's own phone shows
                Timeout=str(_ORIGINATE_TIMEOUT_S * 1000),
                Async="true",
                Variable=f"AGI_XMPP_CALLER={entry.extension}",
            )
        except AmiError as exc:
            self._calls.pop(call_id, None)
            log.warning("click_to_call_rejected", sender=sender, error=str(exc))
            await self._reply(sender, c2c.FAILED.format(target=number, reason=str(exc)[:120]))
            return
        try:
            await self._reply(sender, c2c.CALLING.format(target=number))
        finally:
            call.announced = True
        if call.outcome is not None:  # Asterisk answered while the announcement was queued
            await self._reply(sender, call.outcome)

    async def _originate_response(self, event: AmiEvent) -> None:
        call = self._calls.pop(event.get("ActionID"), None) or self._calls.pop(event.get("Uniqueid"), None)
        if call is None:
            return
        response, reason = event.get("Response"), event.get("Reason")
        log.info("click_to_call_result", sender=call.user, response=response, reason=reason)
        call.outcome = c2c.outcome_text(response, reason, call.target)
        if call.announced:
            await self._reply(call.user, call.outcome)
        # else: the commands task sends it right after its announcement (_call)

    def _forget_stale_calls(self) -> None:
        now = self._clock()
        for call_id in [k for k, c in self._calls.items() if now - c.started > _PENDING_CALL_TTL_S]:
            del self._calls[call_id]

    # -- views ----------------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        link = self.link
        return {
            "state": link.state,
            "host": f"{self.ami.host}:{self.ami.port}",
            "connects": link.connects,
            "last_error": link.last_error,
            "version": link.version,
            "voicemail_spool_error": self.spool_error,
        }

    def metrics(self) -> list[str]:
        """Prometheus lines for ``/metrics``."""
        lines = [
            "# HELP agi_xmpp_ami_connected 1 when the AMI link to Asterisk is logged in.",
            "# TYPE agi_xmpp_ami_connected gauge",
            f"agi_xmpp_ami_connected {int(self.link.connected)}",
            "# TYPE agi_xmpp_ami_connects_total counter",
            f"agi_xmpp_ami_connects_total {self.link.connects}",
        ]
        for name in AmiCounters.__dataclass_fields__:
            lines.append(f"# TYPE agi_xmpp_ami_{name}_total counter")
            lines.append(f"agi_xmpp_ami_{name}_total {getattr(self.counters, name)}")
        return lines



def _service_account(config: Config) -> str:
    try:
        return config.account("").name
    except UnknownAccount:
        return sorted(config.accounts)[0]


def _counts(event: AmiEvent | None) -> Counts | None:
    if event is None or "New" not in event.headers:
        return None
    return Counts(new=non_negative_int(event.get("New")), old=non_negative_int(event.get("Old")))

