"""The FastAGI listener against the fake Asterisk that speaks res_agi.c's side of the wire."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from fake_asterisk import agi_call
from structlog.testing import capture_logs

from agi_xmpp.agi_channel import Channel
from agi_xmpp.agi_registry import ScriptRegistry
from agi_xmpp.agi_server import AgiServer
from agi_xmpp.errors import ChannelGone, LocalProtocolError, ProtocolError
from agi_xmpp.values import b64
from bench.loadgen import env_block

SERVICES = object()  # scripts here need no services
SAFETY = 5.0  # upper bound for "promptly": a hung test fails instead of hanging


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[AgiServer]]]:
    """Start AgiServers on 127.0.0.1, port 0; close them after the test."""
    servers: list[AgiServer] = []

    async def start(registry: ScriptRegistry, **kwargs: object) -> AgiServer:
        kwargs.setdefault("bind", ("127.0.0.1", 0))
        server = AgiServer(registry, SERVICES, **kwargs)  # type: ignore[arg-type]
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes (a reset counts as closed)."""
    try:
        async with asyncio.timeout(SAFETY):
            return await reader.read()
    except ConnectionResetError:
        return b""


def echo_registry() -> ScriptRegistry:
    registry = ScriptRegistry()

    @registry.script("echo", help="Copies args and options into variables.")
    async def echo(channel: Channel, services: object) -> None:
        assert services is SERVICES
        await channel.set_variable("ECHO_ARGS", "|".join(channel.args))
        await channel.set_variable("ECHO_OPTS", repr(sorted(channel.options.items())))
        await channel.set_variable("ECHO_UNIQUEID", channel.env["agi_uniqueid"])

    return registry


# --- the happy path -------------------------------------------------------------------------


async def test_script_gets_args_and_options(serve) -> None:
    """The script named (any case) runs with its args and percent-decoded options."""
    server = await serve(echo_registry())
    call = await agi_call(server.address[1], "ECHO?Greeting=hi%20there&n=1", "a", "b, c", 'q"uote',
                          uniqueid="1700000000.42")
    assert call.status == "SUCCESS"
    assert call.variables == {
        "ECHO_ARGS": 'a|b, c|q"uote',
        "ECHO_OPTS": "[('greeting', 'hi there'), ('n', '1')]",
        "ECHO_UNIQUEID": "1700000000.42",
    }
    assert [c[:3] for c in call.commands] == [["SET", "VARIABLE", "ECHO_ARGS"]] + [
        ["SET", "VARIABLE", n] for n in ("ECHO_OPTS", "ECHO_UNIQUEID")
    ]


async def test_get_variable_exact_is_lossless(serve) -> None:
    """get_variable_exact reads newlines, quotes, commas and backslashes back exactly."""
    registry = ScriptRegistry()
    value = 'line 1\nline 2, "quoted" \\ ${NOT_EXPANDED} é☎'

    @registry.script("read")
    async def read(channel: Channel, services: object) -> None:
        text = await channel.get_variable_exact("MSG")
        await channel.set_variable("OUT_B64", b64(text))
        await channel.set_variable("EMPTY_B64", b64(await channel.get_variable_exact("NOPE")))

    server = await serve(registry)
    call = await agi_call(server.address[1], "read", channel_vars={"MSG": value})
    assert call.commands[0] == ["GET", "FULL", "VARIABLE", "${BASE64_ENCODE(${MSG})}"]
    assert base64.b64decode(call.variables["OUT_B64"]).decode() == value
    assert call.variables["EMPTY_B64"] == ""


async def test_commands_are_serialised(serve) -> None:
    """Concurrent commands from one script go out one at a time, each after its reply."""
    registry = ScriptRegistry()
    in_flight = 0
    peak = 0

    async def answer(words: list[str]) -> bytes:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return b"200 result=1\n"

    @registry.script("many")
    async def many(channel: Channel, services: object) -> None:
        await asyncio.gather(*(channel.set_variable(f"V{i}", str(i)) for i in range(5)))

    server = await serve(registry)
    call = await agi_call(server.address[1], "many", answer=answer)
    assert len(call.commands) == 5 and peak == 1


# --- failures the dialplan must see ------------------------------------------------------


