"""The pool's own background work (xmpp_pool.py): owned, awaited at stop, failures logged."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from agi_xmpp.config import AccountConfig, BindAddress, Config, GeneralConfig
from agi_xmpp.delivery import DeliveryTracker
from agi_xmpp.errors import StorageError
from agi_xmpp.inbox import InboundMessage
from agi_xmpp.jid import parse_jid
from agi_xmpp.presence import PresenceCache
from agi_xmpp.xmpp_pool import XmppPool


class _OfflineSession:
    """The parts of ``XmppSession`` the pool touches when nothing is connected."""

    def __init__(self, account: AccountConfig, _pool: object) -> None:
        self.name = account.name
        self.online = False
        self.delivery = DeliveryTracker()

    async def run(self) -> None:
        await asyncio.sleep(3600)

    async def stop(self) -> None:
        pass

    async def close_tasks(self) -> None:
        pass

    def joined_rooms(self) -> dict[str, str]:
        return {}


class _BrokenArchive:
    """A database that refuses every archive write."""

    def __init__(self) -> None:
        self.tried = asyncio.Event()

    async def archive_add(self, *_args: object) -> None:
        self.tried.set()
        raise StorageError("archive_add: database is locked")

    async def outbox_expire(self, _cutoff: object) -> int:
        return 0


def _config() -> Config:
    account = AccountConfig(name="asterisk", username="asterisk@localhost", secret="x")
    general = GeneralConfig(default_account="asterisk", agi_bind=BindAddress("127.0.0.1", 0))
    return Config(path=None, general=general, accounts={"asterisk": account}, directory=())


async def test_a_failing_archive_write_is_logged_and_stop_leaves_no_task():
    """An incoming message whose archive write fails is still buffered; the failure is logged
    (task name and error), and stopping the pool leaves none of its tasks pending."""
    storage = _BrokenArchive()
    pool = XmppPool(_config(), storage, PresenceCache(), session_factory=_OfflineSession)  # type: ignore[arg-type]
    before = asyncio.all_tasks()
    with capture_logs() as logs:
        await pool.start()
        message = InboundMessage(sender=parse_jid("bob@localhost/phone"), body="hello", kind="chat",
                                 stanza_id="m1", received_at=0.0)
        pool.message_received("asterisk", message)
        await asyncio.wait_for(storage.tried.wait(), 30)
        await pool.stop()
    assert asyncio.all_tasks() - before == set()
    assert len(pool.inboxes["asterisk"]) == 1  # the dialplan still gets the message
    failures = [e for e in logs if e["event"] == "pool_background_task_failed"]
    assert [(e["task"], e["error"]) for e in failures] == [
        ("archive-in", "StorageError: archive_add: database is locked")
    ]
