"""Channel.set_variables: the lines go out one per reply, driven by the session, as before."""

from __future__ import annotations

import asyncio

import pytest

from agi_xmpp.agi_protocol import AgiConnection
from agi_xmpp.agi_server import Channel, ScriptRegistry
from agi_xmpp.errors import LocalProtocolError, ProtocolError
from test_agi_server import SAFETY, env_block, fake_asterisk, read_to_eof, serve  # noqa: F401

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
    call = await fake_asterisk(server.address[1], "batch")
    assert [c[2] for c in call.commands] == ["A", "B", "C"]
    assert call.variables == VARIABLES and result == [True]


async def test_refused_variable_does_not_stop_the_rest(serve) -> None:
    """A 511 for one variable: the others are still set, and the answer is False."""
    result: list[object] = []
    server = await serve(batch_registry(result))

    def answer(words: list[str]) -> bytes | None:
        return b"511 Command Not Permitted on a dead channel\n" if words[2] == "B" else None

    call = await fake_asterisk(server.address[1], "batch", answer=answer)
    assert [c[2] for c in call.commands] == ["A", "B", "C"]
    assert result == [False]


async def test_unknown_command_stops_and_raises(serve) -> None:
    """A 510 (our bug) stops the lines there and raises ProtocolError in the script."""
    result: list[object] = []
    server = await serve(batch_registry(result))

    def answer(words: list[str]) -> bytes | None:
        return b"510 Invalid or unknown command\n" if words[2] == "B" else None

    call = await fake_asterisk(server.address[1], "batch", answer=answer)
    assert [c[2] for c in call.commands] == ["A", "B"]
    assert len(result) == 1 and isinstance(result[0], ProtocolError)


async def test_hangup_between_replies_does_not_stop_them(serve) -> None:
    """HANGUP ahead of a reply is a notice: every variable is still set (allowed when dead)."""
    result: list[object] = []
    server = await serve(batch_registry(result))

    def answer(words: list[str]) -> bytes | None:
        return b"HANGUP\n200 result=1\n" if words[2] == "A" else None

    call = await fake_asterisk(server.address[1], "batch", answer=answer)
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
    call = await fake_asterisk(server.address[1], "batch")
    assert call.commands == []
    assert len(result) == 1 and isinstance(result[0], LocalProtocolError)


def test_encoded_lines_still_go_one_at_a_time() -> None:
    """send_encoded() refuses a second line while the first is unanswered, as send_command does."""
    conn = AgiConnection()
    conn.receive_data(env_block("batch"))
    conn.next_event()
    first = conn.encode_command("SET VARIABLE", "A", "1")
    assert conn.encode_command("SET VARIABLE", "A", "1") == first  # encoding changes nothing
    assert conn.send_encoded(first) == b'SET VARIABLE "A" "1"\n'
    with pytest.raises(LocalProtocolError):
        conn.send_encoded(conn.encode_command("SET VARIABLE", "B", "2"))
    with pytest.raises(LocalProtocolError):
        conn.send_command("SET VARIABLE", "B", "2")


def test_encode_set_variables_keeps_the_line_limit() -> None:
    """Around Asterisk's line limit, encode_set_variables() accepts and refuses what
    encode_command() does."""
    conn = AgiConnection()
    conn.receive_data(b"agi_version: 18.0.0\n\n")  # the 2 KB line of older Asterisks
    conn.next_event()
    for size in range(2010, 2040):
        value = "a" * size
        try:
            expected = [conn.encode_command("SET VARIABLE", "V", value)]
        except LocalProtocolError:
            with pytest.raises(LocalProtocolError):
                conn.encode_set_variables({"V": value})
        else:
            assert conn.encode_set_variables({"V": value}) == expected
