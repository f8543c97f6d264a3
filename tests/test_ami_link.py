"""The AMI link when Asterisk is not there (agi_xmpp.ami_link); the real thing is in tests/e2e."""

from __future__ import annotations

import asyncio

import pytest

from agi_xmpp.ami_link import AmiLink, AmiNotConnected
from agi_xmpp.config import AmiConfig
from agi_xmpp.xmpp_session import Backoff
from service_process import free_port


async def test_asterisk_down_is_a_clear_state_and_actions_fail_fast():
    """Nothing listening (a free port): the link says 'down' with the reason, keeps retrying, and an action
    raises AmiNotConnected instead of hanging."""
    link = AmiLink(AmiConfig(username="u", secret="s", port=free_port()), asyncio.Queue(),
                   backoff=Backoff(initial=0.05, cap=0.1))
    task = asyncio.create_task(link.run())
    try:
        for _ in range(600):
            if link.state == "down" and link.last_error:
                break
            await asyncio.sleep(0.05)
        assert link.state == "down"
        assert "refused" in link.last_error.lower() or "connect" in link.last_error.lower()
        with pytest.raises(AmiNotConnected):
            await link.action("Ping")
    finally:
        await link.stop()
        await asyncio.wait_for(task, 30)
    assert link.state == "stopped"


class FakeAsterisk:
    """A scripted AMI server: banner, Login answered with ``login_reply``, then ``after_login``."""

    def __init__(self, login_ok: bool = True, after_login: str = "") -> None:
        self.login_ok = login_ok
        self.after_login = after_login
        self.logins = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        writer.write(b"Asterisk Call Manager/11.0.0\r\n")
        block: dict[str, str] = {}
        while line := await reader.readline():
            text = line.decode().strip()
            if text:
                key, _, value = text.partition(": ")
                block[key.lower()] = value
                continue
            if block.get("action", "").lower() == "login":
                self.logins += 1
                status = "Success\r\nMessage: Authentication accepted" if self.login_ok else \
                    "Error\r\nMessage: Authentication failed"
                writer.write(f"Response: {status}\r\nActionID: {block.get('actionid')}\r\n\r\n".encode())
                if self.login_ok:
                    writer.write(self.after_login.encode())
            elif block.get("action", "").lower() == "ping":
                writer.write(f"Response: Success\r\nActionID: {block.get('actionid')}\r\nPing: Pong\r\n\r\n".encode())
            block = {}

    async def __aenter__(self) -> FakeAsterisk:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for writer in self.writers:
            writer.close()
        self.server.close()
        await self.server.wait_closed()  # the handlers have ended: nothing outlives the test


async def next_event(queue: asyncio.Queue, timeout: float = 30.0):
    return await asyncio.wait_for(queue.get(), timeout)


async def test_link_up_comes_first_and_the_login_fullybooted_is_not_doubled():
    """After a login the queue gets LINK_UP, then the connection's events (the FullyBooted
    Asterisk sends at login is covered by LINK_UP); a dropped connection reconnects and
    queues LINK_UP again."""
    from agi_xmpp.ami_link import LINK_UP

    events = "Event: FullyBooted\r\nStatus: Fully Booted\r\n\r\nEvent: MessageWaiting\r\nMailbox: 2001@default\r\nNew: 1\r\n\r\n"
    async with FakeAsterisk(after_login=events) as pbx:
        queue: asyncio.Queue = asyncio.Queue()
        link = AmiLink(AmiConfig(username="u", secret="s", port=pbx.port), queue,
                       backoff=Backoff(initial=0.05, cap=0.1))
        task = asyncio.create_task(link.run())
        try:
            assert (await next_event(queue)).name == LINK_UP
            waiting = await next_event(queue)
            assert (waiting.name, waiting.get("Mailbox"), waiting.get("New")) == ("MessageWaiting", "2001@default", "1")
            assert (await link.action("Ping"))["Ping"] == "Pong"
            pbx.writers[0].close()  # Asterisk goes away
            assert (await next_event(queue)).name == LINK_UP
            assert link.connects == 2 and pbx.logins == 2
        finally:
            await link.stop()
            await asyncio.wait_for(task, 30)


async def test_refused_login_is_its_own_state_and_not_hammered():
    """A refused Login: state 'login_refused', the reason names manager.conf, and the next
    attempt waits for the back-off cap."""
    async with FakeAsterisk(login_ok=False) as pbx:
        link = AmiLink(AmiConfig(username="agi-xmpp", secret="bad", port=pbx.port), asyncio.Queue(),
                       backoff=Backoff(initial=0.05, cap=5.0))
        task = asyncio.create_task(link.run())
        try:
            for _ in range(600):
                if link.state == "login_refused":
                    break
                await asyncio.sleep(0.05)
            assert link.state == "login_refused"
            assert "agi-xmpp" in link.last_error and "manager.conf" in link.last_error
            await asyncio.sleep(1.0)
            assert pbx.logins == 1  # the next try waits for the 5 s cap
        finally:
            await link.stop()
            await asyncio.wait_for(task, 30)
