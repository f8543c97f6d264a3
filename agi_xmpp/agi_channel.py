"""The ``Channel`` facade: one AGI call as a script sees it.

A script reads the call (``request``, ``env``, ``args``, ``options``, ``uniqueid``), sets and reads
channel variables and sends commands; whether the caller is still there is ``hung_up`` (and the
``hangup`` event). The commands go through the listener's session (``agi_server``), which owns
the wire; this module never touches a socket and does not import the listener.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from .agi_protocol import (
    CommandFailed,
    Env,
    Request,
    Response,
    check_variable_name,
    set_variable_commands,
)
from .errors import ChannelGone, ProtocolError
from .values import decode_b64_value

__all__ = ["Channel", "Command", "Wire"]

Command = tuple[str, Sequence[str]]  # (verb, args)


class Wire(Protocol):
    """What a ``Channel`` needs from the connection it belongs to (``agi_server``'s session)."""

    @property
    def server_log(self) -> Any: ...

    async def exchange(self, commands: Sequence[Command]) -> list[Response | CommandFailed]:
        """Send the commands (each once the previous is answered) and return their replies."""
        ...


class Channel:
    """One AGI call as a script sees it; exactly one command is on the wire at a time.

    Concurrent ``command()`` calls queue behind each other. A command whose caller was cancelled
    still owns the wire until Asterisk answers it.
    """

    __slots__ = ("request", "line_limit", "hung_up", "_hangup", "_wire", "_log", "_log_context")

    def __init__(self, wire: Wire, request: Request, line_limit: int) -> None:
        self.request = request
        self.line_limit = line_limit
        """Longest command line (bytes, newline included) this Asterisk accepts."""
        self.hung_up = False  # what ``hangup`` says, without creating the Event
        self._hangup: asyncio.Event | None = None  # made on first use: most scripts never wait
        self._wire = wire
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

    def caller_gone(self) -> None:
        """For the session: the caller hung up, or the connection ended."""
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
    def log(self) -> Any:
        """A structlog logger bound to this call's ``uniqueid`` and ``script``."""
        if self._log is None:
            context = {"uniqueid": self.uniqueid, "script": self.request.script}
            if self._log_context:
                context.update(self._log_context)
            self._log = self._wire.server_log.bind(**context)
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
        """Send one command (every argument quoted) and return its reply.

        A dead channel's ``511`` is a ``Response(code=511, result="-1")``, not an exception.
        Raises ``LocalProtocolError`` (nothing sent) for an unsendable argument,
        ``ProtocolError`` when Asterisk answers ``510``/``520`` (our bug), and ``ChannelGone``
        once the connection has ended.
        """
        (reply,) = await self._wire.exchange(((verb, args),))
        if type(reply) is Response:
            return reply
        raise ProtocolError(f"{verb}: Asterisk answered {reply.code} {reply.text}")

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

        A refused one (``511``) does not stop the rest. Every line is checked before the first
        is sent; the connection sends each as the previous reply arrives, and the script
        resumes once, with every reply.
        """
        commands = set_variable_commands(variables)
        if not commands:
            return True
        try:
            replies = await self._wire.exchange(commands)
        except ChannelGone:
            self.log.debug("agi_set_variable_channel_gone", variables=len(commands))
            return False
        confirmed = len(replies) == len(commands)
        for reply in replies:
            if type(reply) is not Response:
                raise ProtocolError(f"SET VARIABLE: Asterisk answered {reply.code} {reply.text}")
            if reply.code != 200:
                confirmed = False
                self.log.debug("agi_command_refused_dead_channel", verb="SET VARIABLE")
        return confirmed

    async def get_variable_exact(self, name: str) -> str:
        """The exact value of channel variable ``name`` (any text: newlines, quotes, commas).

        Raises ``LocalProtocolError`` for an invalid name, ``ChannelGone`` if the connection
        has ended or the channel refuses the command.
        """
        check_variable_name(name)
        reply = await self.command("GET FULL VARIABLE", f"${{BASE64_ENCODE(${{{name}}})}}")
        if reply.code != 200:
            raise ChannelGone(f"channel refused GET FULL VARIABLE {name}")
        if reply.result != "1":  # "200 result=0": the channel went away under Asterisk
            return ""
        return decode_b64_value(reply.data or "")
