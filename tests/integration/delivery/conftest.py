"""Fixtures for the delivery tests: the servers people run, and a fault proxy in front of them.

- ``stock_server`` (module, parametrised): Debian's **stock** ejabberd 23.01 and Prosody 0.12
  (``tests/xmpp_servers.py``: only ports, paths, hosts and certificates changed).
- ``permissive_ejabberd`` (module): ejabberd without shaper, offline limit or fail2ban.
- ``accounts(server)`` -> ``make(prefix) -> (jid, password)``: fresh accounts on a server.
- ``proxy_to(server)``: a started ``FaultProxy`` in front of the server's c2s port.
- ``service_via(server, port, jid, password, **general)``: the whole service in-process, its one
  account connecting to ``port`` (the proxy's, or the server's own), TLS verified.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from fault_proxy import FaultProxy
from service_harness import ServiceHarness, running_harness, service_config
from xmpp_client import XmppTestClient
from xmpp_servers import Ejabberd, StockProsody, ejabberd_available

_numbers = itertools.count(1)

SERVER_KINDS = ["prosody-stock", "ejabberd-stock"]


def start_server(kind: str):
    """A started server of ``kind`` (skips when ejabberd cannot run here)."""
    if kind.startswith("ejabberd"):
        reason = ejabberd_available()
        if reason:
            pytest.skip(reason)
        server = Ejabberd(stock=kind == "ejabberd-stock")
    else:
        server = StockProsody(Path(tempfile.mkdtemp(prefix="agi-xmpp-stock-prosody-")))
    server.start()
    return server


@pytest.fixture(scope="module", params=SERVER_KINDS)
def stock_server(request: pytest.FixtureRequest) -> Iterator[object]:
    """Debian's stock ejabberd and Prosody, one per parameter, shared by a test module."""
    server = start_server(request.param)
    server.kind = request.param  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def accounts() -> Callable[..., Callable[[str], tuple[str, str]]]:
    """``accounts(server)("alice") -> (jid, password)``: fresh accounts on ``server``."""

    def for_server(server: object) -> Callable[[str], tuple[str, str]]:
        def make(prefix: str = "user") -> tuple[str, str]:
            user = f"{prefix}-{next(_numbers)}-{secrets.token_hex(3)}"
            password = secrets.token_urlsafe(12)
            return server.register(user, password), password  # type: ignore[attr-defined]

        return make

    return for_server


@pytest.fixture
async def proxy_to() -> AsyncIterator[Callable[[object], object]]:
    """``await proxy_to(server)``: a started ``FaultProxy`` in front of its c2s port."""
    proxies: list[FaultProxy] = []

    async def make(server: object) -> FaultProxy:
        proxy = FaultProxy(server.host, server.c2s_port)  # type: ignore[attr-defined]
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.close()


@pytest.fixture
def service_via(tmp_path: Path):
    """``async with service_via(server, port, jid, pw, general={...}, **account)`` -> harness."""

    @contextlib.asynccontextmanager
    async def run(server: object, port: int, jid: str, password: str, *, wait_online: bool = True,
                  http: bool = False, general: dict | None = None, **account: object,
                  ) -> AsyncIterator[ServiceHarness]:
        config = service_config(server, jid, password, tmp_path / f"svc-{next(_numbers)}",  # type: ignore[arg-type]
                                general=general)
        (name, acc), = config.accounts.items()
        config = replace(config, accounts={name: replace(acc, port=port, **account)})  # type: ignore[arg-type]
        async with running_harness(config, wait_online=wait_online, http=http) as harness:
            harness.jid = jid  # type: ignore[attr-defined]
            yield harness

    return run


@pytest.fixture
async def peer():
    """``await peer(server, jid, password)``: the human on the other side, connected."""
    clients: list[XmppTestClient] = []

    async def connect(server: object, jid: str, password: str, **kwargs: object) -> XmppTestClient:
        client = XmppTestClient.for_prosody(server, jid, password, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        await client.connect(30)
        return client

    yield connect
    for client in clients:
        with contextlib.suppress(Exception):
            await client.disconnect()
