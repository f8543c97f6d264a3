"""A fault-injecting TCP proxy for the delivery tests: reset, stall or throttle a live link.

    proxy = FaultProxy("127.0.0.1", server.c2s_port)
    await proxy.start()                  # listens on 127.0.0.1:proxy.port
    ...point the service at proxy.port...
    proxy.reset()                        # RST both sides of every open connection
    proxy.stall()                        # stop forwarding in both directions (a silent link)
    proxy.unstall()
    proxy.throttle(2000)                 # bytes per second, each direction (None: unlimited)
    await proxy.close()

TLS passes through untouched (the proxy only moves bytes), so the service still verifies the
server's certificate for the server's name.
"""

from __future__ import annotations

import asyncio
import socket
import struct


class FaultProxy:
    """One listening port forwarding to ``(host, port)``; faults apply to every connection."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.connections = 0  # accepted so far
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._rate: float | None = None
        self.refuse = False  # close new connections at once (the server is "down")

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.reset()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def reset(self) -> None:
        """Abort every open connection with a TCP RST on both sides."""
        for client, upstream in list(self._links):
            for writer in (client, upstream):
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    # SO_LINGER with a zero timeout turns close() into a RST.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
        self._links.clear()

    def stall(self) -> None:
        """Stop forwarding (bytes pile up in the kernel buffers, as on a dead link)."""
        self._flowing.clear()

    def unstall(self) -> None:
        self._flowing.set()

    def throttle(self, bytes_per_second: float | None) -> None:
        self._rate = bytes_per_second

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.refuse:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        link = (writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            self._links.discard(link)
            for w in link:
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                chunk = await reader.read(4096 if self._rate is None else max(1, int(self._rate / 10)))
                if not chunk:
                    writer.write_eof() if writer.can_write_eof() else None
                    return
                await self._flowing.wait()
                writer.write(chunk)
                await writer.drain()
                if self._rate:
                    await asyncio.sleep(len(chunk) / self._rate)
        except (ConnectionError, OSError, RuntimeError):
            writer.transport.abort()
