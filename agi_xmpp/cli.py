"""The ``agi-xmpp`` command: argument parsing and ``main(argv=None) -> int``.

``serve`` runs the service; ``show`` and ``send`` ask the running service over its HTTP API;
``directory`` edits the database directly (it works whether or not the service runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
from urllib.parse import quote
from collections.abc import Sequence

from . import logs
from .config import Config, load_config, make_directory_entry, parse_xmpp_conf, render_accounts
from .errors import AgiXmppError, ConfigError

DEFAULT_CONFIG = "/etc/asterisk/agi_xmpp.conf"

STATUS_WORDS = {"available": 1, "chat": 2, "away": 3, "xa": 4, "dnd": 5, "offline": 6, "unknown": 7}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agi-xmpp", description="XMPP chat and presence for Asterisk dialplans over FastAGI.")
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"configuration file (default {DEFAULT_CONFIG})")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service")
    serve.add_argument("--no-uvloop", action="store_true", help="use the default asyncio event loop")
    sub.add_parser("check-config", help="read the configuration and report problems")

    show = sub.add_parser("show", help="ask the running service")
    show_sub = show.add_subparsers(dest="what", required=True)
    show_sub.add_parser("connections", help="XMPP sessions and their state")
    buddies = show_sub.add_parser("buddies", help="roster and presence per resource")
    buddies.add_argument("account", nargs="?", default="")
    message = show_sub.add_parser("message", help="what happened to one sent message (its id)")
    message.add_argument("id")

    send = sub.add_parser("send", help="send a chat message through the running service")
    send.add_argument("account")
    send.add_argument("jid")
    send.add_argument("text", nargs="+")

    directory = sub.add_parser("directory", help="the extension <-> JID directory")
    dsub = directory.add_subparsers(dest="action", required=True)
    dsub.add_parser("list")
    add = dsub.add_parser("add")
    add.add_argument("extension")
    add.add_argument("jid")
    add.add_argument("--device", default=None, help="dial string (default PJSIP/<extension>)")
    add.add_argument("--mailbox", default=None, help="voicemail box, EXT@CONTEXT")
    add.add_argument("--replace", action="store_true", help="overwrite an existing entry")
    remove = dsub.add_parser("remove")
    remove.add_argument("extension")

    imp = sub.add_parser("import-xmpp-conf", help="print res_xmpp xmpp.conf client sections in agi_xmpp.conf form")
    imp.add_argument("path")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"agi-xmpp: configuration error: {exc}", file=sys.stderr)
        return 2
    except AgiXmppError as exc:
        print(f"agi-xmpp: {exc}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "import-xmpp-conf":
        warnings: list[str] = []
        print(render_accounts(parse_xmpp_conf(args.path, warnings)), end="")
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        return 0
    config = load_config(args.config)
    if args.command == "check-config":
        return _check_config(config)
    if args.command == "serve":
        return _serve(config, use_uvloop=not args.no_uvloop)
    if args.command == "show":
        return _show(config, args)
    if args.command == "send":
        reply = _api(config, "POST", "/api/messages", {"account": args.account, "to": args.jid, "body": " ".join(args.text)})
        print(reply["status"])
        if reply.get("id"):  # to follow it: agi-xmpp show message ID
            print(f"message id {reply['id']}", file=sys.stderr)
        return 0 if reply["status"] in ("SUCCESS", "QUEUED") else 1
    if args.command == "directory":
        return _directory(config, args)
    raise AssertionError(args.command)


def _check_config(config: Config) -> int:
    for warning in config.warnings:
        print(f"warning: {warning}")
    print(f"{config.path}: OK, {len(config.accounts)} account(s), {len(config.directory)} directory entr(y/ies)")
    return 0


def _serve(config: Config, *, use_uvloop: bool) -> int:
    from .demo import with_demo_account
    from .services import serve

    logs.configure(config.general.log_level, config.general.log_format)
    config = with_demo_account(config)
    if use_uvloop:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            use_uvloop = False
    if use_uvloop:
        uvloop.run(serve(config))
    else:
        asyncio.run(serve(config))
    return 0


def _show(config: Config, args: argparse.Namespace) -> int:
    if args.what == "connections":
        rows = _api(config, "GET", "/api/connections")
        print("Jabber Users and their status:")
        for row in rows:
            state = "Connected" if row["state"] == "online" else row["state"].capitalize()
            extra = f" ({row['last_error']})" if row["last_error"] and row["state"] != "online" else ""
            print(f"       [{row['account']}] {row['jid']:<30} - {state}{extra}")
        print("----")
        print(f"   Number of clients: {len(rows)}")
        return 0
    if args.what == "message":
        for key, value in _api(config, "GET", f"/api/messages/{quote(args.id, safe='')}").items():
            print(f"{key:>16}: {'' if value is None else value}")
        return 0
    query = f"?account={args.account}" if args.account else ""
    rows = _api(config, "GET", f"/api/buddies{query}")
    print("XMPP buddy lists")
    current = None
    for row in rows:
        if row["account"] != current:
            current = row["account"]
            print(f"Client: {current}")
        print(f"\tBuddy:\t{row['jid']}")
        if not row["resources"]:
            print("\t\tResource: None")
        for res in row["resources"]:
            print(f"\t\tResource: {res['resource']}")
            print(f"\t\t\tStatus: {STATUS_WORDS.get(res['show'], 6)} ({res['show']})")
            print(f"\t\t\tPriority: {res['priority']}")
            if res["status"]:
                print(f"\t\t\tMessage: {res['status']}")
    return 0


def _directory(config: Config, args: argparse.Namespace) -> int:
    from .storage import Storage

    storage = Storage(config.general.database)
    try:
        storage.create_all()
        storage.directory_load_config(config.directory)  # what the service does at start
        if args.action == "list":
            for entry in storage.directory_list():
                print(f"{entry.extension:<10} {entry.jid:<35} device={entry.device}" + (f" mailbox={entry.mailbox}" if entry.mailbox else ""))
        elif args.action == "add":
            entry = make_directory_entry(args.extension, args.jid, device=args.device, mailbox=args.mailbox)
            storage.directory_put(entry, replace=args.replace)
            print(f"added {entry.extension} -> {entry.jid}")
        elif args.action == "remove":
            if not storage.directory_remove(args.extension):
                print(f"agi-xmpp: no directory entry for extension {args.extension}", file=sys.stderr)
                return 1
            print(f"removed {args.extension}")
    finally:
        storage.close()
    return 0


def _api(config: Config, method: str, path: str, payload: object | None = None) -> object:
    """Call the running service's HTTP API (the `show` and `send` commands)."""
    host, port = config.general.http_bind
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if config.general.http_token:
        request.add_header("Authorization", f"Bearer {config.general.http_token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except (ValueError, AttributeError):
            pass
        raise AgiXmppError(f"the service answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise AgiXmppError(f"cannot reach the running service at {url}: {exc}") from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
