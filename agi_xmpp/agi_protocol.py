"""Sans-I/O FastAGI connection (the Asterisk ``res_agi`` wire), in the style of h11 and websockets.

Feed what the socket gave to ``receive_data(bytes)`` (``b""`` is EOF): it returns the events
those bytes completed. Ask for commands with ``send_commands()`` (``send_command()`` for one),
and after a call of either kind write whatever ``data_to_send()`` returns: this object decides
what goes on the wire and when, the I/O layer only moves bytes (as in websockets). Nothing here
does I/O or knows about time: deadlines live in ``agi_server``.

Theory of operation
-------------------
States (``AgiConnection.state``)::

    ENV ──empty line──> IDLE ──send_commands()──> WAITING ──reply, none queued──> IDLE
                         │                         │  ├──reply, more queued: next line out, WAITING
                         │                         │  └──"520-"──> USAGE ──"520 "──> IDLE
                         │                         └── "100 ..." swallowed, stay WAITING
                         └── send_failure() ──> IDLE, and no command may follow
    any state ──EOF──> CLOSED (EndOfStream, again and again)
    any state ──peer breaks the protocol──> ERROR (RemoteProtocolError, again and again)

* ENV: Asterisk writes ``agi_key: value`` lines and one empty line (``setup_env`` in
  ``res/res_agi.c``), preceded by ``agi_network: yes`` and ``agi_network_script: SCRIPT?QUERY``
  (``launch_netscript``). The block becomes one ``Request``; its ``env`` is parsed in full only
  if read. Bytes that are not UTF-8 become U+FFFD. Over ``max_env_bytes`` is an error.
* IDLE/WAITING/USAGE: one command on the wire at a time. ``send_commands()`` checks every line
  it is given before any goes out, then this object sends each as the previous one is answered:
  a ``Response`` (``200``, or ``511`` for a dead channel) lets the next line out; a
  ``CommandFailed`` (``510``/``520``: our bug) drops the rest. When the send is over, one
  ``Answered`` event carries all its replies: one send, one answer, whatever the number of
  lines. A ``520-`` block is read up to its ``520 End of proper usage.`` line; ``100`` lines
  mean "keep reading".
* A ``HANGUP`` line is a notice, never a reply: ``run_agi`` writes it at the top of its loop when
  it sees the hangup, i.e. before a reply, between replies, or instead of one (the command we sent
  may be answered ``511`` on the dead channel afterwards). It yields ``HangupNotice`` in every
  state but ENV; in ENV it is remembered and yielded right after the ``Request``.
* Any other line while no command is in flight is the peer's fault.
* EOF anywhere is a clean end: a partial line or a partial environment block is dropped, and
  so are commands still queued.

Past the ~600-line guideline on purpose: the state machine, the one-pass ``Request`` parse and
the ``Env`` mapping it hands out are one unit (the parse and the mapping must agree on every
rule, e.g. "the last duplicate wins"), and about a third of the file is this documentation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import unquote

from agi_xmpp.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "FAILURE_LINE",
    "AgiConnection",
    "Answered",
    "CommandFailed",
    "EndOfStream",
    "Env",
    "HangupNotice",
    "Request",
    "Response",
    "State",
    "check_variable_name",
    "line_limit_for",
    "quote",
    "set_variable_commands",
]

# res_agi.c reads a command with fgets() into char buf[AGI_BUF_LEN]: at most AGI_BUF_LEN - 1
# bytes including the "\n". A longer line is cut there and the rest runs as a second command.
# AGI_BUF_LEN went from 2048 to 8192 in 20.16.0, 21.11.0, 22.6.0 and 23.0.0 ("res_agi: Increase
# AGI command buffer size from 2K to 8K", checked against each release tag).
SHORT_LINE_LIMIT = 2048 - 1
LONG_LINE_LIMIT = 8192 - 1
_FIRST_LONG_MINOR = {20: 16, 21: 11, 22: 6}
# res_agi.c: MAX_ARGS 128. parse_args() only bounds-checks unquoted words; a quoted word past
# the limit would write beyond argv[], so never send more words than argv can hold.
MAX_WORDS = 128 - 1
FAILURE_LINE = b"FAILURE\n"  # see AgiConnection.send_failure()

_VERSION = re.compile(r"(\d+)\.(\d+)")
_VARIABLE_NAME = re.compile(r"_{0,2}[A-Za-z][A-Za-z0-9_]*")
_VERB = re.compile(r"[A-Za-z]+(?: [A-Za-z]+)*")
# "200 result=X [(data)] [endpos=N] [anything else]"; the greedy data group keeps ")" that
# belong to a value (GET VARIABLE answers "200 result=1 (%s)" with the raw value inside).
_RESULT_TAIL = re.compile(r" \((?P<data>.*)\)(?: endpos=(?P<endpos>-?\d+))?(?: .*)?|"
                          r" endpos=(?P<endpos2>-?\d+)(?: .*)?|(?: .*)?", re.DOTALL)


class State(Enum):
    ENV = "env"
    IDLE = "idle"
    WAITING = "waiting"
    USAGE = "usage"
    CLOSED = "closed"
    ERROR = "error"


# Plain module names for the members: an Enum attribute lookup costs ~7x a global one, and the
# parser checks the state several times per line.
_ENV, _IDLE, _WAITING, _USAGE, _CLOSED, _ERROR = State


@dataclass(slots=True)
class Request:
    """The environment block: which script, with what. Read-only by convention: not frozen,
    because a frozen dataclass costs four times as much to build, once per call."""

    env: Env
    script: str
    options: dict[str, str]
    args: tuple[str, ...]
    agi_version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """A ``200 result=...`` reply, or a ``511`` (the command did not run: ``result`` ``"-1"``)."""

    code: int = 200
    result: str
    data: str | None = None
    raw: str = ""
    endpos: int | None = None


@dataclass(frozen=True, slots=True)
class CommandFailed:
    """``510`` unknown command or ``520`` bad syntax (``usage``: the ``520-`` block): our bug."""

    code: int
    text: str
    usage: str = ""


@dataclass(frozen=True, slots=True)
class HangupNotice:
    """Asterisk saw the channel hang up; replies may still follow."""


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The peer closed the connection."""


