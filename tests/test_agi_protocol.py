"""Wire transcripts for the sans-I/O FastAGI connection: (bytes in, events out)."""

from __future__ import annotations

import pytest

from agi_xmpp.agi_protocol import (
    AgiConnection,
    Answered,
    CommandFailed,
    EndOfStream,
    HangupNotice,
    Request,
    Response,
    State,
    check_variable_name,
    line_limit_for,
    quote,
)
from agi_xmpp.errors import LocalProtocolError, RemoteProtocolError

# What res_agi.c writes: launch_netscript() then setup_env() (Asterisk 22.6, trimmed to taste).
ENV = (
    b"agi_network: yes\n"
    b"agi_network_script: Jabber_Send?var=MSG&Timeout=30&nick=a%20b+c\n"
    b"agi_request: agi://127.0.0.1/Jabber_Send?var=MSG&Timeout=30&nick=a%20b+c\n"
    b"agi_channel: PJSIP/100-00000001\n"
    b"agi_language: en\n"
    b"agi_type: PJSIP\n"
    b"agi_uniqueid: 1700000000.1\n"
    b"agi_version: 22.6.0\n"
    b"agi_callerid: 100\n"
    b"agi_calleridname: Alice: \"the boss\"\n"
    b"agi_accountcode: \n"
    b"agi_arg_1: work\n"
    b"agi_arg_2: bob@example.com\n"
    b"agi_arg_3:  two  spaces, a comma\n"
    b"\n"
)


def chunkings(data: bytes) -> list[list[bytes]]:
    """The same bytes whole, byte by byte, and in two uneven halves."""
    cut = min(7, len(data) - 1)  # never an empty chunk: b"" means EOF
    return [[data], [data[i : i + 1] for i in range(len(data))], [data[:cut], data[cut:]]]


def feed(conn: AgiConnection, chunks: list[bytes]) -> list[object]:
    """Feed chunks one at a time, as an I/O layer would; the replies of an Answered in line."""
    events: list[object] = []
    for chunk in chunks:
        for event in conn.receive_data(chunk):
            events.extend(event if isinstance(event, Answered) else [event])
            if isinstance(event, EndOfStream):
                return events
    return events


def sent(conn: AgiConnection, verb: str, *args: str) -> bytes:
    """send_command(), then the bytes it gave to write."""
    conn.send_command(verb, *args)
    return conn.data_to_send()


def ready(env: bytes = ENV, command: tuple[str, ...] | None = ("NOOP",)) -> AgiConnection:
    """A connection past its environment block, with one command in flight."""
    conn = AgiConnection()
    assert isinstance(conn.receive_data(env)[0], Request)
    if command is not None:
        sent(conn, *command)
    return conn


# --- environment block ---------------------------------------------------------------------


@pytest.mark.parametrize("chunks", chunkings(ENV), ids=["whole", "bytewise", "halves"])
def test_env_block_becomes_one_request(chunks: list[bytes]) -> None:
    """The environment block yields exactly one Request however the bytes are split."""
    conn = AgiConnection()
    events = feed(conn, chunks)
    assert len(events) == 1
    request = events[0]
    assert isinstance(request, Request)
    assert request.script == "jabber_send"
    assert request.options == {"var": "MSG", "timeout": "30", "nick": "a b+c"}
    assert request.args == ("work", "bob@example.com", " two  spaces, a comma")
    assert request.agi_version == "22.6.0"
    assert request.env["agi_calleridname"] == 'Alice: "the boss"'
    assert request.env["agi_accountcode"] == ""
    assert conn.state is State.IDLE
    assert conn.line_limit == 8191


def test_env_with_junk_after_keeps_junk_for_later() -> None:
    """Bytes after the blank line are not part of the request; an incomplete line waits."""
    conn = AgiConnection()
    events = conn.receive_data(ENV + b"HANGUP\n200 res")
    assert [type(e) for e in events] == [Request, HangupNotice]


@pytest.mark.parametrize(
    ("script_line", "script", "options"),
    [
        (b"", "", {}),
        (b"agi_network_script: jabber_status\n", "jabber_status", {}),
        (b"agi_network_script: /CHAT_MENU/?retries=1&&x\n", "chat_menu", {"retries": "1", "x": ""}),
        (b"agi_network_script: s?a=%E2%82%AC&a=2&b=%ZZ\n", "s", {"a": "2", "b": "%ZZ"}),
        (b"agi_network_script: s?m=%C3\n", "s", {"m": "\ufffd"}),
    ],
)
def test_script_and_options(script_line: bytes, script: str, options: dict[str, str]) -> None:
    """agi_network_script splits into a lower-cased script and percent-decoded options."""
    conn = AgiConnection()
    (request,) = conn.receive_data(b"agi_network: yes\n" + script_line + b"agi_arg_1: x\n\n")
    assert isinstance(request, Request)
    assert (request.script, request.options, request.args) == (script, options, ("x",))


