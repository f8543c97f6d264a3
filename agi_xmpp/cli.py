"""The ``agi-xmpp`` command: argument parsing and ``main(argv=None) -> int``.

``serve`` runs the service; ``show`` and ``send`` ask the running service over its HTTP API;
``directory`` reads or edits the database directly (it works whether or not the service runs;
``list`` never writes, ``add``/``remove`` write only the entry named). Every command takes
``-c PATH`` before or after its name.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from urllib.parse import quote
from collections.abc import Sequence

from . import logs
from .config import (
    Config,
    DirectoryEntry,
    load_config,
    make_directory_entry,
    parse_xmpp_conf,
    render_accounts,
)
from .config_checks import ami_warnings
from .errors import AgiXmppError, ConfigError, InvalidJid, StorageError, UnknownAccount
from .jid import parse_jid
from .state_files import read_token

DEFAULT_CONFIG = "/etc/asterisk/agi_xmpp.conf"

STATUS_WORDS = {"available": 1, "chat": 2, "away": 3, "xa": 4, "dnd": 5, "offline": 6, "unknown": 7}


def build_parser() -> argparse.ArgumentParser:
    # -c/--config is accepted before the command and after it (`agi-xmpp serve -c PATH`, as
    # systemd units and habits write it): every subcommand repeats it with a SUPPRESSed default,
    # so it only overrides the top-level value when given there.
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument("-c", "--config", default=argparse.SUPPRESS, help=f"configuration file (default {DEFAULT_CONFIG})")

    parser = argparse.ArgumentParser(prog="agi-xmpp", description="XMPP chat and presence for Asterisk dialplans over FastAGI.")
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"configuration file (default {DEFAULT_CONFIG})")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(parent: argparse._SubParsersAction, name: str, **kwargs: object) -> argparse.ArgumentParser:
        return parent.add_parser(name, parents=[config_option], **kwargs)  # type: ignore[arg-type]

    serve = command(sub, "serve", help="run the service")
    serve.add_argument("--no-uvloop", action="store_true", help="use the default asyncio event loop")
    command(sub, "check-config", help="read the configuration and report every problem")

    show = command(sub, "show", help="ask the running service")
    show_sub = show.add_subparsers(dest="what", required=True)
    command(show_sub, "connections", help="XMPP sessions and the AMI link, with their state")
    buddies = command(show_sub, "buddies", help="roster and presence per resource")
    buddies.add_argument("account", nargs="?", default="")
    message = command(show_sub, "message", help="what happened to one sent message (its id)")
    message.add_argument("id")

    send = command(sub, "send", help="send a chat message through the running service")
    send.add_argument("account")
    send.add_argument("jid")
    send.add_argument("text", nargs="+")
    send.add_argument("--to-server", action="store_true",
                      help="allow a JID without a user part (a server, gateway or component)")

    directory = command(sub, "directory", help="the extension <-> JID directory")
    dsub = directory.add_subparsers(dest="action", required=True)
    command(dsub, "list", help="the entries in the database (read only)")
    add = command(dsub, "add", help="add an entry (this entry only)")
    add.add_argument("extension")
    add.add_argument("jid")
    add.add_argument("--device", default=None, help="dial string (default PJSIP/<extension>)")
    add.add_argument("--mailbox", default=None, help="voicemail box, EXT@CONTEXT")
    add.add_argument("--replace", action="store_true", help="overwrite an existing entry")
    remove = command(dsub, "remove", help="remove an entry (this entry only)")
    remove.add_argument("extension")

    imp = command(sub, "import-xmpp-conf", help="print res_xmpp xmpp.conf client sections in agi_xmpp.conf form")
    imp.add_argument("path")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"agi-xmpp: configuration error: {line}", file=sys.stderr)
        return 2
    except AgiXmppError as exc:
        print(f"agi-xmpp: {exc}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "import-xmpp-conf":
        return _import_xmpp_conf(args.path)
    config = load_config(args.config)
    if args.command == "check-config":
        return _check_config(config)
    if args.command == "serve":
        return _serve(config, use_uvloop=not args.no_uvloop)
    if args.command == "show":
        return _show(config, args)
    if args.command == "send":
        return _send(config, args)
    if args.command == "directory":
        return _directory(config, args)
    raise AssertionError(args.command)


def _import_xmpp_conf(path: str) -> int:
    warnings: list[str] = []
    accounts = parse_xmpp_conf(path, warnings)
    print(render_accounts(accounts), end="")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if accounts:
        # res_xmpp never checks the server's certificate; agi-xmpp does (tls_verify = yes).
        print("note: agi-xmpp verifies the server's TLS certificate: for a self-signed one add "
              "'cafile = /path/to/server-or-ca.pem' to each account (or 'tls_verify = no')", file=sys.stderr)
    return 0


def _no_account_error(config: Config) -> ConfigError:
    return ConfigError(
        "no XMPP account is configured: add an account section (username, secret; see "
        "etc/agi_xmpp.conf) or xmpp_conf = /etc/asterisk/xmpp.conf in [general]",
        path=config.path,
    )


def _check_config(config: Config) -> int:
    warnings = list(config.warnings)
    directory = list(config.directory)
    if config.ami is not None:  # only the AMI checks need the database's entries
        try:
            directory = _effective_directory(config)
        except AgiXmppError as exc:  # e.g. no driver for the database: serve says so, in its way
            warnings.append(f"the directory in the database was not read ({exc}): only [directory] is checked")
    warnings += ami_warnings(config, directory)
    for warning in warnings:
        print(f"warning: {warning}")
    if not config.accounts:
        raise _no_account_error(config)  # `serve` would refuse it
    print(f"{config.path}: OK, {len(config.accounts)} account(s), {len(config.directory)} directory entr(y/ies)")
    return 0


def _effective_directory(config: Config) -> list[DirectoryEntry]:
    """[directory] and the database's other entries, read without writing (as `directory list`).

    A database row for an extension that is also in [directory] is taken from the file; the
    service keeps a row added with `directory add` instead, which this cannot tell apart."""
    entries = {e.extension: e for e in _database_directory(config)}
    entries.update((e.extension, e) for e in config.directory)
    return list(entries.values())


def _serve(config: Config, *, use_uvloop: bool) -> int:
    if not config.accounts:
        raise _no_account_error(config)
    _check_ports_free(config)
    from .services import serve  # here: the other commands need no slixmpp, aiohttp, SQLAlchemy

    logs.configure(config.general.log_level, config.general.log_format)
    if use_uvloop:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            use_uvloop = False
    try:
        if use_uvloop:
            uvloop.run(serve(config))
        else:
            asyncio.run(serve(config))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:  # taken between the check and the bind
            raise AgiXmppError(f"a listening port is in use: {exc.strerror or exc}") from None
        raise
    return 0


def _check_ports_free(config: Config) -> None:
    """One plain line, before anything starts, when a port the service listens on is taken."""
    general = config.general
    for key, bind, what in (("agi_bind", general.agi_bind, "FastAGI"), ("http_bind", general.http_bind, "HTTP")):
        try:
            infos = socket.getaddrinfo(bind.host, bind.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror:
            continue  # the bind itself will report it
        for family, kind, proto, _, address in infos:
            with socket.socket(family, kind, proto) as probe:
                # asyncio's create_server sets SO_REUSEADDR too: a port in TIME_WAIT is free.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(address)
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        raise AgiXmppError(
                            f"port {bind.port} is in use ({what}, {key} = {bind}): is agi-xmpp "
                            f"already running? Stop it, or set {key} in {config.path}"
                        ) from None
                    raise AgiXmppError(f"cannot listen on {bind} ({key}): {exc.strerror or exc}") from None


def _account_name(config: Config, name: str) -> str:
    """The configured account ``name`` names (empty: the default); a plain error otherwise."""
    try:
        return config.account(name).name
    except UnknownAccount as exc:
        known = ", ".join(sorted(config.accounts)) or "none"
        raise AgiXmppError(f"{exc} (configured accounts: {known})") from None


def _send(config: Config, args: argparse.Namespace) -> int:
    account = config.account(_account_name(config, args.account))
    try:
        jid = parse_jid(args.jid.strip())
    except InvalidJid as exc:
        raise AgiXmppError(f"not a JID: {args.jid!r}: {exc}") from None
    if not jid.local and not args.to_server:
        # A domain-only JID is a server's address: the server answers it, no person reads it.
        domain = account.bare_jid.partition("@")[2]
        raise AgiXmppError(
            f"{args.jid!r} is a server address (a JID without a user part), not a person: "
            f"nobody would read the message. Did you mean {jid.domain}@{domain}? "
            "(--to-server sends it anyway)"
        )
    reply = _api(config, "POST", "/api/messages", {"account": account.name, "to": args.jid, "body": " ".join(args.text)})
    print(reply["status"])
    if reply.get("id"):  # to follow it: agi-xmpp show message ID
        print(f"message id {reply['id']}", file=sys.stderr)
    return 0 if reply["status"] in ("SUCCESS", "QUEUED") else 1


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
        _show_ami(_api(config, "GET", "/api/connections/ami"))
        return 0
    if args.what == "message":
        for key, value in _api(config, "GET", f"/api/messages/{quote(args.id, safe='')}").items():
            print(f"{key:>16}: {'' if value is None else value}")
        return 0
    account = _account_name(config, args.account) if args.account else ""
    query = f"?account={account}" if account else ""
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


AMI_STATE_WORDS = {"connected": "Connected", "connecting": "Connecting", "down": "Down",
                   "login_refused": "Login refused", "stopped": "Stopped"}


def _show_ami(link: dict[str, object] | None) -> None:
    """The AMI link under the XMPP accounts, in the same layout (nothing without [ami])."""
    if link is None:
        return
    state = str(link["state"])
    word = AMI_STATE_WORDS.get(state, state)
    if state == "connected":
        word += f" (AMI {link['version']})" if link.get("version") else ""
    elif link.get("last_error"):
        word += f" ({link['last_error']})"
    print("Asterisk Manager (AMI) link:")
    print(f"       [ami] {link['host']:<30} - {word}")
    print(f"             connects: {link['connects']}, resyncs: {link['resyncs']}")
    if link.get("voicemail_spool_error"):
        print(f"             voicemail: {link['voicemail_spool_error']}")


def _directory(config: Config, args: argparse.Namespace) -> int:
    """The directory in the database. Only the row named is ever written.

    The service loads [directory] from the configuration when it starts; this command never
    does (it used to, and so removed the entries of a service started with another file).
    """
    if args.action == "list":
        return _directory_list(config)
    from .storage import Storage  # here: the commands that need no database do not load SQLAlchemy

    storage = Storage(config.general.database)
    try:
        storage.create_all()  # a service that never ran has no tables yet
        if args.action == "add":
            entry = make_directory_entry(args.extension, args.jid, device=args.device, mailbox=args.mailbox)
            storage.directory_put(entry, replace=args.replace)
            print(f"added {entry.extension} -> {entry.jid}")
        elif args.action == "remove":
            if not storage.directory_remove(args.extension):
                print(f"agi-xmpp: no directory entry for extension {args.extension}", file=sys.stderr)
                return 1
            print(f"removed {args.extension}")
            if any(e.extension == args.extension for e in config.directory):
                print(f"note: {args.extension} is in [directory] of {config.path}: it returns when the service starts")
    finally:
        storage.close()
    return 0


def _database_directory(config: Config) -> list[DirectoryEntry]:
    """The database's entries, without writing anything (not even creating the file)."""
    if not _database_exists(config.general.database):
        return []
    from .storage import Storage  # here, as in _directory

    storage = Storage(config.general.database)
    try:
        return storage.directory_list()
    except StorageError:
        return []  # no tables yet: the service has never run on this database
    finally:
        storage.close()