class Answered(list["Response | CommandFailed"]):
    """The event that ends a send: the list of its replies, one per command in order (fewer
    when a ``CommandFailed``, the last, dropped the rest). The wire is free again.

    A list itself rather than a dataclass holding one: it is made once per send, filled as
    the replies come, and handed over as it is.
    """

    __slots__ = ()


Event = Request | Answered | HangupNotice | EndOfStream


_QUOTE_SPACE_QUOTE = '" "'  # between two quoted arguments
_LIMITS: dict[str, int] = {}  # agi_version -> line limit: saves ~2.5k instructions per call
# verbs already checked -> (the verb and an opening quote, how many arguments it may take)
_VERB_PREFIXES: dict[str, tuple[str, int]] = {}


def _verb_prefix(verb: str) -> tuple[str, int]:
    if type(verb) is not str or _VERB.fullmatch(verb) is None:
        raise LocalProtocolError(f"not an AGI command verb: {verb!r}")
    prefix = (verb + ' "', MAX_WORDS - (verb.count(" ") + 1))
    if len(_VERB_PREFIXES) < 256:  # verbs are constants in our code; the cap is a safety net
        _VERB_PREFIXES[verb] = prefix
    return prefix


def _escaped(verb: str, args: Sequence[str], max_args: int) -> bytes:
    """``send_commands()``'s line when an argument needs escaping (or none is given), or its
    refusal (too many words, NUL/CR/LF)."""
    if len(args) > max_args:
        raise LocalProtocolError(f"more than {MAX_WORDS} words in one AGI command")
    return (" ".join([verb, *map(quote, args)]) + "\n").encode()


def line_limit_for(agi_version: str) -> int:
    """Longest command line (bytes, newline included) that this ``agi_version`` reads whole."""
    m = _VERSION.match(agi_version)
    if m is None:  # "GIT-master-...", "certified-...", "": unknown, so be conservative
        return SHORT_LINE_LIMIT
    major, minor = int(m[1]), int(m[2])
    if major >= 23 or minor >= _FIRST_LONG_MINOR.get(major, 1 << 30):
        return LONG_LINE_LIMIT
    return SHORT_LINE_LIMIT


def set_variable_commands(variables: Mapping[str, str]) -> list[tuple[str, tuple[str, str]]]:
    """``SET VARIABLE`` commands for ``send_commands()``, in order; names checked first."""
    commands = []
    for pair in variables.items():  # (name, value): the command's arguments as they are
        if pair[0] not in _GOOD_NAMES:
            check_variable_name(pair[0])  # or LocalProtocolError
        commands.append(("SET VARIABLE", pair))
    return commands


