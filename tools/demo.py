"""`make run`'s demo XMPP server: a private Prosody and the account file that points at it.

Development tool, not part of the installed package: production never starts a server of ours
(``agi-xmpp serve`` with no account is a configuration error). ``make run`` calls

    python -m tools.demo prepare etc/quickstart.conf

which starts (or reuses) the Prosody kept under ``<state_dir>/prosody`` on 127.0.0.1:15222,
with a service account ``asterisk@localhost`` and two people to chat with, ``alice@localhost``
and ``bob@localhost`` (passwords in ``<state_dir>/prosody/demo-accounts.json``), and writes
``<state_dir>/demo-account.conf``: the ``[demo]`` account section that ``etc/quickstart.conf``
includes (``#tryinclude``). ``python -m tools.demo stop etc/quickstart.conf`` stops the server.
Every failure is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from agi_xmpp.config import Config, load_config
from agi_xmpp.errors import ConfigError

from .local_prosody import DEMO_C2S_PORT, DEMO_HTTP_PORT, DemoServer, LocalProsodyError, ensure_demo, stop_demo

DEMO_ACCOUNT = "demo"
ACCOUNT_FILE = "demo-account.conf"


def account_file_text(demo: DemoServer) -> str:
    """The ``[demo]`` section: the service account on the demo server, its people as buddies."""
    lines = [
        "; Written by `make run` (python -m tools.demo prepare): the demo XMPP account.",
        "; Rewritten on every `make run`; delete it to leave the demo.",
        f"[{DEMO_ACCOUNT}]",
        f"username = {demo.jid}",
        f"secret = {demo.password}",
        f"serverhost = {demo.host}",
        f"port = {demo.port}",
        f"cafile = {demo.cafile}",  # the demo server's self-signed certificate
        "statusmessage = agi-xmpp demo",
        *(f"buddy = {jid}" for jid, _ in sorted(demo.users.values())),
    ]
    return "\n".join(lines) + "\n"


def prepare(state_dir: Path, c2s_port: int = DEMO_C2S_PORT, http_port: int = DEMO_HTTP_PORT) -> DemoServer:
    """Start or reuse the demo server and (re)write ``state_dir/demo-account.conf``."""
    demo = ensure_demo(state_dir, c2s_port=c2s_port, http_port=http_port)
    path = state_dir / ACCOUNT_FILE
    tmp = path.with_name(f".{ACCOUNT_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds a password
    with os.fdopen(fd, "w") as f:
        f.write(account_file_text(demo))
    os.replace(tmp, path)
    return demo


def _read(config_path: str) -> Config:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise SystemExit(f"tools.demo: configuration error: {str(exc).splitlines()[0]}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo", description="the demo XMPP server of `make run`")
    parser.add_argument("command", choices=["prepare", "stop"])
    parser.add_argument("config", help="the agi_xmpp.conf whose state_dir holds the demo (etc/quickstart.conf)")
    parser.add_argument("--c2s-port", type=int, default=DEMO_C2S_PORT)
    parser.add_argument("--http-port", type=int, default=DEMO_HTTP_PORT)
    args = parser.parse_args(argv)
    config = _read(args.config)
    state_dir = Path(config.general.state_dir)
    own = sorted(set(config.accounts) - {DEMO_ACCOUNT})
    if args.command == "prepare" and own:
        print(f"{args.config} has its own account(s) ({', '.join(own)}): no demo XMPP server needed")
        return 0
    try:
        if args.command == "stop":
            stopped = stop_demo(state_dir, c2s_port=args.c2s_port, http_port=args.http_port)
            print("demo XMPP server stopped" if stopped else "demo XMPP server was not running")
            return 0
        demo = prepare(state_dir, args.c2s_port, args.http_port)
    except LocalProsodyError as exc:
        reason = str(exc).splitlines()[0]
        if "already in use" in reason:
            reason = (f"port {args.c2s_port} or {args.http_port} is in use by another program: the "
                      "demo XMPP server needs both (stop that program, or pass --c2s-port/--http-port)")
        print(f"tools.demo: {reason}", file=sys.stderr)
        return 1
    people = " and ".join(jid for jid, _ in sorted(demo.users.values()))
    print(
        f"demo XMPP server on {demo.host}:{demo.port}: service account {demo.jid} (account "
        f"'{DEMO_ACCOUNT}'), people {people}; passwords in {demo.accounts_file}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
