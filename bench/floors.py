"""Floor servers: the smallest FastAGI servers that send the same command lines, with no logic.

``python -m bench.floors streams|protocol|task --port P --lines FILE [--loop asyncio|uvloop]``

Both read the environment block up to its empty line, then send the lines of ``FILE`` (a JSON
list of the exact command lines agi-xmpp sent for the script) one at a time, each after the
previous reply, and close. ``HANGUP`` notices are skipped (Asterisk may send them between
replies); nothing else is checked. They are what any FastAGI server must at least spend: a
product that costs close to a floor has little left to gain.

* ``streams``: ``asyncio.start_server`` with ``StreamReader.readuntil`` / ``readline`` — what
  most asyncio FastAGI servers (and panoramisk) are built on.
* ``protocol``: one ``asyncio.Protocol`` per connection, no task, no stream objects — the
  cheapest path asyncio offers; meant for uvloop.
* ``task``: the same, but the lines are sent from an asyncio task that awaits a future per
  reply, as agi-xmpp runs its scripts: the floor of that design (``--extra-baselines``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence

HANGUP = b"HANGUP"


def load_lines(path: str) -> list[bytes]:
    with open(path) as f:
        lines = json.load(f)
    return [line.encode() + b"\n" for line in lines]


class FloorProtocol(asyncio.Protocol):
    """Env block → line 0; each reply line (not HANGUP) → the next line; after the last, close."""

    __slots__ = ("lines", "transport", "buf", "sent")

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.sent = 0  # lines sent so far; 0 while reading the environment block

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.sent:
            end = buf.find(b"\n\n")
            if end < 0:
                self.buf = buf
                return
            buf = buf[end + 2 :]
            self.sent = 1
            self.transport.write(self.lines[0])  # type: ignore[union-attr]
        start = 0
        while (nl := buf.find(b"\n", start)) >= 0:
            line = buf[start:nl]
            start = nl + 1
            if line == HANGUP:
                continue
            if self.sent == len(self.lines):
                self.transport.close()  # type: ignore[union-attr]
                return
            self.transport.write(self.lines[self.sent])  # type: ignore[union-attr]
            self.sent += 1
        self.buf = buf[start:]


class TaskFloorProtocol(asyncio.Protocol):
    """The Protocol floor, but the lines are sent by an asyncio task awaiting one future per
    reply: the smallest server that runs a script the way agi-xmpp does (what that design costs)."""

    __slots__ = ("lines", "transport", "buf", "started", "reply")

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.started = False
        self.reply: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.started:
            end = buf.find(b"\n\n")
            if end < 0:
                self.buf = buf
                return
            buf = buf[end + 2 :]
            self.started = True
            asyncio.get_running_loop().create_task(self.script())
        start = 0
        while (nl := buf.find(b"\n", start)) >= 0:
            line = buf[start:nl]
            start = nl + 1
            if line != HANGUP and self.reply is not None:
                reply, self.reply = self.reply, None
                reply.set_result(None)
        self.buf = buf[start:]

    async def script(self) -> None:
        loop = asyncio.get_running_loop()
        for line in self.lines:
            self.reply = loop.create_future()
            self.transport.write(line)  # type: ignore[union-attr]
            await self.reply
        self.transport.close()  # type: ignore[union-attr]


def streams_handler(lines: list[bytes]):  # noqa: ANN201
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\n\n")
            for line in lines:
                writer.write(line)
                while True:
                    reply = await reader.readline()
                    if reply != b"HANGUP\n":
                        break
                if not reply:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return handle


async def serve(kind: str, host: str, port: int, lines: list[bytes], backlog: int) -> None:
    loop = asyncio.get_running_loop()
    if kind == "protocol":
        server = await loop.create_server(lambda: FloorProtocol(lines), host, port,
                                          reuse_address=True, backlog=backlog)
    elif kind == "task":
        server = await loop.create_server(lambda: TaskFloorProtocol(lines), host, port,
                                          reuse_address=True, backlog=backlog)
    else:
        server = await asyncio.start_server(streams_handler(lines), host, port,
                                            reuse_address=True, backlog=backlog)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()


def run_loop(coro, loop_kind: str) -> None:  # noqa: ANN001
    if loop_kind == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floors")
    parser.add_argument("kind", choices=["streams", "protocol", "task"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lines", required=True, help="JSON list of command lines to send")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--backlog", type=int, default=100)
    args = parser.parse_args(argv)
    lines = load_lines(args.lines)
    if not lines:
        print("no command lines", file=sys.stderr)
        return 2
    run_loop(serve(args.kind, args.host, args.port, lines, args.backlog), args.loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
