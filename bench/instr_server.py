"""``python -m bench.instr_server --port P``: agi-xmpp's FastAGI server alone, for callgrind.

The real ``AgiServer`` and scripts on uvloop; the config and presence cache ``jabber_status``
reads are in memory (``bench.fake_services``) (no XMPP session, no database: they are not on
jabber_status's path, and a TLS session under valgrind would only slow the start). Prints
``ready`` once listening. With ``PYTHONPATH`` pointing at another tree, that tree is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal


async def serve(port: int) -> None:
    from agi_xmpp.agi_server import AgiServer
    from agi_xmpp.logs import configure
    from agi_xmpp.scripts import registry
    from bench.fake_services import FakeServices

    configure("info")
    server = AgiServer(registry, FakeServices(), bind=("127.0.0.1", port))
    await server.start()
    gc.collect()
    gc.freeze()  # as agi_xmpp.services.serve does
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instr_server")
    parser.add_argument("--port", type=int, required=True)
    import uvloop

    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
