"""How scripts run: a plain function straight from the transport callback, an ``async def`` as
an ordinary asyncio task (so ``asyncio.timeout()`` and friends work from its first line)."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from fake_asterisk import agi_call
from structlog.testing import capture_logs
from test_agi_server import SAFETY, read_to_eof, serve  # noqa: F401

from agi_xmpp.agi_channel import Channel
from agi_xmpp.agi_registry import ScriptRegistry
from agi_xmpp.agi_server import AgiServer, AgiSession
from bench.loadgen import env_block

CALL_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("CALL_VAR", default="unset")


async def first_command(
    server: AgiServer, script: str, raw: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Asterisk's side of one call, up to the first command line the script sends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
    writer.write(env_block(script, raw=raw))
    async with asyncio.timeout(SAFETY):
        return reader, writer, await reader.readline()


def running_in_task() -> str:
    return "task" if asyncio.current_task() is not None else "callback"


async def test_async_script_can_start_with_asyncio_timeout(serve) -> None:
    """A script whose first line is ``async with asyncio.timeout(...)`` runs (it has a task)."""
    registry = ScriptRegistry()

    @registry.script("timed")
    async def timed(channel: Channel, services: object) -> None:
        async with asyncio.timeout(SAFETY):
            await channel.set_variable("FIRST", running_in_task())
        try:
            async with asyncio.timeout(0.01):
                await asyncio.Event().wait()
        except TimeoutError:
            await channel.set_variable("TIMED_OUT", "yes")

    server = await serve(registry)
    call = await agi_call(server.address[1], "timed")
    assert call.variables == {"FIRST": "task", "TIMED_OUT": "yes"}
    assert server.stats["success"] == 1


async def test_plain_script_runs_in_the_callback_and_its_variables_are_set(serve) -> None:
    """A plain function is called without a task; what it returns is set in order, then closed."""
    registry = ScriptRegistry()
    seen: list[str] = []

    @registry.script("plain")
    def plain(channel: Channel, services: object) -> dict[str, str]:
        seen.append(running_in_task())
        return {"A": channel.args[0], "B": "two words", "C": 'q"uote'}

    server = await serve(registry)
    call = await agi_call(server.address[1], "plain", "first")
    assert seen == ["callback"]
    assert [c[2] for c in call.commands] == ["A", "B", "C"]
    assert call.variables == {"A": "first", "B": "two words", "C": 'q"uote'}
    assert call.closed_by_server and server.stats["success"] == 1


async def test_plain_script_that_returns_nothing_just_closes(serve) -> None:
    """No variables: no command, the connection closes, AGISTATUS stays SUCCESS."""
    registry = ScriptRegistry()
    registry.script("nothing")(lambda channel, services: None)
    server = await serve(registry)
    call = await agi_call(server.address[1], "nothing")
    assert call.commands == [] and call.status == "SUCCESS" and call.closed_by_server


async def test_plain_script_that_raises_is_logged_and_closed(serve) -> None:
    """A crashing plain script: logged as an error, connection closed, no command, no FAILURE."""
    registry = ScriptRegistry()

    @registry.script("boom")
    def boom(channel: Channel, services: object) -> dict[str, str]:
        raise RuntimeError("bug")

    server = await serve(registry)
    with capture_logs() as logs:
        call = await agi_call(server.address[1], "boom")
    assert call.commands == [] and call.status == "SUCCESS"
    assert any(e["event"] == "agi_script_failed" and e["log_level"] == "error" for e in logs)
    assert server.stats["error"] == 1


async def test_plain_script_with_a_bad_variable_name_sends_nothing(serve) -> None:
    """An invalid name among the returned variables is our bug: nothing is sent, it is logged."""
    registry = ScriptRegistry()
    registry.script("bad")(lambda channel, services: {"OK": "1", "1BAD": "x"})
    server = await serve(registry)
    call = await agi_call(server.address[1], "bad")
    assert call.commands == [] and server.stats["error"] == 1


async def test_context_is_private_to_each_call(serve) -> None:
    """A context variable set by one call's script is not seen by the next call."""
    registry = ScriptRegistry()

    @registry.script("ctx")
    async def ctx(channel: Channel, services: object) -> None:
        await channel.set_variable("SAW", CALL_VAR.get())
        CALL_VAR.set(channel.args[0])

    server = await serve(registry)
    first = await agi_call(server.address[1], "ctx", "one")
    second = await agi_call(server.address[1], "ctx", "two")
    assert first.variables["SAW"] == second.variables["SAW"] == "unset"
    assert CALL_VAR.get() == "unset"


async def test_command_from_a_second_task_waits_for_the_wire(serve) -> None:
    """A command from a task the script started goes out once the script's own was answered."""
    registry = ScriptRegistry()

    @registry.script("two")
    async def two(channel: Channel, services: object) -> None:
        other = asyncio.ensure_future(channel.set_variable("FROM_TASK", "1"))
        await channel.set_variable("FROM_SCRIPT", "1")
        await other

    server = await serve(registry)
    async with asyncio.timeout(SAFETY):
        call = await agi_call(server.address[1], "two")
    assert call.variables == {"FROM_SCRIPT": "1", "FROM_TASK": "1"}


