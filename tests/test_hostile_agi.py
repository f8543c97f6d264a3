"""Hostile and broken FastAGI peers against the whole service with the real scripts.

tests/test_agi_server.py covers the listener with toy scripts; here the real ``jabber_send``,
``jabber_receive`` and ``jabber_status`` run on real storage (SQLite), the presence cache, the
inbox and an XMPP pool whose account is offline (never started: sends are QUEUED), and each test
checks what a broken peer must not cause: a queued message that was never asked for, a message
consumed and lost, a stale variable, a stuck connection, or a server that stops answering.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from fake_asterisk import agi_call, asterisk_parse_args
from structlog.testing import capture_logs

from agi_xmpp.agi_server import AgiServer
from agi_xmpp.config import AccountConfig, Config, GeneralConfig
from agi_xmpp.inbox import InboundMessage
from agi_xmpp.jid import parse_jid
from agi_xmpp.presence import PresenceCache
from agi_xmpp.scripts import registry
from agi_xmpp.services import Services
from agi_xmpp.storage import AsyncStorage, Storage
from agi_xmpp.xmpp_pool import XmppPool
from bench.loadgen import env_block

ACCOUNT = "asterisk"
BOB = "bob@localhost"
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
SAFETY = 10.0  # an upper bound for "promptly": a hung test fails instead of hanging
ENV_TIMEOUT = 0.5


@dataclass
class OfflineService:
    server: AgiServer
    services: Services

    @property
    def port(self) -> int:
        return self.server.address[1]

    async def outbox(self) -> list[str]:
        """Bodies of every outbox row, oldest first."""
        rows = await self.services.storage.outbox_pending(ACCOUNT, _EPOCH)
        return [row.body for row in rows]

    def deliver(self, body: str, sender: str = f"{BOB}/phone") -> None:
        """A chat message arriving from XMPP, as the session would report it."""
        self.services.pool.message_received(
            ACCOUNT,
            InboundMessage(parse_jid(sender), body, "chat", f"in-{time.monotonic_ns()}", time.monotonic()),
        )

    async def drained(self) -> None:
        """Wait until the server holds no connection and runs no script."""
        async with asyncio.timeout(SAFETY):
            while self.server.sessions:
                await asyncio.sleep(0.01)


@pytest.fixture
async def svc(tmp_path) -> AsyncIterator[OfflineService]:
    """The real scripts on real storage; the account's XMPP session is never started."""
    account = AccountConfig(name=ACCOUNT, username="asterisk@localhost", secret="not-used",
                            serverhost="127.0.0.1", port=9)
    general = GeneralConfig(state_dir=str(tmp_path), default_account=ACCOUNT)
    config = Config(path=None, general=general, accounts={ACCOUNT: account})
    storage = Storage(config.general.database)
    storage.create_all()
    async_storage = AsyncStorage(storage)
    presence = PresenceCache()
    presence.set_roster(ACCOUNT, {BOB})
    presence.update(ACCOUNT, parse_jid(f"{BOB}/desk"), available=True, show="away", priority=1,
                    status="at lunch")
    pool = XmppPool(config, async_storage, presence)
    services = Services(config=config, storage=async_storage, presence=presence, pool=pool)
    server = AgiServer(registry, services, bind=("127.0.0.1", 0), env_timeout=ENV_TIMEOUT,
                       hangup_grace=0.5, close_timeout=1.0)
    await server.start()
    try:
        yield OfflineService(server, services)
    finally:
        await server.close()
        await async_storage.aclose()