def check_variable_name(name: str) -> str:
    """Return ``name`` if it is a plain channel variable name, else raise ``LocalProtocolError``."""
    if name in _GOOD_NAMES:
        return name
    if type(name) is not str or _VARIABLE_NAME.fullmatch(name) is None:
        raise LocalProtocolError(f"not a valid channel variable name: {name!r}")
    if len(_GOOD_NAMES) < 1024:
        _GOOD_NAMES.add(name)
    return name


_GOOD_NAMES: set[str] = set()  # names already checked (scripts use a few constants)


def quote(arg: str) -> str:
    """Quote one argument so res_agi.c's parse_args() gives back exactly ``arg``.

    Inside quotes parse_args keeps spaces and tabs, turns ``\\x`` into ``x`` and toggles on a bare
    ``"``; so escaping ``\\`` and ``"`` is enough. NUL, CR and LF cannot travel at all (fgets()
    ends the line, C strings end at NUL).
    """
    if "\n" in arg or "\r" in arg or "\0" in arg:
        raise LocalProtocolError("an AGI argument cannot contain NUL, CR or LF")
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_options(query: str) -> dict[str, str]:
    # Strict percent-decoding: "+" stays "+" (this is a dialplan URL, not an HTML form).
    options: dict[str, str] = {}
    for part in query.split("&"):
        if part:
            key, _, value = part.partition("=")
            options[unquote(key, errors="replace").lower()] = unquote(value, errors="replace")
    return options


class Env(Mapping[str, str]):
    """The environment block as a read-only mapping, parsed only if someone reads it.

    Every ``agi_key: value`` line is an entry (the last one wins); other lines are ignored. Most
    calls only need the few fields a ``Request`` holds, which ``field()`` finds without parsing
    the rest: this is the biggest single saving per call.
    """

    __slots__ = ("_dict", "_text")

    def __init__(self, block: str) -> None:
        self._text = f"\n{block}\n"  # one copy of the block, not two
        self._dict: dict[str, str] | None = None

    def field(self, key: str) -> str | None:
        """``self.get(key)``, without parsing the whole block."""
        if self._dict is not None:
            return self._dict.get(key)
        text = self._text
        needle = "\n" + key + ": "  # setup_env() in res_agi.c: "agi_%s: %s\n"
        at = text.rfind(needle)
        if at < 0:
            return None
        at += len(needle)
        return text[at : text.index("\n", at)]

    def _parsed(self) -> dict[str, str]:
        env = self._dict
        if env is None:
            env = self._dict = {}
            for line in self._text.split("\n"):
                key, sep, value = line.partition(": ")
                if sep:
                    env[key] = value
        return env

    def __getitem__(self, key: str) -> str:
        return self._parsed()[key]

    def get(self, key: str, default: Any = None) -> Any:
        value = self.field(key)
        return default if value is None else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.field(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._parsed())

    def __len__(self) -> int:
        return len(self._parsed())

    def __repr__(self) -> str:
        return f"Env({self._parsed()!r})"


# "\n" + key + ": ", as setup_env() in res_agi.c writes "agi_%s: %s\n" (see Env.field), made
# once: building these per call cost more than the searches themselves.
_SCRIPT_KEY = "\nagi_network_script: "
_VERSION_KEY = "\nagi_version: "
_ARG_KEYS = tuple(f"\nagi_arg_{n}: " for n in range(1, MAX_WORDS + 1))


def _make_request(block: str) -> tuple[Request, bool]:
    """The ``Request`` of an environment block, and whether it holds a ``HANGUP`` line.

    The same lookups as ``Env.field`` (the last duplicate wins), written out: this runs once
    per call and was the costliest function of a ``jabber_status`` call.
    """
    env = Env(block)
    text = env._text
    # rpartition()/partition(), not rfind()/index(): those parse their arguments the slow way,
    # which cost more than the searches themselves (docs/performance.md).
    _, found, rest = text.rpartition(_SCRIPT_KEY)
    if found:
        target, _, query = rest.partition("\n")[0].partition("?")
    else:
        target = query = ""
    args = []
    for key in _ARG_KEYS:  # agi_arg_1, agi_arg_2, ... up to the first one missing
        _, found, rest = text.rpartition(key)
        if not found:
            break
        args.append(rest.partition("\n")[0])
    _, found, rest = text.rpartition(_VERSION_KEY)
    version = rest.partition("\n")[0] if found else ""
    request = Request(  # positional: keywords cost a third more here
        env,
        target.strip("/").lower(),
        _parse_options(query) if query else {},
        tuple(args),
        version,
    )
    return request, "\nHANGUP\n" in text


