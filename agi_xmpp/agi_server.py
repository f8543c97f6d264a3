"""The FastAGI listener: allowlist, deadlines, one session per connection, and how scripts run.

Bytes go from an ``asyncio.Protocol`` (no stream objects, no reader task: the cheapest path per
session) straight into the sans-I/O ``AgiConnection``, and whatever it has to send goes straight
back out: this module moves bytes and delivers events; the protocol object decides what is sent
and when. The reader runs on every ``data_received``, so a ``HANGUP`` is seen even while the
script waits on something else.

The one path of a call
----------------------
``connection_made`` (allowlist; the environment deadline starts) → ``data_received`` → the
``Request`` event → the script is looked up in the registry (``agi_registry``) and given a
``Channel`` (``agi_channel``):

* a plain function (``jabber_status``) is called right there; the variables it returns are
  handed to the connection, which sends each ``SET VARIABLE`` as the previous reply arrives;
  the last reply closes the connection. No task, no coroutine.
* an ``async def`` runs as an ordinary asyncio task; each ``Channel`` command waits on one
  future that the reply's ``data_received`` resolves.

A ``HANGUP`` line or EOF marks the channel hung up at once; a script still running
``hangup_grace`` seconds later is cancelled. Connections are opened and forgotten in one place
each (``AgiServer.opened`` / ``AgiServer.forgotten``), e.g. for a connection budget.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from typing import Any

import structlog

from .agi_channel import Channel, Command
from .agi_protocol import (
    FAILURE_LINE,
    AgiConnection,
    Answered,
    CommandFailed,
    HangupNotice,
    Request,
    Response,
    set_variable_commands,
)
from .agi_registry import Script, ScriptRegistry
from .config import DEFAULT_AGI_ALLOW, DEFAULT_AGI_BIND
from .conn_limits import ConnectionBudget, listen_socket, peer_ip
from .errors import ChannelGone, RemoteProtocolError

__all__ = ["AgiServer", "AgiSession"]

log = structlog.get_logger(__name__)

# asyncio's default listen backlog is 100: a burst of more simultaneous AGI() calls (a
# campaign, a ring group, Asterisk restarting traffic) overflows it, and each dropped SYN
# costs that call a 1 s (then 3 s) TCP retransmit. The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _PlainScript:
    """``AgiSession._waiter`` while a plain script's variables are being set."""

    __slots__ = ()


_PLAIN = _PlainScript()


