"""The human on the other side of a chat: a slixmpp client for tests (``XmppTestClient``)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import secrets
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout

from tools.local_prosody import LocalProsody


LOOPBACK = "127.0.0.1"
#: The least time a wait for something that must arrive is given. It only bounds a hang: on a
#: busy 2-core machine a healthy server can take seconds, and tests assert behaviour, not speed.
PATIENCE = 30.0
SHOWS = ("chat", "away", "xa", "dnd")


# -- test-side XMPP client ---------------------------------------------------------------------


class XmppConnectError(Exception):
    """An ``XmppTestClient`` could not establish a session (TLS, auth, timeout, refused)."""


@dataclasses.dataclass(frozen=True)
class ReceivedMessage:
    sender: str  # full JID as sent by the server (room@service/nick for groupchat)
    body: str
    type: str  # chat, normal, groupchat, headline
    id: str
    to: str

    @property
    def sender_bare(self) -> str:
        return self.sender.split("/", 1)[0]


@dataclasses.dataclass(frozen=True)
class ReceivedPresence:
    sender: str
    type: str  # available, unavailable, subscribe, subscribed, unsubscribe, unsubscribed, error
    show: str  # '' when available without <show>
    status: str
    priority: int


@functools.lru_cache(maxsize=None)
def verifying_context(cafile: str) -> ssl.SSLContext:
    """One shared context per CA file (slixmpp builds an expensive one per client otherwise)."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@functools.lru_cache(maxsize=None)
def unverified_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _jid_matches(wanted: str | None, got: str) -> bool:
    if wanted is None:
        return True
    if "/" in wanted:
        bare, res = wanted.split("/", 1)
        g_bare, _, g_res = got.partition("/")
        return bare.lower() == g_bare.lower() and res == g_res
    return wanted.lower() == got.split("/", 1)[0].lower()