def _directory_list(config: Config) -> int:
    """Print the database's entries without writing anything (not even creating the file)."""
    entries = _database_directory(config)
    listed = {e.extension for e in entries}
    for entry in entries:
        print(_entry_line(entry))
    for entry in config.directory:
        if entry.extension not in listed:
            print(_entry_line(entry) + "  (in the configuration, loaded when the service starts)")
    return 0


def _entry_line(entry: DirectoryEntry) -> str:
    return f"{entry.extension:<10} {entry.jid:<35} device={entry.device}" + (f" mailbox={entry.mailbox}" if entry.mailbox else "")


def _database_exists(url: str) -> bool:
    """False for an SQLite file that is not there (opening it would create it)."""
    if not url.startswith("sqlite"):
        return True
    path = url.partition(":///")[2].partition("?")[0]
    return path in ("", ":memory:") or path.startswith("file:") or os.path.exists(path)


def _api(config: Config, method: str, path: str, payload: object | None = None) -> object:
    """Call the running service's HTTP API (the `show` and `send` commands)."""
    host, port = config.general.http_bind
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    # The token the service wrote at start (0600 in state_dir), or the configured one.
    token_problem: AgiXmppError | None = None
    try:
        token = config.general.http_token or read_token(config.general.state_dir)
        request.add_header("Authorization", f"Bearer {token}")
    except AgiXmppError as exc:
        token_problem = exc  # reported if the service answers 401 (it may just be down)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:  # an HTTPError is also the response: close it
            if exc.code == 401 and token_problem is not None:
                raise token_problem from None
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
