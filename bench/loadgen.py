"""Asterisk's side of FastAGI as a load generator: many concurrent AGI() calls, cheaply.

Each session does what ``res_agi.c`` does for ``AGI(agi://HOST:PORT/SCRIPT,ARG1,...)``: it
connects, writes ``agi_network: yes``, ``agi_network_script: SCRIPT`` and the full environment
block of ``setup_env()`` (``agi_request`` ... ``agi_threadid``, then ``agi_arg_N``) and an empty
line, then answers each command line the server sends as Asterisk would: ``SET VARIABLE`` →
``200 result=1``; ``GET FULL VARIABLE "${BASE64_ENCODE(${NAME})}"`` → ``200 result=1 (BASE64)``
from the session's channel variables; a ``FAILURE`` line ends the call (``AGISTATUS=FAILURE``);
anything else → ``200 result=0``. With ``hangup_after=N`` it writes ``HANGUP`` right after the
N-th command arrives, before that command's reply, as ``run_agi()`` does when the channel hangs up
mid-script (``SET VARIABLE`` still answers ``200`` on a dead channel). A session ends when the
server closes the connection; its latency is from ``connect()`` to that close.

Everything is an ``asyncio.Protocol`` (no streams, no task per session), so on uvloop one core
drives tens of thousands of sessions per second and the server, not this, is the bottleneck.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from time import perf_counter

__all__ = ["LoadResult", "Session", "env_block", "run_closed_loop", "run_once", "open_sessions"]

_SET_VARIABLE = b"SET VARIABLE "
_GET_FULL = re.compile(rb'^GET FULL VARIABLE "\$\{BASE64_ENCODE\(\$\{([A-Za-z0-9_]+)\}\)\}"')
_OK = b"200 result=1\n"
_ZERO = b"200 result=0\n"
_HANGUP = b"HANGUP\n"
_uniqueids = itertools.count(1)


def env_block(
    script: str,
    args: Sequence[str | bytes] = (),
    *,
    host: str = "127.0.0.1",
    port: int = 4573,
    uniqueid: str = "1700000000.1",
    agi_version: str = "22.6.0",
    extra: Mapping[str, str] | None = None,
    raw: bytes = b"",
) -> bytes:
    """The bytes ``res_agi.c`` writes for one FastAGI call (launch_netscript + setup_env).

    The one builder of the block, for the bench and the tests: ``extra`` adds or replaces
    ``agi_*`` entries, an argument may be raw bytes (any encoding), and ``raw`` goes just before
    the blank line (a ``HANGUP`` line inside the block, say).
    """
    env = {
        "agi_network": "yes",
        "agi_network_script": script,
        "agi_request": f"agi://{host}:{port}/{script}",
        "agi_channel": "PJSIP/100-00000001",
        "agi_language": "en",
        "agi_type": "PJSIP",
        "agi_uniqueid": uniqueid,
        "agi_version": agi_version,
        "agi_callerid": "100",
        "agi_calleridname": "Alice Example",
        "agi_callingpres": "0",
        "agi_callingani2": "0",
        "agi_callington": "0",
        "agi_callingtns": "0",
        "agi_dnid": "200",
        "agi_rdnis": "unknown",
        "agi_context": "from-internal",
        "agi_extension": "200",
        "agi_priority": "2",
        "agi_enhanced": "0.0",
        "agi_accountcode": "",
        "agi_threadid": "140737353947840",
    }
    env.update(extra or {})
    block = "".join(f"{k}: {v}\n" for k, v in env.items()).encode()
    for n, value in enumerate(args, start=1):
        block += f"agi_arg_{n}: ".encode() + (value if isinstance(value, bytes) else value.encode())
        block += b"\n"
    return block + raw + b"\n"


class _EnvFactory:
    """Env blocks with a fresh ``agi_uniqueid`` each, without re-formatting the whole block."""

    def __init__(self, script: str, args: Sequence[str], port: int, agi_version: str) -> None:
        marker = "\x00UID\x00"
        block = env_block(script, args, port=port, uniqueid=marker, agi_version=agi_version)
        self.head, self.tail = block.split(marker.encode())
        self.base = f"{int(time.time())}."

    def __call__(self) -> bytes:
        return self.head + (self.base + str(next(_uniqueids))).encode() + self.tail


@dataclass
class Session:
    """One finished (or running) AGI call as the load generator saw it."""

    commands: int = 0
    latency: float = 0.0
    failure: bool = False  # the server sent FAILURE (AGISTATUS=FAILURE)
    error: str = ""  # connection refused/reset
    lines: list[bytes] | None = None  # the command lines, when recorded
    variables: dict[str, str] | None = None  # SET VARIABLE name -> value, when recorded


class _Call(asyncio.Protocol):
    __slots__ = ("run", "session", "env", "t0", "transport", "buf", "record", "hangup_after")

    def __init__(self, run: _Run, env: bytes, record: bool) -> None:
        self.run = run
        self.env = env
        self.record = record
        self.session = Session(lines=[] if record else None, variables={} if record else None)
        self.hangup_after = run.hangup_after
        self.t0 = 0.0
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.env)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        start = 0
        out = []
        session = self.session
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl]
            start = nl + 1
            session.commands += 1
            if self.record:
                session.lines.append(line)  # type: ignore[union-attr]
            if session.commands == self.hangup_after:
                out.append(_HANGUP)
            if line.startswith(_SET_VARIABLE):
                out.append(_OK)
                if self.record:
                    words = _parse_args(line.decode())
                    if len(words) >= 4:
                        session.variables[words[2]] = words[3]  # type: ignore[index]
            elif line[:7].upper() == b"FAILURE":
                session.failure = True
                self.transport.close()  # type: ignore[union-attr]
                return
            else:
                m = _GET_FULL.match(line)
                if m is not None:
                    value = self.run.channel_vars.get(m.group(1).decode())
                    out.append(_ZERO if value is None else
                               b"200 result=1 (" + base64.b64encode(value.encode()) + b")\n")
                else:
                    out.append(_ZERO)
        self.buf = buf[start:]
        if out:
            self.transport.write(b"".join(out))  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        return False  # the server is done: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.latency = perf_counter() - self.t0
        if exc is not None:
            self.session.error = type(exc).__name__
        self.run.finished(self)


class _Run:
    """Shared state of one load run: starts calls and collects what they saw."""

    def __init__(
        self,
        host: str,
        port: int,
        script: str,
        args: Sequence[str],
        *,
        agi_version: str = "22.6.0",
        channel_vars: Mapping[str, str] | None = None,
        hangup_after: int = 0,
        record: int = 0,
        keep_sessions: bool = False,
        on_finished: Callable[[Session], None] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.host = host
        self.port = port
        self.env = _EnvFactory(script, args, port, agi_version)
        self.channel_vars = dict(channel_vars or {})
        self.hangup_after = hangup_after
        self.record = record  # record the lines of this many sessions
        self.keep_sessions = keep_sessions
        self.on_finished = on_finished
        self.latencies: list[float] = []
        self.commands: list[int] = []
        self.failures = 0
        self.errors: dict[str, int] = {}
        self.recorded: list[Session] = []
        self.sessions: list[Session] = []
        self.in_flight = 0
        self.started = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def start(self) -> None:
        record = self.started < self.record
        call = _Call(self, self.env(), record)
        self.started += 1
        self.in_flight += 1
        self.idle.clear()
        self.loop.create_task(self._connect(call))

    async def _connect(self, call: _Call) -> None:
        call.t0 = perf_counter()
        try:
            await self.loop.create_connection(lambda: call, self.host, self.port)
        except OSError as exc:
            call.session.error = type(exc).__name__
            call.session.latency = perf_counter() - call.t0
            self.finished(call)

    def finished(self, call: _Call) -> None:
        session = call.session
        if session.error:
            self.errors[session.error] = self.errors.get(session.error, 0) + 1
        else:
            self.latencies.append(session.latency)
            self.commands.append(session.commands)
        if session.failure:
            self.failures += 1
        if session.lines is not None:
            self.recorded.append(session)
        if self.keep_sessions:
            self.sessions.append(session)
        self.in_flight -= 1
        if self.on_finished is not None:
            self.on_finished(session)
        if self.in_flight == 0:
            self.idle.set()


@dataclass
class LoadResult:
    """What one run measured, from the load generator's side."""

    sessions: int
    seconds: float
    latencies: list[float]
    commands: list[int]
    failures: int
    errors: dict[str, int]
    recorded: list[Session] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sessions / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        """Latency percentile in seconds (nearest rank)."""
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        rank = max(0, min(len(data) - 1, int(round(p / 100 * len(data) + 0.5)) - 1))
        return data[rank]