async def test_hangup_in_the_env_bytes_is_seen_when_the_script_starts(serve) -> None:
    """A HANGUP that arrives with the environment block is set before the script's first await."""
    registry = ScriptRegistry()

    @registry.script("early")
    async def early(channel: Channel, services: object) -> None:
        await channel.set_variable("HUNG_UP", str(channel.hung_up))

    server = await serve(registry)
    reader, writer, line = await first_command(server, "early", raw=b"HANGUP\n")
    assert line == b'SET VARIABLE "HUNG_UP" "True"\n'
    writer.write(b"200 result=1\n")
    assert await read_to_eof(reader) == b""
    writer.close()


async def test_script_waiting_for_a_reply_is_cancelled_after_grace(serve) -> None:
    """An async script whose reply never comes ends hangup_grace after HANGUP."""
    registry = ScriptRegistry()
    ended = asyncio.Event()

    @registry.script("stuck")
    async def stuck(channel: Channel, services: object) -> None:
        try:
            await channel.set_variable("NEVER", "answered")
        finally:
            ended.set()

    server = await serve(registry, hangup_grace=0.05)
    reader, writer, line = await first_command(server, "stuck")
    assert line == b'SET VARIABLE "NEVER" "answered"\n'
    with capture_logs() as logs:
        writer.write(b"HANGUP\n")
        assert await read_to_eof(reader) == b""
    assert ended.is_set()
    assert [e["outcome"] for e in logs if e["event"] == "agi_script_finished"] == [
        "cancelled_after_hangup"
    ]
    assert not server.sessions
    writer.close()


async def test_plain_script_whose_replies_never_come_ends_after_grace(serve) -> None:
    """A plain script's variables unanswered after HANGUP: closed hangup_grace later, counted."""
    registry = ScriptRegistry()
    registry.script("plain")(lambda channel, services: {"NEVER": "answered"})
    server = await serve(registry, hangup_grace=0.05)
    reader, writer, line = await first_command(server, "plain")
    assert line == b'SET VARIABLE "NEVER" "answered"\n'
    writer.write(b"HANGUP\n")
    assert await read_to_eof(reader) == b""
    assert server.stats["cancelled_after_hangup"] == 1
    writer.close()
    async with asyncio.timeout(SAFETY):
        while server.sessions:
            await asyncio.sleep(0.01)


async def test_connection_lost_while_waiting_ends_the_script(serve) -> None:
    """When the peer goes while the script waits for a reply, set_variable answers False."""
    registry = ScriptRegistry()
    result: list[bool] = []
    ended = asyncio.Event()

    @registry.script("lost")
    async def lost(channel: Channel, services: object) -> None:
        result.append(await channel.set_variable("LOST", "x"))
        ended.set()

    server = await serve(registry)
    _, writer, _ = await first_command(server, "lost")
    writer.close()
    async with asyncio.timeout(SAFETY):
        await ended.wait()
        while server.sessions:
            await asyncio.sleep(0.01)
    assert result == [False]
    assert server.stats["success"] == 1


async def test_close_cancels_a_script_waiting_for_a_reply(serve) -> None:
    """server.close() waits close_timeout for a script waiting on a reply, then cancels it."""
    registry = ScriptRegistry()
    ended = asyncio.Event()

    @registry.script("waiting")
    async def waiting(channel: Channel, services: object) -> None:
        try:
            await channel.set_variable("NEVER", "answered")
        finally:
            ended.set()

    server = await serve(registry, close_timeout=0.05)
    reader, writer, _ = await first_command(server, "waiting")
    async with asyncio.timeout(SAFETY):
        await server.close()
    assert ended.is_set()
    assert server.stats["cancelled"] == 1
    assert await read_to_eof(reader) == b""
    writer.close()


class _SyncLoseTransport(asyncio.Transport):
    """Calls connection_lost from inside close(), as no asyncio transport does (but one could)."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: Any = None
        self.written: list[bytes] = []
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.protocol.connection_lost(None)


async def test_connection_lost_from_inside_close_counts_the_call_once() -> None:
    """connection_lost called during the session's own close() neither re-enters nor loses it."""
    registry = ScriptRegistry()
    registry.script("quick")(lambda channel, services: {"A": "1"})
    server = AgiServer(registry, object(), bind=("127.0.0.1", 0))
    await server.start()
    try:
        transport = _SyncLoseTransport()
        session = AgiSession(server)
        transport.protocol = session
        session.connection_made(transport)
        session.data_received(env_block("quick"))
        session.data_received(b"200 result=1\n")  # the last reply finishes and closes the call
        assert transport.written == [b'SET VARIABLE "A" "1"\n']
        assert dict(server.stats) == {"success": 1}
        assert not session.running and not server.sessions
    finally:
        await server.close()
