"""The people on the other side of the chat: minimal slixmpp clients for the benchmark.

A ``Peer`` connects over STARTTLS (verifying against the private Prosody's certificate),
approves subscriptions, can send presence and messages, and counts the messages it receives
(bodies are kept only when asked, so counting thousands per second stays cheap).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from typing import Any

from slixmpp import ClientXMPP


@functools.lru_cache(maxsize=None)
def tls_context(cafile: str) -> ssl.SSLContext:
    """One shared context (slixmpp builds an expensive one per client otherwise)."""
    return ssl.create_default_context(cafile=cafile)


class Peer:
    def __init__(self, jid: str, password: str, *, port: int, cafile: str,
                 host: str = "127.0.0.1", keep_bodies: bool = False) -> None:
        self.jid = jid
        self.bare = jid.split("/", 1)[0]
        self.password = password
        self.host = host
        self.port = port
        self.cafile = cafile
        self.keep_bodies = keep_bodies
        self.received = 0
        self.bodies: list[str] = []
        self.last_received_at = 0.0
        self.xmpp: ClientXMPP | None = None
        self._count_changed: asyncio.Event | None = None

    async def connect(self, timeout: float = 15.0, *, show: str | None = None,
                      status: str | None = None) -> Peer:
        loop = asyncio.get_running_loop()
        xmpp = ClientXMPP(self.jid, self.password, ssl_context=tls_context(self.cafile))
        xmpp.enable_direct_tls = False
        xmpp.enable_starttls = True
        xmpp.enable_plaintext = False
        self.xmpp = xmpp
        self._count_changed = asyncio.Event()
        started: asyncio.Future[None] = loop.create_future()

        def done(exc: BaseException | None = None) -> None:
            if not started.done():
                if exc is None:
                    started.set_result(None)
                else:
                    started.set_exception(exc)

        xmpp.add_event_handler("session_start", lambda _e: done())
        xmpp.add_event_handler("failed_all_auth",
                               lambda _e: done(ConnectionError(f"{self.jid}: auth failed")))
        xmpp.add_event_handler("connection_failed",
                               lambda e: done(ConnectionError(f"{self.jid}: {e}")))
        xmpp.add_event_handler("message", self._on_message)
        xmpp.connect(self.host, self.port)
        await asyncio.wait_for(started, timeout)
        await xmpp.get_roster(timeout=timeout)
        xmpp.send_presence(pshow=show, pstatus=status)
        return self

    def _on_message(self, msg: Any) -> None:
        if msg["type"] == "error" or not msg["body"]:
            return
        self.received += 1
        self.last_received_at = asyncio.get_running_loop().time()
        if self.keep_bodies:
            self.bodies.append(msg["body"])
        self._count_changed.set()  # type: ignore[union-attr]

    async def wait_received(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` messages have arrived (False on timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.received < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._count_changed.clear()  # type: ignore[union-attr]
            try:
                await asyncio.wait_for(self._count_changed.wait(), remaining)  # type: ignore[union-attr]
            except TimeoutError:
                return self.received >= count
        return True

    def subscribe(self, jid: str) -> None:
        self.xmpp.send_presence_subscription(pto=jid, ptype="subscribe")  # type: ignore[union-attr]

    def presence(self, show: str | None, status: str | None, priority: int | None = None) -> None:
        self.xmpp.send_presence(pshow=show, pstatus=status, ppriority=priority)  # type: ignore[union-attr]

    def send(self, to: str, body: str) -> None:
        self.xmpp.send_message(mto=to, mbody=body, mtype="chat")  # type: ignore[union-attr]

    async def flushed(self, timeout: float = 30.0) -> None:
        """Wait until the transport's write buffer is empty (what was sent has left us)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        xmpp = self.xmpp
        assert xmpp is not None
        while loop.time() < deadline:
            transport = xmpp.transport
            if xmpp.waiting_queue.empty() and (
                    transport is None or not transport.get_write_buffer_size()):
                return
            await asyncio.sleep(0.002)

    async def disconnect(self) -> None:
        if self.xmpp is not None:
            try:
                await asyncio.wait_for(self.xmpp.disconnect(wait=1.0), 3)
            except Exception:  # noqa: BLE001 - teardown
                self.xmpp.abort()


# -- a presence flood in its own process --------------------------------------------------------
#
# ``python -m bench.peer flood JID PASSWORD PORT CAFILE COUNT PRIORITY``: connects, prints
# "ready", waits for a line on stdin, sends COUNT presence updates (the last one "dnd" with
# status "final-COUNT"), prints "sent SECONDS" once they have left, and goes unavailable and
# exits at the next line (or EOF). In its own process, so building thousands of stanzas never
# stalls the load generator's event loop (which would show up as lookup latency).


async def _flood(jid: str, password: str, port: int, cafile: str, count: int,
                 priority: int) -> None:
    import sys
    import time

    loop = asyncio.get_running_loop()
    peer = await Peer(jid, password, port=port, cafile=cafile).connect()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    shows = (None, "chat", "away", "xa", "dnd")
    t0 = time.perf_counter()
    for i in range(count - 1):
        peer.presence(shows[i % len(shows)], f"update {i}", priority)
        if i % 50 == 49:
            await asyncio.sleep(0)
    peer.presence("dnd", f"final-{count}", priority)
    await peer.flushed(120)
    print(f"sent {time.perf_counter() - t0:.6f}", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    peer.xmpp.send_presence(ptype="unavailable")  # type: ignore[union-attr]
    await peer.flushed()
    await peer.disconnect()


def main(argv: list[str] | None = None) -> int:
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 7 or args[0] != "flood":
        print(__doc__, file=sys.stderr)
        return 2
    _, jid, password, port, cafile, count, priority = args
    try:
        import uvloop

        uvloop.run(_flood(jid, password, int(port), cafile, int(count), int(priority)))
    except ImportError:  # pragma: no cover
        asyncio.run(_flood(jid, password, int(port), cafile, int(count), int(priority)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
