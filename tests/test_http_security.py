"""The HTTP API refuses what a web page, a rebinding DNS name or a careless client could send.

Runs the real aiohttp application (``start_http``: our own listener, budget and keep-alive) on a
free loopback port, with a real SQLite directory and presence cache and a recording fake pool.
The real browser tries the same attacks in tests/integration/test_browser_defences.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from agi_xmpp import cli
from agi_xmpp.config import AccountConfig, BindAddress, Config, DirectoryEntry, GeneralConfig
from agi_xmpp.http_api import KEEPALIVE_TIMEOUT, SERVICES, start_http
from agi_xmpp.presence import PresenceCache
from agi_xmpp.services import Services
from agi_xmpp.state_files import read_token
from agi_xmpp.storage import AsyncStorage, Storage
from fakes import FakePool
from service_process import free_port


@dataclass
class Api:
    base: str
    port: int
    token: str
    pool: FakePool
    storage: AsyncStorage
    state_dir: Path
    http: object

    async def request(self, method: str, path: str, *, token: str | None = None, headers=None,
                      data=None, json_body=None) -> tuple[int, object]:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        async with aiohttp.ClientSession() as session, session.request(
            method, self.base + path, headers=all_headers, data=data, json=json_body
        ) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, text


async def _start(tmp_path: Path, **general: object) -> Api:
    state_dir = tmp_path / "state"
    port = free_port()
    config = Config(
        path=None,
        general=GeneralConfig(state_dir=str(state_dir), http_bind=BindAddress("127.0.0.1", port),
                              default_account="asterisk", **general),  # type: ignore[arg-type]
        accounts={"asterisk": AccountConfig(name="asterisk", username="asterisk@example.com", secret="x")},
    )
    storage = Storage(config.general.database)
    storage.create_all()
    storage.directory_load_config((DirectoryEntry("101", "bob@example.com", device="PJSIP/101"),))
    async_storage = AsyncStorage(storage)
    pool = FakePool()
    services = Services(config=config, storage=async_storage, presence=PresenceCache(), pool=pool)  # type: ignore[arg-type]
    http = await start_http(services)
    token = read_token(state_dir)
    return Api(f"http://127.0.0.1:{port}", port, token, pool, async_storage, state_dir, http)


@pytest.fixture
async def api(tmp_path) -> AsyncIterator[Api]:
    instance = await _start(tmp_path)
    try:
        yield instance
    finally:
        await instance.http.cleanup()
        await instance.storage.aclose()


SENSITIVE = [
    ("POST", "/api/messages"), ("GET", "/api/directory"), ("POST", "/api/directory"),
    ("DELETE", "/api/directory/101"), ("GET", "/api/presence"), ("GET", "/api/buddies"),
    ("GET", "/api/connections"), ("GET", "/api/connections/ami"),
]
MESSAGE = {"account": "", "to": "bob@example.com", "body": "hello"}


# -- the token ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,path", SENSITIVE)
@pytest.mark.parametrize("auth", [None, "", "Bearer", "Bearer wrong", "Basic x"])
async def test_loopback_without_the_token_changes_and_reads_nothing(api, method, path, auth):
    """From loopback, every route that changes something or reads chat text or the directory
    answers 401 without exactly the token; no message is sent, the directory is unchanged."""
    headers = {} if auth is None else {"Authorization": auth}
    body = MESSAGE if path == "/api/messages" else {"extension": "101", "jid": "x@evil.example", "replace": True}
    status, reply = await api.request(method, path, headers=headers, json_body=body)
    assert status == 401 and reply["error"].startswith("unauthorized")
    assert api.pool.sent == []
    assert [(e.extension, e.jid) for e in await api.storage.directory_list()] == [("101", "bob@example.com")]


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_bearer_scheme_is_case_insensitive(api, scheme):
    """RFC 7235 §2.1: the auth scheme is case-insensitive; the token is not."""
    status, reply = await api.request("POST", "/api/messages", json_body=MESSAGE,
                                      headers={"Authorization": f"{scheme} {api.token}"})
    assert (status, reply["status"]) == (200, "SUCCESS")
    status, _ = await api.request("POST", "/api/messages", json_body=MESSAGE,
                                  headers={"Authorization": f"{scheme} {api.token.upper()}x"})
    assert status == 401
    assert api.pool.sent == [("asterisk", "bob@example.com", "hello")]


@pytest.mark.parametrize("path", ["/", "/api/board", "/health", "/metrics"])
async def test_board_health_and_metrics_need_no_token_on_loopback(api, path):
    """The board page, its data, /health and /metrics answer a loopback caller without a token."""
    status, _ = await api.request("GET", path)
    assert status == 200


async def test_board_data_holds_no_jid_and_no_status_text(api):
    """Without the token the board gets extension and availability only: no JID, no message."""
    status, reply = await api.request("GET", "/api/board")
    assert status == 200
    assert reply["entries"] == [{"extension": "101", "code": 7, "show": "unknown"}]
    status, full = await api.request("GET", "/api/presence", token=api.token)
    assert status == 200 and full["entries"][0]["jid"] == "bob@example.com"


async def test_token_file_is_private_and_kept_across_starts(tmp_path):
    """The token file is created 0600 in a 0700 state directory even under umask 000, and a
    second start keeps the same token."""
    old = os.umask(0)
    try:
        first = await _start(tmp_path)
        await first.http.cleanup()
        await first.storage.aclose()
        second = await _start(tmp_path)
        await second.http.cleanup()
        await second.storage.aclose()
    finally:
        os.umask(old)
    assert first.token == second.token and len(first.token) >= 40
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "state" / "http-token").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state" / "agi-xmpp.sqlite3").stat().st_mode) == 0o600


def _cli_config(path: Path, port: int, state_dir: Path) -> Path:
    """A configuration for the CLI: the API's port, a state_dir (where the token is looked for)."""
    path.write_text(f"[general]\nhttp_bind = 127.0.0.1:{port}\nstate_dir = {state_dir}\n"
                    "default_account = asterisk\n[asterisk]\nusername = asterisk@example.com\nsecret = x\n")
    return path


