"""HTTP API (aiohttp): health, metrics, presence, messages, directory, connections, the board.

Who may ask what (docs/security.md has the whole threat model):

- Every request must name us in ``Host`` (our own address, ``localhost`` on loopback, or a name
  in ``http_hosts``): a DNS-rebinding page reaches us under its own name, and is refused (421).
- A browser request from a page of another origin is refused (403): its ``Origin`` is not ours,
  or ``Sec-Fetch-Site`` says ``cross-site``/``same-site``. Only top-level ``GET`` navigations
  (a link to the board) are let through.
- Every request that changes something or reads chat text or the directory carries the bearer
  token (``Authorization: Bearer <token>``, scheme case-insensitive, RFC 7235 §2.1), compared in
  constant time. The token is ``state_dir/http-token`` (0600, created at first start; the CLI
  reads it) or ``http_token`` from the configuration. A caller not on loopback needs it for
  every request. Loopback callers need none for the board (``/``, ``/api/board``: extension and
  availability only), ``/health`` and ``/metrics``.
- A request body must be ``application/json`` (415 otherwise: an HTML form or a "simple"
  cross-origin ``fetch`` cannot send that type without a CORS preflight, which we never grant);
  malformed JSON is 400.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources

import structlog
from aiohttp import web

from .config import make_directory_entry, split_host
from .conn_limits import ConnectionBudget, listen_socket, peer_ip
from .errors import DirectoryError, ScriptError, StorageError
from .jid import parse_jid
from .services_bundle import Services
from .state_files import ensure_token
from .values import check_message_size

log = structlog.get_logger(__name__)

SERVICES = web.AppKey("services", Services)
TOKENS = web.AppKey("tokens", tuple)  # sha256 digests of the accepted tokens
HOSTS = web.AppKey("hosts", tuple)  # http_hosts entries: (name, port or None)
BUDGET = web.AppKey("budget", ConnectionBudget)
AGI_BUDGET = web.AppKey("agi_budget", ConnectionBudget)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Idle keep-alive connections are closed after this many seconds (aiohttp's default is an hour);
# the board polls every 2 s, so it keeps its connection.
KEEPALIVE_TIMEOUT = 5.0
HTTP_LISTEN_BACKLOG = 128  # the board and the API: a few clients, never a burst of calls
# What a loopback caller may read without the token: nothing that holds chat text or JIDs.
PUBLIC_PATHS = frozenset({"/", "/api/board", "/health", "/metrics"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class BadRequest(Exception):
    """A request we answer with 400 and this text."""


def _error(status: int, text: str, **headers: str) -> web.Response:
    return web.json_response({"error": text}, status=status, headers=headers or None)


def _is_loopback(peer: str | None) -> bool:
    address = peer_ip(peer) if peer else None
    return address is not None and address.is_loopback


def _host_ok(request: web.Request) -> bool:
    """Whether ``Host`` names this service (see the module docstring)."""
    header = request.headers.get("Host")
    parsed = split_host(header) if header else None
    if parsed is None:
        return False
    host, port = parsed
    for name, wanted_port in request.app[HOSTS]:
        if host == name and (wanted_port is None or wanted_port == (port or 80)):
            return True
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname:
        return False
    local_host, local_port = sockname[0], sockname[1]
    if (port or 80) != local_port:
        return False
    local = peer_ip(local_host)  # a dual-stack listener reached over IPv4: its IPv4 address
    if local is None:
        return False
    if host == "localhost":
        return local.is_loopback
    return peer_ip(host) == local  # any other name: configure it in http_hosts


def _cross_origin(request: web.Request) -> bool:
    """A browser request made by a page of another origin (or an opaque one)."""
    origin = request.headers.get("Origin")
    if origin is not None:
        host = request.headers.get("Host", "").strip().lower()
        if origin.strip().lower() not in (f"http://{host}", f"https://{host}"):
            return True
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site.lower() not in ("same-origin", "none"):
        # A top-level GET navigation (a link to the board) only shows the user a page.
        navigating = request.headers.get("Sec-Fetch-Mode", "").lower() == "navigate"
        return not (navigating and request.method in ("GET", "HEAD"))
    return False


def _token_ok(request: web.Request) -> bool:
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":  # RFC 7235 §2.1: the scheme is case-insensitive
        return False
    given = hashlib.sha256(credentials.strip().encode()).digest()
    ok = False
    for digest in request.app[TOKENS]:
        ok |= hmac.compare_digest(given, digest)  # no early exit: constant time
    return ok


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host, Origin, token and content-type checks; one JSON shape for every error."""
    response = await _guarded(request, handler)
    response.headers.update(_SECURITY_HEADERS)
    return response


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not _host_ok(request):
        log.warning("http_refused", reason="host", peer=request.remote, path=request.path)
        return _error(421, "unknown Host: use the service's address or a name in http_hosts")
    if _cross_origin(request):
        log.warning("http_refused", reason="cross_origin", peer=request.remote, path=request.path)
        return _error(403, "cross-origin request refused")
    public = request.path in PUBLIC_PATHS and request.method in SAFE_METHODS
    if not (public and _is_loopback(request.remote)) and not _token_ok(request):
        log.warning("http_refused", reason="token", peer=request.remote, path=request.path)
        return _error(401, "unauthorized: send Authorization: Bearer <token> (see docs/security.md)",
                      **{"WWW-Authenticate": 'Bearer realm="agi-xmpp"'})
    if request.method not in SAFE_METHODS and (request.method == "POST" or request.body_exists):
        if request.content_type != "application/json":
            return _error(415, "request bodies must be application/json")
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except BadRequest as exc:
        return _error(400, str(exc))
    except (ScriptError, DirectoryError) as exc:
        return _error(400, str(exc))
    except StorageError as exc:
        log.error("http_storage_failed", path=request.path, error=str(exc))
        return _error(503, "database unavailable")
    except Exception:
        log.exception("http_request_failed", path=request.path)
        return _error(500, "internal error")