@pytest.mark.parametrize("script", ["no_such_script", "", "/echo/extra"])
async def test_unknown_script_makes_agistatus_failure(serve, script: str) -> None:
    """An unknown script gets the FAILURE line and no command: AGISTATUS=FAILURE."""
    server = await serve(echo_registry())
    with capture_logs() as logs:
        call = await agi_call(server.address[1], script)
    assert call.status == "FAILURE"
    assert call.commands == []
    finished = [e for e in logs if e["event"] == "agi_script_finished"]
    assert finished[0]["outcome"] == "unknown_script"


async def test_exception_in_script_does_not_hang_up(serve) -> None:
    """A crashing script is logged; the connection just closes (AGISTATUS=SUCCESS, no HANGUP)."""
    registry = ScriptRegistry()

    @registry.script("boom")
    async def boom(channel: Channel, services: object) -> None:
        await channel.set_variable("BEFORE", "1")
        raise RuntimeError("bug")

    server = await serve(registry)
    with capture_logs() as logs:
        call = await agi_call(server.address[1], "boom")
    assert call.status == "SUCCESS"
    assert [c[0] for c in call.commands] == ["SET"]
    assert any(e["event"] == "agi_script_failed" and e["log_level"] == "error" for e in logs)
    assert call.variables == {"BEFORE": "1"}


async def test_protocol_errors_reach_the_script_as_exceptions(serve) -> None:
    """510 raises ProtocolError, bad names/values LocalProtocolError; the call goes on."""
    registry = ScriptRegistry()
    seen: list[str] = []

    @registry.script("bad")
    async def bad(channel: Channel, services: object) -> None:
        for attempt in (
            lambda: channel.command("NO SUCH THING"),
            lambda: channel.set_variable("1BAD", "x"),
            lambda: channel.set_variable("OK", "a\nb"),
            lambda: channel.set_variable("OK", "x" * 9000),
        ):
            try:
                await attempt()
            except LocalProtocolError:
                seen.append("local")
            except ProtocolError:
                seen.append("remote")
        await channel.set_variable("DONE", "1")

    server = await serve(registry)
    call = await agi_call(server.address[1], "bad")
    assert seen == ["remote", "local", "local", "local"]
    assert call.variables == {"DONE": "1"}
    assert len(call.commands) == 2  # nothing refused locally reached the wire


async def test_dead_channel_511_does_not_raise(serve) -> None:
    """A 511 answer is a Response(code=511); set_variable returns False instead of raising."""
    registry = ScriptRegistry()
    results: list[object] = []

    @registry.script("dead")
    async def dead(channel: Channel, services: object) -> None:
        results.append(await channel.set_variable("A", "1"))
        results.append(await channel.command("ANSWER"))
        results.append(await channel.set_variable("B", "2"))

    async def answer(words: list[str]) -> bytes | None:
        if words[0] == "ANSWER" or words[2:3] == ["A"]:
            return b"511 Command Not Permitted on a dead channel or intercept routine\n"
        return None

    server = await serve(registry)
    call = await agi_call(server.address[1], "dead", answer=answer)
    assert call.variables == {"B": "2"}
    assert results[0] is False and results[2] is True  # set_variable says whether it was set
    assert results[1].code == 511 and results[1].result == "-1"  # type: ignore[attr-defined]


# --- hangups ---------------------------------------------------------------------------


async def test_hangup_while_script_waits(serve) -> None:
    """HANGUP with no command in flight sets channel.hangup at once; the connection then closes."""
    registry = ScriptRegistry()
    waiting = asyncio.Event()

    @registry.script("wait")
    async def wait(channel: Channel, services: object) -> None:
        waiting.set()
        await channel.hangup.wait()
        await channel.set_variable("WAIT_STATUS", "HANGUP")

    server = await serve(registry)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
    writer.write(env_block("wait"))
    async with asyncio.timeout(SAFETY):
        await waiting.wait()
    writer.write(b"HANGUP\n")
    async with asyncio.timeout(SAFETY):
        line = await reader.readline()
    assert line == b'SET VARIABLE "WAIT_STATUS" "HANGUP"\n'  # allowed on a dead channel
    writer.write(b"200 result=1\n")
    assert await read_to_eof(reader) == b""
    writer.close()


