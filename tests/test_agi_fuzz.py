"""Property tests: what we send survives Asterisk's parse_args(); what we read never crashes us."""

from __future__ import annotations

import pytest
from asterisk_args import parse_args
from hypothesis import given, settings
from hypothesis import strategies as st

from agi_xmpp.agi_protocol import (
    MAX_WORDS,
    AgiConnection,
    Answered,
    EndOfStream,
    Env,
    Request,
    Response,
    State,
    quote,
)
from agi_xmpp.errors import LocalProtocolError, RemoteProtocolError


def test_port_matches_known_asterisk_behaviour() -> None:
    """The port reproduces parse_args() on hand-checked inputs."""
    assert parse_args(b'SET VARIABLE "A B" "x\\"y\\\\z"') == [
        b"SET", b"VARIABLE", b"A B", b'x"y\\z'
    ]
    assert parse_args(b'EXEC "" ""') == [b"EXEC", b"", b""]
    assert parse_args(b"a\\ b  c\td") == [b"a b", b"c", b"d"]
    assert parse_args(b'a"b c"d') == [b"ab cd"]
    assert parse_args(b"trailing\\") == [b"trailing"]
    assert parse_args(b"cut\0here") == [b"cut"]
    assert parse_args(b" ".join([b"w"] * 130)) == [b"w"] * 127


def fresh(version: str = "22.6.0") -> AgiConnection:
    """A connection ready for its first command."""
    conn = AgiConnection()
    assert isinstance(conn.receive_data(f"agi_version: {version}\n\n".encode())[0], Request)
    return conn


def sent(conn: AgiConnection, verb: str, *args: str) -> bytes:
    """send_command(), then the bytes it gave to write."""
    conn.send_command(verb, *args)
    return conn.data_to_send()


def sendable(text: str) -> bool:
    """What may legally travel: no NUL/CR/LF, and valid UTF-8."""
    if any(c in text for c in "\0\r\n"):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@settings(max_examples=2000)
@given(st.text())
def test_any_string_roundtrips_or_is_refused(value: str) -> None:
    """quote()+parse_args() gives back exactly the value, or it is refused before the wire."""
    conn = fresh()
    try:
        line = sent(conn, "SET VARIABLE", "X", value)
    except LocalProtocolError:
        assert not sendable(value) or len(value.encode("utf-8")) > 8000
        assert conn.state is State.IDLE
        return
    assert sendable(value)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and b"\0" not in line
    assert len(line) <= conn.line_limit
    assert parse_args(line[:-1]) == [b"SET", b"VARIABLE", b"X", value.encode("utf-8")]


@given(st.lists(st.text(alphabet=st.sampled_from(' \t"\\ab$,()\'é'), max_size=12), max_size=20))
def test_many_tricky_arguments_roundtrip(args: list[str]) -> None:
    """Several arguments dense in quotes, backslashes and blanks come back word for word."""
    conn = fresh()
    line = sent(conn, "EXEC", *args)
    assert parse_args(line[:-1]) == [b"EXEC", *(a.encode() for a in args)]


@given(st.lists(st.just("w"), min_size=0, max_size=MAX_WORDS + 5))
def test_word_count_never_overflows_argv(args: list[str]) -> None:
    """Either every word reaches Asterisk's argv, or the command is refused."""
    conn = fresh()
    try:
        line = sent(conn, "EXEC", *args)
    except LocalProtocolError:
        assert len(args) + 1 > MAX_WORDS
        return
    assert parse_args(line[:-1]) == [b"EXEC", *[b"w"] * len(args)]


