"""Scripts run inline (no task) while they only await AGI replies, and in a task after that."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest
from structlog.testing import capture_logs

from agi_xmpp.agi_server import AgiServer, Channel, ScriptRegistry, _Adopted, _Session
from test_agi_server import SAFETY, env_block, fake_asterisk, read_to_eof, serve  # noqa: F401

CALL_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("CALL_VAR", default="unset")


def running_in_task() -> str:
    return "task" if asyncio.current_task() is not None else "inline"


async def test_reply_only_script_runs_without_a_task(serve) -> None:
    """A script that awaits only AGI replies is stepped inline from start to finish."""
    registry = ScriptRegistry()

    @registry.script("replies")
    async def replies(channel: Channel, services: object) -> None:
        seen = [running_in_task()]
        for n in range(3):
            await channel.set_variable(f"V{n}", "x")
            seen.append(running_in_task())
        await channel.set_variable("SEEN", ",".join(seen))

    server = await serve(registry)
    call = await fake_asterisk(server.address[1], "replies")
    assert call.variables["SEEN"] == "inline,inline,inline,inline"
    assert server.stats["success"] == 1


async def test_other_await_hands_the_script_to_a_task(serve) -> None:
    """After its first non-AGI await a script goes on in a task, in the same context."""
    registry = ScriptRegistry()

    @registry.script("mixed")
    async def mixed(channel: Channel, services: object) -> None:
        CALL_VAR.set(channel.args[0])
        await channel.set_variable("BEFORE", running_in_task())
        await asyncio.sleep(0)
        await channel.set_variable("AFTER", running_in_task())
        await channel.set_variable("CALL_VAR", CALL_VAR.get())

    server = await serve(registry)
    call = await fake_asterisk(server.address[1], "mixed", ("first",))
    assert (call.variables["BEFORE"], call.variables["AFTER"]) == ("inline", "task")
    assert call.variables["CALL_VAR"] == "first"
    assert CALL_VAR.get() == "unset"  # the inline steps did not set it in the server's context


async def test_command_from_a_task_waits_while_the_script_waits_inline(serve) -> None:
    """A command from a task the script started is sent once the inline script's reply came."""
    registry = ScriptRegistry()

    @registry.script("two")
    async def two(channel: Channel, services: object) -> None:
        other = asyncio.ensure_future(channel.set_variable("FROM_TASK", "1"))
        await channel.set_variable("FROM_SCRIPT", "1")
        await other

    server = await serve(registry)
    async with asyncio.timeout(SAFETY):
        call = await fake_asterisk(server.address[1], "two")
    assert call.variables == {"FROM_SCRIPT": "1", "FROM_TASK": "1"}


async def test_context_is_private_to_each_call(serve) -> None:
    """A context variable set inline by one call is not seen by the next call."""
    registry = ScriptRegistry()

    @registry.script("ctx")
    async def ctx(channel: Channel, services: object) -> None:
        await channel.set_variable("SAW", CALL_VAR.get())
        CALL_VAR.set(channel.args[0])

    server = await serve(registry)
    first = await fake_asterisk(server.address[1], "ctx", ("one",))
    second = await fake_asterisk(server.address[1], "ctx", ("two",))
    assert first.variables["SAW"] == second.variables["SAW"] == "unset"


async def test_hangup_in_the_env_bytes_is_seen_before_the_first_step(serve) -> None:
    """A HANGUP that arrives with the environment block is set when the script starts."""
    registry = ScriptRegistry()

    @registry.script("early")
    async def early(channel: Channel, services: object) -> None:
        await channel.set_variable("HUNG_UP", str(channel.hung_up))

    server = await serve(registry)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
    writer.write(env_block("early") + b"HANGUP\n")
    async with asyncio.timeout(SAFETY):
        assert await reader.readline() == b'SET VARIABLE "HUNG_UP" "True"\n'
    writer.write(b"200 result=1\n")
    assert await read_to_eof(reader) == b""
    writer.close()


