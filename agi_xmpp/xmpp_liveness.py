"""An XMPP session's link: is it alive, and is a resumed stream really read (part of ``XmppSession``).

Keepalive: a ping to our server every ``keepalive_interval`` seconds. A link is dead only when it
makes no *progress* for ``keepalive_timeout``: no byte read, and nothing we wrote leaving our
buffers or the kernel's send queue (``TIOCOUTQ``). A server that reads us slowly (Debian's stock
Prosody: 10 kB/s) answers late but is alive; aborting it used to end in an endless cycle of
resumptions and duplicate copies. A resumed stream that makes no progress within
``keepalive_timeout`` (plus the backlog's time at ``MIN_LINK_RATE``) is abandoned: the session
ends (no further resumption attempt) and a fresh one resends from the outbox. Debian's stock
Prosody was seen to stop reading a resumed stream.

A mixin of ``XmppSession`` (xmpp_session.py), which sets the attributes declared below; every
task here is started through the session's ``TaskSet``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import slixmpp
from slixmpp.exceptions import IqError
from slixmpp.stanza import Iq

from .delivery import DeliveryTracker
from .supervisor import TaskSet

# Bytes per second below which a link with a backlog counts as dead (the keepalive's patience).
MIN_LINK_RATE = 1000.0


class SessionLiveness:
    """Keepalive and the resumed-stream watch (module docstring)."""

    # Set by XmppSession.__init__ (and kept current by it).
    _client: slixmpp.ClientXMPP | None
    _keepalive_interval: float
    _keepalive_timeout: float
    _bytes_in: int
    _tasks: TaskSet
    delivery: DeliveryTracker
    log: Any
    online: bool

    _fail: Callable[..., None]  # XmppSession._fail: name a failure class and its reason

    async def _keepalive(self) -> None:
        client = self._client
        assert client is not None
        while True:
            await asyncio.sleep(self._keepalive_interval)
            iq = server_ping(client)
            answer = self._tasks.spawn(_answered(iq), "keepalive-ping")
            if answer is None:
                return  # stopping
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
                answer.cancel()  # no-op once answered; the task set awaits it

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
        iq = server_ping(client)
        probe = self._tasks.spawn(_answered(iq), "resumed-probe")
        if probe is None:
            return  # stopping
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
            probe.cancel()  # no-op once answered; the task set awaits it
        self.log.warning("xmpp_resumed_stream_stalled")
        self._fail("timeout", "resumed stream made no progress")
        client.event("session_end")  # no further resumption: a fresh session resends the outbox
        client.abort()


def server_ping(client: slixmpp.ClientXMPP, stanza_id: str | None = None) -> Iq:
    """An XEP-0199 ping to our own server (keepalive, resumed-stream probe, delivery barrier)."""
    iq = client.Iq()
    iq["type"] = "get"
    iq["to"] = client.boundjid.domain
    if stanza_id is not None:
        iq["id"] = stanza_id
    iq.enable("ping")
    return iq


async def _answered(iq: Iq) -> None:
    """Send ``iq`` and wait for any answer: an error reply (``IqError``) is an answer too."""
    try:
        await iq.send(timeout=3600)
    except IqError:
        pass


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
