"""Channel.set_variables and AgiConnection.send_commands: one line per reply, decided by the
connection, every line checked before the first leaves."""

from __future__ import annotations

import asyncio

import pytest

from fake_asterisk import agi_call
from test_agi_server import SAFETY, read_to_eof, serve  # noqa: F401

from agi_xmpp.agi_channel import Channel
from agi_xmpp.agi_protocol import AgiConnection, Answered, CommandFailed, Response, State
from agi_xmpp.agi_registry import ScriptRegistry
from agi_xmpp.errors import LocalProtocolError, ProtocolError
from bench.loadgen import env_block

VARIABLES = {"A": "1", "B": "two words", "C": 'quote " and \\ backslash'}


def batch_registry(result: list[object], variables: dict[str, str] = VARIABLES) -> ScriptRegistry:
    registry = ScriptRegistry()

    @registry.script("batch")
    async def batch(channel: Channel, services: object) -> None:
        try:
            result.append(await channel.set_variables(variables))
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            result.append(exc)

    return registry


async def test_every_variable_is_set_in_order(serve) -> None:
    """All pairs arrive, in order, each as its own SET VARIABLE, and the answer is True."""
    result: list[object] = []
    server = await serve(batch_registry(result))
    call = await agi_call(server.address[1], "batch")
    assert [c[2] for c in call.commands] == ["A", "B", "C"]
    assert call.variables == VARIABLES and result == [True]


async def test_refused_variable_does_not_stop_the_rest(serve) -> None:
    """A 511 for one variable: the others are still set, and the answer is False."""
    result: list[object] = []
    server = await serve(batch_registry(result))

    def answer(words: list[str]) -> bytes | None:
        return b"511 Command Not Permitted on a dead channel\n" if words[2] == "B" else None

    call = await agi_call(server.address[1], "batch", answer=answer)
    assert [c[2] for c in call.commands] == ["A", "B", "C"]
    assert result == [False]


async def test_unknown_command_stops_and_raises(serve) -> None:
    """A 510 (our bug) stops the lines there and raises ProtocolError in the script."""
    result: list[object] = []
    server = await serve(batch_registry(result))

    def answer(words: list[str]) -> bytes | None:
        return b"510 Invalid or unknown command\n" if words[2] == "B" else None

    call = await agi_call(server.address[1], "batch", answer=answer)
    assert [c[2] for c in call.commands] == ["A", "B"]
    assert len(result) == 1 and isinstance(result[0], ProtocolError)


async def test_hangup_between_replies_does_not_stop_them(serve) -> None:
    """HANGUP ahead of a reply is a notice: every variable is still set (allowed when dead)."""
    result: list[object] = []
    server = await serve(batch_registry(result))

    def answer(words: list[str]) -> bytes | None:
        return b"HANGUP\n200 result=1\n" if words[2] == "A" else None

    call = await agi_call(server.address[1], "batch", answer=answer)
    assert [c[2] for c in call.commands] == ["A", "B", "C"]
    assert result == [True]


async def test_connection_closed_midway_answers_false(serve) -> None:
    """When Asterisk goes away between two lines, set_variables returns False, not raises."""
    result: list[object] = []
    server = await serve(batch_registry(result))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
    writer.write(env_block("batch"))
    async with asyncio.timeout(SAFETY):
        assert await reader.readline() == b'SET VARIABLE "A" "1"\n'
        writer.write(b"200 result=1\n")
        assert await reader.readline() == b'SET VARIABLE "B" "two words"\n'
        writer.close()
        while not result:
            await asyncio.sleep(0.01)
    assert result == [False]


async def test_unsendable_value_refuses_before_anything_is_sent(serve) -> None:
    """A value that cannot travel raises LocalProtocolError before the first line leaves."""
    result: list[object] = []
    server = await serve(batch_registry(result, {"A": "1", "B": "two\nlines"}))
    call = await agi_call(server.address[1], "batch")
    assert call.commands == []
    assert len(result) == 1 and isinstance(result[0], LocalProtocolError)


def ready() -> AgiConnection:
    conn = AgiConnection()
    conn.receive_data(env_block("batch"))
    return conn


def test_the_connection_sends_the_next_line_once_the_reply_came() -> None:
    """send_commands() writes one line; each 200 or 511 reply lets the next one out; the last
    reply answers the send with every reply."""
    conn = ready()
    conn.send_commands([("SET VARIABLE", ("A", "1")), ("SET VARIABLE", ("B", "2")), ("NOOP", ())])
    assert conn.data_to_send() == b'SET VARIABLE "A" "1"\n'
    assert conn.data_to_send() == b""
    with pytest.raises(LocalProtocolError):  # one send at a time
        conn.send_command("NOOP")
    refused = Response(code=511, result="-1", raw="511 Command Not Permitted on a dead channel")
    assert conn.receive_data(b"511 Command Not Permitted on a dead channel\n") == []
    assert conn.data_to_send() == b'SET VARIABLE "B" "2"\n'
    assert conn.receive_data(b"200 result=1\n") == [] and conn.state is State.WAITING
    assert conn.data_to_send() == b"NOOP\n"
    assert conn.receive_data(b"200 result=0\n") == [Answered([
        refused, Response(result="1", raw="200 result=1"), Response(result="0", raw="200 result=0")
    ])]
    assert conn.state is State.IDLE and conn.data_to_send() == b""


def test_a_510_drops_the_rest_of_the_send() -> None:
    """After a 510 (our bug) the lines not yet sent are dropped and the wire is free."""
    conn = ready()
    conn.send_commands([("NO SUCH", ("x",)), ("SET VARIABLE", ("B", "2"))])
    conn.data_to_send()
    assert conn.receive_data(b"510 Invalid or unknown command\n") == [
        Answered([CommandFailed(510, "Invalid or unknown command")])
    ]
    assert conn.state is State.IDLE and conn.data_to_send() == b""


def test_every_line_is_checked_before_the_first_leaves() -> None:
    """One unsendable command refuses the whole send; nothing is written, nothing in flight."""
    conn = ready()
    with pytest.raises(LocalProtocolError):
        conn.send_commands([("SET VARIABLE", ("A", "1")), ("SET VARIABLE", ("B", "two\nlines"))])
    assert conn.data_to_send() == b"" and conn.state is State.IDLE