class Peer:
    """Asterisk's side of one connection, driven line by line by the test."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.variables: dict[str, str] = {}

    @classmethod
    async def open(cls, port: int, block: bytes = b"") -> Peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(block)
        return cls(reader, writer)

    async def command(self) -> list[str] | None:
        """The next command line (parsed as Asterisk does), or None when the server closed."""
        async with asyncio.timeout(SAFETY):
            try:
                line = await self.reader.readline()
            except ConnectionResetError:
                return None
        if not line:
            return None
        words = asterisk_parse_args(line.decode().rstrip("\n"))
        if words[:2] == ["SET", "VARIABLE"]:
            self.variables[words[2]] = words[3]
        return words

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def answer_all(self, reply: bytes = b"200 result=1\n") -> None:
        """Answer every remaining command with ``reply`` until the server closes."""
        while await self.command() is not None:
            self.send(reply)

    async def closed_by_server(self) -> bool:
        async with asyncio.timeout(SAFETY):
            try:
                return await self.reader.read() == b""
            except ConnectionResetError:
                return True

    def close(self) -> None:
        self.writer.close()


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


# -- the environment block -------------------------------------------------------------------


@pytest.mark.parametrize("cut", ["nothing", "mid-line", "before the blank line"])
async def test_eof_inside_the_env_block_runs_nothing(svc, cut):
    """A peer that closes inside a jabber_send env block queues no message, leaves no
    connection behind, and the next call works."""
    block = env_block("jabber_send", (ACCOUNT, BOB, "must not be sent"))
    upto = {"nothing": 0, "mid-line": len(block) // 2, "before the blank line": len(block) - 1}[cut]
    peer = await Peer.open(svc.port, block[:upto])
    peer.writer.write_eof()
    assert await peer.closed_by_server()
    peer.close()
    await svc.drained()
    assert await svc.outbox() == []
    result = await agi_call(svc.port, "jabber_send", ACCOUNT, BOB, "a real one")
    assert result.variables["JABBER_SEND_STATUS"] == "QUEUED"
    assert await svc.outbox() == ["a real one"]


async def test_env_block_that_never_ends_is_closed_at_the_deadline(svc):
    """A peer dripping env lines forever is cut off at env_timeout from its connection (not
    from its last byte); other calls are served meanwhile."""
    peer = await Peer.open(svc.port)
    opened = time.monotonic()

    async def drip() -> None:
        n = 0
        while True:
            try:
                peer.send(f"agi_padding_{n}: x\n".encode())
                await peer.writer.drain()
            except ConnectionError:
                return
            n += 1
            await asyncio.sleep(0.02)

    dripping = asyncio.create_task(drip())
    try:
        status = await agi_call(svc.port, "jabber_status", ACCOUNT, BOB)
        assert status.variables["JABBER_STATUS"] == "3"
        assert await peer.closed_by_server()
        lasted = time.monotonic() - opened
    finally:
        dripping.cancel()
        peer.close()
    # A deadline from the connection, not from the last byte: counted from the last byte the
    # drip would never be cut at all. How soon after it is cut is load, not behaviour.
    assert ENV_TIMEOUT <= lasted
    assert svc.server.stats["env_timeout"] == 1
    await svc.drained()


async def test_oversized_env_block_is_refused_before_any_script(svc):
    """A 70 KB message argument (env block over 64 KiB) is refused and nothing is queued; a
    60 KB one fits, and is queued exactly."""
    big = "é" * 35_000  # 70,000 bytes of UTF-8
    peer = await Peer.open(svc.port, env_block("jabber_send", (ACCOUNT, BOB, big)))
    assert await peer.command() is None
    peer.close()
    await svc.drained()
    assert await svc.outbox() == []
    fits = "ü" * 30_000  # 60,000 bytes
    result = await agi_call(svc.port, "jabber_send", ACCOUNT, BOB, fits)
    assert result.variables["JABBER_SEND_STATUS"] == "QUEUED"
    assert await svc.outbox() == [fits]


async def test_invalid_utf8_in_the_env_block_becomes_replacement_characters(svc):
    """Bytes that are not UTF-8 in an argument do not break the call: the message is queued
    with U+FFFD in their place (documented), and the variables are set."""
    peer = await Peer.open(svc.port, env_block("jabber_send", (ACCOUNT, BOB, b"caf\xe9 \xff\xfe ok")))
    await peer.answer_all()
    peer.close()
    assert peer.variables == {"JABBER_SEND_STATUS": "QUEUED", "JABBER_SEND_ERROR": ""}
    assert await svc.outbox() == ["caf\ufffd \ufffd\ufffd ok"]


async def test_invalid_utf8_and_bad_base64_in_replies(svc):
    """A channel variable holding Latin-1 bytes is read with U+FFFD in their place; a reply that
    is not base64 at all gives FAILURE with a reason, never a stale status."""
    # Latin-1 text in a channel variable: valid base64 of bytes that are not UTF-8
    peer = await Peer.open(svc.port, env_block("jabber_send?var=NOTE", (ACCOUNT, BOB)))
    assert (await peer.command())[:3] == ["GET", "FULL", "VARIABLE"]
    peer.send(f"200 result=1 ({b64(b'Gr' + bytes([0xFC]) + b'sse')})\n".encode())
    await peer.answer_all()
    peer.close()
    assert peer.variables["JABBER_SEND_STATUS"] == "QUEUED"
    assert await svc.outbox() == ["Gr\ufffdsse"]
    # raw invalid UTF-8 where the base64 value should be
    peer = await Peer.open(svc.port, env_block("jabber_send?var=NOTE", (ACCOUNT, BOB)))
    assert (await peer.command())[:3] == ["GET", "FULL", "VARIABLE"]
    peer.send(b"200 result=1 (\xff\xfe\x80)\n")
    await peer.answer_all()
    peer.close()
    assert peer.variables["JABBER_SEND_STATUS"] == "FAILURE"
    assert peer.variables["JABBER_SEND_ERROR"]
    assert await svc.outbox() == ["Gr\ufffdsse"]


# -- connection floods ------------------------------------------------------------------------


async def test_2000_connections_opened_and_dropped_at_once(svc):
    """2,000 connections opened together (a third silent, a third with half an env block, a
    third with a whole jabber_status call) and dropped at once: the server forgets them all,
    logs no error, and a normal call works."""
    block = env_block("jabber_status", (ACCOUNT, BOB))
    payloads = [b"", block[:100], block]

    async def one(n: int) -> asyncio.StreamWriter | None:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", svc.port)
        except OSError:
            return None
        writer.write(payloads[n % 3])
        return writer

    started = time.monotonic()
    with capture_logs() as logs:
        writers = await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(2000))), 60)
        opened = sum(w is not None for w in writers)
        for writer in writers:
            if writer is not None:
                writer.transport.abort()  # RST: dropped, not closed politely
        await svc.drained()
        result = await agi_call(svc.port, "jabber_status", ACCOUNT, BOB)
    assert opened == 2000
    assert result.variables["JABBER_STATUS"] == "3"
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]
    assert svc.server.stats["error"] == 0
    print(f"FIGURE agi_2000_connections {{\"seconds\": {time.monotonic() - started:.2f}}}")


# -- HANGUP wherever it appears ---------------------------------------------------------------


async def test_hangup_before_the_first_reply_ends_a_receive_at_once(svc):
    """HANGUP right after the env block ends a 300 s jabber_receive at once with HANGUP, every
    variable set; a message arriving later stays buffered."""
    peer = await Peer.open(svc.port, env_block("jabber_receive", (ACCOUNT, BOB, "300")) + b"HANGUP\n")
    await peer.answer_all()  # each read is bounded by SAFETY: a wait for the 300 s would fail here
    peer.close()
    assert peer.variables["JABBER_RECEIVE_STATUS"] == "HANGUP"  # ended by the HANGUP, not the timeout
    assert set(peer.variables) == {"JABBER_RECEIVE", "JABBER_RECEIVE_B64", "JABBER_RECEIVE_FROM",
                                   "JABBER_RECEIVE_STATUS", "JABBER_RECEIVE_ERROR"}
    svc.deliver("for the next caller")
    result = await agi_call(svc.port, "jabber_receive", ACCOUNT, BOB, "1")
    assert result.variables["JABBER_RECEIVE"] == "for the next caller"


async def test_hangup_in_the_env_block_still_queues_a_send(svc):
    """A jabber_send from a channel that already hung up (the h extension) is still accepted:
    a notification after hangup is legitimate."""
    peer = await Peer.open(svc.port, env_block("jabber_send", (ACCOUNT, BOB, "caller left",), raw=b"HANGUP\n"))
    await peer.answer_all()
    peer.close()
    assert peer.variables["JABBER_SEND_STATUS"] == "QUEUED"
    assert await svc.outbox() == ["caller left"]


async def test_hangup_between_replies_does_not_desynchronise(svc):
    """HANGUP lines between a command and its reply are notices, not replies: every variable
    is still set with the right value."""
    peer = await Peer.open(svc.port, env_block("jabber_send?var=NOTE", (ACCOUNT, BOB)))
    assert (await peer.command())[:3] == ["GET", "FULL", "VARIABLE"]
    peer.send(b"HANGUP\n" + f"200 result=1 ({b64('from the var')})\n".encode())
    while await peer.command() is not None:
        peer.send(b"HANGUP\n200 result=1\n")
    peer.close()
    assert peer.variables == {"JABBER_SEND_STATUS": "QUEUED", "JABBER_SEND_ERROR": ""}
    assert await svc.outbox() == ["from the var"]


async def hangup_instead_of_reply(svc: OfflineService) -> None:
    peer = await Peer.open(svc.port, env_block("jabber_send?var=NOTE", (ACCOUNT, BOB)))
    assert (await peer.command())[:3] == ["GET", "FULL", "VARIABLE"]
    peer.send(b"HANGUP\n")
    peer.writer.write_eof()
    assert await peer.closed_by_server()
    peer.close()
    await svc.drained()


async def test_hangup_instead_of_the_reply_ends_the_call_and_queues_nothing(svc):
    """HANGUP and EOF where the message text should have come back: the script ends, the
    connection is closed and nothing is queued."""
    await hangup_instead_of_reply(svc)
    assert await svc.outbox() == []


async def test_a_caller_gone_is_not_logged_as_a_crash(svc):
    """A caller that hangs up mid-command is routine: nothing is logged at error level."""
    with capture_logs() as logs:
        await hangup_instead_of_reply(svc)
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]


async def test_receive_whose_caller_vanishes_while_variables_are_set(svc):
    """A message taken by jabber_receive whose caller then drops the connection (HANGUP and EOF
    instead of the first SET VARIABLE reply) is not lost: it goes back to the buffer."""
    svc.deliver("do not lose me")
    peer = await Peer.open(svc.port, env_block("jabber_receive", (ACCOUNT, BOB, "5")))
    assert (await peer.command())[:2] == ["SET", "VARIABLE"]
    peer.send(b"HANGUP\n")
    peer.writer.write_eof()
    assert await peer.closed_by_server()
    peer.close()
    await svc.drained()
    result = await agi_call(svc.port, "jabber_receive", ACCOUNT, BOB, "1")
    assert result.variables["JABBER_RECEIVE"] == "do not lose me"


# -- replies that are not what was asked ------------------------------------------------------


async def test_520_usage_block_instead_of_200_sets_failure_not_stale_values(svc):
    """A multi-line 520 usage block where the GET FULL VARIABLE reply was expected is read to its
    end; the script reports FAILURE in its own variables (no stale status) and queues nothing."""
    peer = await Peer.open(svc.port, env_block("jabber_send?var=NOTE", (ACCOUNT, BOB)))
    assert (await peer.command())[:3] == ["GET", "FULL", "VARIABLE"]
    peer.send(
        b"520-Invalid command syntax.  Proper usage follows:\n"
        b" Usage: GET FULL VARIABLE <variablename> [<channel name>]\n"
        b"     Evaluates <variablename> and returns its value.\n"
        b"520 End of proper usage.\n"
    )
    await peer.answer_all()
    peer.close()
    assert peer.variables.get("JABBER_SEND_STATUS") == "FAILURE"
    assert peer.variables.get("JABBER_SEND_ERROR")
    assert await svc.outbox() == []


# -- a peer that stops reading ----------------------------------------------------------------


async def test_peer_that_stops_reading_does_not_block_other_calls(svc):
    """A caller that never reads nor answers (its jabber_receive has a 60 KB reply to write)
    holds only its own connection: 50 other calls are answered meanwhile, and it is cleaned
    up when it finally goes away."""
    svc.deliver("x" * 60_000 + " and the end")
    _, stalled = await asyncio.open_connection("127.0.0.1", svc.port)
    stalled.transport.pause_reading()
    stalled.write(env_block("jabber_receive", (ACCOUNT, BOB, "5")))
    async with asyncio.timeout(SAFETY):
        while not svc.server.sessions:
            await asyncio.sleep(0.01)
        calls = await asyncio.gather(
            *(agi_call(svc.port, "jabber_status", ACCOUNT, BOB) for _ in range(50))
        )
    assert [c.variables["JABBER_STATUS"] for c in calls] == ["3"] * 50
    stalled.transport.abort()
    await svc.drained()