def test_args_are_counted_from_agi_arg_keys() -> None:
    """Only agi_arg_1..N present in order become args; empty args are kept."""
    env = b"agi_arg_1: \nagi_arg_2: b\nagi_arg_4: d\n\n"
    request = ready(env, None).request
    assert request is not None and request.args == ("", "b")


def test_env_invalid_utf8_is_replaced_not_fatal() -> None:
    """Invalid UTF-8 in an env line becomes U+FFFD and never raises."""
    request = ready(b"agi_calleridname: Ren\xe9\xff\nagi_arg_1: \xc3\n\n", None).request
    assert request is not None
    assert request.env["agi_calleridname"] == "Ren\ufffd\ufffd"
    assert request.args == ("\ufffd",)


def test_empty_env_block_is_a_request() -> None:
    """A lone blank line is an (empty) environment block."""
    conn = AgiConnection()
    (request,) = conn.receive_data(b"\n")
    assert isinstance(request, Request) and request.script == "" and request.args == ()
    assert conn.line_limit == 2047


def test_env_limit_exact_size_is_accepted() -> None:
    """A block of exactly max_env_bytes (blank line included) is accepted."""
    block = b"agi_x: " + b"y" * (100 - 7 - 2) + b"\n\n"
    assert len(block) == 100
    conn = AgiConnection(max_env_bytes=100)
    assert isinstance(conn.receive_data(block)[0], Request)


@pytest.mark.parametrize("complete", [True, False])
def test_env_limit_one_byte_over_is_refused(complete: bool) -> None:
    """A block over max_env_bytes is the peer's fault, finished or not."""
    block = b"agi_x: " + b"y" * (101 - 7 - 2) + b"\n\n"
    conn = AgiConnection(max_env_bytes=100)
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(block if complete else block[:-1])
    assert conn.state is State.ERROR
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"\n")


def test_env_limit_bytewise() -> None:
    """Fed byte by byte, an endless env block is refused once it passes the limit."""
    conn = AgiConnection(max_env_bytes=64)
    with pytest.raises(RemoteProtocolError):
        for _ in range(65):
            assert conn.receive_data(b"a") == []


@pytest.mark.parametrize("cut", [0, 1, 20, len(ENV) - 1])
def test_eof_mid_env_is_a_clean_end(cut: int) -> None:
    """EOF before the blank line gives EndOfStream, repeatedly, and no Request."""
    conn = AgiConnection()
    events = feed(conn, [ENV[:cut], b""])
    assert events == [EndOfStream()]
    assert conn.receive_data(b"") == [EndOfStream()]
    assert conn.state is State.CLOSED


def test_hangup_inside_env_block_follows_the_request() -> None:
    """A HANGUP line inside the env block is reported right after the Request."""
    conn = AgiConnection()
    events = feed(conn, [b"agi_arg_1: a\nHANGUP\n\n"])
    assert [type(e) for e in events] == [Request, HangupNotice]


# --- replies ------------------------------------------------------------------------------

