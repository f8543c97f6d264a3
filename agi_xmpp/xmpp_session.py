"""One XMPP account's connection: a slixmpp client under our own supervision.

This is the only module that touches slixmpp. It turns slixmpp's events into calls on a
:class:`SessionListener` (plain data: ``Jid``, ``InboundMessage``), and offers the pool a small
surface: ``send_message``, ``join_room``, ``leave_room``, ``run``, ``stop``.

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
- What the server has of our messages is decided by ``delivery.DeliveryTracker``, a pure state
  machine; this module only feeds it what happens on the wire: a last outgoing filter reports
  each of our messages as really written (with its XEP-0198 sequence number) or dropped by a
  dead link, ``<a h>``/``<resumed h>`` report the server's count, and after each burst we
  write a *barrier* (a XEP-0199 ping to our server) whose answer proves the server read every
  message written before it on that link. Confirmed ids go to ``listener.stanza_acked``;
  bounces (``<message type='error'>`` with our id) to ``listener.stanza_bounced``.
- Keepalive: a ping to our server every ``keepalive_interval`` seconds. A link is dead only when
  it makes no *progress* for ``keepalive_timeout``: no byte read, and nothing we wrote leaving
  our buffers or the kernel's send queue (``TIOCOUTQ``). A server that reads us slowly (Debian's
  stock Prosody: 10 kB/s) answers late but is alive; aborting it used to end in an endless
  cycle of resumptions and duplicate copies.
- A resumed stream that makes no progress within ``keepalive_timeout`` (plus the backlog's time
  at 1 kB/s) is abandoned: the session ends (no further resumption attempt) and a fresh one
  resends from the outbox. Debian's stock Prosody was seen to stop reading a resumed stream.
"""

from __future__ import annotations

import asyncio
import io
import random
import re
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import slixmpp
import structlog
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.xep_0198 import stanza as sm_stanza
from slixmpp.stanza import Iq, Message
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from .config import AccountConfig
from .delivery import DeliveryTracker, Stage
from .errors import InvalidJid, NotOnline, RoomJoinFailed
from .inbox import InboundMessage
from .jid import Jid, parse_jid

log = structlog.get_logger(__name__)

MUC_NS = "http://jabber.org/protocol/muc"
RECEIPTS_NS = "urn:xmpp:receipts"
MUC_USER_NS = "http://jabber.org/protocol/muc#user"
OOB_NS = "jabber:x:oob"
_BARE_URL = re.compile(r"https?://[^\s<>\"]+")


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


# Bytes per second below which a link with a backlog counts as dead (the keepalive's patience).
MIN_LINK_RATE = 1000.0
# Failure classes whose next attempt waits SLOW_RETRY rather than the normal back-off.
SLOW_RETRY = {"auth": (300.0, 3600.0), "conflict": (300.0, 3600.0)}
# SASL failure conditions that mean "these credentials are wrong" (RFC 6120 §6.5).
CREDENTIAL_FAILURES = {"not-authorized", "credentials-expired", "account-disabled"}


@dataclass(slots=True)
class _Room:
    nick: str
    joined: bool = False
    waiter: asyncio.Future[None] | None = None


