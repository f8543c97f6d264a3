"""One XMPP account's connection: a slixmpp client under our own supervision.

This module and its parts are the only ones that touch slixmpp. They turn slixmpp's events into
calls on a :class:`SessionListener` (plain data: ``Jid``, ``InboundMessage``), and offer the
pool a small surface: ``send_message``, ``join_room``, ``leave_room``, ``run``, ``stop``,
``close_tasks``. ``XmppSession`` is one object, written in five files along its seams:

- here: the supervisor loop, connecting, the slixmpp client and its events;
- ``xmpp_failures.py``: naming why an attempt failed (dns, tcp, tls, auth, conflict, ...);
- ``xmpp_messages.py``: sending, incoming messages, receipts, bounces, and the evidence of
  delivery fed to ``delivery.DeliveryTracker`` (written filter, XEP-0198 acks, barrier pings);
- ``xmpp_liveness.py``: keepalive by progress, and the watch on a resumed stream;
- ``xmpp_rooms.py``: group chat (XEP-0045) joins, leaves, nicks, re-joins;
- ``xmpp_roster.py``: roster, presence, subscriptions, forged roster pushes.

Every task the session starts is owned by its ``TaskSet`` (supervisor.py): failures are logged,
and ``close_tasks()`` awaits them all (and slixmpp's send-queue task) at stop.

Theory of operation
-------------------
``run()`` is a supervisor loop; the states are::

    connecting ──session_start/session_resumed──> online ──disconnected──> offline
        ^  │                                         │                      │
        │  └─ failed / negotiation watchdog ─────────┴──────────────────────┤
        └──────────────── back-off: 1 s doubling to 60 s, with jitter ──────┘

- We drive reconnection ourselves: slixmpp does not reconnect after an established session drops,
  and it has no timeout on stream negotiation, so every attempt runs under a watchdog
  (``negotiation_timeout``) and is aborted when it expires.
- The back-off resets only after a session that stayed up ``stable_after`` seconds (10 s): two
  instances replacing each other's session (``<conflict/>``, within a second or two) would
  otherwise reconnect at once, forever. A shorter session resets the normal back-off too when it
  *worked* (the server acknowledged our stanzas on it) and the link was lost (class ``tcp`` or
  ``timeout``), not ended by the server: resets a few seconds apart otherwise grew the wait to
  the 60 s cap although every session delivered (docs/reliability.md, the soak's delays).
- A resumed stream that the server ends (class ``stream``) before ``stable_after`` is not
  resumed again: the session ends and a fresh one is tried at once, without waiting the
  back-off. Debian's stock Prosody sometimes ends a just-resumed stream with
  ``<not-well-formed/>``; waiting the back-off there delayed every unconfirmed message.
- Failures are named (``failure``): ``dns``, ``tcp``, ``tls`` (with the verification reason),
  ``auth``, ``conflict``, ``policy-violation``, ``timeout``, ``stream``. Two are not transient
  and wait far longer before the next try (``SLOW_RETRY``: 5 min doubling to 1 h): ``auth``
  (a wrong password retried at the normal pace gets the PBX's address banned by ejabberd's
  ``mod_fail2ban`` within minutes) and ``conflict`` (another client holds our full JID).
  They also show as the state (``auth_failed``, ``conflict``) in /health and
  ``show connections``. After a credential failure (RFC 6120 §6.5 ``not-authorized``) no other
  SASL mechanism is tried: slixmpp would send the same wrong password again, in PLAIN.
- One client object lives for the whole life of the account, so XEP-0198 can resume the stream
  after a TCP drop; ``session_resumed`` keeps presence, a real ``session_end`` drops it.
- Delivery evidence, keepalive and the resumed-stream watch: see ``xmpp_messages.py`` and
  ``xmpp_liveness.py``.
"""

from __future__ import annotations

import asyncio
import io
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import slixmpp
import structlog
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.xep_0198 import stanza as sm_stanza
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from .config import AccountConfig
from .delivery import DeliveryTracker
from .errors import NotOnline
from .inbox import InboundMessage
from .jid import Jid, parse_jid
from .supervisor import TaskSet
from .xmpp_dns import DnsSafeClient
from .xmpp_failures import SessionFailures, tls_reason
from .xmpp_liveness import SessionLiveness
from .xmpp_messages import RECEIPTS_NS, SessionMessages
from .xmpp_rooms import SessionRooms, _Room
from .xmpp_roster import SessionRoster

