"""Test doubles shared by the unit tests: a clock that only moves when told, and an XMPP pool
that records what would be sent (no network)."""

from __future__ import annotations

from collections.abc import Callable

from agi_xmpp.xmpp_pool import PoolCounters, SendOutcome
from agi_xmpp.supervisor import Supervisor


class FakeClock:
    """A clock that only moves when told to (``clock.now``, ``clock.advance``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float = 1.0) -> None:
        self.now += seconds


class FakePool:
    """The parts of ``XmppPool`` the HTTP API and the AMI bridge use. ``sent`` records
    ``(account, bare JID, body)``; hooks are kept so a test can call them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []
        self.sessions: dict = {}
        self.inboxes: dict = {}
        self.counters = PoolCounters()
        self.supervisor = Supervisor()  # /health lists failed background jobs
        self.message_hooks: list[Callable] = []
        self.presence_hooks: list[Callable] = []

    async def send(self, account: str, to, body: str, kind: str = "chat") -> SendOutcome:
        self.sent.append((account, to.bare, body))
        return SendOutcome.SUCCESS

    async def submit(self, account: str, to, body: str, kind: str = "chat", **_options) -> tuple[SendOutcome, str]:
        """``send`` that also returns the stanza id (what POST /api/messages calls)."""
        return await self.send(account, to, body, kind), f"agx-test-{len(self.sent)}"

    def connections(self) -> list:
        return []

    def all_online(self) -> bool:
        return True

    def add_message_hook(self, hook: Callable) -> None:
        self.message_hooks.append(hook)

    def add_presence_hook(self, hook: Callable) -> None:
        self.presence_hooks.append(hook)