class AgiSession(asyncio.Protocol):
    """One FastAGI connection: feeds its ``AgiConnection``, runs its script, always closes."""

    __slots__ = ("server", "conn", "transport", "channel", "task", "running", "ended", "lost",
                 "grace_cancelled", "_waiter", "_free", "_grace", "env_watch",
                 "_started")

    def __init__(self, server: AgiServer) -> None:
        self.server = server
        self.conn = AgiConnection(server.max_env_bytes)
        self.transport: asyncio.Transport | None = None
        self.channel: Channel | None = None
        self.task: asyncio.Task[None] | None = None  # an async script's
        self.running = False  # a script has started and not finished
        self.ended = False  # no command may be sent any more
        self.lost = False  # connection_lost() was called
        self.grace_cancelled = False
        # The send in flight: the future its caller awaits, _PLAIN for a plain script's
        # variables, None when the wire is free. Kept until the last reply even if the caller
        # was cancelled, so that the next command waits instead of colliding.
        self._waiter: asyncio.Future[list[Response | CommandFailed]] | _PlainScript | None = None
        self._free: list[asyncio.Future[None]] | None = None  # commands queued behind it
        self._grace: asyncio.TimerHandle | None = None  # ends a script lingering after hangup
        self.env_watch: list[AgiSession | None] = [self]  # see AgiServer.watch_env
        self._started = 0.0

    # --- transport callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.server.opened(self):
            self.ended = True
            # Best effort, so a misconfigured Asterisk shows AGISTATUS=FAILURE, not SUCCESS.
            transport.write(FAILURE_LINE)  # type: ignore[attr-defined]
            transport.close()

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        try:
            events = conn.receive_data(data)
        except RemoteProtocolError as exc:
            self.server.stats["protocol_error"] += 1
            self.server.log.warning("agi_protocol_error", uniqueid=self._uniqueid(),
                                    error=str(exc))
            self._end()
            return
        for event in events:
            kind = type(event)
            if kind is Answered:
                self._answered(event)  # type: ignore[arg-type]
            elif kind is HangupNotice:
                self._caller_gone("agi_hangup_received")
            elif kind is Request:
                self._begin(event)  # type: ignore[arg-type]
            else:  # EndOfStream: a clean end wherever it comes
                if self.channel is None and self.server.debug:
                    self.server.log.debug("agi_closed_before_request")
                self._end()
                return
        data = conn.data_to_send()  # the next line of a send, if a reply released one
        if data:
            self.transport.write(data)  # type: ignore[union-attr]

    def eof_received(self) -> None:
        self.data_received(b"")  # EndOfStream -> _end(); returning None lets the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.running or self._waiter is not None or self._free:
            self._end()
        elif not self.ended:
            self.close()  # gone before its script started
        if not self.running:
            self.forget()  # else _finish() does, when the script is done

    # --- events from the protocol ------------------------------------------------------

    def _answered(self, replies: list[Response | CommandFailed]) -> None:
        """The send in flight is over: a plain script's call is done, an async one resumes."""
        waiter, self._waiter = self._waiter, None
        if waiter is _PLAIN:
            self._finish("success")
            return
        if waiter is not None and not waiter.done():  # done: its caller was cancelled
            waiter.set_result(replies)  # type: ignore[union-attr]
        if self._free:
            self._wake_free()

    def _begin(self, request: Request) -> None:
        self.env_watch[0] = None
        server = self.server
        channel = self.channel = Channel(self, request, self.conn.line_limit)
        self._started = time.monotonic()
        if server.debug:
            server.log.debug("agi_request_received", uniqueid=channel.uniqueid,
                             script=request.script, args=len(request.args),
                             options=len(request.options))
        script = server.registry.get(request.script)
        self.running = True
        if script is None:
            self.conn.send_failure()  # AGISTATUS=FAILURE, see AgiConnection.send_failure
            self.transport.write(self.conn.data_to_send())  # type: ignore[union-attr]
            self._finish("unknown_script")
        elif not script.plain:
            self.task = server.loop.create_task(self._run(script, channel))
        else:  # called right here; the connection sets the variables it returns
            try:
                variables = script.fn(channel, server.services)
                if variables:
                    self.conn.send_commands(set_variable_commands(variables))  # type: ignore[arg-type]
                    self._waiter = _PLAIN  # the send's answer finishes the call
                    return
            except Exception:
                server.log.exception("agi_script_failed", uniqueid=channel.uniqueid,
                                     script=request.script)
                self._finish("error")
                return
            self._finish("success")

    # --- running the script ------------------------------------------------------------

    async def _run(self, script: Script, channel: Channel) -> None:
        """An async script's task: run it, always finish the call."""
        outcome = "success"
        try:
            await script.fn(channel, self.server.services)  # type: ignore[misc]
        except ChannelGone:
            outcome = "channel_gone"
        except asyncio.CancelledError:
            if not self.grace_cancelled:
                outcome = "cancelled"
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            outcome = "cancelled_after_hangup"
        except Exception:
            # Never hang up the caller: log, close normally, AGISTATUS stays SUCCESS.
            outcome = "error"
            self.server.log.exception("agi_script_failed", uniqueid=channel.uniqueid,
                                      script=channel.request.script)
        finally:
            self._finish(outcome)

    def _finish(self, outcome: str) -> None:
        """The script is done: close, leave the books once the connection is gone, count it."""
        if not self.running:
            return
        self.running = False
        if self._waiter is _PLAIN:
            self._waiter = None
        channel = self.channel
        self.close()
        if self.lost:
            self.forget()
        self.server.finished(channel, outcome, self._started)  # type: ignore[arg-type]

    def _caller_gone(self, event: str) -> None:
        """HANGUP or EOF: tell the script at once, and end it if it lingers past the grace."""
        channel = self.channel
        if channel is None or channel.hung_up:
            return
        channel.caller_gone()
        if self.server.debug:
            self.server.log.debug(event, uniqueid=channel.uniqueid)
        if self.running and self._grace is None:
            self._grace = self.server.loop.call_later(self.server.hangup_grace, self._grace_over)

    def _grace_over(self) -> None:
        self._grace = None
        if not self.running:
            return
        self.grace_cancelled = True
        if self.task is not None:
            self.task.cancel()
        else:  # a plain script whose replies never came
            self._finish("cancelled_after_hangup")

    def on_env_timeout(self) -> None:
        peer = self.transport.get_extra_info("peername")  # type: ignore[union-attr]
        self.server.stats["env_timeout"] += 1
        self.server.log.info("agi_env_timeout", peer=_peer_text(peer))
        self.close()

    def _end(self) -> None:
        """EOF, a lost connection or a protocol error: no more commands, the caller is gone."""
        self.ended = True
        waiter, self._waiter = self._waiter, None
        if waiter is _PLAIN:
            self._finish("success")  # as an async script's set_variables() returning False
        elif waiter is not None and not waiter.done():
            waiter.set_exception(ChannelGone("the AGI connection closed"))  # type: ignore[union-attr]
        if self._free:
            self._wake_free()
        if self.running:
            self._caller_gone("agi_connection_ended")
        else:
            self.close()  # no script (yet, or any more): nothing to wait for

    # --- used by Channel (the ``Wire`` it needs) ----------------------------------------

    @property
    def server_log(self) -> Any:
        return self.server.log

    async def exchange(self, commands: Sequence[Command]) -> list[Response | CommandFailed]:
        """Send ``commands`` once the wire is free; their replies (fewer after a 510/520)."""
        while self._waiter is not None:  # a concurrent or abandoned send owes its replies
            await self._wire_free()
        if self.ended:
            raise ChannelGone("the AGI connection closed")
        self.conn.send_commands(commands)  # LocalProtocolError: nothing was sent
        self.transport.write(self.conn.data_to_send())  # type: ignore[union-attr]
        self._waiter = waiter = self.server.loop.create_future()
        return await waiter

    async def _wire_free(self) -> None:
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

    # --- closing -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (idempotent); what was written still goes out first."""
        self.ended = True
        self.env_watch[0] = None
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
            if transport.get_write_buffer_size():  # a peer that stopped reading
                self.server.loop.call_later(self.server.close_timeout, transport.abort)

    def stop(self) -> None:
        """For ``AgiServer.close``: end a plain script still waiting for replies, and close."""
        if self.running and self.task is None:
            self._finish("cancelled")
        self.close()

    def forget(self) -> None:
        """All over: leave the server's books, and break the channel <-> session cycle so
        refcounting frees both at once (less work for the cyclic GC at high call rates)."""
        self.server.forgotten(self)
        self.channel = None
        self.transport = None  # and the transport <-> protocol one, should the transport keep us

    def _uniqueid(self) -> str:
        return self.channel.uniqueid if self.channel is not None else ""