@given(st.text(), st.sampled_from(["20.15.0", "20.16.0", "GIT-master-x", "23.1.0"]))
def test_quote_is_a_pure_function_of_the_text(value: str, version: str) -> None:
    """quote() either refuses or returns a double-quoted string with no bare inner quote."""
    try:
        q = quote(value)
    except LocalProtocolError:
        assert not all(c not in value for c in "\0\r\n")
        return
    assert q[0] == q[-1] == '"'
    inner = q[1:-1]
    i = 0
    while i < len(inner):  # every \ escapes the next char; no unescaped "
        if inner[i] == "\\":
            assert inner[i + 1] in '\\"'
            i += 2
        else:
            assert inner[i] != '"'
            i += 1
    assert fresh(version).line_limit in (2047, 8191)


TOKENS = [
    b"HANGUP\n",
    b"200 result=1\n",
    b"200 result=1 (x) endpos=3\n",
    b"100 result=0 Trying...\n",
    b"510 Invalid or unknown command\n",
    b"511 Command Not Permitted on a dead channel or intercept routine\n",
    b"520 Invalid command syntax.  Proper usage not available.\n",
    b"520-Invalid command syntax.  Proper usage follows:\n",
    b"520 End of proper usage.\n",
    b"agi_arg_1: x\n",
    b"agi_network_script: s?a=%zz&&=\n",
    b"\n",
    b"\r\n",
    b"\xff\xfe\n",
]
wire_chunks = st.lists(
    st.one_of(st.binary(max_size=40), st.sampled_from(TOKENS)), max_size=40
)


@settings(max_examples=1500)
@given(wire_chunks, st.booleans(), st.integers(min_value=1, max_value=300))
def test_parser_only_ever_raises_remote_protocol_error(
    chunks: list[bytes], eof: bool, max_env: int
) -> None:
    """On arbitrary bytes receive_data() returns events or raises RemoteProtocolError, only."""
    conn = AgiConnection(max_env_bytes=max_env, max_reply_bytes=200)
    try:
        for chunk in [*chunks, *([b""] if eof else [])]:
            conn.receive_data(chunk)
            if conn.state is State.IDLE:  # keep a command in flight to reach deeper states
                conn.send_command("NOOP")
            if conn.state is State.CLOSED:
                break
    except RemoteProtocolError:
        assert conn.state is State.ERROR
        with pytest.raises(RemoteProtocolError):
            conn.receive_data(b"\n")


@given(st.lists(st.text().filter(lambda t: "\n" not in t and sendable(t)), max_size=6))
def test_env_args_arrive_exactly(args: list[str]) -> None:
    """Any agi_arg_N value without a newline reaches Request.args exactly."""
    env = "".join(f"agi_arg_{n}: {a}\n" for n, a in enumerate(args, 1)) + "\n"
    conn = AgiConnection()
    (request,) = conn.receive_data(env.encode())
    assert isinstance(request, Request)
    assert request.args == tuple(args)


@given(st.lists(st.text().filter(sendable), max_size=8))
def test_plain_and_escaped_arguments_roundtrip(args: list[str]) -> None:
    """Any mix of arguments, with or without characters to escape, comes back word for word."""
    conn = fresh()
    line = sent(conn, "EXEC", *args)
    assert parse_args(line[:-1]) == [b"EXEC", *(a.encode() for a in args)]
    assert line == ("EXEC" + "".join(" " + quote(a) for a in args) + "\n").encode()


def drive(chunks: list[bytes]) -> list[object]:
    """Events (and a final error, if any) from feeding chunks after an empty environment block,
    with a long send in flight: every decision is the connection's, line by line."""
    conn = AgiConnection(max_env_bytes=300, max_reply_bytes=200)
    conn.receive_data(b"\n")
    conn.send_commands([("NOOP", ())] * 100)
    events: list[object] = []
    try:
        for chunk in chunks:
            for event in conn.receive_data(chunk):
                events.extend(event if isinstance(event, Answered) else [event])
                if isinstance(event, EndOfStream):
                    return events
    except RemoteProtocolError:
        events.append("RemoteProtocolError")
    return events


