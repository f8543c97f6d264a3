"""The Asterisk lab works end to end, and what real Asterisk 22 does on the FastAGI wire.

Each test runs a tiny FastAGI server written here (asyncio, 127.0.0.1, free port) and reads what
the dialplan saw through AMI ``UserEvent``s. The facts pinned here are the ones the product's
FastAGI side is built on; if an Asterisk upgrade changes one, this file says which.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable

import pytest

from lab import AsteriskLab, free_port

pytestmark = pytest.mark.e2e

IO_TIMEOUT = 15.0  # generous: shared CI machines stall

# Exact environment block of Asterisk 22 for a Local channel, in order (after "agi_network").
ENV_KEYS_22 = [
    "agi_network", "agi_network_script", "agi_request", "agi_channel", "agi_language",
    "agi_type", "agi_uniqueid", "agi_version", "agi_callerid", "agi_calleridname",
    "agi_callingpres", "agi_callingani2", "agi_callington", "agi_callingtns", "agi_dnid",
    "agi_rdnis", "agi_context", "agi_extension", "agi_priority", "agi_enhanced",
    "agi_accountcode", "agi_threadid",
]


class AgiConn:
    """Asterisk's side of one FastAGI connection, as the test's server sees it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.env_lines: list[bytes] = []
        self.env: dict[str, str] = {}

    async def read_env(self) -> None:
        while True:
            line = await asyncio.wait_for(self.reader.readline(), IO_TIMEOUT)
            if line in (b"\n", b""):
                self.env_end = line
                return
            self.env_lines.append(line)
            key, _, value = line.decode().rstrip("\n").partition(": ")
            self.env[key] = value

    async def readline(self, timeout: float = IO_TIMEOUT) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), timeout)

    async def command(self, line: str, timeout: float = IO_TIMEOUT) -> bytes:
        self.writer.write(line.encode() + b"\n")
        await self.writer.drain()
        return await self.readline(timeout)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


Handler = Callable[[AgiConn], Awaitable[None]]