async def test_script_ignoring_hangup_is_ended_after_grace(serve) -> None:
    """A script that ignores the hangup is cancelled after hangup_grace and the socket closes."""
    registry = ScriptRegistry()
    started = asyncio.Event()
    cancelled = asyncio.Event()

    @registry.script("deaf")
    async def deaf(channel: Channel, services: object) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    server = await serve(registry, hangup_grace=0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
    writer.write(env_block("deaf"))
    async with asyncio.timeout(SAFETY):
        await started.wait()
    with capture_logs() as logs:
        writer.write(b"HANGUP\n")
        assert await read_to_eof(reader) == b""
    assert cancelled.is_set()
    assert [e["outcome"] for e in logs if e["event"] == "agi_script_finished"] == [
        "cancelled_after_hangup"
    ]
    writer.close()


async def test_hangup_before_reply_and_abandoned_command(serve) -> None:
    """HANGUP ahead of a reply is a notice; the abandoned command's reply still frees the wire."""
    registry = ScriptRegistry()
    outcome: list[str] = []

    @registry.script("play")
    async def play(channel: Channel, services: object) -> None:
        playback = asyncio.ensure_future(channel.command("EXEC", "Playback", "hold"))
        await channel.hangup.wait()
        playback.cancel()  # abandoned: its reply is still due
        outcome.append("hangup")
        await channel.set_variable("PLAY_STATUS", "HANGUP")

    async def answer(words: list[str]) -> bytes | None:
        if words[0] == "EXEC":
            return b"HANGUP\n"  # the reply itself follows below, later
        return None

    server = await serve(registry)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
    writer.write(env_block("play"))
    async with asyncio.timeout(SAFETY):
        assert (await reader.readline()).startswith(b"EXEC")
        writer.write(await answer(["EXEC"]))  # type: ignore[arg-type]
        while not outcome:
            await asyncio.sleep(0.001)
        writer.write(b"200 result=-1\n")  # Playback ends with the hangup
        assert await reader.readline() == b'SET VARIABLE "PLAY_STATUS" "HANGUP"\n'
        writer.write(b"200 result=1\n")
    assert await read_to_eof(reader) == b""
    writer.close()


async def test_eof_while_script_waits(serve) -> None:
    """EOF sets channel.hangup; later set_variable is a quiet no-op, get_variable raises."""
    registry = ScriptRegistry()
    started = asyncio.Event()
    seen: list[str] = []
    done = asyncio.Event()

    @registry.script("wait")
    async def wait(channel: Channel, services: object) -> None:
        started.set()
        await channel.hangup.wait()
        assert await channel.set_variable("X", "y") is False  # must not raise
        seen.append("set ok")
        try:
            await channel.get_variable_exact("X")
        except ChannelGone:
            seen.append("gone")
        done.set()

    server = await serve(registry)
    _, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
    writer.write(env_block("wait"))
    async with asyncio.timeout(SAFETY):
        await started.wait()
        writer.close()
        await done.wait()
    assert seen == ["set ok", "gone"]


# --- hostile or broken peers --------------------------------------------------------------


async def test_env_deadline_closes_the_connection(serve) -> None:
    """No complete env block within env_timeout: the server closes the connection."""
    server = await serve(echo_registry(), env_timeout=0.1)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
    with capture_logs() as logs:
        writer.write(b"agi_network: yes\nagi_network_script: echo\n")  # and then nothing
        assert await read_to_eof(reader) == b""
    assert any(e["event"] == "agi_env_timeout" for e in logs)
    writer.close()
    assert (await agi_call(server.address[1], "echo")).variables  # still serving


async def test_oversized_env_closes_the_connection(serve) -> None:
    """More than 64 KiB of env block closes the connection; the server keeps serving."""
    server = await serve(echo_registry())
    reader, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
    with capture_logs() as logs:
        try:
            writer.write(b"agi_padding: " + b"x" * 70000 + b"\n")
            await writer.drain()
        except ConnectionError:
            pass
        assert await read_to_eof(reader) == b""
    assert any(e["event"] == "agi_protocol_error" for e in logs)
    writer.close()
    assert (await agi_call(server.address[1], "echo")).variables


@pytest.mark.parametrize("cut", [0, 10, 200])
async def test_eof_mid_env_leaves_server_healthy(serve, cut: int) -> None:
    """A peer that closes inside the env block is forgotten; the next call works."""
    server = await serve(echo_registry())
    for _ in range(3):
        _, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
        writer.write(env_block("echo")[:cut])
        writer.close()
        await writer.wait_closed()
    call = await agi_call(server.address[1], "echo", "1")
    assert call.variables["ECHO_ARGS"] == "1"
    async with asyncio.timeout(SAFETY):
        while server.sessions:
            await asyncio.sleep(0.01)


async def test_non_allowlisted_peer_is_refused(serve) -> None:
    """A peer outside the allowlist gets FAILURE and is closed at once, logged; no script runs."""
    ran = []
    registry = ScriptRegistry()

    @registry.script("echo")
    async def echo(channel: Channel, services: object) -> None:
        ran.append(channel)

    server = await serve(registry, allow=["10.0.0.0/8", "2001:db8::/32"])
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
        try:
            writer.write(env_block("echo"))
        except ConnectionError:
            pass
        # FAILURE is best effort (a reset may beat it): AGISTATUS=FAILURE, not a silent SUCCESS
        assert await read_to_eof(reader) in (b"FAILURE\n", b"")
    writer.close()
    assert ran == []
    refused = [e for e in logs if e["event"] == "agi_peer_refused"]
    assert refused and refused[0]["log_level"] == "warning"
    assert refused[0]["peer"].startswith("127.0.0.1:")
    assert server.stats["peer_refused"] == 1


async def test_peer_that_stops_reading_does_not_block_others(serve) -> None:
    """A stalled peer (never reads, never answers) does not delay other calls."""
    registry = echo_registry()
    stalled_started = asyncio.Event()

    @registry.script("stall")
    async def stall(channel: Channel, services: object) -> None:
        stalled_started.set()
        await channel.set_variable("BIG", "x" * 8000)  # never answered

    server = await serve(registry)
    _, stalled = await asyncio.open_connection("127.0.0.1", server.address[1])
    stalled.write(env_block("stall"))
    async with asyncio.timeout(SAFETY):
        await stalled_started.wait()
        calls = await asyncio.gather(
            *(agi_call(server.address[1], "echo", str(i)) for i in range(20))
        )
    assert [c.variables["ECHO_ARGS"] for c in calls] == [str(i) for i in range(20)]
    stalled.close()


async def test_garbage_instead_of_reply_closes(serve) -> None:
    """A line that is no reply ends the session: the script sees ChannelGone, the socket closes."""
    registry = ScriptRegistry()
    seen: list[BaseException] = []

    @registry.script("g")
    async def g(channel: Channel, services: object) -> None:
        try:
            await channel.command("NOOP")
        except ChannelGone as exc:
            seen.append(exc)

    server = await serve(registry)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
    writer.write(env_block("g"))
    async with asyncio.timeout(SAFETY):
        assert await reader.readline() == b"NOOP\n"
    writer.write(b"this is not a reply\n")
    assert await read_to_eof(reader) == b""
    assert len(seen) == 1
    writer.close()


async def test_old_asterisk_line_limit_applies(serve) -> None:
    """With agi_version 22.5.2 a 3000-byte value is refused before the wire; 22.6.0 sends it."""
    registry = ScriptRegistry()
    results: list[str] = []

    @registry.script("long")
    async def long(channel: Channel, services: object) -> None:
        try:
            await channel.set_variable("L", "v" * 3000)
            results.append("sent")
        except LocalProtocolError:
            results.append("refused")

    server = await serve(registry)
    await agi_call(server.address[1], "long", agi_version="22.5.2")
    await agi_call(server.address[1], "long", agi_version="22.6.0")
    assert results == ["refused", "sent"]


# --- units ------------------------------------------------------------------------------


def test_registry_rules() -> None:
    """Names are case-insensitive and unique; async and plain functions register, nothing else."""
    registry = ScriptRegistry()

    @registry.script("Jabber_Send", help="Send a message.")
    async def send(channel: Channel, services: object) -> None: ...

    assert registry.get("JABBER_SEND") is not None and "jabber_send" in registry
    assert registry.get("jabber_send").help == "Send a message."  # type: ignore[union-attr]
    assert registry.get("other") is None
    with pytest.raises(ValueError):
        registry.script("jabber_send")(send)
    with pytest.raises(TypeError):
        registry.script("not_a_function")("jabber_send")

    def generator(channel: Channel, services: object):  # noqa: ANN202
        yield

    with pytest.raises(TypeError):
        registry.script("generator")(generator)
    registry.script("plain")(lambda channel, services: None)
    assert registry.get("plain").plain and not registry.get("jabber_send").plain  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        registry.script("a/b")
    assert [s.name for s in registry] == ["jabber_send", "plain"]


@pytest.mark.parametrize(
    ("peer", "ok"),
    [
        (("127.0.0.1", 5000), True),
        (("127.8.9.10", 5000), True),
        (("::1", 5000, 0, 0), True),
        (("::ffff:127.0.0.1", 5000, 0, 0), True),
        (("10.0.0.1", 5000), False),
        (("::ffff:10.0.0.1", 5000, 0, 0), False),
        (("fe80::1%lo", 5000, 0, 1), False),
        ("/run/agi.sock", False),
        (("not an address", 1), False),
    ],
)
def test_default_allowlist(peer: object, ok: bool) -> None:
    """By default only loopback (127.0.0.0/8, ::1, also IPv4-mapped) may connect."""
    server = AgiServer(ScriptRegistry(), SERVICES)
    assert server.allowed(peer) is ok
    assert server.allowed(peer) is ok  # cached answer is the same


async def test_close_ends_running_scripts(serve) -> None:
    """close() waits up to close_timeout, then cancels scripts and closes their sockets."""
    registry = ScriptRegistry()
    started = asyncio.Event()

    @registry.script("forever")
    async def forever(channel: Channel, services: object) -> None:
        started.set()
        await asyncio.Event().wait()

    server = await serve(registry, close_timeout=0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
    writer.write(env_block("forever"))
    async with asyncio.timeout(SAFETY):
        await started.wait()
        await server.close()
    assert await read_to_eof(reader) == b""
    assert not server.sessions
    writer.close()


async def test_env_deadline_only_hits_stalled_connections(serve) -> None:
    """With many connections in flight, only those without a complete env block are closed."""
    server = await serve(echo_registry(), env_timeout=0.2)
    stalled = []
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
        writer.write(b"agi_network: yes\n")
        stalled.append((reader, writer))
    calls = await asyncio.gather(
        *(agi_call(server.address[1], "echo", str(i)) for i in range(10))
    )
    assert all(c.variables["ECHO_ARGS"] == str(i) for i, c in enumerate(calls))
    for reader, writer in stalled:
        assert await read_to_eof(reader) == b""
        writer.close()
    assert server.stats["env_timeout"] == 3 and server.stats["success"] == 10


async def test_finished_calls_leave_no_env_deadlines_behind(serve) -> None:
    """Calls whose block arrived do not keep their env-deadline entries for env_timeout."""
    server = await serve(echo_registry(), env_timeout=60)
    for i in range(20):
        await agi_call(server.address[1], "echo", str(i))
    assert len(server._env_deadlines) <= 1  # only the latest call's, dropped by the next


def test_runs_on_uvloop() -> None:
    """The product runs on uvloop: a call, an unknown script and a hangup behave the same there."""
    uvloop = pytest.importorskip("uvloop")
    registry = echo_registry()

    @registry.script("wait")
    async def wait(channel: Channel, services: object) -> None:
        await channel.hangup.wait()
        await channel.set_variable("WAIT_STATUS", "HANGUP")

    async def scenario() -> None:
        server = AgiServer(registry, SERVICES, bind=("127.0.0.1", 0), env_timeout=0.2)
        await server.start()
        try:
            port = server.address[1]
            call = await agi_call(port, "echo", "x")
            assert call.variables["ECHO_ARGS"] == "x"
            assert (await agi_call(port, "nope")).status == "FAILURE"

            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(env_block("wait") + b"HANGUP\n")
            async with asyncio.timeout(SAFETY):
                assert await reader.readline() == b'SET VARIABLE "WAIT_STATUS" "HANGUP"\n'
            writer.write(b"200 result=1\n")
            assert await read_to_eof(reader) == b""
            writer.close()
            reader, stalled = await asyncio.open_connection("127.0.0.1", port)
            assert await read_to_eof(reader) == b""  # the env deadline works on uvloop too
            stalled.close()
        finally:
            await server.close()

    uvloop.run(scenario())


def listen_backlog(port: int) -> int:
    """The accept queue's length of the socket listening on ``port`` (ss prints it as Send-Q)."""
    import subprocess

    line = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                          check=True).stdout.split()
    return int(line[2])


async def test_the_listen_backlog_is_not_cut_back_to_asyncios_default(serve) -> None:
    """The FastAGI socket keeps its 1,024-connection accept queue once serving: create_server()
    given a socket calls listen() again, with 100 unless told (a burst of more AGI() calls then
    waits a 1 s SYN retransmit)."""
    from agi_xmpp.agi_server import LISTEN_BACKLOG

    server = await serve(echo_registry())
    assert listen_backlog(server.address[1]) == LISTEN_BACKLOG == 1024