log = structlog.get_logger(__name__)



class SessionListener(Protocol):
    """What a session reports to. Implemented by the pool; every call is synchronous and quick."""

    def session_online(self, account: str, *, resumed: bool) -> None: ...
    def session_offline(self, account: str, *, reason: str) -> None: ...
    def session_ended(self, account: str) -> None: ...
    def presence_stale(self, account: str) -> None: ...
    def roster_replaced(self, account: str, bare_jids: set[str]) -> None: ...
    def presence_received(
        self, account: str, jid: Jid, *, available: bool, show: str | None, priority: int, status: str
    ) -> None: ...
    def message_received(self, account: str, message: InboundMessage) -> None: ...
    def stanza_acked(self, account: str, stanza_id: str) -> None: ...
    def stanza_bounced(self, account: str, stanza_id: str, *, error_type: str, condition: str, text: str) -> None: ...
    def receipt_received(self, account: str, stanza_id: str) -> None: ...


@dataclass(slots=True)
class Backoff:
    """Exponential back-off with full jitter on the upper half: 1, 2, 4 ... 60 s."""

    initial: float = 1.0
    cap: float = 60.0
    rng: Callable[[], float] = random.random
    _next: float = field(default=0.0, init=False)

    def reset(self) -> None:
        self._next = 0.0

    def next_delay(self) -> float:
        self._next = self.initial if self._next == 0 else min(self.cap, self._next * 2)
        # Jitter spreads reconnect storms when a server with many clients comes back.
        return self._next * (0.5 + 0.5 * self.rng())


_shared_contexts: dict[tuple[bool, str | None], ssl.SSLContext] = {}


def ssl_context_for(account: AccountConfig) -> ssl.SSLContext:
    """One shared context per (verify, cafile): building one per client costs ~41 ms and 0.9 MiB."""
    key = (account.tls_verify, account.cafile)
    context = _shared_contexts.get(key)
    if context is None:
        context = ssl.create_default_context(cafile=account.cafile)
        if not account.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        _shared_contexts[key] = context
    return context


# Failure classes whose next attempt waits SLOW_RETRY rather than the normal back-off.
SLOW_RETRY = {"auth": (300.0, 3600.0), "conflict": (300.0, 3600.0)}


