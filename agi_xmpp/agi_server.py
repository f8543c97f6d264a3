"""The FastAGI listener: allowlist, deadlines, the scripts' ``Channel``, and how scripts run.

Bytes go from an ``asyncio.Protocol`` (no stream objects, no reader task: the cheapest path per
session) straight into the sans-I/O ``AgiConnection``; its events resolve the one reply a script
waits for, set ``Channel.hangup``, or end the session. The reader runs on every ``data_received``,
so a ``HANGUP`` is seen even while the script waits on something else.

How a script runs
-----------------
Once the environment block is complete, the script's coroutine runs **inline**: ``_Session``
steps it itself, at the end of the transport callback that brought the block or the reply it
waited for, for as long as all it awaits is its AGI replies. ``jabber_status`` never awaits
anything else, so it costs no task and no event-loop pass per command. The first time a script awaits anything else (storage, an XMPP answer, an event, a timer), the
rest of it is handed to an ordinary asyncio task (``_Adopted``), which awaits that same thing.

Inline steps run in the call's own ``contextvars`` context, as a task's would. What they do not
have is ``asyncio.current_task()``: code that a script reaches before its first non-AGI await
must not need it (``asyncio.timeout()`` does; ``asyncio.wait_for()`` does not).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import ipaddress
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from agi_xmpp.agi_protocol import (
    FAILURE_LINE,
    NEED_DATA,
    AgiConnection,
    CommandFailed,
    Env,
    HangupNotice,
    Request,
    Response,
    State,
    check_variable_name,
)
from agi_xmpp.conn_limits import ConnectionBudget, listen_socket
from agi_xmpp.errors import ChannelGone, ProtocolError, RemoteProtocolError
from agi_xmpp.values import decode_b64_value

if TYPE_CHECKING:
    from agi_xmpp.services import Services

__all__ = ["DEFAULT_ALLOW", "DEFAULT_PORT", "AgiServer", "Channel", "Script", "ScriptRegistry"]

log = structlog.get_logger(__name__)
_ERROR = State.ERROR  # a global is much cheaper to read than an Enum member

DEFAULT_PORT = 4573  # res_agi.c AGI_PORT
# asyncio's default listen backlog is 100: a burst of more simultaneous AGI() calls (a
# campaign, a ring group, Asterisk restarting traffic) overflows it, and each dropped SYN
# costs that call a 1 s (then 3 s) TCP retransmit. The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024
DEFAULT_ALLOW = ("127.0.0.0/8", "::1/128")
T = TypeVar("T")
ScriptFn = Callable[["Channel", "Services"], Awaitable[None]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- the script registry -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    fn: ScriptFn
    help: str


class ScriptRegistry:
    """Dialplan script names (case-insensitive) → ``async def fn(channel, services)``."""

    def __init__(self) -> None:
        self._scripts: dict[str, Script] = {}

    def script(self, name: str, *, help: str = "") -> Callable[[ScriptFn], ScriptFn]:
        """Register the decorated coroutine function as dialplan script ``name``."""
        key = name.lower()
        if not key or any(c in key for c in "/?& \t"):
            raise ValueError(f"not a usable script name: {name!r}")

        def register(fn: ScriptFn) -> ScriptFn:
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(f"script {name!r} must be an async def function")
            if key in self._scripts:
                raise ValueError(f"script {name!r} is registered twice")
            self._scripts[key] = Script(key, fn, inspect.cleandoc(help))
            return fn

        return register

    def get(self, name: str) -> Script | None:
        return self._scripts.get(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._scripts

    def __iter__(self) -> Iterator[Script]:
        return iter(sorted(self._scripts.values(), key=lambda s: s.name))

    def __len__(self) -> int:
        return len(self._scripts)


# --- what a script sees --------------------------------------------------------------------


class Channel:
    """One AGI call as a script sees it; exactly one command is on the wire at a time.

    Concurrent ``command()`` calls queue behind each other. A command whose caller was cancelled
    (e.g. inside ``until_hangup``) still owns the wire until Asterisk answers it.
    """

    __slots__ = ("request", "hung_up", "_hangup", "_session", "_log", "_log_context")

    def __init__(self, session: _Session, request: Request) -> None:
        self.request = request
        self.hung_up = False  # what ``hangup`` says, without creating the Event
        self._hangup: asyncio.Event | None = None  # made on first use: most scripts never wait
        self._session = session
        self._log: Any = None
        self._log_context: dict[str, Any] | None = None  # bind_log() before the first event

    @property
    def hangup(self) -> asyncio.Event:
        """Set the moment a ``HANGUP`` line arrives or the connection ends."""
        if self._hangup is None:
            self._hangup = asyncio.Event()
            if self.hung_up:
                self._hangup.set()
        return self._hangup

    def _mark_hung_up(self) -> None:
        self.hung_up = True
        if self._hangup is not None:
            self._hangup.set()

    @property
    def env(self) -> Env:
        """Every ``agi_*`` line of the environment block (a read-only mapping)."""
        return self.request.env

    @property
    def args(self) -> tuple[str, ...]:
        return self.request.args

    @property
    def options(self) -> dict[str, str]:
        return self.request.options

    @property
    def uniqueid(self) -> str:
        return self.request.env.get("agi_uniqueid", "")

    @property
    def line_limit(self) -> int:
        """Longest command line (bytes, newline included) this Asterisk accepts."""
        return self._session.conn.line_limit

    @property
    def log(self) -> Any:
        """A structlog logger bound to this call's ``uniqueid`` and ``script``."""
        if self._log is None:
            context = {"uniqueid": self.uniqueid, "script": self.request.script}
            if self._log_context:
                context.update(self._log_context)
            self._log = self._session.server.log.bind(**context)
        return self._log

    def bind_log(self, **context: Any) -> None:
        """Add context (e.g. ``account``) to every later event of this call."""
        if self._log is None:
            # Bound when the first event is logged: most calls log nothing at info, and two
            # structlog binds cost about a tenth of a call's Python time (docs/performance.md).
            self._log_context = {**self._log_context, **context} if self._log_context else context
        else:
            self._log = self._log.bind(**context)

    def __repr__(self) -> str:
        dead = " hungup" if self.hung_up else ""
        return f"<Channel {self.request.script} {self.uniqueid}{dead}>"

    async def command(self, verb: str, *args: str) -> Response:
        """Send one command (every argument quoted) and return its ``200`` reply.

        A dead channel's ``511`` comes back as ``Response(code=511, result="-1")`` rather than an
        exception. Raises ``LocalProtocolError`` (nothing sent) for an unsendable argument,
        ``ProtocolError`` when Asterisk answers ``510``/``520`` (our bug), and ``ChannelGone``
        once the connection has ended.
        """
        session = self._session
        while session.reply is not None:  # a concurrent or abandoned command owes its reply
            await session.wire_free()
        # If this caller is cancelled, its future is cancelled but the session still expects
        # the reply (session.reply), so the next command waits for it instead of colliding.
        event = await session.send(verb, args)
        return event if type(event) is Response else self._failed(verb, event)

    def _failed(self, verb: str, event: Response | CommandFailed) -> Response:
        assert type(event) is CommandFailed
        if event.code == 511:
            self.log.debug("agi_command_refused_dead_channel", verb=verb)
            return Response(code=511, result="-1", raw=f"511 {event.text}")
        raise ProtocolError(f"{verb}: Asterisk answered {event.code} {event.text}")

    async def set_variable(self, name: str, value: str) -> bool:
        """``SET VARIABLE``: True once Asterisk confirmed it; never raises for a hangup.

        res_agi.c registers "set variable" as allowed on a dead channel, so it normally still
        works after ``HANGUP``. A ``511`` (intercept routine) or a closed connection returns
        False (logged at debug): a script that must know the dialplan saw a value (e.g. before
        dropping a consumed message) checks it. Invalid names and unsendable values raise
        ``LocalProtocolError``: those are our bugs.
        """
        return await self.set_variables({name: value})

    async def set_variables(self, variables: Mapping[str, str]) -> bool:
        """``set_variable`` for each pair in order: True if Asterisk confirmed every one.

        A refused one (``511``) does not stop the rest. All the lines are checked before the
        first is sent; then the session sends each one as the previous reply arrives, from
        its transport callbacks, and the script resumes once, with every reply, instead of
        once per command (docs/performance.md).
        """
        session = self._session
        lines = session.conn.encode_set_variables(variables)
        if not lines:
            return True
        while session.reply is not None:  # a concurrent or abandoned command owes its reply
            await session.wire_free()
        try:
            replies = await session.send_lines(lines)
        except ChannelGone:
            self.log.debug("agi_set_variable_channel_gone", variables=len(lines))
            return False
        confirmed = len(replies) == len(lines)
        for event in replies:
            if type(event) is not Response:
                event = self._failed("SET VARIABLE", event)  # 511 comes back; 510/520 raise
            confirmed = event.code == 200 and confirmed
        return confirmed

    async def get_variable_exact(self, name: str) -> str:
        """The exact value of channel variable ``name`` (any text: newlines, quotes, commas).

        Raises ``ChannelGone`` if the connection has ended or the channel refuses the command.
        """
        check_variable_name(name)
        reply = await self.command("GET FULL VARIABLE", f"${{BASE64_ENCODE(${{{name}}})}}")
        if reply.code != 200:
            raise ChannelGone(f"channel refused GET FULL VARIABLE {name}")
        if reply.result != "1":  # "200 result=0": the channel went away under Asterisk
            return ""
        return decode_b64_value(reply.data or "")

    async def until_hangup(self, aw: Awaitable[T], timeout: float | None = None) -> T:
        """Await ``aw`` unless the caller hangs up or ``timeout`` seconds pass first.

        Returns its result; raises ``ChannelGone`` on hangup and ``TimeoutError`` on timeout,
        after cancelling ``aw`` and letting it finish its cleanup. A result that is ready at the
        same moment as the hangup wins (it may be a message already taken from a queue).
        """
        work = asyncio.ensure_future(aw)
        hung = asyncio.ensure_future(self.hangup.wait())
        finished = False
        try:
            if not self.hung_up:
                await asyncio.wait((work, hung), timeout=timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            finished = work.done()
            for f in (work, hung):
                if not f.done():
                    f.cancel()
            await asyncio.wait((work, hung))
        if finished:
            return work.result()
        if not work.cancelled():
            work.exception()  # raised during its cancellation: retrieved, not our answer
        if self.hung_up:
            raise ChannelGone("the caller hung up")
        raise TimeoutError


# --- one connection ------------------------------------------------------------------------


class _Session(asyncio.Protocol):
    """Drives one ``AgiConnection`` from transport callbacks, and runs its script (see above)."""

    __slots__ = ("server", "conn", "transport", "channel", "script", "task", "ended", "lost",
                 "grace_cancelled", "reply", "_awaited", "_context", "_free", "_grace",
                 "_env_watch", "_lines")

    def __init__(self, server: AgiServer) -> None:
        self.server = server
        self.conn = AgiConnection(server.max_env_bytes)
        self.transport: asyncio.Transport | None = None
        self.channel: Channel | None = None
        self.script: Coroutine[Any, Any, None] | None = None  # while it runs inline
        self.task: asyncio.Task[None] | None = None  # once it no longer does
        self.ended = False  # no command may be sent any more
        self.lost = False  # connection_lost() was called
        self.grace_cancelled = False
        self.reply: asyncio.Future[Any] | None = None  # the command (or lines) in flight
        self._lines: tuple[list[bytes], list[Response | CommandFailed]] | None = None
        self._awaited: Any = None  # what the inline script waits for (None: ready to run)
        self._context: contextvars.Context | None = None  # the inline script's
        self._free: list[asyncio.Future[None]] | None = None  # commands queued behind it
        self._grace: asyncio.TimerHandle | None = None  # ends a script lingering after hangup
        self._env_watch: list[_Session | None] = [self]  # see AgiServer._watch_env

    # transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        peer = transport.get_extra_info("peername")
        if not server.allowed(peer):
            server.stats["peer_refused"] += 1
            server.log.warning("agi_peer_refused", peer=_peer_text(peer))
            self.ended = True
            # Best effort, so a misconfigured Asterisk shows AGISTATUS=FAILURE, not SUCCESS.
            transport.write(FAILURE_LINE)  # type: ignore[attr-defined]
            transport.close()
            return
        if server.budget.full(len(server.sessions)) and not server.evict_silent():
            server.budget.refused()  # conn_limits: the FastAGI connection budget
            self.ended = True
            transport.write(FAILURE_LINE)  # type: ignore[attr-defined]
            transport.close()
            return
        server.sessions.add(self)
        server.watch_env(self._env_watch)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        event = conn.receive_reply(data)  # the usual read: one reply to the command in flight
        if event is None:
            if conn.state is not _ERROR:
                conn.receive_data(data)
                self._pump()
            return
        if self._replied(event):
            self._run_inline()

    def eof_received(self) -> None:
        self.conn.receive_data(b"")
        self._pump()  # EndOfStream -> _end(); returning None lets the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.running() or self.reply is not None or self._free:
            self._end()
            self._run_inline()  # a script waiting inline learns the channel is gone
            if self.running():
                return  # run_script's finally forgets us
        elif not self.ended:
            self.close()  # gone before its script started
        self.forget()

    # events from the protocol

    def _pump(self) -> None:
        conn = self.conn
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError as exc:
                self.server.stats["protocol_error"] += 1
                self.server.log.warning(
                    "agi_protocol_error", uniqueid=self._uniqueid(), error=str(exc)
                )
                self._end()
                break
            kind = type(event)
            if kind is Response or kind is CommandFailed:
                self._replied(event)  # type: ignore[arg-type]
                if conn.drained():
                    break
            elif event is NEED_DATA:
                break
            elif kind is HangupNotice:
                self._caller_gone("agi_hangup_received")
            elif kind is Request:
                self._begin(event)  # type: ignore[arg-type]
                if conn.drained():
                    break
            else:  # EndOfStream: a clean end wherever it comes
                if self.channel is None and self.server.debug:
                    self.server.log.debug("agi_closed_before_request")
                self._end()
                break
        # Every event these bytes held has been seen (a HANGUP right after a reply included),
        # just as a task would find on its next step: now the script may go on.
        self._run_inline()

    def _replied(self, event: Response | CommandFailed) -> bool:
        """Deliver a reply; False when it only let the next of ``send_lines()`` go out."""
        result: Any = event
        if self._lines is not None:  # send_lines(): the next line, or all the replies
            lines, replies = self._lines
            replies.append(event)
            if (len(replies) < len(lines) and not self.reply.done()  # type: ignore[union-attr]
                    and (type(event) is Response or event.code == 511)):
                line = self.conn.send_encoded(lines[len(replies)])
                self.transport.write(line)  # type: ignore[union-attr]
                return False
            self._lines = None
            result = replies
        reply, self.reply = self.reply, None
        if reply is not None and not reply.done():  # done: its caller was cancelled
            reply.set_result(result)
        if self._free:
            self._wake_free()
        return True

    def _begin(self, request: Request) -> None:
        self._env_watch[0] = None
        self.channel = Channel(self, request)
        self.script = self.server.run_script(self, self.channel)
        self._context = contextvars.copy_context()

    # running the script

    def running(self) -> bool:
        """A script has started and not yet finished."""
        return self.script is not None or (self.task is not None and not self.task.done())

    def _run_inline(self) -> None:
        awaited = self._awaited
        if self.script is not None and (awaited is None or awaited.done()):
            self._step(None)

    def _step(self, exc: BaseException | None) -> None:
        """Run the inline script up to its next await; hand it to a task unless that is a reply."""
        script = self.script
        self._awaited = _STEPPING  # a transport callback from inside the step must not re-enter
        try:
            if exc is None:
                awaited = self._context.run(script.send, None)  # type: ignore[union-attr]
            else:
                awaited = self._context.run(script.throw, exc)  # type: ignore[union-attr]
        except StopIteration:
            self.script = self._awaited = None
            return
        except BaseException as error:  # run_script handles all but a foreign CancelledError
            self.script = self._awaited = None
            self.close()
            if not isinstance(error, Exception | asyncio.CancelledError):
                raise  # KeyboardInterrupt, SystemExit
            self.server.log.warning("agi_script_aborted", uniqueid=self._uniqueid(),
                                    error=repr(error))
            return
        if awaited is not None and awaited is self.reply:
            self._awaited = awaited  # _pump or _end will settle it, then _run_inline resumes
        else:
            self._adopt(awaited)

    def _adopt(self, awaited: Any) -> None:
        """From now on an asyncio task runs the script, starting by awaiting ``awaited``."""
        script, self.script, self._awaited = self.script, None, None
        assert script is not None
        self.task = self.server.loop.create_task(_Adopted(script, awaited), context=self._context)

    def adopt(self) -> None:
        """Hand an inline script waiting for its reply to a task (so it can be awaited)."""
        if self.script is not None and self._awaited is not _STEPPING:
            self._adopt(self._awaited)  # None: not started yet, the task starts it

    def _caller_gone(self, event: str) -> None:
        """HANGUP or EOF: tell the script at once, and end it if it lingers past the grace."""
        channel = self.channel
        if channel is None or channel.hung_up:
            return
        channel._mark_hung_up()
        self.server.log.debug(event, uniqueid=channel.uniqueid)
        if self.running() and self._grace is None:
            self._grace = self.server.loop.call_later(self.server.hangup_grace, self._cancel)

    def _cancel(self) -> None:
        self._grace = None
        if self.script is not None and self._awaited is not _STEPPING:
            self.grace_cancelled = True
            self._step(asyncio.CancelledError())
        elif self.task is not None and not self.task.done():
            self.grace_cancelled = True
            self.task.cancel()

    def on_env_timeout(self) -> None:
        peer = self.transport.get_extra_info("peername")  # type: ignore[union-attr]
        self.server.stats["env_timeout"] += 1
        self.server.log.info("agi_env_timeout", peer=_peer_text(peer))
        self.close()

    def _end(self) -> None:
        """EOF, a lost connection or a protocol error: no more commands, the caller is gone."""
        self.ended = True
        self._lines = None
        reply, self.reply = self.reply, None
        if reply is not None and not reply.done():
            reply.set_exception(ChannelGone("the AGI connection closed"))
        self._wake_free()
        if self.running():
            self._caller_gone("agi_connection_ended")
        else:
            self.close()  # no script (yet, or any more): nothing to wait for

    # used by Channel and AgiServer

    def send(self, verb: str, args: tuple[str, ...]) -> asyncio.Future[Response | CommandFailed]:
        return self.send_encoded(self.conn.encode_command(verb, *args))

    def send_lines(self, lines: list[bytes]) -> asyncio.Future[list[Response | CommandFailed]]:
        """Send ``lines`` (from ``AgiConnection.encode_command`` or ``encode_set_variables``),
        each once the previous one is answered.

        The future gets every reply; fewer than the lines when a ``510``/``520`` stopped them,
        or when its waiter was cancelled (then only the line in flight is still answered).
        """
        reply = self.send_encoded(lines[0])
        self._lines = (lines, [])
        return reply

    def send_encoded(self, line: bytes) -> asyncio.Future[Any]:
        if self.ended:
            raise ChannelGone("the AGI connection closed")
        self.transport.write(self.conn.send_encoded(line))  # type: ignore[union-attr]
        self.reply = reply = self.server.loop.create_future()
        return reply

    async def wire_free(self) -> None:
        waiter = self.server.loop.create_future()
        if self._free is None:
            self._free = []
        self._free.append(waiter)
        await waiter

    def _wake_free(self) -> None:
        if not self._free:
            return
        free, self._free = self._free, None
        for waiter in free:
            if not waiter.done():
                waiter.set_result(None)

    def send_failure(self) -> None:
        if not self.ended:
            self.transport.write(self.conn.send_failure())  # type: ignore[union-attr]

    def close(self) -> None:
        self.ended = True
        self._env_watch[0] = None
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
            if transport.get_write_buffer_size():  # a peer that stopped reading
                self.server.loop.call_later(self.server.close_timeout, transport.abort)

    def forget(self) -> None:
        """All over: leave the server's books, and break the channel <-> session cycle so
        refcounting frees both at once (less work for the cyclic GC at high call rates)."""
        self.server.sessions.discard(self)
        self.channel = None
        self.transport = None  # and the transport <-> protocol one, should the transport keep us

    def _uniqueid(self) -> str:
        return self.channel.uniqueid if self.channel is not None else ""


class _Stepping:
    """``_Session._awaited`` while the inline script is being stepped: never done."""

    __slots__ = ()

    @staticmethod
    def done() -> bool:
        return False


_STEPPING = _Stepping()


class _Adopted(Coroutine[Any, Any, None]):
    """The rest of an inline script, as a coroutine an asyncio task can run.

    The script is suspended inside an ``await``: the task's first step hands the task what
    that await yielded (a future, or ``None`` for "step me again soon"), exactly as if the
    script had yielded it inside the task; from then on every step, cancellation included,
    goes straight to the script.
    """

    __slots__ = ("_script", "_first")

    def __init__(self, script: Coroutine[Any, Any, None], awaited: Any) -> None:
        self._script = script
        self._first: Any = awaited
        if awaited is None:  # nothing to wait for: the first step resumes the script at once
            self._first = _RESUME

    def send(self, value: Any) -> Any:
        first = self._first
        if first is not None:
            self._first = None
            if first is not _RESUME:
                return first
        return self._script.send(value)

    def throw(self, *exc: Any) -> Any:
        self._first = None
        return self._script.throw(*exc)

    def close(self) -> None:
        self._script.close()

    def __await__(self) -> Any:
        raise TypeError("an adopted script is run by its task, not awaited")


_RESUME = object()


def _peer_text(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = peer[0]
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer)


# --- the listener --------------------------------------------------------------------------


def _parse_bind(bind: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(bind, tuple):
        return bind[0], int(bind[1])
    host, sep, port = bind.rpartition(":")
    if not sep or host.endswith(":") or (":" in host and not host.startswith("[")):
        return bind.strip("[]"), DEFAULT_PORT  # "host" or a bare IPv6 address
    return host.strip("[]"), int(port)


class AgiServer:
    """Listens for FastAGI connections and runs registered scripts.

    ``stats`` counts finished calls by outcome (``success``, ``unknown_script``, ``error``,
    ``channel_gone``, ``cancelled_after_hangup``, ``cancelled``) plus ``peer_refused``,
    ``env_timeout`` and ``protocol_error``, for metrics: a successful call is logged at debug.
    """

    def __init__(
        self,
        registry: ScriptRegistry,
        services: Services | Any,
        *,
        bind: str | tuple[str, int] = ("127.0.0.1", DEFAULT_PORT),
        allow: Iterable[str | Network] = DEFAULT_ALLOW,
        env_timeout: float = 5.0,
        max_env_bytes: int = 65536,
        hangup_grace: float = 2.0,
        close_timeout: float = 5.0,
        max_connections: int = 4096,
    ) -> None:
        if env_timeout <= 0 or hangup_grace < 0 or close_timeout < 0:
            raise ValueError("env_timeout must be positive, hangup_grace and close_timeout >= 0")
        self.registry = registry
        self.services = services
        self.bind = _parse_bind(bind)
        self.allow: tuple[Network, ...] = tuple(
            ipaddress.ip_network(a, strict=False) for a in allow
        )
        self.env_timeout = env_timeout
        self.max_env_bytes = max_env_bytes
        self.hangup_grace = hangup_grace
        self.close_timeout = close_timeout
        self.sessions: set[_Session] = set()  # connection open or script running
        self.budget = ConnectionBudget("agi", max_connections)
        self.stats: Counter[str] = Counter()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        # Bound once in start(), when logging is configured: structlog's lazy proxy would
        # otherwise rebuild a logger on every call, even for a filtered-out debug event.
        self.log: Any = log
        self.debug = True  # whether debug events pass the level filter (set in start())
        self._server: asyncio.base_events.Server | None = None
        self._allowed_cache: dict[str, bool] = {}
        self._env_deadlines: deque[tuple[float, list[_Session | None]]] = deque()
        self._env_sweep: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        host, port = self.address if self._server else self.bind
        return f"<AgiServer {host}:{port} [{len(self.sessions)} connections]>"

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually listened on (useful with port 0)."""
        assert self._server is not None, "not started"
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.log = log.bind()
        is_enabled_for = getattr(self.log, "is_enabled_for", None)
        self.debug = is_enabled_for is None or is_enabled_for(logging.DEBUG)
        host, port = self.bind
        sock = listen_socket(host, port, LISTEN_BACKLOG)  # [::] is dual-stack (conn_limits)
        self._server = await self.loop.create_server(lambda: _Session(self), sock=sock)
        self.log.info("agi_server_listening", host=self.address[0], port=self.address[1])

    async def close(self) -> None:
        """Stop listening, let running scripts finish (up to ``close_timeout``), then end them."""
        if self._server is not None:
            self._server.close()
        for session in self.sessions:
            session.adopt()  # a script waiting inline for a reply gets a task to await
        tasks = {s.task for s in self.sessions if s.task is not None and not s.task.done()}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.close_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for session in list(self.sessions):
            session.close()
        if self._env_sweep is not None:
            self._env_sweep.cancel()
            self._env_sweep = None
        self._env_deadlines.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
            self.log.info("agi_server_closed")

    def watch_env(self, watch: list[_Session | None]) -> None:
        """Close ``watch[0]`` unless its environment block is complete within ``env_timeout``.

        One server-wide timer instead of one per connection (a uvloop timer per connection
        costs about as much as parsing the block). Deadlines come in arrival order, so a deque
        suffices; a session clears ``watch[0]`` once it no longer needs watching, which also
        lets it be freed before its deadline passes. A deadline may fire up to a sweep step late.
        """
        deadlines = self._env_deadlines
        # Drop the oldest entries whose block has long arrived (the usual case within
        # microseconds): otherwise every call's entry would stay alive for env_timeout,
        # 50,000 of them at 10,000 calls/s, for the cyclic GC to walk again and again.
        while deadlines and deadlines[0][1][0] is None:
            deadlines.popleft()
        deadline = self.loop.time() + self.env_timeout
        deadlines.append((deadline, watch))
        if self._env_sweep is None:
            self._env_sweep = self.loop.call_at(deadline, self._sweep_env)

    def _sweep_env(self) -> None:
        now = self.loop.time()
        deadlines = self._env_deadlines
        while deadlines and deadlines[0][0] <= now:
            session = deadlines.popleft()[1][0]
            if session is not None:
                session.on_env_timeout()
        if deadlines:
            step = min(0.25, self.env_timeout / 4)
            self._env_sweep = self.loop.call_at(max(deadlines[0][0], now + step), self._sweep_env)
        else:
            self._env_sweep = None

    def evict_silent(self) -> bool:
        """Close the oldest connection still waiting for its environment block (the budget is
        full); False when there is none. Asterisk sends the block at once, so this is the
        connection least likely to be a call."""
        deadlines = self._env_deadlines
        while deadlines:
            session = deadlines.popleft()[1][0]
            if session is not None:
                session.close()
                session.forget()
                self.budget.made_room()
                return True
        return False

    def allowed(self, peer: Any) -> bool:
        """Whether a peer address (as ``getpeername()`` gives it) is on the allowlist."""
        if not isinstance(peer, tuple):
            return False
        host = peer[0]
        ok = self._allowed_cache.get(host)
        if ok is None:
            try:
                addr = ipaddress.ip_address(host)
            except ValueError:
                return False
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped  # a dual-stack listener sees ::ffff:127.0.0.1
            ok = any(addr in net for net in self.allow)
            if len(self._allowed_cache) >= 1024:
                self._allowed_cache.clear()
            self._allowed_cache[host] = ok
        return ok

    async def run_script(self, session: _Session, channel: Channel) -> None:
        """The per-call task: look the script up, run it, always close the connection."""
        request = channel.request
        script = self.registry.get(request.script)
        started = time.monotonic()
        outcome = "success"
        if self.debug:
            self.log.debug("agi_request_received", uniqueid=channel.uniqueid,
                           script=request.script, args=len(request.args),
                           options=len(request.options))
        try:
            if script is None:
                outcome = "unknown_script"
                session.send_failure()  # AGISTATUS=FAILURE, see AgiConnection.send_failure
                return
            await script.fn(channel, self.services)
        except ChannelGone:
            outcome = "channel_gone"
        except asyncio.CancelledError:
            if not session.grace_cancelled:
                outcome = "cancelled"
                raise
            task = asyncio.current_task()
            if task is not None:  # None: the script was running inline (see the top)
                task.uncancel()
            outcome = "cancelled_after_hangup"
        except Exception:
            # Never hang up the caller: log, close normally, AGISTATUS stays SUCCESS.
            outcome = "error"
            self.log.exception("agi_script_failed", uniqueid=channel.uniqueid,
                               script=request.script)
        finally:
            session.close()
            if session.lost:
                session.forget()
            self.stats[outcome] += 1
            level = _OUTCOME_LEVEL.get(outcome, "info")
            if level != "debug" or self.debug:
                getattr(self.log, level)(
                    "agi_script_finished",
                    uniqueid=channel.uniqueid,
                    script=request.script,
                    outcome=outcome,
                    hangup=channel.hung_up,
                    duration_ms=round((time.monotonic() - started) * 1000, 1),
                )


# A routine successful call is debug (per-call info logging costs more CPU than the rest of
# the call's Python code); anything an administrator should look at is info or above.
_OUTCOME_LEVEL = {"success": "debug", "unknown_script": "warning", "error": "error"}
