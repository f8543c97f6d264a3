"""Run the whole agi-xmpp service in-process against a real Prosody, for integration tests.

``ServiceHarness`` starts storage, the XMPP pool and the FastAGI server with one account on the
given Prosody, and offers ``call(script, *args)`` (a FastAGI call as Asterisk would make it) and
``eventually(predicate)`` for waiting on asynchronous effects without fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from agi_xmpp.agi_server import AgiServer
from agi_xmpp.http_api import start_http
from agi_xmpp.config import AccountConfig, BindAddress, Config, DirectoryEntry, GeneralConfig
from tools.local_prosody import LocalProsody
from agi_xmpp.scripts import registry
from agi_xmpp.services import Services, running_services

from fake_asterisk import CallResult, agi_call
from service_process import free_port


def service_config(
    server: LocalProsody,
    jid: str,
    password: str,
    state_dir: Path,
    *,
    name: str = "asterisk",
    directory: tuple[DirectoryEntry, ...] = (),
    general: dict[str, object] | None = None,
    **account_options: object,
) -> Config:
    """One account ``name`` on ``server``; ``general`` overrides [general] keys."""
    account = AccountConfig(
        name=name,
        username=jid,
        secret=password,
        serverhost=server.host,
        port=server.c2s_port,
        cafile=str(server.cert_path),
        **account_options,  # type: ignore[arg-type]
    )
    settings = GeneralConfig(
        state_dir=str(state_dir),
        agi_bind=BindAddress("127.0.0.1", free_port()),
        http_bind=BindAddress("127.0.0.1", free_port()),
        default_account=name,
        **(general or {}),  # type: ignore[arg-type]
    )
    return Config(path=None, general=settings, accounts={name: account}, directory=directory)


async def eventually(predicate: Callable[[], object], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``predicate`` (sync or async) until truthy; fail with ``what`` after ``timeout``.

    The deadline only bounds a hang: on a busy 2-core machine a healthy service can take many
    seconds, so tests never pass a short one to assert speed (``make bench`` measures speed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class ServiceHarness:
    services: Services
    agi: AgiServer
    config: Config

    @property
    def port(self) -> int:
        return self.agi.address[1]

    @property
    def pool(self):  # noqa: ANN201 - test convenience
        return self.services.pool

    async def call(self, script: str, *args: str, **kwargs: object) -> CallResult:
        return await agi_call(self.port, script, *args, **kwargs)  # type: ignore[arg-type]

    async def wait_online(self, timeout: float = 60.0) -> None:
        await eventually(self.pool.all_online, timeout, "the XMPP session to come online")


@contextlib.asynccontextmanager
async def running_harness(
    config: Config, *, wait_online: bool = True, http: bool = False
) -> AsyncIterator[ServiceHarness]:
    """The service as ``agi-xmpp serve`` runs it (FastAGI, and the HTTP API if ``http``)."""
    async with running_services(config) as services:
        agi = AgiServer(registry, services, bind=tuple(config.general.agi_bind), allow=["127.0.0.0/8"])
        await agi.start()
        runner = await start_http(services) if http else None
        harness = ServiceHarness(services=services, agi=agi, config=config)
        try:
            if wait_online:
                await harness.wait_online()
            yield harness
        finally:
            if runner is not None:
                await runner.cleanup()
            await agi.close()


def with_account_options(config: Config, **options: object) -> Config:
    (name, account), = config.accounts.items()
    return replace(config, accounts={name: replace(account, **options)})  # type: ignore[arg-type]


async def settle_presence(svc: ServiceHarness, client, jid: str, code: int, account: str = "asterisk", **presence) -> None:
    """Send ``presence`` from ``client`` until the service reads ``code`` for ``jid``.

    Right after a subscription, slixmpp may re-send a client's initial presence after the one a
    test set, so one send is not enough to be sure which the service saw last."""
    from agi_xmpp.jid import parse_jid

    target = parse_jid(jid)

    def settled() -> bool:
        if svc.services.presence.status(account, target).code == code:
            return True
        client.send_presence(**presence)
        return False

    await eventually(settled, what=f"{jid} to read {code}")