class XmppSession(SessionFailures, SessionLiveness, SessionMessages, SessionRooms, SessionRoster):
    """Supervises one account's slixmpp client; see the module docstring for the states."""

    def __init__(
        self,
        account: AccountConfig,
        listener: SessionListener,
        *,
        negotiation_timeout: float = 20.0,
        keepalive_interval: float = 60.0,
        keepalive_timeout: float = 20.0,
        resume_grace: float = 30.0,
        backoff: Backoff | None = None,
        stable_after: float = 10.0,
    ) -> None:
        self.account = account
        self.name = account.name
        self._listener = listener
        self._negotiation_timeout = negotiation_timeout
        self._keepalive_interval = keepalive_interval
        self._keepalive_timeout = keepalive_timeout
        self._resume_grace = resume_grace
        self._server_resume_max: float | None = None  # <enabled max='…'/>: how long it keeps us
        self._stale_timer: asyncio.TimerHandle | None = None
        self._presence_dropped = False
        self._give_up_timer: asyncio.TimerHandle | None = None
        self._backoff = backoff or Backoff()
        self._slow_backoff: dict[str, Backoff] = {
            kind: Backoff(initial=first, cap=cap) for kind, (first, cap) in SLOW_RETRY.items()
        }
        self._stable_after = stable_after
        self.failure = ""  # the class of the last failure (module docstring), "" while online
        self.next_retry_delay: float | None = None
        self.auth_attempts = 0  # SASL exchanges that failed, over the account's life
        self.forged_roster_pushes = 0  # roster pushes not from our own account, dropped
        self._client: slixmpp.ClientXMPP | None = None
        self.state = "stopped"
        self.last_error = ""
        self.connected_since: float | None = None
        self.reconnects = 0
        self.resumptions = 0
        self._stopping = False
        self._attempt: asyncio.Future[bool] | None = None
        self._tcp_connected = False  # this attempt reached the server's port
        self._link_down = asyncio.Event()
        self._rooms: dict[str, _Room] = {}
        self.delivery = DeliveryTracker()
        self._barrier_ids: set[str] = set()
        self._barrier_count = 0
        self._barrier_task: asyncio.Task[None] | None = None
        self._resume_watch: asyncio.Future[None] | None = None
        self._bytes_in = 0
        self._keepalive_task: asyncio.Task[None] | None = None
        self._session_acks = 0  # stanzas the server acknowledged since the session came online
        self._online_resumed = False  # the current (or last) session came online by a resumption
        self._jid = parse_jid(account.username)
        self.log = log.bind(account=self.name)
        # Every task this session starts (handlers, keepalive, barrier, re-joins, pings) is
        # owned here: a failure is logged, and close_tasks() awaits them all at stop.
        self._tasks = TaskSet(self.log, "xmpp_background_task_failed")

    def __repr__(self) -> str:
        return f"<XmppSession {self.name} {self.state} rooms={len(self._rooms)}>"

    @property
    def online(self) -> bool:
        return self.state == "online"

    @property
    def bare_jid(self) -> str:
        return self._jid.bare

    @property
    def sasl_mechanism(self) -> str:
        """The SASL mechanism of the current stream (e.g. SCRAM-SHA-1), '' before login."""
        mechanisms = self._client.plugin["feature_mechanisms"] if self._client else None
        mech = getattr(mechanisms, "mech", None)
        return getattr(mech, "name", "") or ""

    @property
    def encrypted(self) -> bool:
        """True when the current stream runs over TLS."""
        client = self._client
        return bool(client and client.transport and client.transport.get_extra_info("ssl_object"))

    # -- supervisor ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, stay connected, reconnect with back-off, until ``stop()``."""
        self._client = self._build_client()
        try:
            loop = asyncio.get_running_loop()
            while not self._stopping:
                retry_now = False
                if await self._connect_once():
                    started = loop.time()
                    await self._link_down.wait()
                    self.reconnects += 1
                    lasted = loop.time() - started
                    if lasted >= self._stable_after:
                        self._backoff.reset()
                        for slow in self._slow_backoff.values():
                            slow.reset()
                    elif self._session_acks and self.failure in ("tcp", "timeout"):
                        self._backoff.reset()  # it worked: the link was lost, not refused
                    retry_now = (self._online_resumed and self.failure == "stream"
                                 and lasted < self._stable_after)
                if self._stopping:
                    break
                if retry_now:
                    self._end_resumed_stream()
                    continue
                slow = self._slow_backoff.get(self.failure)
                delay = slow.next_delay() if slow is not None else self._backoff.next_delay()
                self.next_retry_delay = delay
                if self.failure == "auth":
                    self.state = "auth_failed"
                elif self.failure == "conflict":
                    self.state = "conflict"
                log_at = self.log.warning if slow is not None else self.log.info
                log_at("xmpp_reconnect_scheduled", delay=round(delay, 2), failure=self.failure or "link",
                       reason=self.last_error)
                await asyncio.sleep(delay)
        finally:
            self._cancel_helpers()
            self.state = "stopped"

    def _end_resumed_stream(self) -> None:
        """The server ended the stream it had just resumed: start a fresh session now."""
        self.log.info("xmpp_resumed_stream_ended", reason=self.last_error)
        self.next_retry_delay = 0.0
        if self._give_up_timer is not None:
            self._give_up_timer.cancel()
            self._give_up_timer = None
        if self._client is not None:
            # no further resumption: a fresh session resends the outbox
            self._client.event("session_end")

    async def stop(self) -> None:
        """Close the stream politely (2 s at most) and end ``run()``."""
        self._stopping = True
        self._link_down.set()
        client = self._client
        if client is None:
            return
        client.cancel_connection_attempt()
        if client.transport is not None:
            try:
                await asyncio.wait_for(client.disconnect(wait=1.0, reason="shutdown"), 2.0)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - shutting down anyway
                client.abort()

    async def _connect_once(self) -> bool:
        """One attempt: TCP, TLS, SASL, bind; True once the session is usable."""
        assert self._client is not None
        loop = asyncio.get_running_loop()
        self._attempt = loop.create_future()
        self._link_down.clear()
        self.state = "connecting"
        self.failure = ""
        self._session_acks = 0
        self._online_resumed = False
        host = self.account.serverhost
        port = self.account.port if host else None
        self.log.info("xmpp_connecting", host=host or "(DNS SRV)", port=port)
        self._tcp_connected = False
        self._client.connect(host, port) if host else self._client.connect()
        try:
            async with asyncio.timeout(self._negotiation_timeout):
                await self._attempt
            return True
        except (TimeoutError, ConnectionError) as exc:
            silent = self._silent_peer() if isinstance(exc, TimeoutError) else ""
            if silent:  # a hung XMPP server, or something else that accepts and says nothing
                self._fail("timeout", f"stream negotiation timed out: {silent} sent no XMPP stream "
                           f"within {self._negotiation_timeout:g} s (is it an XMPP server?)")
            elif isinstance(exc, TimeoutError) or not self.failure:
                self._fail("timeout" if isinstance(exc, TimeoutError) else "stream",
                           str(exc) or "stream negotiation timed out", keep_class=True)
            self.log.warning("xmpp_connect_failed", failure=self.failure, error=self.last_error)
            self._client.cancel_connection_attempt()
            self._client.abort()
            self.state = "offline"
            return False
        finally:
            self._attempt = None

    def _fail(self, failure: str, reason: str, *, keep_class: bool = False) -> None:
        """Record a failure of class ``failure`` (a class already named this attempt wins when
        ``keep_class``: a TLS error is also a disconnect, an auth failure also a stream end)."""
        if not (keep_class and self.failure):
            self.failure = failure
        self.last_error = reason if failure == self.failure else self.last_error

    def _attempt_failed(self, reason: str) -> None:
        if self._attempt is not None and not self._attempt.done():
            self._attempt.set_exception(ConnectionError(reason))

    # -- slixmpp client and its events ----------------------------------------------------------

    def _build_client(self) -> slixmpp.ClientXMPP:
        account = self.account
        full = f"{self._jid.bare}/{account.resource}"
        client = DnsSafeClient(full, account.secret)
        client.ssl_context = ssl_context_for(account)
        if account.forceoldssl:
            client.enable_starttls = False
            client.enable_direct_tls = True
            client.enable_plaintext = False
        elif account.usetls:
            client.enable_direct_tls = False
            client.enable_starttls = True
            client.enable_plaintext = False
        else:
            # usetls=no, as in res_xmpp: a plaintext stream, even if the server offers STARTTLS.
            # slixmpp refuses SCRAM and PLAIN on an unencrypted stream unless told otherwise.
            client.enable_direct_tls = False
            client.enable_starttls = False
            client.enable_plaintext = True
        if not account.usetls and not account.forceoldssl:
            mechanisms = client.plugin["feature_mechanisms"]
            mechanisms.unencrypted_scram = True
            mechanisms.unencrypted_plain = True
        client.register_plugin("xep_0030")
        client.register_plugin("xep_0199", {"keepalive": False})  # answers server pings
        client.register_plugin("xep_0198", {"allow_resume": True})
        client.register_plugin("xep_0363")  # HTTP upload, for voicemail recordings (ami_bridge)
        client.whitespace_keepalive = False
        roster = client.roster[client.boundjid.bare]
        # res_xmpp's auth_policy: accept (default) authorises and subscribes back; deny refuses.
        client.roster.auto_authorize = account.auth_policy == "accept"
        # Not slixmpp's auto_subscribe: it subscribes back on every request, even to a contact we
        # already follow or asked (each fresh session gets pending requests again), and
        # ejabberd's mod_pres_counter counts every one. _on_subscription_request asks only once.
        client.roster.auto_subscribe = False
        roster.auto_authorize = client.roster.auto_authorize
        roster.auto_subscribe = False

        handlers: dict[str, Callable] = {
            "session_start": self._on_session_start,
            "session_resumed": self._on_session_resumed,
            "session_end": self._on_session_end,
            "disconnected": self._on_disconnected,
            "connection_failed": self._on_connection_failed,
            "failed_auth": self._on_auth_attempt_failed,
            "sm_enabled": self._on_sm_enabled,
            "failed_all_auth": self._on_auth_failed,
            "ssl_invalid_chain": self._on_tls_failed,
            "stream_error": self._on_stream_error,
            "roster_update": self._on_roster_update,
            "roster_subscription_request": self._on_subscription_request,
            "presence": self._on_presence,
            "message": self._on_message,
            "message_error": self._on_message_error,
        }
        handlers["connected"] = self._on_tcp_connected
        for event, handler in handlers.items():
            client.add_event_handler(event, self._guarded(handler))
        # Runs after every other outgoing filter (XEP-0198's numbering is 'out_sync'), right
        # before slixmpp writes the stanza: the one place that knows whether it hit a live link.
        client.add_filter("out_sce", self._observe_write)
        # Before any handler: slixmpp's own roster handler raised on a forged push and logged a
        # traceback for each one, a log line any stranger could provoke on demand.
        client.add_filter("in", self._drop_forged_roster_push)
        receive = client.data_received

        def count_and_receive(data: bytes) -> None:
            self._bytes_in += len(data)  # liveness: any byte read is progress
            receive(data)

        client.data_received = count_and_receive  # type: ignore[method-assign]
        client.register_handler(
            Callback("agi-xmpp receipt", MatchXPath(f"{{jabber:client}}message/{{{RECEIPTS_NS}}}received"),
                     self._on_receipt)
        )
        client.register_handler(
            Callback("agi-xmpp sm ack", MatchXPath(sm_stanza.Ack.tag_name()), self._on_sm_ack, instream=True)
        )
        return client

    def _on_tcp_connected(self, _event: object) -> None:
        # The server's stream header sets stream_id: a peer that never sends one is not an XMPP
        # server (an HTTP or SSH port, a wrong port number), which "disconnected" would hide.
        self._tcp_connected = True
        if self._client is not None:
            self._client.stream_id = None

    def _silent_peer(self) -> str:
        """``host:port`` when this attempt reached a peer that sent no XMPP stream, else ""."""
        if self._attempt is None or not self._tcp_connected or self._client is None:
            return ""
        if self._client.stream_id is not None:
            return ""
        host = self.account.serverhost
        return f"{host}:{self.account.port}" if host else self._jid.domain

    def _guarded(self, handler: Callable) -> Callable:
        """Log, never raise: an exception escaping a slixmpp handler sends an error stanza."""

        def call(arg: object) -> None:
            try:
                result = handler(arg)
                if asyncio.iscoroutine(result):
                    self._tasks.spawn(result, handler.__name__)
            except Exception:  # noqa: BLE001
                self.log.exception("xmpp_handler_failed", handler=handler.__name__)

        return call

    async def close_tasks(self) -> None:
        """After ``stop()`` and the end of ``run()``: await (cancel) every task we started."""
        self._cancel_helpers()
        await self._tasks.aclose()
        client = self._client
        # slixmpp runs its send queue in a task for the client's whole life and cancels it only
        # in __del__: the client is ours, so its task is ours to end.
        sender = getattr(client, "_run_out_filters", None)
        if sender is not None and not sender.done():
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        if client is not None:
            await client.close_resolver()

    async def _on_session_start(self, _event: object) -> None:
        """A fresh session: fetch the roster, announce presence, re-join rooms, then go online."""
        client = self._client
        assert client is not None
        try:
            await client.get_roster(timeout=self._negotiation_timeout)
        except (IqError, IqTimeout) as exc:
            self.log.warning("xmpp_roster_failed", error=str(exc))
        self._announce_presence()
        self._apply_buddy_policy()
        self._go_online(resumed=False)
        # The pool's outbox resend joins the rooms of pending groupchat rows itself and waits for
        # these same joins (join_room shares a join in flight) before writing to a room.
        for room, state in list(self._rooms.items()):
            state.joined = False
            state.waiter = None  # a join sent on the old stream will never be answered
            self._tasks.spawn(self._rejoin(room, state.nick), f"rejoin {room}")

    def _on_session_resumed(self, resumed: object) -> None:
        self.resumptions += 1
        self._resume_watch = self._tasks.spawn(self._watch_resumed(self._progress_mark()), "resumed-watch")
        try:
            h = int(resumed["h"])  # type: ignore[index]
        except (TypeError, ValueError, KeyError):
            h = None
        if h is not None:
            confirmed, _rewrite = self.delivery.resumed(h)
            self._report_acked(confirmed)
        # The pool's resend (from session_online) writes what the dead link dropped: the tracker
        # no longer counts those as on the stream.
        self._go_online(resumed=True)
        # slixmpp re-sent its unacked stanzas; confirm them with a fresh barrier.
        self._schedule_barrier()

    def _go_online(self, *, resumed: bool) -> None:
        loop = asyncio.get_running_loop()
        if self._give_up_timer is not None:
            self._give_up_timer.cancel()
            self._give_up_timer = None
        if self._stale_timer is not None:
            self._stale_timer.cancel()
            self._stale_timer = None
        if resumed and self._presence_dropped:
            self._probe_contacts()
        self._presence_dropped = False
        self.state = "online"
        self._online_resumed = resumed
        self.last_error = ""
        self.failure = ""
        self.next_retry_delay = None
        self.connected_since = loop.time()
        self.log.info("xmpp_session_online", resumed=resumed)
        if self._keepalive_task is None or self._keepalive_task.done():
            self._keepalive_task = self._tasks.spawn(self._keepalive(), "keepalive")
        if self._attempt is not None and not self._attempt.done():
            self._attempt.set_result(True)
        self._listener.session_online(self.name, resumed=resumed)

    def _on_session_end(self, _event: object) -> None:
        """The stream is gone for good (not resumable): everything tied to it is stale."""
        self.delivery.session_ended()
        for state in self._rooms.values():
            state.joined = False
        self._listener.session_ended(self.name)

    def _on_disconnected(self, reason: object) -> None:
        was_online = self.state == "online"
        if self.state not in ("auth_failed", "conflict"):  # named by run(): keep the name
            self.state = "offline"
        self.connected_since = None
        if isinstance(reason, ssl.SSLError):
            self._fail("tls", f"TLS: {tls_reason(reason)}")
        elif reason and not self.failure:
            self._fail("tcp" if isinstance(reason, OSError) else "stream", str(reason))
        elif not self.failure:
            self._fail("stream", "the server closed the connection")
        silent = self._silent_peer()
        if silent:
            self._fail("stream", f"{silent} closed the connection without starting an XMPP stream: "
                       "not an XMPP server (wrong host or port?)")
        self.delivery.link_lost()
        self._cancel_helpers()
        self._attempt_failed(self.last_error or "disconnected")
        if was_online:
            self.log.warning("xmpp_session_offline", reason=self.last_error)
            self._listener.session_offline(self.name, reason=self.last_error)
            if not self._stopping:
                loop = asyncio.get_running_loop()
                # The server keeps a detached stream for the max it advertised (XEP-0198 §5;
                # Debian's ejabberd: 300 s): resuming within it keeps presence and replays
                # nothing twice, so give up only after it, or our own grace if it said nothing.
                grace = max(self._resume_grace, self._server_resume_max or 0.0)
                self._give_up_timer = loop.call_later(grace, self._give_up_resumption)
                # Presence cannot be trusted that long: it is dropped after our own grace, and
                # asked for again (probes) if the stream is resumed after that.
                self._stale_timer = loop.call_later(self._resume_grace, self._presence_went_stale)
        self._link_down.set()

    def _presence_went_stale(self) -> None:
        self._stale_timer = None
        if self.online:
            return
        self._presence_dropped = True
        self._listener.presence_stale(self.name)

    def _give_up_resumption(self) -> None:
        """Offline past the grace: the cached presence can no longer be trusted.

        A resumed stream gets no presence re-sent, so rather than resume into a stale view we end
        the session (slixmpp forgets the stream id; the outbox, not slixmpp's queue, holds what
        is unconfirmed) and the next connection is a fresh one, for which the server re-sends
        every contact's presence."""
        self._give_up_timer = None
        if self.online or self._client is None:
            return
        self.log.info("xmpp_resumption_abandoned", grace=self._resume_grace)
        self._client.event("session_end")

    def _cancel_helpers(self) -> None:
        for task in (self._keepalive_task, self._barrier_task, self._resume_watch):
            if task is not None and not task.done():
                task.cancel()
        self._keepalive_task = self._barrier_task = self._resume_watch = None

    async def upload(self, name: str, data: bytes, content_type: str, timeout: float = 30.0) -> str:
        """XEP-0363: upload ``data`` to the upload service found by service discovery on the
        account's server (its size limit honoured); returns the URL to share."""
        if not self.online or self._client is None:
            raise NotOnline(self.name)
        return await self._client.plugin["xep_0363"].upload_file(
            name, size=len(data), content_type=content_type, input_file=io.BytesIO(data),
            domain=self._client.boundjid.domain, timeout=timeout,
        )
