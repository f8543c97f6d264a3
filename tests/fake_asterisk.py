"""Asterisk's side of FastAGI, for tests that drive the real server without a real Asterisk.

It sends a full environment block (``bench.loadgen.env_block``, the one builder of it), answers
every command as res_agi.c would (``200 result=1`` for ``SET VARIABLE``, ``GET FULL VARIABLE``
from a dict of channel variables, ``510`` for a verb res_agi.c does not know), takes a
``FAILURE`` line as run_agi() does (``AGISTATUS=FAILURE``), parses our command lines with the
port of Asterisk's ``parse_args`` (``asterisk_args``), and can hang up (``HANGUP`` line) at a
chosen moment. ``answer(words)`` may replace any reply with bytes of the test's own.

This is the one fake Asterisk of the tests; ``bench.loadgen`` is its cheaper twin for load.

``exec_delays={"Playback": 3.0}`` makes ``EXEC Playback ...`` take that long before its
``200 result=0``, as a real Playback blocks until the file has played; a hangup meanwhile ends
it as Asterisk does: ``200 result=-1``, then ``HANGUP``.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import quote as urlquote

from asterisk_args import parse_command_line

from bench.loadgen import env_block

# The first word of every command res_agi.c registers (the rest: "510 Invalid or unknown command").
KNOWN_VERBS = frozenset(
    "ANSWER ASYNCAGI CHANNEL CONTROL DATABASE EXEC GET GOSUB HANGUP NOOP RECEIVE RECORD SAY SEND "
    "SET SPEECH STREAM TDD VERBOSE WAIT".split()
)
Answer = Callable[[list[str]], "Awaitable[bytes | None] | bytes | None"]


def asterisk_parse_args(line: str) -> list[str]:
    """Split a command line exactly as res_agi.c's parse_args() does (quotes, backslashes)."""
    return parse_command_line(line)


@dataclass
class CallResult:
    status: str = "SUCCESS"  # what AGISTATUS would be
    variables: dict[str, str] = field(default_factory=dict)
    commands: list[list[str]] = field(default_factory=list)
    command_times: list[float] = field(default_factory=list)  # time.monotonic() of each arrival
    closed_by_server: bool = False


_FULL_VARIABLE = re.compile(r"^\$\{BASE64_ENCODE\(\$\{([A-Za-z0-9_]+)\}\)\}$")


async def agi_call(
    port: int,
    script: str,
    *args: str,
    host: str = "127.0.0.1",
    channel_vars: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    hangup_after: float | None = None,
    agi_version: str = "22.6.0",
    timeout: float = 30.0,
    exec_delays: dict[str, float] | None = None,
    answer: Answer | None = None,
    uniqueid: str = "1700000000.1",
) -> CallResult:
    """One AGI() call: returns every variable the script set, in order, and every command."""
    reader, writer = await asyncio.open_connection(host, port)
    result = CallResult()
    channel_vars = dict(channel_vars or {})
    block = {
        "agi_channel": "Local/100@test-00000001;2",
        "agi_type": "Local",
        "agi_callerid": "5551234",
        "agi_calleridname": "Test Caller",
        "agi_dnid": "100",
        "agi_context": "test",
        "agi_extension": "100",
        "agi_priority": "1",
        "agi_threadid": "140000000000",
    }
    block.update(env or {})
    writer.write(env_block(script, args, host=host, port=port, uniqueid=uniqueid,
                           agi_version=agi_version, extra=block))
    await writer.drain()
    hung_up = False
    hangup_seen = asyncio.Event()
    in_exec = False  # a delayed EXEC is running: the hangup ends it and is announced after
    delays = {app.lower(): seconds for app, seconds in (exec_delays or {}).items()}

    async def hang_up_later() -> None:
        nonlocal hung_up
        await asyncio.sleep(hangup_after)  # type: ignore[arg-type]
        hung_up = True
        hangup_seen.set()
        if not in_exec:
            writer.write(b"HANGUP\n")
            await writer.drain()

    hanger = asyncio.create_task(hang_up_later()) if hangup_after is not None else None
    try:
        async with asyncio.timeout(timeout):
            while True:
                line = await reader.readline()
                if not line:
                    result.closed_by_server = True
                    break
                if line[:7].lower() == b"failure":  # run_agi()'s special case
                    result.status = "FAILURE"
                    break
                words = asterisk_parse_args(line.decode().rstrip("\n"))
                result.commands.append(words)
                result.command_times.append(time.monotonic())
                custom = answer(words) if answer is not None else None
                if asyncio.iscoroutine(custom):
                    custom = await custom
                if custom is not None:  # the test's own reply, instead of Asterisk's
                    writer.write(custom)
                    await writer.drain()
                    continue
                upper = [w.upper() for w in words[:2]]
                delay = delays.get(words[1].lower()) if upper[:1] == ["EXEC"] and len(words) > 1 else None
                if delay is not None and not hung_up:
                    in_exec = True
                    try:
                        await asyncio.wait_for(hangup_seen.wait(), delay)
                    except TimeoutError:
                        pass
                    in_exec = False
                    if hung_up:  # res_agi.c: the application's result, then the notice
                        writer.write(b"200 result=-1\nHANGUP\n")
                        await writer.drain()
                        continue
                    reply = "200 result=0"
                elif upper == ["SET", "VARIABLE"] and len(words) >= 4:
                    result.variables[words[2]] = words[3]
                    channel_vars[words[2]] = words[3]
                    reply = "200 result=1"
                elif upper == ["GET", "FULL"] and len(words) >= 4:
                    # handle_getvariablefull(): the expression substituted, "" when unset
                    match = _FULL_VARIABLE.match(words[3])
                    value = channel_vars.get(match.group(1), "") if match else ""
                    reply = f"200 result=1 ({base64.b64encode(value.encode()).decode()})"
                elif upper[:1] and upper[0] in KNOWN_VERBS:
                    reply = "200 result=0"
                else:
                    reply = "510 Invalid or unknown command"
                if hung_up:
                    reply = "511 Command Not Permitted on a dead channel or intercept routine"
                writer.write(reply.encode() + b"\n")
                await writer.drain()
    finally:
        if hanger is not None:
            hanger.cancel()
        writer.close()
    return result


def script_url(name: str, **options: str) -> str:
    """``name?key=value`` as it appears in agi_network_script."""
    if not options:
        return name
    return name + "?" + "&".join(f"{k}={urlquote(v)}" for k, v in options.items())