async def _json_object(request: web.Request) -> dict[str, object]:
    """The request body as a JSON object; ``BadRequest`` for anything else."""
    raw = await request.read()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def _text(data: dict[str, object], key: str) -> str:
    value = data.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str | int):
        raise BadRequest(f"{key} must be a string")
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # JSON's "\ud800": a lone surrogate no XMPP server would take
        raise BadRequest(f"{key} is not valid Unicode (a lone surrogate)") from None
    return text


async def health(request: web.Request) -> web.Response:
    pool = request.app[SERVICES].pool
    connections = pool.connections()
    ami = request.app[SERVICES].ami
    ok = pool.all_online() and (ami is None or ami.link.connected)
    body = {"status": "ok" if ok else "degraded", "accounts": {c["account"]: c["state"] for c in connections}}
    if ami is not None:
        body["ami"] = ami.status()
    # why an account is not online: dns, tcp, tls, auth, conflict, policy-violation, timeout, stream
    failures = {c["account"]: {"class": c["failure"], "reason": c["last_error"]}
                for c in connections if c["failure"]}
    jobs = pool.supervisor.status()  # background work that failed and was restarted
    body.update({k: v for k, v in (("failures", failures), ("jobs", jobs)) if v})
    return web.json_response(body, status=200 if ok else 503)


async def connections(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICES].pool.connections())


async def ami_connection(request: web.Request) -> web.Response:
    """The AMI link for `show connections`: null without [ami]. A route of its own, so the
    XMPP list of /api/connections keeps its shape for scripts that read it."""
    ami = request.app[SERVICES].ami
    if ami is None:
        return web.json_response(None)
    return web.json_response({**ami.status(), "resyncs": ami.counters.resyncs})


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


async def _presence_rows(request: web.Request) -> tuple[str, list[dict[str, object]]]:
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
    return account.name, rows


async def presence(request: web.Request) -> web.Response:
    """Status of every directory entry, as the dialplan would read it (token required)."""
    account, rows = await _presence_rows(request)
    return web.json_response({"account": account, "entries": rows})


async def board_data(request: web.Request) -> web.Response:
    """What the board shows without the token: extension and availability, no JID, no text."""
    account, rows = await _presence_rows(request)
    entries = [{k: row[k] for k in ("extension", "code", "show")} for row in rows]
    return web.json_response({"account": account, "entries": entries})