async def test_inline_script_without_reply_is_cancelled_after_grace(serve) -> None:
    """A script waiting inline for a reply that never comes ends hangup_grace after HANGUP."""
    registry = ScriptRegistry()
    ended = asyncio.Event()

    @registry.script("stuck")
    async def stuck(channel: Channel, services: object) -> None:
        try:
            await channel.set_variable("NEVER", "answered")
        finally:
            ended.set()

    server = await serve(registry, hangup_grace=0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
    writer.write(env_block("stuck"))
    async with asyncio.timeout(SAFETY):
        assert await reader.readline() == b'SET VARIABLE "NEVER" "answered"\n'
    with capture_logs() as logs:
        writer.write(b"HANGUP\n")
        assert await read_to_eof(reader) == b""
    assert ended.is_set()
    assert [e["outcome"] for e in logs if e["event"] == "agi_script_finished"] == [
        "cancelled_after_hangup"
    ]
    assert not server.sessions
    writer.close()


async def test_connection_lost_while_inline_ends_the_script(serve) -> None:
    """When the peer goes while the script waits inline, its command reports the channel gone."""
    registry = ScriptRegistry()
    result: list[bool] = []
    ended = asyncio.Event()

    @registry.script("lost")
    async def lost(channel: Channel, services: object) -> None:
        result.append(await channel.set_variable("LOST", "x"))
        ended.set()

    server = await serve(registry)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
    writer.write(env_block("lost"))
    async with asyncio.timeout(SAFETY):
        await reader.readline()
    writer.close()
    async with asyncio.timeout(SAFETY):
        await ended.wait()
        while server.sessions:
            await asyncio.sleep(0.01)
    assert result == [False]
    assert server.stats["success"] == 1


async def test_close_cancels_an_inline_script(serve) -> None:
    """server.close() gives a script waiting inline a task, so it is awaited, then cancelled."""
    registry = ScriptRegistry()
    ended = asyncio.Event()

    @registry.script("waiting")
    async def waiting(channel: Channel, services: object) -> None:
        try:
            await channel.set_variable("NEVER", "answered")
        finally:
            ended.set()

    server = await serve(registry, close_timeout=0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
    writer.write(env_block("waiting"))
    async with asyncio.timeout(SAFETY):
        await reader.readline()
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


async def test_transport_callbacks_from_inside_a_step_do_not_reenter() -> None:
    """connection_lost called during the script's own step neither re-enters nor loses the end."""
    registry = ScriptRegistry()

    @registry.script("quick")
    async def quick(channel: Channel, services: object) -> None:
        await channel.set_variable("A", "1")

    server = AgiServer(registry, object(), bind=("127.0.0.1", 0))
    await server.start()
    try:
        transport = _SyncLoseTransport()
        session = _Session(server)
        transport.protocol = session
        session.connection_made(transport)
        session.data_received(env_block("quick"))
        session.data_received(b"200 result=1\n")  # the script finishes and closes in this step
        assert transport.written == [b'SET VARIABLE "A" "1"\n']
        assert server.stats["success"] == 1
        assert not session.running() and not server.sessions
    finally:
        await server.close()


async def test_adopted_script_cancelled_before_its_first_step() -> None:
    """A task cancelled before it ever ran still delivers the cancellation to the script."""
    cleaned = []
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def script() -> None:
        try:
            await gate
        finally:
            cleaned.append(True)

    coro = script()
    awaited = coro.send(None)  # what an inline step does
    assert awaited is gate
    task = asyncio.get_running_loop().create_task(_Adopted(coro, awaited))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True]


async def test_adopted_script_resumes_with_the_awaited_result() -> None:
    """The task's first step waits for what the script awaited, then resumes it with its result."""
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[str] = loop.create_future()

    async def script() -> str:
        return await gate + "!"

    coro = script()
    task = loop.create_task(_Adopted(coro, coro.send(None)))
    await asyncio.sleep(0)
    assert not task.done()
    gate.set_result("done")
    async with asyncio.timeout(SAFETY):
        assert await task == "done!"
