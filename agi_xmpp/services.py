"""The one place where the parts are wired together.

``running_services(config)`` starts storage, the presence cache and the XMPP pool and yields a
``Services`` bundle that scripts and the HTTP API read; ``serve(config)`` adds the FastAGI and
HTTP listeners and runs until asked to stop. Shutdown is the reverse of startup.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog

from .ami_bridge import AmiBridge
from .config import Config
from .presence import PresenceCache
from .storage import AsyncStorage, Storage
from .xmpp_pool import XmppPool

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Services:
    """What scripts and the HTTP API may use."""

    config: Config
    storage: AsyncStorage
    presence: PresenceCache
    pool: XmppPool
    ami: AmiBridge | None = None  # with an [ami] section
    started_at: float = field(default_factory=time.time)


@contextlib.asynccontextmanager
async def running_services(config: Config) -> AsyncIterator[Services]:
    storage = Storage(config.general.database)
    storage.create_all()
    storage.directory_load_config(config.directory)
    async_storage = AsyncStorage(storage)
    presence = PresenceCache()
    pool = XmppPool(config, async_storage, presence)
    await pool.start()
    ami = AmiBridge(config, async_storage, presence, pool) if config.ami is not None else None
    if ami is not None:
        await ami.start()
    for warning in config.warnings:
        log.warning("config_warning", detail=warning)
    log.info("services_started", accounts=sorted(config.accounts))
    try:
        yield Services(config=config, storage=async_storage, presence=presence, pool=pool, ami=ami)
    finally:
        if ami is not None:
            await ami.stop()
        await pool.stop()
        await async_storage.aclose()
        log.info("services_stopped")


async def serve(config: Config, *, stop: asyncio.Event | None = None) -> None:
    """Run the whole service until SIGINT/SIGTERM (or ``stop`` is set)."""
    from .agi_server import AgiServer
    from .http_api import start_http
    from .scripts import registry

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    general = config.general
    async with running_services(config) as services:
        agi = AgiServer(registry, services, bind=general.agi_bind, allow=general.agi_allow)
        await agi.start()
        http = await start_http(services)
        log.info("agi_xmpp_ready", agi=_addr(general.agi_bind), http=_addr(general.http_bind))
        # Startup built a large heap (slixmpp, SQLAlchemy, aiohttp, config) that lives until
        # exit: move it out of the cyclic GC's reach, or every full collection walks all of it
        # again (3-5 % of the CPU per FastAGI call under load; docs/performance.md).
        gc.freeze()
        try:
            await stop.wait()
        finally:
            log.info("agi_xmpp_stopping")
            await http.cleanup()
            await agi.close()


def _addr(bind: tuple[str, int]) -> str:
    host, port = bind
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