async def run_closed_loop(
    host: str,
    port: int,
    script: str,
    args: Sequence[str] = (),
    *,
    concurrency: int,
    duration: float,
    hangup_after: int = 0,
    record: int = 0,
    channel_vars: Mapping[str, str] | None = None,
    agi_version: str = "22.6.0",
    until: asyncio.Event | None = None,
) -> LoadResult:
    """Keep ``concurrency`` calls in flight for ``duration`` seconds (or until ``until`` is
    set), then let them finish.

    Each call that ends starts the next one (closed loop), so the offered load adapts to the
    server: this measures capacity and latency at a fixed number of concurrent channels.
    """
    stop_at = 0.0
    run: _Run

    def next_call(_session: Session) -> None:
        if run.loop.time() < stop_at and (until is None or not until.is_set()):
            run.start()

    run = _Run(host, port, script, args, hangup_after=hangup_after, record=record,
               channel_vars=channel_vars, agi_version=agi_version, on_finished=next_call)
    t0 = perf_counter()
    stop_at = run.loop.time() + duration
    for _ in range(concurrency):
        run.start()
    await run.idle.wait()
    seconds = perf_counter() - t0
    return LoadResult(len(run.latencies), seconds, run.latencies, run.commands, run.failures,
                      run.errors, run.recorded)