async def test_cli_reads_the_token_file_itself(api, tmp_path, capsys):
    """`agi-xmpp send` finds the token in state_dir without being told; `show connections` too."""
    conf = _cli_config(tmp_path / "agi_xmpp.conf", api.port, api.state_dir)
    code = await asyncio.to_thread(cli.main, ["-c", str(conf), "send", "", "bob@example.com", "hi", "there"])
    assert code == 0, capsys.readouterr().err
    assert api.pool.sent == [("asterisk", "bob@example.com", "hi there")]
    assert await asyncio.to_thread(cli.main, ["-c", str(conf), "show", "connections"]) == 0


async def test_cli_without_the_token_file_says_why(api, tmp_path, capsys):
    """A CLI whose state_dir holds no token (another user's, or wrong config) says so plainly."""
    conf = _cli_config(tmp_path / "other.conf", api.port, tmp_path / "elsewhere")
    code = await asyncio.to_thread(cli.main, ["-c", str(conf), "send", "", "bob@example.com", "hi"])
    assert code == 1
    assert "no HTTP API token" in capsys.readouterr().err
    assert api.pool.sent == []


# -- Host (DNS rebinding) and Origin --------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}",
                                  "localhost.evil.example:{port}", "127.0.0.2:{port}", "127.0.0.1:1",
                                  "[::1]:{port}", "0.0.0.0:{port}"])
async def test_forged_host_is_refused_even_with_the_token(api, host):
    """DNS rebinding: a request whose Host is not our address (another name, another port) is
    refused with 421 before anything runs, token or not."""
    headers = {"Host": host.format(port=api.port)}
    for method, path, body in (("POST", "/api/messages", MESSAGE), ("GET", "/api/board", None),
                               ("GET", "/", None)):
        status, _ = await api.request(method, path, token=api.token, headers=headers, json_body=body)
        assert status == 421, (host, path)
    assert api.pool.sent == []


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LocalHost.:{port}"])
async def test_our_own_names_are_accepted(api, host):
    """Our address and, on loopback, localhost (any case, trailing dot) are accepted as Host."""
    status, _ = await api.request("GET", "/api/board", headers={"Host": host.format(port=api.port)})
    assert status == 200


async def test_http_hosts_names_are_accepted(tmp_path):
    """A name listed in http_hosts (a reverse proxy's, say) is accepted as Host."""
    api = await _start(tmp_path, http_hosts=("pbx.example.com", "board.example.com:8443"))
    try:
        ok = [await api.request("GET", "/api/board", headers={"Host": h})
              for h in ("pbx.example.com", "PBX.example.com:9999", "board.example.com:8443")]
        refused = await api.request("GET", "/api/board", headers={"Host": "board.example.com:80"})
    finally:
        await api.http.cleanup()
        await api.storage.aclose()
    assert [s for s, _ in ok] == [200, 200, 200]
    assert refused[0] == 421


