"""How much each sender may write into the archive (archive_quota.py)."""

from __future__ import annotations

from fakes import FakeClock

from agi_xmpp.archive_quota import MIN_COST, STRANGER_RATE, STRANGERS_RATE, ArchiveQuota


def test_one_stranger_writes_its_burst_then_its_rate():
    """A stranger flooding 44 MB gets its burst archived, then only what its rate refills."""
    clock = FakeClock()
    quota = ArchiveQuota(clock)
    admitted = sum(quota.admit("a", "evil@x", 1000, False) for _ in range(44_000))
    assert admitted == STRANGER_RATE.burst // 1000
    clock.now += 10
    again = sum(quota.admit("a", "evil@x", 1000, False) for _ in range(1000))
    assert again == int(10 * STRANGER_RATE.per_second // 1000)
    assert quota.skipped["stranger"] == 44_000 - admitted + 1000 - again


def test_many_strangers_share_one_class_bucket():
    """Thousands of made-up stranger JIDs together archive at most the strangers' burst."""
    quota = ArchiveQuota(FakeClock())
    total = sum(quota.admit("a", f"s{n}@x", 1000, False) for n in range(5000))
    assert total * 1000 <= STRANGERS_RATE.burst


def test_a_contact_is_unaffected_by_strangers():
    """With strangers exhausted, a contact's messages are still archived."""
    quota = ArchiveQuota(FakeClock())
    for n in range(5000):
        quota.admit("a", f"s{n}@x", 1000, False)
    assert all(quota.admit("a", "bob@x", 1000, True) for _ in range(100))
    assert quota.skipped["contact"] == 0


def test_tiny_messages_are_not_free():
    """Each message costs at least MIN_COST characters: an empty-body flood is bounded too."""
    quota = ArchiveQuota(FakeClock())
    admitted = sum(quota.admit("a", "evil@x", 0, False) for _ in range(10_000))
    assert admitted == STRANGER_RATE.burst // MIN_COST


def test_sender_table_is_bounded():
    """The per-sender table never grows past max_senders."""
    quota = ArchiveQuota(FakeClock(), max_senders=100)
    for n in range(10_000):
        quota.admit("a", f"s{n}@x", 10, True)
    assert len(quota._senders) <= 100


async def test_retention_task_purges_and_survives_a_database_error(monkeypatch):
    """The hourly retention pass deletes archived messages and finished outbox rows older than
    archive_retention days; a failing purge stops neither the other one nor the next pass;
    0 days never purges."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from agi_xmpp import services
    from agi_xmpp.errors import StorageError

    cutoffs: dict[str, list] = {"archive": [], "outbox": []}

    class Storage:
        async def archive_purge(self, before):
            cutoffs["archive"].append(before)
            if len(cutoffs["archive"]) == 1:
                raise StorageError("database is down")
            return 3

        async def outbox_purge(self, before):
            cutoffs["outbox"].append(before)
            return 2

    monkeypatch.setattr(services, "RETENTION_INTERVAL", 0.01)
    task = asyncio.create_task(services._retention(Storage(), 30))
    async with asyncio.timeout(30):
        while len(cutoffs["archive"]) < 3 or len(cutoffs["outbox"]) < 3:
            await asyncio.sleep(0.01)
    task.cancel()
    expected = datetime.now(UTC) - timedelta(days=30)
    assert all(abs((c - expected).total_seconds()) < 60 for c in cutoffs["archive"] + cutoffs["outbox"])
    passes = len(cutoffs["archive"]), len(cutoffs["outbox"])
    await asyncio.wait_for(services._retention(Storage(), 0), 30)  # returns at once
    assert (len(cutoffs["archive"]), len(cutoffs["outbox"])) == passes