REPLIES = [
    (b"200 result=1\n", [Response(result="1", raw="200 result=1")]),
    (b"200 result=-1\n", [Response(result="-1", raw="200 result=-1")]),
    (
        b"200 result=1 (a value (with) parens)\n",
        [
            Response(
                result="1", data="a value (with) parens", raw="200 result=1 (a value (with) parens)"
            )
        ],
    ),
    (b"200 result=1 ()\n", [Response(result="1", data="", raw="200 result=1 ()")]),
    (
        b"200 result= (timeout)\n",
        [Response(result="", data="timeout", raw="200 result= (timeout)")],
    ),
    (
        b"200 result=0 endpos=12345\n",
        [Response(result="0", raw="200 result=0 endpos=12345", endpos=12345)],
    ),
    (
        b"200 result=35 (dtmf) endpos=160\n",
        [Response(result="35", data="dtmf", raw="200 result=35 (dtmf) endpos=160", endpos=160)],
    ),
    (
        b"200 result=1 (speech) endpos=8 results=1 x\n",
        [
            Response(
                result="1",
                data="speech",
                raw="200 result=1 (speech) endpos=8 results=1 x",
                endpos=8,
            )
        ],
    ),
    (b"100 result=0 Trying...\n200 result=0\n", [Response(result="0", raw="200 result=0")]),
    (b"510 Invalid or unknown command\n", [CommandFailed(510, "Invalid or unknown command")]),
    (
        b"511 Command Not Permitted on a dead channel or intercept routine\n",
        # the command did not run: the connection reports it as result -1, not an error
        [Response(code=511, result="-1", raw="511 Command Not Permitted on a dead channel or intercept routine")],
    ),
    (
        b"520 Invalid command syntax.  Proper usage not available.\n",
        [CommandFailed(520, "Invalid command syntax.  Proper usage not available.")],
    ),
    (
        (
            b"520-Invalid command syntax.  Proper usage follows:\n"
            b" Usage: SET VARIABLE <variablename> <value>\n"
            b"\n"
            b"200 result=1 looks like a reply but is usage text\n"
            b"520 End of proper usage.\n"
        ),
        [
            CommandFailed(
                520,
                "Invalid command syntax.  Proper usage follows:",
                " Usage: SET VARIABLE <variablename> <value>\n\n"
                "200 result=1 looks like a reply but is usage text",
            )
        ],
    ),
    # HANGUP before, instead of, and around replies: a notice, never the reply.
    (b"HANGUP\n200 result=1\n", [HangupNotice(), Response(result="1", raw="200 result=1")]),
    (
        b"HANGUP\n511 Command Not Permitted on a dead channel or intercept routine\n",
        [
            HangupNotice(),
            Response(code=511, result="-1", raw="511 Command Not Permitted on a dead channel or intercept routine"),
        ],
    ),
    (b"HANGUP\n", [HangupNotice()]),
    (b"200 result=1\nHANGUP\n", [Response(result="1", raw="200 result=1"), HangupNotice()]),
    (b"HANGUP\n100 Trying...\nHANGUP\n200 result=1\n",
     [HangupNotice(), HangupNotice(), Response(result="1", raw="200 result=1")]),
]


@pytest.mark.parametrize(("wire", "expected"), REPLIES)
@pytest.mark.parametrize("style", ["whole", "bytewise", "halves", "junk_after"])
def test_reply_transcripts(wire: bytes, expected: list[object], style: str) -> None:
    """Every reply kind parses to the same events whether whole, split, or followed by junk."""
    conn = ready()
    if style == "junk_after":
        chunks = [wire + b"junk with no newline yet"]
    else:
        chunks = chunkings(wire)[["whole", "bytewise", "halves"].index(style)]
    assert feed(conn, chunks) == expected


@pytest.mark.parametrize(("wire", "expected"), REPLIES)
def test_reply_then_eof(wire: bytes, expected: list[object]) -> None:
    """EOF after a transcript adds exactly one EndOfStream."""
    conn = ready()
    assert feed(conn, [wire, b""]) == [*expected, EndOfStream()]


def test_reply_frees_the_wire_for_the_next_command() -> None:
    """After a reply (or a 520 block) the next command may be sent; HANGUP alone does not."""
    conn = ready()
    assert conn.receive_data(b"HANGUP\n") == [HangupNotice()]
    with pytest.raises(LocalProtocolError):
        conn.send_command("NOOP")
    assert conn.receive_data(b"520-Invalid command syntax.  Proper usage follows:\nx\n") == []
    assert conn.state is State.USAGE
    with pytest.raises(LocalProtocolError):
        conn.send_command("NOOP")
    (answered,) = conn.receive_data(b"520 End of proper usage.\n")
    assert isinstance(answered[0], CommandFailed)
    assert sent(conn, "NOOP") == b"NOOP\n"


def test_hangup_with_no_command_in_flight() -> None:
    """HANGUP while idle (a script only waiting) is a notice."""
    conn = ready(command=None)
    assert feed(conn, [b"HANGUP\n", b""]) == [HangupNotice(), EndOfStream()]
    assert conn.hangup_seen


@pytest.mark.parametrize(
    "wire",
    [
        b"200 result=1\n",  # a reply nobody asked for
        b"100 Trying...\n",
        b"garbage\n",
        b"\n",
    ],
)
def test_unsolicited_line_is_the_peers_fault(wire: bytes) -> None:
    """Anything but HANGUP with no command in flight raises RemoteProtocolError."""
    conn = ready(command=None)
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(wire)