@settings(max_examples=500)
@given(wire_chunks)
def test_split_points_do_not_change_events(chunks: list[bytes]) -> None:
    """The same bytes give the same events whole or byte by byte (until the first error)."""
    data = b"".join(chunks)
    whole = drive([data, b""] if data else [b""])
    bytewise = drive([data[i : i + 1] for i in range(len(data))] + [b""])
    # A too-long line is caught before its newline when fed slowly: compare up to the error.
    if "RemoteProtocolError" in whole or "RemoteProtocolError" in bytewise:
        cut = min(len(whole), len(bytewise)) - 1
        assert whole[:cut] == bytewise[:cut]
    else:
        assert whole == bytewise


lines = st.one_of(
    st.builds(lambda k, v: f"{k}: {v}", st.sampled_from(["agi_a", "agi_b", "agi_arg_1"]),
              st.text().filter(lambda t: "\n" not in t)),
    st.text().filter(lambda t: "\n" not in t),
    st.sampled_from(["x: y: z", ": v", "agi_a:", "agi_a:  two"]),
)


@given(st.lists(lines, max_size=12), st.sampled_from(["agi_a", "agi_b", "agi_arg_1", "x", ""]))
def test_env_field_agrees_with_full_parse(block_lines: list[str], key: str) -> None:
    """Env.field() (keys without ": ", as every agi_ key) agrees with the full parse."""
    env = Env("\n".join(block_lines))
    expected = {}
    for line in block_lines:
        k, sep, v = line.partition(": ")
        if sep:
            expected[k] = v
    assert env.field(key) == expected.get(key)
    assert dict(env) == expected
    assert env.field(key) == expected.get(key)  # and the same once parsed


_ENV_KEYS = ["agi_network_script", "agi_version", "agi_arg_1", "agi_arg_2", "agi_arg_3",
             "agi_arg_4", "agi_channel", "agi_arg_10"]


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(_ENV_KEYS),
                          st.text(alphabet="ab/?=&:% \t", max_size=6)), max_size=12))
def test_request_agrees_with_the_env_mapping(lines: list[tuple[str, str]]) -> None:
    """Script, args and version are what the block read as a mapping says (last one wins),
    whatever the order, duplicates or gaps."""
    block = "".join(f"{key}: {value}\n" for key, value in lines) + "\n"
    conn = AgiConnection()
    (request,) = conn.receive_data(block.encode())
    assert isinstance(request, Request)
    env = dict(request.env)
    args = []
    while f"agi_arg_{len(args) + 1}" in env:
        args.append(env[f"agi_arg_{len(args) + 1}"])
    assert request.args == tuple(args)
    assert request.agi_version == env.get("agi_version", "")
    assert request.script == env.get("agi_network_script", "").partition("?")[0].strip("/").lower()


_NAMES = st.sampled_from(["A", "JABBER_STATUS", "__X1", "_x_"])


@settings(max_examples=300)
@given(st.lists(st.tuples(_NAMES, st.text(max_size=40)), max_size=5), st.sampled_from(
    ["22.6.0", "18.0.0"]))
def test_send_commands_is_send_command_one_reply_at_a_time(pairs, version) -> None:
    """send_commands() writes send_command()'s bytes for each, the next only after a reply;
    or refuses before the first leaves."""
    conn = fresh(version)
    commands = [("SET VARIABLE", (name, value)) for name, value in pairs]
    try:
        expected = []
        for command in commands:
            one = fresh(version)
            expected.append(sent(one, command[0], *command[1]))
    except LocalProtocolError:
        with pytest.raises(LocalProtocolError):
            conn.send_commands(commands)
        assert conn.data_to_send() == b"" and conn.state is State.IDLE
        return
    conn.send_commands(commands)
    lines = []
    events: list[object] = []  # an empty send is answered by nothing
    for _ in commands:
        lines.append(conn.data_to_send())
        assert conn.data_to_send() == b""  # one at a time
        events = conn.receive_data(b"200 result=1\n")
    assert lines == expected and conn.state is State.IDLE
    if commands:
        assert events == [Answered([Response(result="1", raw="200 result=1")] * len(commands))]
