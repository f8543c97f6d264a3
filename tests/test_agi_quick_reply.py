"""AgiConnection.receive_reply(): the one-call path for the usual reply changes nothing else."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agi_xmpp.agi_protocol import NEED_DATA, AgiConnection, Response
from agi_xmpp.errors import RemoteProtocolError
from test_agi_drained import ENV

PIECES = [b"200 result=1\n", b"200 result=0\n", b"200 result=1 (hello (world))\n",
          b"200 result=-1 endpos=1234\n", b"200 result=1 (a) endpos=5 extra\n", b"HANGUP\n",
          b"100 Trying...\n", b"511 Command Not Permitted\n", b"200 res", b"ult=1\n",
          b"200 result=1\n200 result=1\n", b"junk\n", b"200 result=\xff\xfe\n", b""]


def ready() -> AgiConnection:
    conn = AgiConnection()
    conn.receive_data(ENV)
    conn.next_event()
    return conn


def events(conn: AgiConnection) -> list[object]:
    out: list[object] = []
    while True:
        try:
            event = conn.next_event()
        except RemoteProtocolError as exc:
            return [*out, ("error", str(exc))]
        if event is NEED_DATA:
            return out
        out.append(event)


def test_the_usual_reply_is_taken_in_one_call():
    """A lone '200 result=1' line answering the command in flight comes back as its Response."""
    conn = ready()
    conn.send_command("SET VARIABLE", "A", "1")
    reply = conn.receive_reply(b"200 result=1\n")
    assert reply == Response(result="1", raw="200 result=1")
    assert conn.state.value == "idle" and conn.drained()
    conn.send_command("GET FULL VARIABLE", "${A}")
    assert conn.receive_reply(b"200 result=1 (x)\n") == Response(
        result="1", data="x", raw="200 result=1 (x)"
    )


def test_anything_else_is_left_to_the_general_path():
    """No command in flight, a partial line, two lines, HANGUP or EOF: None, nothing consumed."""
    assert ready().receive_reply(b"200 result=1\n") is None  # nothing was asked
    for data in (b"200 result=1", b"200 result=1\nHANGUP\n", b"HANGUP\n", b"", b"511 x\n"):
        conn = ready()
        conn.send_command("NOOP")
        assert conn.receive_reply(data) is None
        assert conn.state.value == "waiting" and conn.drained()  # as if never called


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=10))
def test_same_events_as_receive_data(chunks):
    """Fed the same reads, receive_reply() + the general path give exactly the events and state
    of receive_data() + next_event() alone."""
    plain, quick = ready(), ready()
    seen_plain: list[object] = []
    seen_quick: list[object] = []
    for chunk in chunks:
        for conn in (plain, quick):
            if conn.state.value == "idle" and not conn.failure_sent:
                conn.send_command("NOOP")
        if plain.state.value == "error":
            break
        if chunk:
            plain.receive_data(chunk)
            seen_plain += events(plain)
            reply = quick.receive_reply(chunk)
            if reply is None:
                quick.receive_data(chunk)
                seen_quick += events(quick)
            else:
                seen_quick.append(reply)
        assert seen_quick == seen_plain
        assert (quick.state, quick.drained()) == (plain.state, plain.drained())