@pytest.mark.parametrize("wire", [b"300 what\n", b"200 resolt=1\n", b"HANGUP now\n", b"\n"])
def test_unknown_reply_is_the_peers_fault(wire: bytes) -> None:
    """A reply that is none of 100/200/510/511/520 raises RemoteProtocolError."""
    conn = ready()
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(wire)
    assert conn.state is State.ERROR
    with pytest.raises(RemoteProtocolError):  # and stays broken
        conn.receive_data(b"200 result=1\n")


def test_protocol_error_text_does_not_quote_the_line() -> None:
    """Error messages (they get logged) show only a stray line's first bytes, not its content."""
    conn = ready(command=None)
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive_data(b"secret message body leaked by a newline\n")
    assert "secret" not in str(info.value) and "body" not in str(info.value)


def test_env_mapping() -> None:
    """Request.env reads like a dict of every agi_* line, the last duplicate winning."""
    request = ready(b"agi_a: 1\nagi_b: x: y\nnot a pair\nagi_a: 2\nagi_c: \n\n", None).request
    assert request is not None
    env = request.env
    assert env["agi_a"] == "2" and env.get("agi_b") == "x: y" and env["agi_c"] == ""
    assert "agi_a" in env and "not a pair" not in env and env.get("agi_zz", "d") == "d"
    assert dict(env) == {"agi_a": "2", "agi_b": "x: y", "agi_c": ""} and len(env) == 3
    with pytest.raises(KeyError):
        env["agi_zz"]


def test_overlong_reply_line_is_refused() -> None:
    """A reply line longer than max_reply_bytes is refused, even before its newline arrives."""
    conn = AgiConnection(max_reply_bytes=50)
    conn.receive_data(b"\n")
    conn.send_command("NOOP")
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"200 result=1 (" + b"x" * 60)


def test_long_reply_within_limit_is_fine() -> None:
    """A long GET FULL VARIABLE answer (base64 of 64 KiB) parses."""
    conn = ready()
    data = b"QUJD" * 30000
    (event,) = feed(conn, [b"200 result=1 (" + data + b")\n"])
    assert isinstance(event, Response) and event.data == data.decode()


def test_eof_mid_reply_is_a_clean_end() -> None:
    """EOF in the middle of a reply line drops the partial line and ends the stream."""
    conn = ready()
    assert feed(conn, [b"200 resu", b""]) == [EndOfStream()]


# --- commands ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "quoted"),
    [
        ("", '""'),
        ("plain", '"plain"'),
        ('say "hi"', r'"say \"hi\""'),
        ("C:\\dir\\", r'"C:\\dir\\"'),
        ("tab\tand  spaces", '"tab\tand  spaces"'),
        ("${EVIL}", '"${EVIL}"'),
        ("ünïcødé ☎", '"ünïcødé ☎"'),
    ],
)
def test_quote(arg: str, quoted: str) -> None:
    """quote() wraps in double quotes and escapes only backslash and double quote."""
    assert quote(arg) == quoted


@pytest.mark.parametrize("arg", ["a\nb", "a\rb", "a\0b", "\n"])
def test_quote_refuses_line_breaks_and_nul(arg: str) -> None:
    """NUL, CR and LF never reach the wire."""
    with pytest.raises(LocalProtocolError):
        quote(arg)
    conn = ready(command=None)
    with pytest.raises(LocalProtocolError):
        conn.send_command("SET VARIABLE", "X", arg)
    assert conn.state is State.IDLE  # nothing was sent, so nothing is in flight


def test_send_command_bytes() -> None:
    """send_command quotes every argument and ends the line with LF."""
    conn = ready(command=None)
    assert sent(conn, "SET VARIABLE", "JABBER_SEND_STATUS", 'a "b"') == (
        b'SET VARIABLE "JABBER_SEND_STATUS" "a \\"b\\""\n'
    )


@pytest.mark.parametrize("verb", ["", "SET  VARIABLE", "NOOP\n", "EXEC;", " NOOP", '"X"'])
def test_send_command_refuses_odd_verbs(verb: str) -> None:
    """The verb is letters separated by single spaces; nothing else is sent unquoted."""
    with pytest.raises(LocalProtocolError):
        ready(command=None).send_command(verb)


def test_one_command_in_flight() -> None:
    """A second command before the first is answered is refused."""
    conn = ready()
    with pytest.raises(LocalProtocolError):
        conn.send_command("NOOP")


