"""How much each sender may write into the message archive: token buckets, strangers tighter.

One stranger wrote 44.7 MB into the archive in 15 s (issue 10). Every incoming message costs
its body's length (at least ``MIN_COST``) from two buckets: its sender's, and its class's
(contacts / strangers, so thousands of made-up JIDs share one). A message either bucket cannot
pay for is still delivered and buffered as usual, but not archived; ``skipped`` counts them per
class for ``/metrics``. Pure: clock injected, memory bounded by ``max_senders``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .inbox import CONTACT, STRANGER

__all__ = ["Rate", "ArchiveQuota", "CONTACT_RATE", "STRANGER_RATE", "STRANGERS_RATE", "CONTACTS_RATE"]

MIN_COST = 256  # characters a message costs at least: many tiny messages are not free


@dataclass(frozen=True, slots=True)
class Rate:
    burst: float  # characters that may be written at once
    per_second: float  # characters regained per second


CONTACT_RATE = Rate(burst=4 * 1024 * 1024, per_second=64 * 1024)
STRANGER_RATE = Rate(burst=64 * 1024, per_second=1024)
CONTACTS_RATE = Rate(burst=64 * 1024 * 1024, per_second=1024 * 1024)  # all contacts together
STRANGERS_RATE = Rate(burst=1024 * 1024, per_second=16 * 1024)  # all strangers together


class _Bucket:
    __slots__ = ("level", "stamp")

    def __init__(self, level: float, stamp: float) -> None:
        self.level = level
        self.stamp = stamp

    def refill(self, rate: Rate, now: float) -> None:
        self.level = min(rate.burst, self.level + (now - self.stamp) * rate.per_second)
        self.stamp = now


class ArchiveQuota:
    """``admit(account, sender_bare, size, trusted) -> bool``: may this message be archived?"""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        contact: Rate = CONTACT_RATE,
        stranger: Rate = STRANGER_RATE,
        contacts: Rate = CONTACTS_RATE,
        strangers: Rate = STRANGERS_RATE,
        max_senders: int = 10_000,
    ) -> None:
        self._clock = clock
        self._rates = {True: contact, False: stranger}
        self._class_rates = {True: contacts, False: strangers}
        now = clock()
        self._classes = {True: _Bucket(contacts.burst, now), False: _Bucket(strangers.burst, now)}
        self._senders: dict[tuple[str, str, bool], _Bucket] = {}
        self._max_senders = max_senders
        self.skipped = {CONTACT: 0, STRANGER: 0}

    def __repr__(self) -> str:
        return f"<ArchiveQuota [{len(self._senders)} senders, skipped {self.skipped}]>"

    def admit(self, account: str, sender_bare: str, size: int, trusted: bool) -> bool:
        now = self._clock()
        cost = max(size, MIN_COST)
        rate = self._rates[trusted]
        key = (account, sender_bare, trusted)
        bucket = self._senders.get(key)
        if bucket is None:
            if len(self._senders) >= self._max_senders:
                self._forget_full(now)
            bucket = self._senders[key] = _Bucket(rate.burst, now)
        else:
            bucket.refill(rate, now)
        shared = self._classes[trusted]
        shared.refill(self._class_rates[trusted], now)
        if bucket.level < cost or shared.level < cost:
            self.skipped[CONTACT if trusted else STRANGER] += 1
            return False
        bucket.level -= cost
        shared.level -= cost
        return True

    def _forget_full(self, now: float) -> None:
        """Drop senders whose bucket has refilled (a new one would be the same); if none, all."""
        for key, bucket in list(self._senders.items()):
            bucket.refill(self._rates[key[2]], now)
            if bucket.level >= self._rates[key[2]].burst:
                del self._senders[key]
        if len(self._senders) >= self._max_senders:
            self._senders.clear()
