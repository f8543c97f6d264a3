"""The one place where the parts are wired together.

``running_services(config)`` starts storage, the presence cache and the XMPP pool and yields a
``Services`` bundle that scripts and the HTTP API read; ``serve(config)`` adds the FastAGI and
HTTP listeners and runs until asked to stop. Shutdown is the reverse of startup.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import structlog

from .archive_quota import ArchiveQuota
from .agi_server import AgiServer
from .ami_bridge import AmiBridge
from .config import Config
from .conn_limits import plan_budgets, raise_nofile_limit
from .http_api import start_http
from .inbox import GROUPCHAT, InboundMessage
from .presence import PresenceCache
from .state_files import ensure_private_dir
from .scripts import registry
from .services_bundle import Services
from .storage import AsyncStorage, Storage
from .supervisor import TaskSet
from .xmpp_pool import XmppPool

__all__ = ["Services", "running_services", "serve"]  # Services lives in services_bundle.py

log = structlog.get_logger(__name__)


@contextlib.asynccontextmanager
async def running_services(config: Config) -> AsyncIterator[Services]:
    ensure_private_dir(config.general.state_dir)  # 0700 whatever the umask (state_files)
    storage = Storage(config.general.database)
    storage.create_all()
    storage.directory_load_config(config.directory)
    async_storage = AsyncStorage(storage)
    presence = PresenceCache()
    # Each part is stopped in reverse order, also when a later one fails to start.
    async with contextlib.AsyncExitStack() as started:
        started.callback(log.info, "services_stopped")  # runs last
        started.push_async_callback(async_storage.aclose)
        pool = XmppPool(config, async_storage, presence)
        _apply_sender_quotas(pool, presence)
        await pool.start()
        started.push_async_callback(pool.stop)
        ami = AmiBridge(config, async_storage, presence, pool) if config.ami is not None else None
        if ami is not None:
            await ami.start()
            started.push_async_callback(ami.stop)
        background = TaskSet(log)  # archive retention: cancelled and awaited at stop
        started.push_async_callback(background.aclose)
        background.spawn(_retention(async_storage, config.general.archive_retention), "retention")
        for warning in config.warnings:
            log.warning("config_warning", detail=warning)
        log.info("services_started", accounts=sorted(config.accounts))
        yield Services(config=config, storage=async_storage, presence=presence, pool=pool, ami=ami)


async def serve(config: Config, *, stop: asyncio.Event | None = None) -> None:
    """Run the whole service until SIGINT/SIGTERM (or ``stop`` is set)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    general = config.general
    soft, hard = raise_nofile_limit()
    budgets = plan_budgets(soft, general.agi_max_connections, general.http_max_connections, len(config.accounts))
    if budgets.reduced:
        log.warning("connection_budgets_reduced", nofile=soft, agi=budgets.agi, http=budgets.http,
                    hint="raise LimitNOFILE in the systemd unit (docs/reliability.md)")
    log.info("file_descriptors", nofile_soft=soft, nofile_hard=hard, agi_budget=budgets.agi,
             http_budget=budgets.http)
    async with running_services(config) as services:
        agi = AgiServer(registry, services, bind=general.agi_bind, allow=general.agi_allow,
                        max_connections=budgets.agi)
        await agi.start()
        http = await start_http(services, max_connections=budgets.http, agi_budget=agi.budget)
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


def _apply_sender_quotas(pool: XmppPool, presence: PresenceCache) -> None:
    """Strangers get tighter buffer and archive quotas than roster contacts and joined rooms
    (inbox.py, archive_quota.py): a stranger's flood cannot evict a contact's reply."""
    pool.archive_quota = ArchiveQuota()
    for name, inbox in pool.inboxes.items():
        inbox.is_trusted = functools.partial(_is_trusted, pool, presence, name)


def _is_trusted(pool: XmppPool, presence: PresenceCache, account: str, message: InboundMessage) -> bool:
    if message.kind == GROUPCHAT:
        session = pool.sessions.get(account)
        return session is not None and message.sender.bare in session.joined_rooms()
    return presence.in_roster(account, message.sender.bare)


RETENTION_INTERVAL = 3600.0  # seconds between retention passes


async def _retention(storage: AsyncStorage, days: int) -> None:
    """Hourly, delete archived messages and finished outbox rows (``acked``, ``expired``,
    ``failed``; never a ``pending`` one) older than ``archive_retention`` days: without it the
    outbox grows by a row per message for ever. ``GET /api/messages/ID`` answers for that long.
    A failing purge stops neither the other one nor the next pass."""
    if days <= 0:
        return
    purges = (("archive", storage.archive_purge), ("outbox", storage.outbox_purge))
    while True:
        cutoff = datetime.now(UTC) - timedelta(days=days)
        for table, purge in purges:
            try:
                removed = await purge(cutoff)
                if removed:
                    log.info("retention_purged", table=table, removed=removed, retention_days=days)
            except Exception as exc:  # one failure never ends retention
                log.error("retention_purge_failed", table=table, error=str(exc))
        await asyncio.sleep(RETENTION_INTERVAL)


def _addr(bind: tuple[str, int]) -> str:
    host, port = bind
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
