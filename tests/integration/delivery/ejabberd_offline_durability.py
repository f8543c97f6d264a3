"""Does stock ejabberd keep the offline messages it has accepted across a SIGKILL? (a script, not a
test: it measures the server, not agi-xmpp; docs/reliability.md, "ejabberd's offline store")

No agi-xmpp code is involved: a plain slixmpp client sends N messages to an offline account on
Debian's stock ejabberd 23.01 and pings the server (answered after the messages were handled);
``ejabberdctl get_offline_count`` reports what the offline store holds; after a wait (or a clean
stop and start) the whole node is SIGKILLed and restarted, and the count is read again.

    .venv/bin/python tests/integration/delivery/ejabberd_offline_durability.py [waits...]
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(TESTS), str(TESTS.parent)]

from xmpp_client import XmppTestClient  # noqa: E402
from xmpp_servers import Ejabberd, ejabberd_available  # noqa: E402

MESSAGES = 50


def ctl(server: Ejabberd, *args: str) -> str:
    res = subprocess.run(server._ctl_command(*args), capture_output=True, text=True,
                         cwd=server.workdir, check=False)
    return (res.stdout + res.stderr).strip()


def offline_count(server: Ejabberd, jid: str) -> int | str:
    user, host = jid.split("@")
    for _ in range(120):  # the command interface is ready a moment after c2s
        out = ctl(server, "get_offline_count", user, host)
        if out.isdigit():
            return int(out)
        time.sleep(0.5)
    return out


async def case(server: Ejabberd, sender: XmppTestClient, wait: float | None) -> str:
    """One recipient; ``wait`` seconds between the server's answer and the SIGKILL (None: a
    clean stop and start first)."""
    password = secrets.token_urlsafe(8)
    recipient = server.register(f"rcpt-{secrets.token_hex(3)}", password)
    server.restart_gracefully()  # the account itself must survive the SIGKILL
    await sender.connect(60)
    for n in range(MESSAGES):
        sender.send_message(recipient, f"m{n}")
    await sender.xmpp.plugin["xep_0199"].ping(timeout=30)  # type: ignore[union-attr]
    answered = time.monotonic()
    before = offline_count(server, recipient)  # ejabberdctl itself takes a second or two
    await sender.disconnect()
    if wait is None:
        server.restart_gracefully()
        what = "clean stop and start, then SIGKILL"
    else:
        await asyncio.sleep(wait)
        what = f"SIGKILL {time.monotonic() - answered:.1f} s after the server's answer"
    server.kill()
    server.start()
    after = offline_count(server, recipient)
    return f"| {what} | {before} | {after} |"


async def main(waits: list[float | None]) -> None:
    reason = ejabberd_available()
    if reason:
        raise SystemExit(reason)
    server = Ejabberd(stock=True)
    server.start()
    try:
        password = secrets.token_urlsafe(8)
        sender = XmppTestClient.for_prosody(server, server.register(f"sender-{secrets.token_hex(3)}", password),  # type: ignore[arg-type]
                                            password)
        print(f"| {MESSAGES} messages to an offline account | offline count before | after restart |")
        print("|---|---|---|")
        for wait in waits:
            print(await case(server, sender, wait), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    args = sys.argv[1:] or ["0", "0.5", "1", "1.5", "3", "10", "clean"]
    asyncio.run(main([None if a == "clean" else float(a) for a in args]))
