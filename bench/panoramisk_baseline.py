"""panoramisk's ``fast_agi.Application`` sending the same command lines: the library baseline.

``python -m bench.panoramisk_baseline --port P --lines FILE --script NAME [--loop asyncio|uvloop]``

The handler is what a panoramisk user writes for the script, minus any lookup: one
``await request.send_command(line)`` per line, in order. It is a coroutine function because
panoramisk wraps plain functions with ``asyncio.coroutine``, which Python 3.11 removed.
panoramisk cannot take ``HANGUP`` lines (it reads one as the reply), so it is only measured
without them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from bench.floors import load_lines, run_loop


async def serve(host: str, port: int, script: str, lines: list[str], backlog: int) -> None:
    from panoramisk.fast_agi import Application

    app = Application()  # inside the running loop: it calls asyncio.get_event_loop()

    async def handler(request) -> None:  # noqa: ANN001 - panoramisk's Request
        for line in lines:
            await request.send_command(line)

    app.add_route(script, handler)
    server = await asyncio.start_server(app.handler, host, port, reuse_address=True,
                                        backlog=backlog)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.panoramisk_baseline")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lines", required=True)
    parser.add_argument("--script", required=True)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--backlog", type=int, default=100)
    args = parser.parse_args(argv)
    # panoramisk logs every request at INFO; a user in production would run at WARNING.
    logging.basicConfig(level=logging.WARNING)
    lines = [line.decode().rstrip("\n") for line in load_lines(args.lines)]
    run_loop(serve(args.host, args.port, args.script, lines, args.backlog), args.loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