async def run_once(
    host: str,
    port: int,
    script: str,
    args: Sequence[str] = (),
    *,
    channel_vars: Mapping[str, str] | None = None,
    hangup_after: int = 0,
    timeout: float = 30.0,
) -> Session:
    """One call, with its command lines and variables recorded."""
    run = _Run(host, port, script, args, record=1, channel_vars=channel_vars,
               hangup_after=hangup_after)
    run.start()
    async with asyncio.timeout(timeout):
        await run.idle.wait()
    if run.recorded:
        return run.recorded[0]
    raise ConnectionError(f"AGI call to {host}:{port}/{script} failed: {run.errors}")


async def open_sessions(
    host: str,
    port: int,
    script: str,
    args: Sequence[str],
    count: int,
    *,
    batch: int = 100,
) -> _Run:
    """Start ``count`` calls (in batches, so the listen backlog is not flooded) and return
    the run; ``await run.idle.wait()`` waits for all of them to end."""
    run = _Run(host, port, script, args, record=count, keep_sessions=False)
    for i in range(count):
        run.start()
        if (i + 1) % batch == 0:
            await asyncio.sleep(0.02)
    return run


def _parse_args(line: str) -> list[str]:
    """res_agi.c parse_args(): words, double quotes grouping, backslash escaping."""
    args: list[str] = []
    current: list[str] | None = None
    quoted = escaped = False
    for ch in line:
        if ch == '"' and not escaped:
            quoted = not quoted
            if quoted and current is None:
                current = []
            continue
        if ch in " \t" and not quoted and not escaped:
            if current is not None:
                args.append("".join(current))
                current = None
            continue
        if ch == "\\" and not escaped:
            escaped = True
            continue
        if current is None:
            current = []
        current.append(ch)
        escaped = False
    if current is not None:
        args.append("".join(current))
    return args