async def test_missing_or_malformed_host_is_refused(api):
    """An HTTP/1.0 request without Host, or with a garbled one, is refused too."""
    for request in (b"GET /api/board HTTP/1.0\r\n\r\n",
                    b"GET /api/board HTTP/1.1\r\nHost: [::1\r\nConnection: close\r\n\r\n",
                    b"GET /api/board HTTP/1.1\r\nHost: 127.0.0.1:99999\r\nConnection: close\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
        writer.write(request)
        async with asyncio.timeout(30):
            answer = await reader.read()
        writer.close()
        assert answer.split(b"\r\n", 1)[0].split(b" ")[1] in (b"421", b"400"), answer[:80]


@pytest.mark.parametrize("origin", ["http://evil.example", "http://127.0.0.1:1", "null",
                                    "http://localhost.evil.example:{port}", "https://evil.example"])
async def test_foreign_origin_is_refused_even_with_the_token(api, origin):
    """A request carrying a browser Origin other than ours is refused (403), token or not."""
    headers = {"Origin": origin.format(port=api.port)}
    status, reply = await api.request("POST", "/api/messages", token=api.token, headers=headers, json_body=MESSAGE)
    assert status == 403 and "cross-origin" in reply["error"]
    status, _ = await api.request("GET", "/api/board", headers=headers)
    assert status == 403
    assert api.pool.sent == []


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
async def test_fetch_metadata_from_another_site_is_refused(api, site):
    """Sec-Fetch-Site cross-site/same-site (a page on another port of this host is same-site)
    is refused for reads and writes; only a top-level GET navigation passes."""
    status, _ = await api.request("GET", "/api/board", headers={"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "cors"})
    assert status == 403
    status, _ = await api.request("POST", "/api/messages", token=api.token, json_body=MESSAGE,
                                  headers={"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "navigate"})
    assert status == 403
    status, _ = await api.request("GET", "/", headers={"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "navigate"})
    assert status == 200
    assert api.pool.sent == []


async def test_our_own_origin_is_accepted(api):
    """The board's own requests (Origin and Sec-Fetch-Site same-origin) are served."""
    headers = {"Origin": f"http://127.0.0.1:{api.port}", "Sec-Fetch-Site": "same-origin"}
    status, _ = await api.request("POST", "/api/messages", token=api.token, headers=headers, json_body=MESSAGE)
    assert status == 200


# -- bodies ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
async def test_only_json_bodies_are_accepted(api, content_type):
    """A body of any type but application/json is refused with 415 (an HTML form or a simple
    cross-origin fetch cannot send JSON without a CORS preflight)."""
    headers = {"Content-Type": content_type} if content_type else {}
    data = json.dumps(MESSAGE).encode() if content_type != "application/x-www-form-urlencoded" else b"to=bob%40example.com&body=x"
    for path in ("/api/messages", "/api/directory"):
        status, _ = await api.request("POST", path, token=api.token, headers=headers, data=data)
        assert status == 415, path
    assert api.pool.sent == []


async def test_json_with_a_charset_parameter_is_json(api):
    """application/json; charset=utf-8 is JSON."""
    status, _ = await api.request("POST", "/api/messages", token=api.token,
                                  headers={"Content-Type": "application/json; charset=utf-8"},
                                  data=json.dumps(MESSAGE).encode())
    assert status == 200


@pytest.mark.parametrize("body", [b"{", b"", b"[1, 2]", b"\"text\"", b"\xff\xfe{", b"{\"to\": [\"x\"], \"body\": \"b\"}",
                                  b"{\"to\": \"bob@example.com\", \"body\": {\"x\": 1}}", b"null", b"1e999999",
                                  b"{\"to\": \"bob@example.com\", \"jid\": \"b\\ud800@x\", \"body\": \"a\\ud800\"}"])
async def test_malformed_json_is_400_never_500(api, body):
    """Malformed JSON, a JSON value that is not an object, or fields of the wrong type: 400."""
    for path in ("/api/messages", "/api/directory"):
        status, reply = await api.request("POST", path, token=api.token, data=body,
                                          headers={"Content-Type": "application/json"})
        assert status == 400, (path, reply)
        assert isinstance(reply, dict) and reply["error"]
    assert api.pool.sent == []


async def test_a_message_over_max_message_bytes_is_400_and_not_sent(api):
    """POST /api/messages applies max_message_bytes like jabber_send does (same check, same words)."""
    too_long = {**MESSAGE, "body": "é" * 40_000}  # 80,000 UTF-8 bytes > 65,536
    status, reply = await api.request("POST", "/api/messages", token=api.token, json_body=too_long)
    assert status == 400 and "max_message_bytes (65536)" in reply["error"]
    assert api.pool.sent == []


# -- connections ----------------------------------------------------------------------------------


async def test_idle_keepalive_connections_are_closed(api):
    """A connection that sends nothing, and one idle after a request, are closed by the server
    (aiohttp's own default would keep them an hour)."""
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", api.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    writer.write(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\n\r\n".encode())
    async with asyncio.timeout(30 + KEEPALIVE_TIMEOUT):
        head = await reader.readuntil(b"\r\n\r\n")
        assert b" 200 " in head.split(b"\r\n", 1)[0]
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        await reader.readexactly(length)
        assert await reader.read() == b""  # closed by the server, not by us
        assert await silent_reader.read() == b""
    writer.close()
    silent_writer.close()


async def test_http_budget_closes_idle_connections_to_serve_a_request(tmp_path):
    """With the HTTP budget full of idle connections, a new request is still served: the oldest
    idle connections are closed to make room, and the count stays within the budget."""
    state_dir = tmp_path / "state"
    port = free_port()
    config = Config(path=None, general=GeneralConfig(state_dir=str(state_dir),
                                                     http_bind=BindAddress("127.0.0.1", port)), accounts={})
    services = Services(config=config, storage=None, presence=None, pool=FakePool())  # type: ignore[arg-type]
    http = await start_http(services, max_connections=8)
    idle = []
    try:
        for _ in range(30):
            idle.append(await asyncio.open_connection("127.0.0.1", port))
            await asyncio.sleep(0)
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/health") as response:
            assert response.status == 200
        assert len(http.runner.server.connections) <= 8
        assert http.budget.evicted >= 22
        closed = 0
        for reader, _ in idle:
            async with asyncio.timeout(30):
                if await reader.read() == b"":
                    closed += 1
        assert closed == 30  # evicted, or closed by the keep-alive timeout
    finally:
        for _, writer in idle:
            writer.close()
        await http.cleanup()


async def test_aiohttp_busy_flag_still_means_busy(api):
    """The budget reads aiohttp's private RequestHandler._current_request to spare connections
    running a request: it must exist, be None on an idle connection and set during a request."""
    seen_busy: list[bool] = []
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    try:
        async with asyncio.timeout(30):
            while not api.http.runner.server.connections:
                await asyncio.sleep(0.01)
        handler = api.http.runner.server.connections[0]
        assert hasattr(handler, "_current_request") and handler._current_request is None
        # Look at the handlers from inside a request: the one serving it must read as busy.
        api.http.runner.app[SERVICES].pool.connections = lambda: seen_busy.extend(
            h._current_request is not None for h in api.http.runner.server.connections) or []
        status, _ = await api.request("GET", "/api/connections", token=api.token)
        assert status == 200
        assert seen_busy.count(True) == 1 and handler._current_request is None
    finally:
        writer.close()


async def test_metrics_show_sender_quota_evictions(api):
    """/metrics reports inbox evictions per sender class and archive quota skips."""
    from agi_xmpp.archive_quota import ArchiveQuota
    from agi_xmpp.inbox import InboundMessage, Inbox
    from agi_xmpp.jid import parse_jid

    inbox = Inbox(ttl=60, is_trusted=lambda m: False)
    for n in range(25):
        inbox.put(InboundMessage(parse_jid("evil@example.com/x"), "spam", "chat", str(n), 0.0))
    api.pool.inboxes["asterisk"] = inbox
    api.pool.archive_quota = ArchiveQuota()
    api.pool.archive_quota.skipped["stranger"] = 7
    status, text = await api.request("GET", "/metrics")
    assert status == 200
    assert 'agi_xmpp_inbox_evicted_total{account="asterisk",sender="stranger"} 5' in text
    assert 'agi_xmpp_inbox_evicted_total{account="asterisk",sender="contact"} 0' in text
    assert 'agi_xmpp_archive_skipped_total{sender="stranger"} 7' in text
