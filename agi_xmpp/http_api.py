"""HTTP API (aiohttp): health, metrics, presence, messages, directory, connections.

Loopback callers are trusted, as the FastAGI port is. Any other caller must send
``Authorization: Bearer <http_token>``; without a configured token they are refused, so binding
the API to a public address never exposes it by accident.
"""

from __future__ import annotations

import hmac
from importlib import resources
import ipaddress

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from .config import make_directory_entry
from .errors import DirectoryError, ScriptError
from .jid import parse_jid
from .services import Services

log = structlog.get_logger(__name__)

SERVICES = web.AppKey("services", Services)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_loopback(peer: str | None) -> bool:
    if not peer:
        return False
    try:
        return ipaddress.ip_address(peer.split("%")[0]).is_loopback
    except ValueError:
        return False


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Token check for non-loopback callers, and one JSON shape for every error."""
    services = request.app[SERVICES]
    if not _is_loopback(request.remote):
        token = services.config.general.http_token
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not token or not hmac.compare_digest(given.encode(), token.encode()):
            log.warning("http_refused", peer=request.remote, path=request.path)
            return web.json_response({"error": "forbidden"}, status=403)
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except (ScriptError, DirectoryError, ValueError, KeyError) as exc:
        return web.json_response({"error": str(exc)}, status=400)


async def health(request: web.Request) -> web.Response:
    pool = request.app[SERVICES].pool
    connections = pool.connections()
    ok = pool.all_online()
    body = {"status": "ok" if ok else "degraded", "accounts": {c["account"]: c["state"] for c in connections}}
    # why an account is not online: dns, tcp, tls, auth, conflict, policy-violation, timeout, stream
    failures = {c["account"]: {"class": c["failure"], "reason": c["last_error"]}
                for c in connections if c["failure"]}
    jobs = pool.supervisor.status()  # background work that failed and was restarted
    body.update({k: v for k, v in (("failures", failures), ("jobs", jobs)) if v})
    return web.json_response(body, status=200 if ok else 503)


async def connections(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICES].pool.connections())


async def buddies(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    wanted = request.query.get("account", "").lower()
    result = []
    for name in services.pool.sessions:
        if wanted and name != wanted:
            continue
        for bare in sorted(services.presence.contacts(name)):
            resources = [
                {"resource": r.resource, "show": r.show.value, "priority": r.priority, "status": r.status}
                for r in services.presence.resources(name, bare)
            ]
            result.append({"account": name, "jid": bare, "resources": resources})
    return web.json_response(result)


async def presence(request: web.Request) -> web.Response:
    """Status of every directory entry, as the dialplan would read it."""
    services = request.app[SERVICES]
    account = services.config.account(request.query.get("account", ""))
    rows = []
    for entry in await services.storage.directory_list():
        answer = services.presence.status(account.name, parse_jid(entry.jid))
        rows.append(
            {
                "extension": entry.extension,
                "jid": entry.jid,
                "code": answer.code,
                "show": answer.show.value,
                "message": answer.message,
            }
        )
    return web.json_response({"account": account.name, "entries": rows})


async def post_message(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    data = await request.json()
    account = services.config.account(str(data.get("account", "")))
    to = parse_jid(str(data.get("to", "")))
    body = str(data.get("body", ""))
    if not body.strip():
        raise ScriptError("empty message")
    limit = services.config.general.max_message_bytes
    if len(body.encode()) > limit:
        raise ScriptError(f"message longer than max_message_bytes ({limit})")
    outcome, stanza_id = await services.pool.submit(account.name, to, body)
    return web.json_response({"status": outcome.value, "id": stanza_id})


async def message_get(request: web.Request) -> web.Response:
    """What happened to one message we sent (outbox state, last error stanza, attempts)."""
    status = await request.app[SERVICES].pool.message_status(request.match_info["id"])
    if status is None:
        return web.json_response({"error": "no such message"}, status=404)
    return web.json_response(status)


async def metrics(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    pool = services.pool
    lines = [
        "# HELP agi_xmpp_account_online 1 when the account's XMPP session is online.",
        "# TYPE agi_xmpp_account_online gauge",
    ]
    for name, session in pool.sessions.items():
        lines.append(f'agi_xmpp_account_online{{account="{name}"}} {int(session.online)}')
    lines += ["# TYPE agi_xmpp_reconnects_total counter"]
    for name, session in pool.sessions.items():
        lines.append(f'agi_xmpp_reconnects_total{{account="{name}"}} {session.reconnects}')
    lines += ["# TYPE agi_xmpp_inbox_messages gauge"]
    for name, inbox in pool.inboxes.items():
        lines.append(f'agi_xmpp_inbox_messages{{account="{name}"}} {len(inbox)}')
    counters = pool.counters
    for field in ("sent", "queued", "acked", "retransmitted", "received", "expired", "bounced_wait", "failed"):
        lines.append(f"# TYPE agi_xmpp_messages_{field}_total counter")
        lines.append(f"agi_xmpp_messages_{field}_total {getattr(counters, field)}")
    lines += ["# TYPE agi_xmpp_outbox_rows gauge"]
    for (account, state), count in sorted((await services.storage.outbox_counts()).items()):
        lines.append(f'agi_xmpp_outbox_rows{{account="{account}",state="{state}"}} {count}')
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8")


async def directory_get(request: web.Request) -> web.Response:
    entries = await request.app[SERVICES].storage.directory_list()
    return web.json_response([_entry_dict(e) for e in entries])


async def directory_post(request: web.Request) -> web.Response:
    data = await request.json()
    entry = make_directory_entry(
        str(data.get("extension", "")),
        str(data.get("jid", "")),
        device=data.get("device") or None,
        mailbox=data.get("mailbox") or None,
    )
    await request.app[SERVICES].storage.directory_put(entry, replace=bool(data.get("replace")))
    return web.json_response(_entry_dict(entry), status=201)


async def directory_delete(request: web.Request) -> web.Response:
    removed = await request.app[SERVICES].storage.directory_remove(request.match_info["extension"])
    if not removed:
        return web.json_response({"error": "no such extension"}, status=404)
    return web.json_response({"removed": request.match_info["extension"]})


def _entry_dict(entry: object) -> dict[str, object]:
    return {k: getattr(entry, k) for k in ("extension", "jid", "device", "mailbox")}


async def board(_request: web.Request) -> web.Response:
    """The live presence board of the directory (a static page polling /api/presence)."""
    page = resources.files(__package__).joinpath("board.html").read_text(encoding="utf-8")
    return web.Response(text=page, content_type="text/html", charset="utf-8")


def make_app(services: Services) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=256 * 1024)
    app[SERVICES] = services
    app.router.add_get("/", board)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/connections", connections)
    app.router.add_get("/api/buddies", buddies)
    app.router.add_get("/api/presence", presence)
    app.router.add_post("/api/messages", post_message)
    app.router.add_get("/api/messages/{id}", message_get)
    app.router.add_get("/api/directory", directory_get)
    app.router.add_post("/api/directory", directory_post)
    app.router.add_delete("/api/directory/{extension}", directory_delete)
    return app


async def start_http(services: Services) -> web.AppRunner:
    runner = web.AppRunner(make_app(services), access_log=None)
    await runner.setup()
    host, port = services.config.general.http_bind
    await web.TCPSite(runner, host, port).start()
    return runner