async def post_message(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    data = await _json_object(request)
    account = services.config.account(_text(data, "account"))
    to = parse_jid(_text(data, "to"))
    body = _text(data, "body")
    if not body.strip():
        raise ScriptError("empty message")
    check_message_size(body, services.config.general.max_message_bytes)
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
    lines += [
        "# HELP agi_xmpp_inbox_evicted_total Buffered messages dropped to respect a quota, by sender class.",
        "# TYPE agi_xmpp_inbox_evicted_total counter",
    ]
    for name, inbox in pool.inboxes.items():
        for sender_class, count in sorted(getattr(inbox, "evicted", {}).items()):
            lines.append(f'agi_xmpp_inbox_evicted_total{{account="{name}",sender="{sender_class}"}} {count}')
    quota = getattr(pool, "archive_quota", None)
    if quota is not None:
        lines += [
            "# HELP agi_xmpp_archive_skipped_total Incoming messages not archived (per-sender quota).",
            "# TYPE agi_xmpp_archive_skipped_total counter",
        ]
        for sender_class, count in sorted(quota.skipped.items()):
            lines.append(f'agi_xmpp_archive_skipped_total{{sender="{sender_class}"}} {count}')
    counters = pool.counters
    for field in ("sent", "queued", "acked", "retransmitted", "received", "expired", "bounced_wait", "failed"):
        lines.append(f"# TYPE agi_xmpp_messages_{field}_total counter")
        lines.append(f"agi_xmpp_messages_{field}_total {getattr(counters, field)}")
    lines += ["# TYPE agi_xmpp_outbox_rows gauge"]
    for (account, state), count in sorted((await services.storage.outbox_counts()).items()):
        lines.append(f'agi_xmpp_outbox_rows{{account="{account}",state="{state}"}} {count}')
    budgets = [b for b in (request.app.get(AGI_BUDGET), request.app.get(BUDGET)) if b is not None]
    if budgets:
        lines += [
            "# HELP agi_xmpp_connection_budget_actions_total Connections closed or refused because a budget was full.",
            "# TYPE agi_xmpp_connection_budget_actions_total counter",
        ]
        for budget in budgets:
            for action, count in (("evicted", budget.evicted), ("refused", budget.refused_count)):
                lines.append(f'agi_xmpp_connection_budget_actions_total{{listener="{budget.listener}",action="{action}"}} {count}')
    if services.ami is not None:
        lines += services.ami.metrics()
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8")


async def directory_get(request: web.Request) -> web.Response:
    entries = await request.app[SERVICES].storage.directory_list()
    return web.json_response([_entry_dict(e) for e in entries])


async def directory_post(request: web.Request) -> web.Response:
    data = await _json_object(request)
    entry = make_directory_entry(
        _text(data, "extension"),
        _text(data, "jid"),
        device=_text(data, "device") or None,
        mailbox=_text(data, "mailbox") or None,
    )
    await request.app[SERVICES].storage.directory_put(entry, replace=data.get("replace") is True)
    return web.json_response(_entry_dict(entry), status=201)


async def directory_delete(request: web.Request) -> web.Response:
    removed = await request.app[SERVICES].storage.directory_remove(request.match_info["extension"])
    if not removed:
        return web.json_response({"error": "no such extension"}, status=404)
    return web.json_response({"removed": request.match_info["extension"]})


def _entry_dict(entry: object) -> dict[str, object]:
    return {k: getattr(entry, k) for k in ("extension", "jid", "device", "mailbox")}


@functools.cache
def _board_page() -> str:
    """board.html, read once: no file read on the event loop for each request of the page."""
    return resources.files(__package__).joinpath("board.html").read_text(encoding="utf-8")


async def board(_request: web.Request) -> web.Response:
    """The live presence board of the directory (a static page polling /api/board)."""
    response = web.Response(text=_board_page(), content_type="text/html", charset="utf-8")
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'none'; base-uri 'none'"
    )
    return response


def _parse_hosts(hosts: Iterable[str]) -> tuple[tuple[str, int | None], ...]:
    parsed = []
    for entry in hosts:
        split = split_host(entry)
        if split is not None:
            parsed.append(split)
    return tuple(parsed)


