"""Fixtures for tests that run against a real Prosody (``LocalProsody``).

- ``prosody`` (session): one running server shared by the whole run, in a temporary directory.
  Do not kill, pause or restart it; use ``private_prosody`` for that.
- ``private_prosody`` (function): a server of the test's own, started, stopped afterwards.
- ``xmpp_accounts`` (function): ``make_account(prefix="user") -> (jid, password)``, a fresh
  account on ``prosody`` every call.
- ``xmpp_client`` (function, async): ``await xmpp_client(jid, password, **kw)`` connects an
  ``XmppTestClient`` to ``prosody`` (TLS verified against its certificate) and disconnects it
  when the test ends.

``XmppTestClient`` plays the human on the other side::

    async def test_example(xmpp_accounts, xmpp_client):
        alice_jid, alice_pw = xmpp_accounts("alice")
        bob_jid, bob_pw = xmpp_accounts("bob")
        alice = await xmpp_client(alice_jid, alice_pw)
        bob = await xmpp_client(bob_jid, bob_pw, show="away", status="lunch", priority=5)
        alice.send_message(bob_jid, "hello")
        msg = await bob.next_message(timeout=5, sender=alice_jid)
        assert msg.body == "hello"
"""


from __future__ import annotations

import asyncio
import gc
import io
import itertools
import os
import secrets
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from tools.local_prosody import LocalProsody, LocalProsodyError
from xmpp_client import XmppTestClient

# -- fixtures ---------------------------------------------------------------------------------


def _dump_asyncio_tasks(_signum: int, _frame: object) -> None:
    """SIGUSR1: write every event loop's tasks and where each is suspended to a file.

    A hung async test shows only an idle selector in a thread dump (py-spy, pytest-timeout);
    this shows which await it is stuck on: ``kill -USR1 <pytest pid>``."""
    out = io.StringIO()
    for loop in [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop)]:
        if loop.is_closed():
            continue
        out.write(f"== {loop!r}\n")
        for task in asyncio.all_tasks(loop):
            out.write(f"-- {task!r}\n")
            task.print_stack(file=out)
    # A file, not stderr: pytest captures stderr per test, and a hung test never shows it.
    path = os.path.join(tempfile.gettempdir(), f"agi-xmpp-tasks-{os.getpid()}.txt")
    with open(path, "w") as dump:
        dump.write(out.getvalue())
    sys.__stderr__.write(f"asyncio tasks written to {path}\n")


signal.signal(signal.SIGUSR1, _dump_asyncio_tasks)


def _start_or_fail(make: Callable[[], LocalProsody]) -> LocalProsody:
    """Start a fresh server; its ports are picked free, but another process may take one
    before Prosody binds it, so a port clash is retried with new ports."""
    for attempt in range(3):
        server = make()
        try:
            server.start()
            return server
        except LocalProsodyError as exc:
            if "already in use" not in str(exc) or attempt == 2:
                pytest.fail(f"could not start Prosody: {exc}", pytrace=False)
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def prosody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalProsody]:
    """One running Prosody for the whole session (do not kill/pause it: use private_prosody)."""
    server = _start_or_fail(lambda: LocalProsody(tmp_path_factory.mktemp("prosody")))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_prosody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalProsody]:
    """A running Prosody of this test's own, free to kill, pause and restart."""
    server = _start_or_fail(lambda: LocalProsody(tmp_path_factory.mktemp("private-prosody")))
    try:
        yield server
    finally:
        if server.is_paused:
            server.resume()
        server.stop()


_account_numbers = itertools.count(1)


@pytest.fixture
def xmpp_accounts(prosody: LocalProsody) -> Callable[..., tuple[str, str]]:
    """``make_account(prefix="user") -> (bare_jid, password)``: a fresh account on ``prosody``."""

    def make_account(prefix: str = "user") -> tuple[str, str]:
        user = f"{prefix.lower()}-{next(_account_numbers)}-{secrets.token_hex(3)}"
        password = secrets.token_urlsafe(12)
        return prosody.register(user, password), password

    return make_account


@pytest.fixture
async def xmpp_client(
    prosody: LocalProsody,
) -> AsyncIterator[Callable[..., Awaitable[XmppTestClient]]]:
    """``await xmpp_client(jid, password, *, show=, status=, priority=, presence=True,
    resource="test", server=prosody)``: a connected client verifying TLS against the server's
    certificate; disconnected when the test ends."""
    clients: list[XmppTestClient] = []

    async def connect(jid: str, password: str, *, server: LocalProsody | None = None,
                      show: str | None = None, status: str | None = None,
                      priority: int | None = None, presence: bool = True,
                      timeout: float = 30.0, **kwargs: Any) -> XmppTestClient:
        client = XmppTestClient.for_prosody(server or prosody, jid, password, **kwargs)
        clients.append(client)
        await client.connect(timeout, presence=presence, show=show, status=status,
                             priority=priority)
        return client

    yield connect
    await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)