class FastAgiServer:
    """A FastAGI server on 127.0.0.1 (free port). ``handler(conn)`` runs per connection after
    the environment block is read, or right at accept when ``read_env=False``. Connections are
    also queued for the test (``await server.next_connection()``)."""

    def __init__(self, handler: Handler, read_env: bool = True) -> None:
        self.handler = handler
        self.read_env = read_env
        self.connections: asyncio.Queue[AgiConn] = asyncio.Queue()
        self.errors: list[BaseException] = []
        self.port = 0
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> FastAgiServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = AgiConn(reader, writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.read_env:
                await conn.read_env()
            self.connections.put_nowait(conn)
            await self.handler(conn)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # surfaced by the test through server.errors
            self.errors.append(exc)
        finally:
            self._tasks.discard(task)
            writer.close()

    async def next_connection(self, timeout: float = IO_TIMEOUT) -> AgiConn:
        return await asyncio.wait_for(self.connections.get(), timeout)


# One dialplan for every test: SCRIPT and TOKEN come from the originate's channel variables.
DIALPLAN = r"""
[lab-smoke]
exten => hello,1,AGI(agi://127.0.0.1:@PORT@/hello?x=1,a,b c)
 same => n,UserEvent(Result,VAL: ${VAR},AGISTATUS: ${AGISTATUS})
 same => n,Hangup()

exten => run,1,Set(VAR=unset)
 same => n,AGI(agi://127.0.0.1:@PORT@/${SCRIPT})
 same => n,UserEvent(AgiDone,TOKEN: ${TOKEN},AGISTATUS: ${AGISTATUS},VAL: ${VAR})
 same => n,Hangup()

exten => exit,1,Set(AGIEXITONHANGUP=yes)
 same => n,AGI(agi://127.0.0.1:@PORT@/exit)

exten => nopath,1,AGI(agi://127.0.0.1:@PORT@)
 same => n,UserEvent(AgiDone,TOKEN: ${TOKEN},AGISTATUS: ${AGISTATUS},VAL: ${VAR})

exten => h,1,UserEvent(AgiHangup,TOKEN: ${TOKEN},AGISTATUS: ${AGISTATUS},VAL: ${VAR})
"""


async def run_script(lab: AsteriskLab, script: str, token: str, timeout: float = 30.0):
    return lab.originate("run", "lab-smoke", timeout=timeout,
                         variables={"SCRIPT": script, "TOKEN": token})


def test_lab_runs_asterisk_22_with_res_agi_and_ami(lab: AsteriskLab) -> None:
    """The lab runs Asterisk 22 with res_agi and AMI, and answers CLI commands."""
    assert lab.version.startswith("Asterisk 22."), lab.version
    assert "Running" in lab.rx("module show like res_agi.so")
    assert "Running" in lab.rx("module show like res_musiconhold.so")
    assert "Running" in lab.rx("module show like app_voicemail.so")
    assert lab.ami_action_sync("Ping")["Response"] == "Success"


async def test_fastagi_set_variable_round_trip(lab: AsteriskLab, dialplan) -> None:
    """A FastAGI SET VARIABLE is seen by the dialplan and AGISTATUS is SUCCESS."""
    replies: list[bytes] = []

    async def handler(conn: AgiConn) -> None:
        replies.append(await conn.command('SET VARIABLE "VAR" "hello world"'))
        await conn.close()

    async with FastAgiServer(handler) as server:
        dialplan(DIALPLAN, PORT=server.port)
        call = lab.originate("hello", "lab-smoke", timeout=30)
        conn = await server.next_connection()
        event = await lab.wait_user_event("Result", IO_TIMEOUT, Uniqueid=call.uniqueid)

    assert event["VAL"] == "hello world"
    assert event["AGISTATUS"] == "SUCCESS"
    assert replies == [b"200 result=1\n"]
    assert not server.errors

    env = conn.env
    assert conn.env_end == b"\n"  # the block ends with an empty line
    assert list(env) == ENV_KEYS_22 + ["agi_arg_1", "agi_arg_2"]
    assert env["agi_network"] == "yes"
    assert env["agi_network_script"] == "hello?x=1"  # the query string is passed through as is
    assert env["agi_request"] == f"agi://127.0.0.1:{server.port}/hello?x=1"
    assert env["agi_arg_1"] == "a"
    assert env["agi_arg_2"] == "b c"
    assert env["agi_channel"].startswith("Local/hello@lab-smoke-")
    assert env["agi_channel"].endswith(";2")
    assert env["agi_uniqueid"] == call.uniqueid
    assert env["agi_type"] == "Local"
    assert env["agi_context"] == "lab-smoke" and env["agi_extension"] == "hello"
    assert env["agi_priority"] == "1"
    assert env["agi_enhanced"] == "0.0"
    assert env["agi_callerid"] == "unknown" and env["agi_calleridname"] == "unknown"
    # Debian's package reports its full package version, not just "22.x.y".
    assert re.fullmatch(r"22\.\d+\.\d+\S*", env["agi_version"]), env["agi_version"]
    assert env["agi_version"] == lab.version.split()[1]


async def test_hangup_while_idle_sends_hangup_line_and_keeps_socket_open(
    lab: AsteriskLab, dialplan
) -> None:
    """A hangup while the server idles sends "HANGUP\\n"; Asterisk then waits for the server to close."""
    async def handler(conn: AgiConn) -> None:
        await asyncio.sleep(3600)  # idle: the test drives the connection itself

    async with FastAgiServer(handler) as server:
        dialplan(DIALPLAN, PORT=server.port)
        call = await run_script(lab, "idle", "t-idle")
        conn = await server.next_connection()
        assert lab.hangup(call.uniqueid)
        assert await conn.readline() == b"HANGUP\n"

        # Asterisk keeps the socket open (and the channel alive, in "dead AGI" mode) ...
        with pytest.raises(TimeoutError):
            await conn.readline(timeout=2.0)
        assert any(c["uniqueid"] == call.uniqueid for c in lab.channels())
        # ... answers dead-safe commands and refuses the others with 511 ...
        assert (await conn.command('GET VARIABLE "TOKEN"')) == b"200 result=1 (t-idle)\n"
        assert (await conn.command("ANSWER")) == (
            b"511 Command Not Permitted on a dead channel or intercept routine\n")
        # ... until the server closes; then AGISTATUS is HANGUP and the h extension runs.
        await conn.close()
        event = await lab.wait_user_event("AgiHangup", IO_TIMEOUT, TOKEN="t-idle")
        assert event["AGISTATUS"] == "HANGUP"
        await lab.wait_channels_gone(call.uniqueid, IO_TIMEOUT)
    assert not [e for e in lab.events() if e.get("UserEvent") == "AgiDone"]


async def test_hangup_during_command_sends_reply_then_hangup_line(
    lab: AsteriskLab, dialplan
) -> None:
    """A hangup during a running command gives its reply ("200 result=-1") first, then "HANGUP\\n"."""
    async def handler(conn: AgiConn) -> None:
        await asyncio.sleep(3600)

    async with FastAgiServer(handler) as server:
        dialplan(DIALPLAN, PORT=server.port)
        call = await run_script(lab, "busy", "t-busy")
        conn = await server.next_connection()
        conn.writer.write(b"EXEC Wait 20\n")
        await conn.writer.drain()
        await lab.wait_event("AGIExecStart", IO_TIMEOUT, Uniqueid=call.uniqueid)
        assert lab.hangup(call.uniqueid)
        assert await conn.readline() == b"200 result=-1\n"
        assert await conn.readline() == b"HANGUP\n"
        await conn.close()
        event = await lab.wait_user_event("AgiHangup", IO_TIMEOUT, TOKEN="t-busy")
    assert event["AGISTATUS"] == "HANGUP"


async def test_agiexitonhangup_makes_asterisk_close_the_socket(lab: AsteriskLab, dialplan) -> None:
    """With AGIEXITONHANGUP=yes a hangup sends "HANGUP\\n" twice and Asterisk closes the socket itself."""
    async def handler(conn: AgiConn) -> None:
        await asyncio.sleep(3600)

    async with FastAgiServer(handler) as server:
        dialplan(DIALPLAN, PORT=server.port)
        call = lab.originate("exit", "lab-smoke", variables={"TOKEN": "t-exit"})
        conn = await server.next_connection()
        assert lab.hangup(call.uniqueid)
        lines = [await conn.readline() for _ in range(3)]
        event = await lab.wait_user_event("AgiHangup", IO_TIMEOUT, TOKEN="t-exit")
    assert lines == [b"HANGUP\n", b"HANGUP\n", b""]
    assert event["AGISTATUS"] == "HANGUP"


async def test_agi_url_without_script_sends_no_network_script(lab: AsteriskLab, dialplan) -> None:
    """agi://HOST:PORT with no path sends no agi_network_script line at all."""
    async def handler(conn: AgiConn) -> None:
        await conn.close()

    async with FastAgiServer(handler) as server:
        dialplan(DIALPLAN, PORT=server.port)
        lab.originate("nopath", "lab-smoke", variables={"TOKEN": "t-nopath"})
        conn = await server.next_connection()
        event = await lab.wait_user_event("AgiDone", IO_TIMEOUT, TOKEN="t-nopath")
    assert "agi_network_script" not in conn.env
    assert conn.env["agi_request"] == f"agi://127.0.0.1:{server.port}"
    assert event["AGISTATUS"] == "SUCCESS"


async def test_server_closing_at_once_gives_success(lab: AsteriskLab, dialplan) -> None:
    """A server that closes at accept, sending nothing, leaves AGISTATUS=SUCCESS."""
    async def handler(conn: AgiConn) -> None:
        await conn.close()

    async with FastAgiServer(handler, read_env=False) as server:
        dialplan(DIALPLAN, PORT=server.port)
        await run_script(lab, "close_at_once", "t-close0")
        event = await lab.wait_user_event("AgiDone", IO_TIMEOUT, TOKEN="t-close0")
    assert event["AGISTATUS"] == "SUCCESS"
    assert event["VAL"] == "unset"


async def test_server_closing_after_env_gives_success(lab: AsteriskLab, dialplan) -> None:
    """A server that reads the environment and closes, sending nothing, leaves AGISTATUS=SUCCESS."""
    async def handler(conn: AgiConn) -> None:
        await conn.close()

    async with FastAgiServer(handler) as server:
        dialplan(DIALPLAN, PORT=server.port)
        await run_script(lab, "close_after_env", "t-close1")
        event = await lab.wait_user_event("AgiDone", IO_TIMEOUT, TOKEN="t-close1")
    assert event["AGISTATUS"] == "SUCCESS"


async def test_failure_line_gives_failure_then_hangup_line(lab: AsteriskLab, dialplan) -> None:
    """A "FAILURE" line from the server makes AGISTATUS=FAILURE; Asterisk answers "HANGUP\\n" and closes."""
    seen: list[bytes] = []

    async def handler(conn: AgiConn) -> None:
        conn.writer.write(b"FAILURE\n")
        await conn.writer.drain()
        seen.append(await conn.readline())
        seen.append(await conn.readline())

    async with FastAgiServer(handler) as server:
        dialplan(DIALPLAN, PORT=server.port)
        await run_script(lab, "fail", "t-fail")
        event = await lab.wait_user_event("AgiDone", IO_TIMEOUT, TOKEN="t-fail")
        await server.next_connection()
    assert event["AGISTATUS"] == "FAILURE"
    assert seen == [b"HANGUP\n", b""]  # not a hangup of the call: the dialplan went on


async def test_half_close_after_command_gets_hangup_line_but_success(
    lab: AsteriskLab, dialplan
) -> None:
    """After the server half-closes, Asterisk still sends "HANGUP\\n" although the call is up; AGISTATUS=SUCCESS."""
    seen: list[bytes] = []

    async def handler(conn: AgiConn) -> None:
        await conn.command('SET VARIABLE "VAR" "set"')
        conn.writer.write_eof()
        seen.append(await conn.readline())
        seen.append(await conn.readline())

    async with FastAgiServer(handler) as server:
        dialplan(DIALPLAN, PORT=server.port)
        await run_script(lab, "halfclose", "t-half")
        event = await lab.wait_user_event("AgiDone", IO_TIMEOUT, TOKEN="t-half")
    assert (event["AGISTATUS"], event["VAL"]) == ("SUCCESS", "set")
    assert seen == [b"HANGUP\n", b""]


async def test_agi_hangup_command_hangs_up_and_gives_hangup(lab: AsteriskLab, dialplan) -> None:
    """The AGI command HANGUP hangs up the call: "200 result=1", then a "HANGUP\\n" notice, AGISTATUS=HANGUP."""
    seen: list[bytes] = []

    async def handler(conn: AgiConn) -> None:
        seen.append(await conn.command("HANGUP"))
        seen.append(await conn.readline())
        await conn.close()

    async with FastAgiServer(handler) as server:
        dialplan(DIALPLAN, PORT=server.port)
        await run_script(lab, "hangup_cmd", "t-hupcmd")
        event = await lab.wait_user_event("AgiHangup", IO_TIMEOUT, TOKEN="t-hupcmd")
    assert seen == [b"200 result=1\n", b"HANGUP\n"]
    assert event["AGISTATUS"] == "HANGUP"


async def test_unknown_command_and_refused_connection(lab: AsteriskLab, dialplan) -> None:
    """An unknown command gets 510 and keeps SUCCESS; a refused connection gives AGISTATUS=FAILURE."""
    seen: list[bytes] = []

    async def handler(conn: AgiConn) -> None:
        seen.append(await conn.command("NO SUCH COMMAND"))
        await conn.close()

    async with FastAgiServer(handler) as server:
        dialplan(DIALPLAN, PORT=server.port)
        await run_script(lab, "unknown", "t-510")
        event = await lab.wait_user_event("AgiDone", IO_TIMEOUT, TOKEN="t-510")
    assert seen == [b"510 Invalid or unknown command\n"]
    assert event["AGISTATUS"] == "SUCCESS"

    dialplan(DIALPLAN, PORT=free_port())  # nobody listens there
    await run_script(lab, "refused", "t-refused")
    event = await lab.wait_user_event("AgiDone", IO_TIMEOUT, TOKEN="t-refused")
    assert event["AGISTATUS"] == "FAILURE"


async def test_exec_playback_and_music_on_hold_are_observable(lab: AsteriskLab, dialplan) -> None:
    """EXEC Playback and Start/StopMusicOnHold work on a Local channel and show in AMI and the channel list."""
    replies: dict[str, bytes] = {}
    timings: dict[str, float] = {}
    moh_started = asyncio.Event()
    proceed = asyncio.Event()

    async def handler(conn: AgiConn) -> None:
        t = time.monotonic()
        replies["playback"] = await conn.command("EXEC Playback tt-weasels")  # about 3 s
        timings["playback"] = time.monotonic() - t
        replies["moh"] = await conn.command("EXEC StartMusicOnHold default")
        moh_started.set()
        await asyncio.wait_for(proceed.wait(), IO_TIMEOUT)
        replies["unmoh"] = await conn.command("EXEC StopMusicOnHold")
        await conn.close()

    async with FastAgiServer(handler) as server:
        dialplan(DIALPLAN, PORT=server.port)
        call = await run_script(lab, "media", "t-media")
        await server.next_connection()

        # Playback started: AGIExecStart arrives while the EXEC is still running (no reply yet),
        # and the channel list shows the application with its data.
        start = await lab.wait_event("AGIExecStart", IO_TIMEOUT, Uniqueid=call.uniqueid,
                                     Command="EXEC Playback tt-weasels")
        assert "playback" not in replies
        me = {c["uniqueid"]: c for c in lab.channels()}[call.uniqueid]
        assert (me["application"], me["data"]) == ("Playback", "tt-weasels")
        assert me["state"] == "Up"  # Playback answered the channel
        # Playback stopped: AGIExecEnd, sent just before the "200 result=0" reply.
        end = await lab.wait_event("AGIExecEnd", IO_TIMEOUT, Uniqueid=call.uniqueid,
                                   Command="EXEC Playback tt-weasels")
        assert start["CommandId"] == end["CommandId"]
        assert end["ResultCode"] == "200" and end["Result"] == "Success"

        await asyncio.wait_for(moh_started.wait(), IO_TIMEOUT)
        moh = await lab.wait_event("MusicOnHoldStart", IO_TIMEOUT, Uniqueid=call.uniqueid)
        assert moh["Class"] == "default"
        # The application column keeps the last EXEC'd application even after it returned:
        # it does not tell whether anything is playing (MOH is a generator). Use the events.
        me = {c["uniqueid"]: c for c in lab.channels()}[call.uniqueid]
        assert me["application"] == "StartMusicOnHold"
        proceed.set()
        await lab.wait_event("MusicOnHoldStop", IO_TIMEOUT, Uniqueid=call.uniqueid)
        event = await lab.wait_user_event("AgiDone", IO_TIMEOUT, TOKEN="t-media")

    assert replies == {"playback": b"200 result=0\n", "moh": b"200 result=0\n",
                       "unmoh": b"200 result=0\n"}
    assert 2.0 < timings["playback"] < 10.0  # the reply comes when the file has played
    assert event["AGISTATUS"] == "SUCCESS"
    # EXEC runs no dialplan priority, so there is no Newexten for Playback.
    assert not [e for e in lab.events() if e.get("Event") == "Newexten"
                and e.get("Application") == "Playback"]