def make_app(
    services: Services, *, tokens: Iterable[str] = (), hosts: Iterable[str] | None = None
) -> web.Application:
    """The application; ``tokens`` are accepted besides ``http_token`` from the configuration."""
    app = web.Application(middlewares=[guard], client_max_size=256 * 1024)
    app[SERVICES] = services
    general = services.config.general
    accepted = [t for t in (general.http_token, *tokens) if t]
    app[TOKENS] = tuple(hashlib.sha256(t.encode()).digest() for t in accepted)
    app[HOSTS] = _parse_hosts(getattr(general, "http_hosts", ()) if hosts is None else hosts)
    app.router.add_get("/", board)
    app.router.add_get("/api/board", board_data)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/connections", connections)
    app.router.add_get("/api/connections/ami", ami_connection)
    app.router.add_get("/api/buddies", buddies)
    app.router.add_get("/api/presence", presence)
    app.router.add_post("/api/messages", post_message)
    app.router.add_get("/api/messages/{id}", message_get)
    app.router.add_get("/api/directory", directory_get)
    app.router.add_post("/api/directory", directory_post)
    app.router.add_delete("/api/directory/{extension}", directory_delete)
    return app


class _Refused(asyncio.Protocol):
    """The protocol of a connection over budget: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


def budgeted(server: Callable[[], object], connections: Callable[[], list], budget: ConnectionBudget) -> Callable[[], object]:
    """A protocol factory that keeps at most ``budget.limit`` HTTP connections open.

    When full, the oldest idle connection (no request being handled: waiting for its first or
    next request, or still sending one) is closed to make room; if every connection is busy
    running a request, the newcomer is refused."""
    evicted: set[object] = set()  # closing, not yet gone (RequestHandler takes no weakref)

    def factory() -> object:
        open_now = connections()
        if evicted:
            evicted.intersection_update(open_now)
        if budget.full(len(open_now)):
            # aiohttp's RequestHandler has no public "busy" flag: _current_request is set exactly
            # while a handler runs (tests/test_http_security.py checks this still holds).
            idle = [h for h in open_now if h not in evicted and getattr(h, "_current_request", None) is None]
            if not idle:
                budget.refused()
                return _Refused()
            evicted.add(idle[0])
            idle[0].force_close()  # type: ignore[attr-defined]
            budget.made_room()
        return server()

    return factory


class HttpService:
    """The running API: its runner and our own listener (``cleanup()`` stops both)."""

    def __init__(self, runner: web.AppRunner, listener: asyncio.AbstractServer, budget: ConnectionBudget) -> None:
        self.runner = runner
        self.listener = listener
        self.budget = budget

    @property
    def address(self) -> tuple[str, int]:
        sockname = self.listener.sockets[0].getsockname()  # type: ignore[attr-defined]
        return sockname[0], sockname[1]

    async def cleanup(self) -> None:
        self.listener.close()  # no new connections; the runner then closes the open ones
        await self.runner.cleanup()


async def start_http(
    services: Services, *, max_connections: int | None = None, agi_budget: ConnectionBudget | None = None
) -> HttpService:
    """Serve the API on ``http_bind``; creates the token file on first start. ``agi_budget``
    (the FastAGI listener's) is shown in ``/metrics`` beside HTTP's own."""
    general = services.config.general
    token = ensure_token(general.state_dir)
    app = make_app(services, tokens=[token])
    if agi_budget is not None:
        app[AGI_BUDGET] = agi_budget
    limit = max_connections or getattr(general, "http_max_connections", 256)
    budget = app[BUDGET] = ConnectionBudget("http", limit)
    # Our own listener instead of a TCPSite: the budget wraps the protocol factory, and [::]
    # is dual-stack (conn_limits.listen_socket).
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=KEEPALIVE_TIMEOUT)
    await runner.setup()
    server = runner.server
    assert server is not None
    host, port = general.http_bind
    sock = listen_socket(host, port, HTTP_LISTEN_BACKLOG)
    loop = asyncio.get_running_loop()
    # create_server() calls listen() again on a given socket, with 100 unless told
    listener = await loop.create_server(budgeted(server, lambda: server.connections, budget), sock=sock,
                                        backlog=HTTP_LISTEN_BACKLOG)
    return HttpService(runner, listener, budget)