def test_no_command_before_the_env_block() -> None:
    """Commands wait for the Request."""
    with pytest.raises(LocalProtocolError):
        AgiConnection().send_command("NOOP")


def test_no_command_after_eof() -> None:
    """After EndOfStream nothing can be sent."""
    conn = ready(command=None)
    feed(conn, [b""])
    with pytest.raises(LocalProtocolError):
        conn.send_command("NOOP")


def test_too_many_words_are_refused() -> None:
    """res_agi.c holds at most MAX_ARGS-1 = 127 words; more are refused before the wire."""
    conn = ready(command=None)
    conn.send_command("EXEC", *["x"] * 126)
    conn.receive_data(b"200 result=0\n")
    with pytest.raises(LocalProtocolError):
        conn.send_command("EXEC", *["x"] * 127)


def test_unencodable_argument_is_refused() -> None:
    """A lone surrogate cannot be sent as UTF-8 and is refused."""
    with pytest.raises(LocalProtocolError):
        ready(command=None).send_command("VERBOSE", "\udcff")


def test_failure_line() -> None:
    """send_failure() is the line res_agi.c turns into AGISTATUS=FAILURE; nothing may follow."""
    conn = ready(command=None)
    conn.send_failure()
    assert conn.data_to_send() == b"FAILURE\n"
    with pytest.raises(LocalProtocolError):
        conn.send_command("NOOP")
    # Asterisk then writes HANGUP and closes: both are fine.
    assert feed(conn, [b"HANGUP\n", b""]) == [HangupNotice(), EndOfStream()]


# --- line limits ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "limit"),
    [
        ("22.6.0", 8191),
        ("22.6.0~dfsg+~cs6.15.60671435-1", 8191),
        ("22.5.2", 2047),
        ("22.10.1", 8191),
        ("20.16.0", 8191),
        ("20.16.0-rc1", 8191),
        ("20.15.2", 2047),
        ("21.11.0", 8191),
        ("21.10.9", 2047),
        ("23.0.0", 8191),
        ("23.0.0-pre1", 8191),
        ("24.1.0", 8191),
        ("19.8.1", 2047),
        ("18.26.4", 2047),
        ("1.8.32.3", 2047),
        ("GIT-master-abc1234", 2047),
        ("certified-20.7-cert9", 2047),
        ("22", 2047),
        ("", 2047),
    ],
)
def test_line_limit_for_version(version: str, limit: int) -> None:
    """8191 bytes (newline included) from 20.16/21.11/22.6/23.0 on; 2047 before or unknown."""
    assert line_limit_for(version) == limit


@pytest.mark.parametrize(("version", "limit"), [("22.6.0", 8191), ("22.5.0", 2047), ("x", 2047)])
def test_line_limit_is_enforced_at_the_byte(version: str, limit: int) -> None:
    """A command line of exactly the limit is sent; one byte more is refused."""
    conn = ready(f"agi_version: {version}\n\n".encode(), None)
    overhead = len(b'SET VARIABLE "X" ""\n')
    exact = sent(conn, "SET VARIABLE", "X", "v" * (limit - overhead))
    assert len(exact) == limit
    conn.receive_data(b"200 result=1\n")
    with pytest.raises(LocalProtocolError):
        conn.send_command("SET VARIABLE", "X", "v" * (limit - overhead + 1))
    with pytest.raises(LocalProtocolError):  # counted in bytes, not characters
        conn.send_command("SET VARIABLE", "X", "é" * ((limit - overhead) // 2 + 1))


# --- variable names ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["FOO", "_FOO", "__FOO", "a", "JABBER_RECEIVE_B64", "x1_2_"])
def test_valid_variable_names(name: str) -> None:
    """Names matching ^_{0,2}[A-Za-z][A-Za-z0-9_]*$ are returned unchanged."""
    assert check_variable_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "___FOO", "1FOO", "_1", "FOO-BAR", "FOO BAR", "FOO\n", "FÖO", "${FOO}", "FOO)", "_"]
    + ["ｆｏｏ"],  # fullwidth letters are not [A-Za-z]
)
def test_invalid_variable_names(name: str) -> None:
    """Anything else is refused with LocalProtocolError (a trailing newline included)."""
    with pytest.raises(LocalProtocolError):
        check_variable_name(name)


def test_repr_summarises_state() -> None:
    """repr shows the state and how much is buffered."""
    conn = AgiConnection()
    conn.receive_data(b"agi_x: 1\n")
    assert repr(conn) == "<AgiConnection env buffered=9>"