class XmppSession:
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
        client = slixmpp.ClientXMPP(full, account.secret)
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

    def _observe_write(self, stanza: object) -> object | None:
        """Tell the tracker what is about to be written; drop what a dead link would drop."""
        client = self._client
        if isinstance(stanza, Message):
            stanza_id = stanza["id"]
            if self.delivery.stage(stanza_id) is Stage.HANDED:
                if client is None or client.transport is None:
                    # slixmpp would raise NotConnectedError and forget it: the pool writes it again
                    self.delivery.not_written(stanza_id)
                    return None
                sm = client.plugin["xep_0198"]
                self.delivery.written(stanza_id, sm.seq if sm.enabled_out else None)
        elif isinstance(stanza, Iq) and stanza["id"] in self._barrier_ids:
            if client is None or client.transport is None:
                return None  # its send() times out; the coverage goes to the next barrier
            self.delivery.barrier_written(stanza["id"])
        return stanza

    def _on_sm_enabled(self, enabled: object) -> None:
        try:
            self._server_resume_max = float(enabled["max"]) if enabled["max"] else None  # type: ignore[index]
        except (TypeError, ValueError):
            self._server_resume_max = None

    def _on_sm_ack(self, ack: object) -> None:
        try:
            h = int(ack["h"])  # type: ignore[index]
        except (TypeError, ValueError):
            return
        self._report_acked(self.delivery.sm_acked(h))

    def _report_acked(self, stanza_ids: list[str]) -> None:
        self._session_acks += len(stanza_ids)
        for stanza_id in stanza_ids:
            self._listener.stanza_acked(self.name, stanza_id)

    def _guarded(self, handler: Callable) -> Callable:
        """Log, never raise: an exception escaping a slixmpp handler sends an error stanza."""

        def call(arg: object) -> None:
            try:
                result = handler(arg)
                if asyncio.iscoroutine(result):
                    task = asyncio.ensure_future(result)
                    task.add_done_callback(self._log_task_error)
            except Exception:  # noqa: BLE001
                self.log.exception("xmpp_handler_failed", handler=handler.__name__)

        return call

    def _log_task_error(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.log.error("xmpp_handler_failed", error=repr(task.exception()))

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
            asyncio.ensure_future(self._rejoin(room, state.nick)).add_done_callback(self._log_task_error)

    def _on_session_resumed(self, resumed: object) -> None:
        self.resumptions += 1
        watch = asyncio.ensure_future(self._watch_resumed(self._progress_mark()))
        watch.add_done_callback(self._log_task_error)
        self._resume_watch = watch
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
            self._keepalive_task = asyncio.ensure_future(self._keepalive())
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
            self._fail("tls", f"TLS: {_tls_reason(reason)}")
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

    def _probe_contacts(self) -> None:
        """After a late resumption: the server does not resend presence on resume (XEP-0198 §5),
        so ask it for our contacts' current presence (RFC 6121 §4.3 probes, answered by the
        server for subscriptions we hold)."""
        client = self._client
        if client is None:
            return
        roster = client.client_roster
        for jid in list(roster.keys()):
            if jid != self._jid.bare and roster[jid]["to"]:
                client.send_presence(pto=jid, ptype="probe")

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

    def _on_connection_failed(self, error: object) -> None:
        text = str(error)
        if isinstance(error, socket.gaierror) or text.startswith("No DNS record"):
            self._fail("dns", f"DNS: {text}")
        elif isinstance(error, ssl.SSLError):
            self._fail("tls", f"TLS: {_tls_reason(error)}")
        else:
            self._fail("tcp", f"TCP connection failed: {text}")
        self._attempt_failed(self.last_error)

    def _on_tls_failed(self, error: object) -> None:
        self._fail("tls", f"TLS: {_tls_reason(error)}")
        self._attempt_failed(self.last_error)

    def _on_auth_attempt_failed(self, failure: object) -> None:
        """One SASL exchange failed. A credential failure ends the attempt: no other mechanism."""
        self.auth_attempts += 1
        condition = failure["condition"] if failure is not None else ""  # type: ignore[index]
        text = failure["text"] if failure is not None else ""  # type: ignore[index]
        if condition in CREDENTIAL_FAILURES and self._client is not None:
            mechanisms = self._client.plugin["feature_mechanisms"]
            # slixmpp's _handle_fail calls _send_auth() right after this event; with every
            # offered mechanism marked as tried it gives up (failed_all_auth) and disconnects.
            mechanisms.attempted_mechs.update(mechanisms.mech_list)
        self._fail("auth", f"authentication failed: {condition or 'refused'}" + (f" ({text})" if text else ""))

    def _on_auth_failed(self, _event: object) -> None:
        if self.failure != "auth" and not self.encrypted and self.account.usetls:
            # No mechanism was allowed because the stream is not encrypted: the server offered
            # no STARTTLS. That is a TLS problem, not a wrong password.
            self._fail("tls", "TLS: the server offered no STARTTLS (set usetls = no to allow plaintext)")
        elif self.failure != "auth":
            self._fail("auth", "authentication failed: no usable SASL mechanism")
        self._attempt_failed(self.last_error)

    def _on_stream_error(self, error: object) -> None:
        condition = error["condition"] if error is not None else ""  # type: ignore[index]
        text = error["text"] if error is not None else ""  # type: ignore[index]
        detail = f"stream error: {condition or 'undefined'}" + (f" ({text})" if text else "")
        if condition == "conflict":
            # RFC 6120 §4.9.3.3: another session bound our full JID and replaced this one.
            self._fail("conflict", f"{detail}: another client uses {self._jid.bare}/{self.account.resource}")
        elif condition == "policy-violation":
            self._fail("policy-violation", detail)
        else:
            self._fail("stream", detail)
        self.log.warning("xmpp_stream_error", failure=self.failure, error=self.last_error)

    def _cancel_helpers(self) -> None:
        for task in (self._keepalive_task, self._barrier_task, self._resume_watch):
            if task is not None and not task.done():
                task.cancel()
        self._keepalive_task = self._barrier_task = self._resume_watch = None

    # -- roster and presence --------------------------------------------------------------------

    def _announce_presence(self) -> None:
        account = self.account
        show = None if account.status == "available" else account.status
        self._client.send_presence(  # type: ignore[union-attr]
            pshow=show, pstatus=account.statusmessage, ppriority=account.priority
        )

    def _apply_buddy_policy(self) -> None:
        """res_xmpp semantics: ``buddy`` entries are subscribed to when ``autoregister`` is on,
        and roster items not listed as buddies are removed when ``autoprune`` is on."""
        client = self._client
        assert client is not None
        roster = client.client_roster
        wanted = {b.lower() for b in self.account.buddies}
        if self.account.autoregister:
            for buddy in wanted:
                item = roster[buddy]
                if item["subscription"] not in ("to", "both") and not item["pending_out"]:
                    client.send_presence(pto=buddy, ptype="subscribe")
                    client.update_roster(buddy, subscription=item["subscription"] or "none")
        if self.account.autoprune:
            for jid in list(roster.keys()):
                if jid != self._jid.bare and jid.lower() not in wanted and roster[jid]["subscription"] != "none":
                    client.del_roster_item(jid)

    def _on_subscription_request(self, presence: object) -> None:
        """res_xmpp's auth_policy=accept: subscribe back, unless we follow or asked already.
        (slixmpp's own handler, registered first, has approved the request.)"""
        if self.account.auth_policy != "accept" or self._client is None:
            return
        item = self._client.client_roster[presence["from"].bare]  # type: ignore[index]
        if not item["to"] and not item["pending_out"]:
            item.subscribe()

    def _on_roster_update(self, _iq: object) -> None:
        """Report roster membership after every roster result or push.

        slixmpp's own handler (registered first) has already applied the stanza to its roster,
        including roster versioning (an unchanged roster comes back as an empty result). That
        roster also lists strangers who merely sent presence, so membership is an entry with a
        subscription in either direction or our own request pending."""
        roster = self._client.client_roster  # type: ignore[union-attr]
        members = {
            jid.lower()
            for jid in roster.keys()
            if jid != self._jid.bare and (roster[jid]["to"] or roster[jid]["from"] or roster[jid]["pending_out"])
        }
        self._listener.roster_replaced(self.name, members)

    def _on_presence(self, presence: object) -> None:
        kind = presence.xml.get("type")  # type: ignore[attr-defined]
        if kind not in (None, "unavailable", "error"):
            return  # subscription traffic is handled by slixmpp's roster
        try:
            # The raw attribute: slixmpp's own JID parsing raises its InvalidJID, which escaped
            # this check and was logged at error level with a traceback for each stanza.
            sender = parse_jid(presence.xml.get("from", ""))  # type: ignore[attr-defined]
        except InvalidJid:
            self.log.info("xmpp_presence_bad_from")
            return
        room = self._rooms.get(sender.bare)
        if room is not None:
            self._on_room_presence(room, sender, presence, kind)
            return
        if kind == "error":
            return
        try:
            priority = int(presence["priority"] or 0)  # type: ignore[index]
        except (TypeError, ValueError):
            priority = 0
        self._listener.presence_received(
            self.name,
            sender,
            available=kind is None,
            show=presence.xml.findtext("{jabber:client}show"),  # type: ignore[attr-defined]
            priority=max(-128, min(127, priority)),
            status=presence.xml.findtext("{jabber:client}status") or "",  # type: ignore[attr-defined]
        )

    # -- messages -------------------------------------------------------------------------------

    def _on_receipt(self, msg: object) -> None:
        """XEP-0184: the recipient's client has our message (a receipt carries no body, so
        slixmpp's 'message' event, which needs one, never sees it)."""
        try:
            received = msg.xml.find(f"{{{RECEIPTS_NS}}}received")  # type: ignore[attr-defined]
            if received is not None and received.get("id"):
                self._listener.receipt_received(self.name, received.get("id"))
        except Exception:  # noqa: BLE001 - never let a handler raise into slixmpp
            self.log.exception("xmpp_handler_failed", handler="receipt")

    def _on_message(self, msg: object) -> None:
        kind = msg["type"] or "normal"  # type: ignore[index]
        if kind not in ("chat", "normal", "groupchat"):
            return
        body = msg.xml.findtext("{jabber:client}body")  # type: ignore[attr-defined]
        if not body:
            return
        try:
            sender = parse_jid(msg.xml.get("from", ""))  # type: ignore[attr-defined] - raw, as above
        except InvalidJid:
            self.log.info("xmpp_message_bad_from")
            return
        if kind == "groupchat" and msg.xml.find("{urn:xmpp:delay}delay") is not None:  # type: ignore[attr-defined]
            return  # room history replayed on join is not a new message
        loop = asyncio.get_running_loop()
        self._listener.message_received(
            self.name,
            InboundMessage(
                sender=sender,
                body=body,
                kind=kind,
                stanza_id=msg["id"] or "",  # type: ignore[index]
                received_at=loop.time(),
            ),
        )

    def send_message(self, to: str, body: str, stanza_id: str, kind: str = "chat", *, receipt: bool = False) -> None:
        """Write one message on the live stream; confirmation arrives via ``stanza_acked``.

        ``receipt`` asks the recipient's client for a XEP-0184 receipt (``receipt_received``)."""
        if not self.online or self._client is None:
            raise NotOnline(self.name)
        message = self._client.make_message(mto=to, mbody=body, mtype=kind)
        message["id"] = stanza_id
        if kind == "chat" and _BARE_URL.fullmatch(body):
            # A body that is one link gets XEP-0066 out-of-band data with the same URL: that is
            # what Conversations, Gajim and Dino need to show a shared file inline.
            oob = ET.SubElement(message.xml, f"{{{OOB_NS}}}x")
            ET.SubElement(oob, f"{{{OOB_NS}}}url").text = body
        if receipt:
            message.append(ET.Element(f"{{{RECEIPTS_NS}}}request"))
        self.delivery.handed(stanza_id, size=len(body.encode()))
        message.send()
        self._schedule_barrier()

    def _on_message_error(self, msg: object) -> None:
        """A bounce of one of our messages: the server (or the recipient's) refused it."""
        stanza_id = msg["id"] or ""  # type: ignore[index]
        if not stanza_id or self.delivery.stage(stanza_id) is None and not stanza_id.startswith("agx-"):
            return
        error = msg["error"]  # type: ignore[index]
        self.delivery.bounced(stanza_id)
        self._listener.stanza_bounced(
            self.name,
            stanza_id,
            error_type=error["type"] or "cancel",
            condition=error["condition"] or "undefined-condition",
            text=error["text"] or "",
        )

    def _schedule_barrier(self) -> None:
        if self._barrier_task is None or self._barrier_task.done():
            self._barrier_task = asyncio.ensure_future(self._barrier())

    async def _barrier(self) -> None:
        """Ping our server until every message written so far is covered; one ping in flight.

        The ping is observed by ``_observe_write`` as it is written, so it covers exactly the
        messages written before it on this link (``DeliveryTracker.barrier_written``)."""
        idle_rounds = 0
        while self.online and self._client is not None:
            if not self.delivery.needs_barrier():
                # Nothing written since the last barrier. Messages still in slixmpp's queue are
                # written shortly; wait for them rather than end with them uncovered.
                if not self.delivery.in_send_queue() or idle_rounds >= 500:
                    return
                idle_rounds += 1
                await asyncio.sleep(0.01)
                continue
            idle_rounds = 0
            client = self._client
            self._barrier_count += 1
            token = f"agx-barrier-{self._barrier_count}"
            iq = client.Iq()
            iq["type"] = "get"
            iq["to"] = client.boundjid.domain
            iq["id"] = token
            iq.enable("ping")
            self._barrier_ids.add(token)
            try:
                # Generous: a barrier decides nothing about liveness (the keepalive does), and on
                # a slow link its answer comes late, not never.
                await iq.send(timeout=max(120.0, self._keepalive_timeout))
            except IqError:
                pass  # an error reply is still a reply: the server read everything before it
            except IqTimeout:
                # Ping again while the stream is up; a dead link is the keepalive's to drop.
                self.delivery.barrier_lost(token)
                continue
            finally:
                self._barrier_ids.discard(token)
            self._report_acked(self.delivery.barrier_answered(token))

    async def _keepalive(self) -> None:
        client = self._client
        assert client is not None
        while True:
            await asyncio.sleep(self._keepalive_interval)
            iq = client.Iq()
            iq["type"] = "get"
            iq["to"] = client.boundjid.domain
            iq.enable("ping")
            answer = asyncio.ensure_future(iq.send(timeout=3600))
            loop = asyncio.get_running_loop()
            mark = self._progress_mark()
            last_progress = loop.time()
            try:
                while True:
                    done, _ = await asyncio.wait({answer}, timeout=self._keepalive_timeout)
                    if done:
                        break
                    now = self._progress_mark()
                    if _progressed(mark, now):
                        mark, last_progress = now, loop.time()  # slow, not dead: keep waiting
                        continue
                    # On loopback or a LAN the backlog sits in the server's receive buffer,
                    # invisible to us, and a rate-limited server (mod_limits) pauses reading
                    # for seconds: allow what we still owe it at MIN_LINK_RATE on top.
                    allowed = self._keepalive_timeout + self.delivery.unconfirmed_bytes() / MIN_LINK_RATE
                    if loop.time() - last_progress < allowed:
                        continue
                    self.log.warning("xmpp_keepalive_timeout", silent_for=round(loop.time() - last_progress, 1))
                    self._fail("timeout", "keepalive: no progress on the link")
                    client.abort()
                    return
            finally:
                if not answer.done():
                    answer.cancel()
                elif not answer.cancelled():
                    answer.exception()  # IqError is an answer too; retrieve it

    def _progress_mark(self) -> tuple[int, int]:
        """(bytes read so far, bytes still waiting to leave us): see ``_progressed``."""
        client = self._client
        transport = client.transport if client is not None else None
        pending = 0
        if transport is not None:
            try:
                pending = transport.get_write_buffer_size()
            except (AttributeError, RuntimeError):
                pending = 0
            pending += _kernel_send_queue(transport.get_extra_info("socket"))
        return self._bytes_in, pending

    async def _watch_resumed(self, mark: tuple[int, int]) -> None:
        """Abandon a resumed stream that makes no progress (stock Prosody may stop reading it)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(0)  # after session_resumed's handlers: the stream counts as online
        client = self._client
        if client is None:
            return
        # Ask for an answer, so that a healthy but quiet stream shows progress too.
        iq = client.Iq()
        iq["type"] = "get"
        iq["to"] = client.boundjid.domain
        iq.enable("ping")
        probe = asyncio.ensure_future(iq.send(timeout=3600))
        try:
            while True:
                await asyncio.sleep(self._keepalive_timeout)
                client = self._client
                if client is None or not self.online or _progressed(mark, self._progress_mark()):
                    return  # the server reads and answers the resumed stream: the keepalive's now
                allowed = self._keepalive_timeout + self.delivery.unconfirmed_bytes() / MIN_LINK_RATE
                if loop.time() - started >= allowed:
                    break
        finally:
            if not probe.done():
                probe.cancel()
            elif not probe.cancelled():
                probe.exception()
        self.log.warning("xmpp_resumed_stream_stalled")
        self._fail("timeout", "resumed stream made no progress")
        client.event("session_end")  # no further resumption: a fresh session resends the outbox
        client.abort()

    async def upload(self, name: str, data: bytes, content_type: str, timeout: float = 30.0) -> str:
        """XEP-0363: upload ``data`` to the upload service found by service discovery on the
        account's server (its size limit honoured); returns the URL to share."""
        if not self.online or self._client is None:
            raise NotOnline(self.name)
        return await self._client.plugin["xep_0363"].upload_file(
            name, size=len(data), content_type=content_type, input_file=io.BytesIO(data),
            domain=self._client.boundjid.domain, timeout=timeout,
        )

    # -- group chat -----------------------------------------------------------------------------

    @property
    def default_nick(self) -> str:
        """docs/dialplan.md (group chat): the account's local part, as written in ``username``."""
        local, at, _domain = self.account.username.split("/", 1)[0].partition("@")
        return local if at and local else (self._jid.local or self.name)

    def joined_rooms(self) -> dict[str, str]:
        return {room: state.nick for room, state in self._rooms.items() if state.joined}

    def room_nick(self, room: str) -> str | None:
        state = self._rooms.get(room)
        return state.nick if state is not None and state.joined else None

    def remembered_nick(self, room: str) -> str | None:
        """Our nick in ``room`` if we are in it or will re-join it (joined or not right now)."""
        state = self._rooms.get(room)
        return state.nick if state is not None else None

    def remember_room(self, room: Jid, nick: str | None = None) -> None:
        """Join ``room`` on the next fresh session (used while offline); nothing is sent now."""
        self._rooms.setdefault(room.bare, _Room(nick=nick or self.default_nick))

    async def join_room(self, room: Jid, nick: str | None = None, timeout: float = 10.0) -> str:
        """Join (or change nick) and wait for the room's self-presence; returns our nick.

        ``nick=None`` keeps the nick we use (or last asked for) in that room, else
        ``default_nick``. A join already in flight with the same nick is shared, not sent twice
        (the re-join after a reconnect and the outbox resend both ask). Raises ``RoomJoinFailed``.
        """
        if not self.online or self._client is None:
            raise RoomJoinFailed(f"account '{self.name}' is not connected")
        previous = self._rooms.get(room.bare)
        if nick is None:
            nick = previous.nick if previous is not None else self.default_nick
        if previous is not None and previous.nick == nick:
            if previous.joined:
                return nick
            if previous.waiter is not None and not previous.waiter.done():
                await self._await_join(room, previous, None, timeout)
                return previous.nick
        loop = asyncio.get_running_loop()
        state = _Room(nick=nick, waiter=loop.create_future())
        self._rooms[room.bare] = state
        self._send_join(room.bare, nick)
        await self._await_join(room, state, previous, timeout)
        return state.nick

    async def _await_join(self, room: Jid, state: _Room, previous: _Room | None, timeout: float) -> None:
        try:
            # shielded: another caller may share this join and must not see it cancelled.
            # wait_for, not asyncio.timeout(): a script reaches this inline, with no current
            # task (agi_server's "How a script runs").
            await asyncio.wait_for(asyncio.shield(state.waiter), timeout)  # type: ignore[arg-type]
        except (TimeoutError, RoomJoinFailed) as exc:
            if self._rooms.get(room.bare) is state and not state.joined:
                # a refused nick change leaves us in the room under the old nick
                if previous is not None and previous.joined:
                    self._rooms[room.bare] = previous
                else:
                    del self._rooms[room.bare]
            if isinstance(exc, RoomJoinFailed):
                raise
            raise RoomJoinFailed(
                f"room {room.bare} did not confirm the join within {timeout:g} s"
            ) from None

    async def _rejoin(self, room: str, nick: str) -> None:
        try:
            await self.join_room(parse_jid(room), nick)
            self.log.info("xmpp_room_rejoined", room=room)
        except RoomJoinFailed as exc:
            self.log.warning("xmpp_room_rejoin_failed", room=room, error=str(exc))
            # keep it listed so the next fresh session tries again
            self._rooms.setdefault(room, _Room(nick=nick))

    def _send_join(self, room: str, nick: str) -> None:
        presence = self._client.make_presence(pto=f"{room}/{nick}")  # type: ignore[union-attr]
        x = ET.Element(f"{{{MUC_NS}}}x")
        history = ET.SubElement(x, f"{{{MUC_NS}}}history")
        history.set("maxstanzas", "0")  # old room chatter must not answer a new jabber_receive
        presence.append(x)
        presence.send()

    async def leave_room(self, room: Jid, nick: str | None = None) -> bool:
        """Leave a room (and stop re-joining it); False when we were not in it."""
        state = self._rooms.pop(room.bare, None)
        if state is None:
            return False
        if state.waiter is not None and not state.waiter.done():
            state.waiter.set_exception(RoomJoinFailed(f"left room {room.bare} before the join completed"))
        if self.online and self._client is not None:
            self._client.send_presence(pto=f"{room.bare}/{nick or state.nick}", ptype="unavailable")
        return True

    def _on_room_presence(self, room: _Room, sender: Jid, presence: object, kind: str | None) -> None:
        waiter = room.waiter
        if kind == "error":
            # the bounce of our join comes from room/nick (or the bare room for some services)
            if sender.resource in (room.nick, "") and waiter is not None and not waiter.done():
                condition = presence["error"]["condition"] or "refused"  # type: ignore[index]
                waiter.set_exception(RoomJoinFailed(f"room {sender.bare} refused the join: {condition}"))
            return
        codes = {
            el.get("code")
            for el in presence.xml.iterfind(f"{{{MUC_USER_NS}}}x/{{{MUC_USER_NS}}}status")  # type: ignore[attr-defined]
        }
        # XEP-0045 §7.2.2: status 110 marks our own presence, even when the room rewrote the nick
        if sender.resource != room.nick and "110" not in codes:
            return  # other occupants' presence is not ours to track
        if kind == "unavailable":
            if "303" not in codes:  # 303: our nick is changing; the new nick's presence follows
                room.joined = False
            return
        if sender.resource != room.nick:
            room.nick = sender.resource  # status 210: the room assigned this nick
        room.joined = True
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- introspection for `show buddies` -------------------------------------------------------

    def roster_items(self) -> Iterable[tuple[str, str]]:
        """(bare JID, subscription) for every roster entry with a real subscription state."""
        if self._client is None:
            return []
        roster = self._client.client_roster
        return [(jid, roster[jid]["subscription"]) for jid in roster.keys()]


def _tls_reason(error: object) -> str:
    """The verification reason of a TLS failure (e.g. 'self-signed certificate'), else its text."""
    reason = getattr(error, "reason", None)  # e.g. CERTIFICATE_VERIFY_FAILED
    detail = getattr(error, "verify_message", None)  # e.g. self-signed certificate
    if reason and detail:
        return f"{reason}: {detail}"
    return str(reason or detail or error)


def _progressed(before: tuple[int, int], after: tuple[int, int]) -> bool:
    """Bytes were read, or some of what waited to leave us has left (the peer is reading)."""
    return after[0] > before[0] or after[1] < before[1]


def _kernel_send_queue(sock: object) -> int:
    """Bytes in the socket's kernel send queue not yet acknowledged by the peer (Linux), else 0."""
    try:
        import fcntl
        import termios

        fileno = sock.fileno()  # type: ignore[attr-defined]
        buf = fcntl.ioctl(fileno, termios.TIOCOUTQ, b"\0\0\0\0")
        return int.from_bytes(buf, "little", signed=True)
    except (AttributeError, ImportError, OSError, ValueError):
        return 0