def _peer_text(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = peer[0]
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer)


class AgiServer:
    """Listens for FastAGI connections and runs registered scripts.

    ``bind`` is a ``(host, port)`` pair and ``allow`` a list of networks, as ``config.py`` parses
    them from ``agi_bind`` / ``agi_allow`` (and with its defaults). ``stats`` counts finished
    calls by outcome (``success``, ``unknown_script``, ``error``, ``channel_gone``,
    ``cancelled_after_hangup``, ``cancelled``) plus ``peer_refused``, ``env_timeout`` and
    ``protocol_error``, for metrics: a successful call is logged at debug.
    """

    def __init__(
        self,
        registry: ScriptRegistry,
        services: Any,
        *,
        bind: tuple[str, int] = DEFAULT_AGI_BIND,
        allow: Iterable[str | Network] = DEFAULT_AGI_ALLOW,
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
        self.bind = (bind[0], int(bind[1]))
        self.allow: tuple[Network, ...] = tuple(
            ipaddress.ip_network(a, strict=False) for a in allow
        )
        self.env_timeout = env_timeout
        self.max_env_bytes = max_env_bytes
        self.hangup_grace = hangup_grace
        self.close_timeout = close_timeout
        self.sessions: set[AgiSession] = set()  # connection open or script running
        self.budget = ConnectionBudget("agi", max_connections)
        self.stats: Counter[str] = Counter()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        # Bound once in start(), when logging is configured: structlog's lazy proxy would
        # otherwise rebuild a logger on every call, even for a filtered-out debug event.
        self.log: Any = log
        self.debug = True  # whether debug events pass the level filter (set in start())
        self._server: asyncio.base_events.Server | None = None
        self._allowed_cache: dict[str, bool] = {}
        self._env_deadlines: deque[tuple[float, list[AgiSession | None]]] = deque()
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
        # create_server() calls listen() again on a given socket: with its default of 100 unless told
        self._server = await self.loop.create_server(lambda: AgiSession(self), sock=sock,
                                                     backlog=LISTEN_BACKLOG)
        self.log.info("agi_server_listening", host=self.address[0], port=self.address[1])

    async def close(self) -> None:
        """Stop listening, let running scripts finish (up to ``close_timeout``), then end them."""
        if self._server is not None:
            self._server.close()
        tasks = {s.task for s in self.sessions if s.task is not None and not s.task.done()}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.close_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for session in list(self.sessions):
            session.stop()
        if self._env_sweep is not None:
            self._env_sweep.cancel()
            self._env_sweep = None
        self._env_deadlines.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
            self.log.info("agi_server_closed")

    # --- the books: where a connection is accepted and forgotten ------------------------

    def opened(self, session: AgiSession) -> bool:
        """A connection arrived: False refuses it (the session then writes FAILURE and closes)."""
        peer = session.transport.get_extra_info("peername")  # type: ignore[union-attr]
        if not self.allowed(peer):
            self.stats["peer_refused"] += 1
            self.log.warning("agi_peer_refused", peer=_peer_text(peer))
            return False
        if self.budget.full(len(self.sessions)) and not self.evict_silent():
            self.budget.refused()  # conn_limits: the FastAGI connection budget is spent
            return False
        self.sessions.add(session)
        self.watch_env(session.env_watch)
        return True

    def forgotten(self, session: AgiSession) -> None:
        """The connection is closed and its script (if any) done."""
        self.sessions.discard(session)

    def finished(self, channel: Channel, outcome: str, started: float) -> None:
        """Count a finished call and log it (routine successes at debug only)."""
        self.stats[outcome] += 1
        level = _OUTCOME_LEVEL.get(outcome, "info")
        if level != "debug" or self.debug:
            getattr(self.log, level)(
                "agi_script_finished",
                uniqueid=channel.uniqueid,
                script=channel.request.script,
                outcome=outcome,
                hangup=channel.hung_up,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
            )

    # --- the environment deadline and the allowlist --------------------------------------

    def watch_env(self, watch: list[AgiSession | None]) -> None:
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
            addr = peer_ip(host)  # a dual-stack listener sees ::ffff:127.0.0.1 as 127.0.0.1
            if addr is None:
                return False
            ok = any(addr in net for net in self.allow)
            if len(self._allowed_cache) >= 1024:
                self._allowed_cache.clear()
            self._allowed_cache[host] = ok
        return ok


# A routine successful call is debug (per-call info logging costs more CPU than the rest of
# the call's Python code); anything an administrator should look at is info or above.
_OUTCOME_LEVEL = {"success": "debug", "unknown_script": "warning", "error": "error"}