class XmppTestClient:
    """A small slixmpp client for tests: connect, presence, send, wait for messages, MUC.

    Build it anywhere, but call ``connect()`` from inside the running event loop (the slixmpp
    client is created there). TLS: ``cafile`` (verify against it), or ``ssl_context``, or
    ``verify=False`` (no verification); with none of these the system trust store is used and a
    self-signed server is refused.
    """

    def __init__(
        self,
        jid: str,
        password: str,
        *,
        host: str = LOOPBACK,
        port: int,
        cafile: Path | str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        verify: bool = True,
        resource: str | None = "test",
    ) -> None:
        self.jid = jid if ("/" in jid or not resource) else f"{jid}/{resource}"
        self.bare_jid = jid.split("/", 1)[0]
        self.password = password
        self.host = host
        self.port = port
        if ssl_context is None:
            if cafile is not None:
                ssl_context = verifying_context(str(cafile))
            elif not verify:
                ssl_context = unverified_context()
        self.ssl_context = ssl_context  # None: slixmpp's default (system CAs, verifying)
        self.xmpp: ClientXMPP | None = None
        self.messages: list[ReceivedMessage] = []
        self.message_errors: list[Any] = []
        self.presences: list[ReceivedPresence] = []
        self.disconnects = 0
        self._arrived: asyncio.Event | None = None

    @classmethod
    def for_prosody(cls, server: LocalProsody, jid: str, password: str,
                    **kwargs: Any) -> XmppTestClient:
        """A client for ``server`` that verifies TLS against ``server.cert_path``."""
        kwargs.setdefault("cafile", server.cert_path)
        return cls(jid, password, host=server.host, port=server.c2s_port, **kwargs)

    # -- session ----------------------------------------------------------------------------

    @property
    def full_jid(self) -> str:
        """The JID the server bound (only after ``connect()``)."""
        assert self.xmpp is not None
        return str(self.xmpp.boundjid)

    @property
    def is_connected(self) -> bool:
        return self.xmpp is not None and self.xmpp.is_connected() and self.xmpp.sessionstarted

    async def connect(
        self,
        timeout: float = 10.0,
        *,
        presence: bool = True,
        show: str | None = None,
        status: str | None = None,
        priority: int | None = None,
    ) -> XmppTestClient:
        """Connect (STARTTLS), authenticate, fetch the roster and (by default) send presence.

        Raises ``XmppConnectError`` on a TLS failure, failed authentication, a refused or
        dropped connection, or no session within ``timeout`` seconds (e.g. a paused server).
        """
        loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {}
        if self.ssl_context is not None:
            kwargs["ssl_context"] = self.ssl_context
        xmpp = ClientXMPP(self.jid, self.password, **kwargs)
        self.xmpp = xmpp
        # The c2s port speaks STARTTLS only: skip slixmpp's direct-TLS attempt (it would fail
        # first and fire connection_failed), never fall back to plaintext.
        xmpp.enable_direct_tls = False
        xmpp.enable_starttls = True
        xmpp.enable_plaintext = False
        for plugin in ("xep_0030", "xep_0045", "xep_0199", "xep_0363"):
            xmpp.register_plugin(plugin)
        self._arrived = asyncio.Event()
        outcome: asyncio.Future[None] = loop.create_future()

        def fail(reason: str) -> None:
            if not outcome.done():
                outcome.set_exception(XmppConnectError(f"{self.jid}: {reason}"))

        def on_session_start(_event: Any) -> None:
            if not outcome.done():
                outcome.set_result(None)

        def on_disconnected(reason: Any) -> None:
            # A failed STARTTLS handshake closes the transport first: 'disconnected' (with the
            # SSL error as reason) fires before 'ssl_invalid_chain'.
            self.disconnects += 1
            if isinstance(reason, ssl.SSLCertVerificationError):
                fail(f"TLS certificate verification failed: {reason}")
            fail(f"disconnected before the session started ({reason})")

        xmpp.add_event_handler("session_start", on_session_start)
        xmpp.add_event_handler("failed_all_auth", lambda _e: fail("authentication failed"))
        xmpp.add_event_handler(
            "ssl_invalid_chain", lambda e: fail(f"TLS certificate verification failed: {e}")
        )
        xmpp.add_event_handler("connection_failed", lambda e: fail(f"connection failed: {e}"))
        xmpp.add_event_handler("stream_error", lambda e: fail(f"stream error: {e}"))
        xmpp.add_event_handler("disconnected", on_disconnected)
        xmpp.add_event_handler("message", self._on_message)
        xmpp.add_event_handler("message_error", self.message_errors.append)
        xmpp.add_event_handler("presence", self._on_presence)

        xmpp.connect(self.host, self.port)
        try:
            await asyncio.wait_for(outcome, timeout)
        except asyncio.TimeoutError:
            self._abort()
            raise XmppConnectError(f"{self.jid}: no session within {timeout:g} s") from None
        except XmppConnectError:
            self._abort()
            raise
        xmpp.del_event_handler("disconnected", on_disconnected)
        xmpp.add_event_handler("disconnected", self._count_disconnect)
        try:
            await xmpp.get_roster(timeout=timeout)
        except (IqError, IqTimeout) as exc:
            raise XmppConnectError(f"{self.jid}: roster request failed: {exc}") from exc
        if presence:
            self.send_presence(show=show, status=status, priority=priority)
        return self

    def _count_disconnect(self, _reason: Any) -> None:
        self.disconnects += 1

    def _abort(self) -> None:
        if self.xmpp is not None:
            self.xmpp.cancel_connection_attempt()
            self.xmpp.abort()

    async def disconnect(self, wait: float = 1.0) -> None:
        """End the stream (or drop the TCP connection if the server does not answer)."""
        if self.xmpp is None:
            return
        xmpp = self.xmpp
        xmpp.cancel_connection_attempt()
        if xmpp.transport is not None:
            try:
                await asyncio.wait_for(xmpp.disconnect(wait=wait), wait + 1)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - teardown must not fail
                xmpp.abort()

    # -- sending ----------------------------------------------------------------------------

    def _client(self) -> ClientXMPP:
        if self.xmpp is None:
            raise RuntimeError("connect() first")
        return self.xmpp

    def send_message(self, to: str, body: str, *, mtype: str = "chat",
                     id: str | None = None) -> str:  # noqa: A002 - XMPP's own name
        """Send a message; returns its stanza id."""
        msg = self._client().make_message(mto=to, mbody=body, mtype=mtype)
        msg["id"] = id or secrets.token_hex(8)
        msg.send()
        return msg["id"]

    def send_presence(
        self,
        show: str | None = None,
        status: str | None = None,
        priority: int | None = None,
        *,
        to: str | None = None,
        type: str | None = None,  # noqa: A002 - XMPP's own name
    ) -> None:
        """Broadcast (or direct, with ``to``) presence. ``show``: None/'available', 'chat',
        'away', 'xa', 'dnd'; ``show='unavailable'`` (or ``type='unavailable'``) goes offline."""
        if show == "unavailable":
            show, type = None, "unavailable"
        if show == "available":
            show = None
        if show is not None and show not in SHOWS:
            raise ValueError(f"bad show {show!r}")
        self._client().send_presence(
            pshow=show, pstatus=status, ppriority=priority, pto=to, ptype=type
        )

    def subscribe(self, jid: str) -> None:
        """Ask for ``jid``'s presence. A slixmpp peer (default auto_authorize/auto_subscribe)
        approves and subscribes back, which this client approves too: mutual subscription."""
        self._client().send_presence_subscription(pto=jid, ptype="subscribe")

    async def befriend(self, other: XmppTestClient, timeout: float = PATIENCE) -> None:
        """Mutual presence subscription with another connected test client."""
        self.subscribe(other.bare_jid)
        await self.next_presence(timeout, sender=other.bare_jid, type="subscribed")
        await other.next_presence(timeout, sender=self.bare_jid, type="subscribed")

    # -- receiving --------------------------------------------------------------------------

    def _on_message(self, msg: Any) -> None:
        if msg["type"] == "error":
            return
        body = msg["body"]
        if not body:
            return  # chat states, receipts, MUC subject changes...
        self.messages.append(ReceivedMessage(
            sender=str(msg["from"]), body=body, type=msg["type"], id=msg["id"] or "",
            to=str(msg["to"]),
        ))
        self._notify()

    def _on_presence(self, pres: Any) -> None:
        try:
            priority = int(pres["priority"] or 0)
        except (TypeError, ValueError):
            priority = 0
        show = pres["show"] if pres["type"] in SHOWS else ""
        ptype = "available" if pres["type"] in SHOWS or pres["type"] == "available" else pres["type"]
        self.presences.append(ReceivedPresence(
            sender=str(pres["from"]), type=ptype, show=show, status=pres["status"] or "",
            priority=priority,
        ))
        self._notify()

    def _notify(self) -> None:
        if self._arrived is not None:
            self._arrived.set()

    async def _take(self, items: list[Any], accept: Callable[[Any], bool], timeout: float,
                    what: str) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        assert self._arrived is not None, "connect() first"
        while True:
            for i, item in enumerate(items):
                if accept(item):
                    return items.pop(i)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise asyncio.TimeoutError(
                    f"{self.jid}: no {what} within {timeout:g} s; unclaimed: {items!r}"
                )
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def next_message(self, timeout: float = PATIENCE, *, sender: str | None = None,
                           mtype: str | None = None) -> ReceivedMessage:
        """The oldest unclaimed message with a body (from ``sender``: a bare JID matches any
        resource, a full JID that resource), waiting up to ``timeout`` seconds for one, but
        never less than ``PATIENCE``. Raises ``asyncio.TimeoutError`` (listing what did arrive)."""
        return await self._take(
            self.messages, self._message_filter(sender, mtype),
            max(timeout, PATIENCE), f"message from {sender or 'anyone'}",
        )

    @staticmethod
    def _message_filter(sender: str | None, mtype: str | None) -> Callable[[Any], bool]:
        return lambda m: _jid_matches(sender, m.sender) and (mtype is None or m.type == mtype)

    async def next_presence(self, timeout: float = PATIENCE, *, sender: str | None = None,
                            type: str | None = None) -> ReceivedPresence:  # noqa: A002
        """The oldest unclaimed presence (optionally from ``sender`` / of ``type``), waiting
        up to ``timeout`` seconds but never less than ``PATIENCE``."""
        return await self._take(
            self.presences,
            lambda p: _jid_matches(sender, p.sender) and (type is None or p.type == type),
            max(timeout, PATIENCE), f"presence from {sender or 'anyone'}",
        )

    async def no_message(self, within: float = 0.5, *, sender: str | None = None) -> None:
        """Assert that no message (from ``sender``) arrives within ``within`` seconds."""
        try:
            msg = await self._take(self.messages, self._message_filter(sender, None), within,
                                   f"message from {sender or 'anyone'}")
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"{self.jid}: unexpected message {msg!r}")

    # -- group chat -------------------------------------------------------------------------

    async def join_room(self, room: str, nick: str | None = None,
                        timeout: float = PATIENCE) -> None:
        """Join ``room`` (``name@conference.domain``; created if new) and wait for the join."""
        nick = nick or self.bare_jid.split("@", 1)[0]
        await self._client().plugin["xep_0045"].join_muc_wait(
            room, nick, maxstanzas=0, timeout=timeout,
        )

    def leave_room(self, room: str, nick: str | None = None) -> None:
        nick = nick or self.bare_jid.split("@", 1)[0]
        self._client().plugin["xep_0045"].leave_muc(room, nick)

    def send_group_message(self, room: str, body: str) -> str:
        return self.send_message(room, body, mtype="groupchat")

    def __repr__(self) -> str:
        state = "connected" if self.is_connected else "not connected"
        return f"<XmppTestClient {self.jid} -> {self.host}:{self.port} {state}>"


