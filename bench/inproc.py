"""In-process cost of one FastAGI call: ``AgiServer`` driven through a fake transport, no sockets.

``python -m bench.inproc [--calls N] [--repeats R] [--profile]``

What the whole-system benchmark cannot show: a change of 1-2 µs per call, well under the noise
of a shared 2-core machine. Each call is what the load generator does, minus the kernel: a
session is made, its ``connection_made`` sees an allowed peer, the full environment block
arrives in one ``data_received``, and every command line the server writes is answered
``200 result=1`` one loop callback later (as a socket read would come). The script is
``jabber_status`` against a presence cache holding alice as ``away``. It prints the process CPU
time per call (hot caches, uvloop): use it for before/after on one machine, in one sitting.

Caveat: every reply here is its own loop callback, so a design that needs extra event-loop
passes per call pays for them here in full (an idle ``epoll_wait`` each), where under real
load many calls share a pass. It overstated what running scripts inline saved (37 -> 29 µs
here, about 5 % of the whole-system CPU). The ``instructions`` scenario of ``python -m bench``
(callgrind, real sockets) is the precise before/after figure.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import sys
import time
from collections.abc import Callable
from typing import Any

from agi_xmpp.agi_server import AgiServer, AgiSession
from agi_xmpp.logs import configure as configure_logging
from agi_xmpp.scripts import registry
from bench.fake_services import FakeServices
from bench.floors import FloorProtocol
from bench.loadgen import env_block

_OK = b"200 result=1\n"


class _FakeTransport(asyncio.Transport):
    """Answers each command line one loop callback later; calls ``on_close`` once closed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_close: Callable[[], None]) -> None:
        super().__init__()
        self.loop = loop
        self.on_close = on_close
        self.protocol: Any = None
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.loop.call_soon(self.protocol.data_received, _OK)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.protocol.connection_lost, None)
            self.on_close()


async def _run(calls: int, block: bytes, make_protocol: Any) -> float:
    """CPU seconds for ``calls`` calls, one at a time (c=1, hot): each starts when the last closes."""
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    done = 0

    def next_call() -> None:
        nonlocal done
        if done >= calls:
            if not finished.done():
                finished.set_result(None)
            return
        done += 1
        transport = _FakeTransport(loop, lambda: loop.call_soon(next_call))
        protocol = make_protocol()
        transport.protocol = protocol
        protocol.connection_made(transport)
        protocol.data_received(block)

    start = time.process_time()
    next_call()
    await finished
    return time.process_time() - start


async def measure(calls: int, repeats: int, profile: bool, floor: bool) -> list[float]:
    server = AgiServer(registry, FakeServices(), bind=("127.0.0.1", 0))
    await server.start()
    block = env_block("jabber_status", ["asterisk", "alice@localhost"])
    make_protocol: Any = lambda: AgiSession(server)  # noqa: E731
    if floor:  # the same four lines jabber_status sends, from the Protocol floor
        lines = [b'SET VARIABLE "JABBER_STATUS" "3"\n', b'SET VARIABLE "JABBER_STATUS_SHOW" "away"\n',
                 b'SET VARIABLE "JABBER_STATUS_MESSAGE" "In a meeting until 3"\n',
                 b'SET VARIABLE "JABBER_STATUS_ERROR" ""\n']
        make_protocol = lambda: FloorProtocol(lines)  # noqa: E731
    try:
        await _run(min(calls, 2000), block, make_protocol)  # warm-up
        gc.collect()
        gc.freeze()
        results = []
        for _ in range(repeats):
            if profile:
                profiler = cProfile.Profile()
                profiler.enable()
            seconds = await _run(calls, block, make_protocol)
            if profile:
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            results.append(seconds / calls * 1e6)
        if not floor and server.stats["success"] < calls:
            raise SystemExit(f"calls did not succeed: {dict(server.stats)}")
        return results
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inproc")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile one repeat")
    parser.add_argument("--floor", action="store_true",
                        help="measure bench.floors.FloorProtocol (same lines) instead")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args(argv)
    configure_logging("info")  # as the service runs: a routine call logs nothing
    coro = measure(args.calls, 1 if args.profile else args.repeats, args.profile, args.floor)
    if args.loop == "uvloop":
        import uvloop

        results = uvloop.run(coro)
    else:
        results = asyncio.run(coro)
    results.sort()
    what = "floor Protocol" if args.floor else "jabber_status"
    print(f"{what} in-process: {results[len(results) // 2]:.2f} µs/call median "
          f"(min {results[0]:.2f}, max {results[-1]:.2f}; {args.calls} calls × {len(results)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