class AgiConnection:
    """One FastAGI connection, server side, with no I/O."""

    __slots__ = ("max_env_bytes", "max_reply_bytes", "state", "request", "line_limit",
                 "hangup_seen", "failure_sent", "_buf", "_scan", "_eof", "_lines", "_usage", "_error",
                 "_queued", "_replies", "_out")

    def __init__(self, max_env_bytes: int = 65536, max_reply_bytes: int = 1 << 20) -> None:
        self.max_env_bytes = max_env_bytes
        self.max_reply_bytes = max_reply_bytes
        self.state = _ENV
        self._lines = False  # reading reply lines: IDLE, WAITING or USAGE
        self.request: Request | None = None
        self.line_limit = SHORT_LINE_LIMIT
        self.hangup_seen = False
        self.failure_sent = False
        self._buf: bytes | bytearray = b""  # the start of a line (ENV: the block) so far
        # Set only when needed (a slot read before it is set would be our bug): _scan, ENV:
        # where the search for the blank line resumes; _usage, a 520- block being read;
        # _error, what the peer did wrong; _replies, those of the send in flight.
        self._eof = False
        self._queued: list[bytes] | tuple[()] = ()  # lines of this send after the one on the wire
        self._out = b""  # for data_to_send()

    def __repr__(self) -> str:
        return f"<AgiConnection {self.state.value} buffered={len(self._buf)}>"

    # --- input -----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer (``b""``: it closed); return the events they complete.

        In order: the ``Request`` (then a ``HangupNotice`` if the block held a ``HANGUP``),
        replies, notices, and ``EndOfStream`` once closed (again on every later call). Raises
        ``RemoteProtocolError`` when the peer broke the protocol (again on every later call);
        events of the same call before the fault are dropped with the connection.
        """
        if not (self._lines and data):  # ENV, CLOSED, ERROR, or EOF now
            return self._not_lines(data)
        if self._buf:  # the start of a line came with an earlier read
            if b"\n" not in data:  # still no end: keep it, each byte copied once
                self._buf += data
                if len(self._buf) > self.max_reply_bytes:
                    self._fail(f"reply line longer than {self.max_reply_bytes} bytes")
                return []
            data = bytes(self._buf) + data
            self._buf = b""
        # partition() and split(), not find(): bytes.find() parses its arguments the slow way,
        # and that cost more than the rest of a reply's handling (docs/performance.md).
        raw, newline, rest = data.partition(b"\n")
        if not newline:
            return self._partial(raw)
        if rest:  # more than one line in this read (split: linear however many)
            lines: Sequence[bytes] = rest.split(b"\n")
            tail = lines.pop()  # type: ignore[attr-defined]
            if tail:
                self._partial(tail)
            lines.insert(0, raw)  # type: ignore[attr-defined]
        else:
            lines = (raw,)  # the usual read: one whole line
        events: list[Event] = []
        for raw in lines:
            reply: Any = _RESULTS.get(raw)
            if reply is None or self.state is not _WAITING:
                reply = self._line(raw)
                if reply is None:  # 100, a line of a 520- block
                    continue
                if type(reply) is HangupNotice:
                    events.append(reply)
                    continue
            # A reply ends the wait, here only: the next line of this send goes out, or the
            # send is answered (a 510/520 is our bug: the rest would only repeat it).
            self._replies.append(reply)
            queued = self._queued
            if queued and type(reply) is Response:
                line = queued.pop()
                self._out = self._out + line if self._out else line
            else:
                events.append(self._replies)
                self._queued = ()
                self.state = _IDLE
        return events

    def _partial(self, start: bytes) -> list[Event]:
        """Keep the start of a line until its end comes."""
        if len(start) > self.max_reply_bytes:
            self._fail(f"reply line longer than {self.max_reply_bytes} bytes")
        self._buf = bytearray(start)
        return []

    def _not_lines(self, data: bytes) -> list[Event]:
        """``receive_data()`` in ENV, after an error, after EOF, or for EOF itself."""
        if self.state is _ERROR:
            raise RemoteProtocolError(self._error)
        if not data:
            return self._closed()
        if self._eof:
            raise LocalProtocolError("receive_data() after EOF")
        return self._env_data(data)

    def _closed(self) -> list[Event]:
        """EOF: whatever is left unparsed is dropped, and so are commands not yet sent."""
        self._eof = True
        self._lines = False
        self.state = _CLOSED
        self._queued = ()
        self._buf = b""
        return [EndOfStream()]

    def _env_data(self, data: bytes) -> list[Event]:
        """ENV: the ``Request`` once the block is complete (a ``HangupNotice`` after it if the
        block held one, and the events of any bytes after the block); else []."""
        buf = self._buf
        pieces = bool(buf)
        if pieces:  # the block comes in pieces: search only what is new (and one byte before)
            buf += data
            end = buf.find(b"\n\n", self._scan - 1)  # where its last line's "\n" is, or -1
        else:  # partition(), not find(): find() parses its arguments the slow way
            buf = data
            block, blank, rest = buf.partition(b"\n\n")
            end = len(block) if blank else -1
        if buf[:1] == b"\n":  # an empty block: the blank line comes first
            block, rest, size = b"", buf[1:], 1
        elif end < 0:
            if len(buf) >= self.max_env_bytes:
                self._fail(f"environment block longer than {self.max_env_bytes} bytes")
            self._buf = buf if pieces else bytearray(buf)
            self._scan = len(buf)
            return []
        else:
            if pieces:
                block, rest = buf[:end], buf[end + 2 :]
            size = end + 2  # the block and its blank line
        if size > self.max_env_bytes:
            self._fail(f"environment block longer than {self.max_env_bytes} bytes")
        # "\n" never occurs inside a UTF-8 sequence, so decoding before splitting is safe.
        request, hangup = _make_request(block.decode("utf-8", "replace"))
        self.request = request
        limit = _LIMITS.get(request.agi_version)
        if limit is None:  # one Asterisk has one version: the regex runs once, not per call
            limit = line_limit_for(request.agi_version)
            if len(_LIMITS) < 64:
                _LIMITS[request.agi_version] = limit
        self.line_limit = limit
        self.state = _IDLE
        self._lines = True
        self._buf = b""
        events: list[Event] = [request]
        if hangup:
            self.hangup_seen = True
            events.append(HangupNotice())
        if rest:  # lines after the block, in the same read
            events += self.receive_data(bytes(rest))
        return events

    def _line(self, raw: bytes) -> Response | CommandFailed | HangupNotice | None:
        """Any line but the usual ``200`` reply: a reply, a notice, or None to keep reading."""
        if len(raw) > self.max_reply_bytes:
            self._fail(f"reply line longer than {self.max_reply_bytes} bytes")
        line = raw.decode("utf-8", "replace")
        state = self.state
        if state is _WAITING:
            if line[:11] == "200 result=":
                return _parse_result(line, raw)
            code = line[:4]
            if code == "511 ":  # res_agi.c: the command did not run (dead channel, intercept)
                return Response(code=511, result="-1", raw=line)
            if code == "510 " or code == "520 ":
                return CommandFailed(int(line[:3]), line[4:])
            if code == "100 " or code == "100-":  # "100 Trying...": keep reading
                return None
            if code == "520-":
                self.state = _USAGE
                self._usage = [line[4:]]
                return None
        elif state is _USAGE:
            if line[:4] == "520 ":  # res_agi.c: "520 End of proper usage."
                first, *usage = self._usage
                self._usage = []
                return CommandFailed(520, first, "\n".join(usage))
            if line != "HANGUP":
                self._usage.append(line)
                return None
        if line == "HANGUP":
            self.hangup_seen = True
            return HangupNotice()
        if state is _WAITING:
            self._fail(f"unexpected reply {_brief(line)}")
        self._fail(f"unexpected line with no command in flight: {_brief(line)}")
        return None  # not reached

    def _fail(self, message: str) -> None:
        self.state = _ERROR
        self._lines = False
        self._error = message
        self._queued = ()
        raise RemoteProtocolError(message)

    # --- output ----------------------------------------------------------------------------

    def send_command(self, verb: str, *args: str) -> None:
        """``send_commands([(verb, args)])``: one command, every argument quoted."""
        self.send_commands(((verb, args),))

    def send_commands(self, commands: Iterable[tuple[str, Sequence[str]]]) -> None:
        """Send ``(verb, args)`` commands in order, each once the previous one is answered.

        The one encoder: ``verb "arg" "arg"...\\n``, every argument quoted. Every line is
        checked before the first goes out: ``LocalProtocolError`` (nothing sent) for NUL/CR/LF,
        a line longer than this Asterisk reads whole, too many words, a bad verb, or when a
        command is already in flight. Each reply is an event; the state is ``IDLE`` again once
        the last is answered or a ``510``/``520`` dropped the rest.
        """
        if self.state is not _IDLE or self.failure_sent:
            self._check_can_send()
        limit = self.line_limit
        lines: list[bytes] = []
        append = lines.append
        try:
            for verb, args in commands:
                prefix, max_args = _VERB_PREFIXES.get(verb) or _verb_prefix(verb)
                plain = "".join(args)
                if '"' not in plain and "\\" not in plain and "\n" not in plain \
                        and "\r" not in plain and "\0" not in plain \
                        and args and len(args) <= max_args:
                    # nothing to escape or refuse: the bytes quote() would give, in one go
                    # (five "in" tests cost half of one isprintable(), which scans per char)
                    data = f'{prefix}{_QUOTE_SPACE_QUOTE.join(args)}"\n'.encode()
                else:
                    data = _escaped(verb, args, max_args)
                if len(data) > limit:
                    version = self.request.agi_version if self.request else ""
                    raise LocalProtocolError(
                        f"AGI command of {len(data)} bytes is over this Asterisk's limit of "
                        f"{limit} (agi_version {version!r})"
                    )
                append(data)
        except UnicodeEncodeError as exc:
            raise LocalProtocolError("an AGI argument is not encodable as UTF-8") from exc
        if not lines:
            return
        lines.reverse()  # popped from the end, in order
        self._replies = Answered()
        line = lines.pop()
        self._out = self._out + line if self._out else line
        self._queued = lines
        self.state = _WAITING

    def send_failure(self) -> None:
        """Send the line that makes Asterisk end the AGI with ``AGISTATUS=FAILURE``.

        res_agi.c run_agi(): a line read from the script that starts with "failure"
        (strncasecmp, 7 chars; "Special case for inability to execute child process") sets
        AGI_RESULT_FAILURE and leaves the loop; agi_exec_full() then sets AGISTATUS=FAILURE and
        returns 0, so the dialplan goes on and the caller is not hung up. Merely closing the
        socket reads as "Program terminated" and leaves AGISTATUS=SUCCESS.
        """
        self._check_can_send()
        self.failure_sent = True
        self._out += FAILURE_LINE

    def data_to_send(self) -> bytes:
        """The bytes to write now (``b""`` when there are none); each is returned once."""
        data = self._out
        self._out = b""
        return data

    def _check_can_send(self) -> None:
        state = self.state
        if state is _IDLE and not self.failure_sent:
            return
        if state is _ENV:
            raise LocalProtocolError("no command before the environment block is complete")
        if state in (_WAITING, _USAGE):
            raise LocalProtocolError("a command is already waiting for its reply")
        if self.failure_sent:
            raise LocalProtocolError("FAILURE was sent: no command may follow")
        raise LocalProtocolError(f"connection is {state.value}")


def _brief(line: str) -> str:
    # Only the start: the rest of a stray line may be a channel variable's value, and this
    # text ends up in logs.
    return f"{line[:4]!r}... ({len(line)} chars)"


# "200 result=1" and friends, by the bytes of the line: immutable, so shared. The one cache of
# replies: a dict lookup instead of a decode and a parse for nearly every reply.
_RESULTS: dict[bytes, Response] = {}


def _parse_result(line: str, raw: bytes) -> Response:
    """Parse a line that starts with "200 result=" (``raw``: its bytes)."""
    rest = line[11:]
    space = rest.find(" ")
    if space < 0:  # the common "200 result=1"
        response = Response(result=rest, raw=line)
        if len(_RESULTS) < 64:
            _RESULTS[raw] = response
        return response
    m = _RESULT_TAIL.fullmatch(rest, space)
    assert m is not None  # the last alternative matches anything
    endpos = m["endpos"] or m["endpos2"]
    return Response(
        result=rest[:space], data=m["data"], raw=line, endpos=int(endpos) if endpos else None
    )
