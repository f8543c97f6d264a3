"""AgiConnection.drained(): the I/O layer's shortcut must never skip an event."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agi_xmpp.agi_protocol import NEED_DATA, AgiConnection, Request, Response
from agi_xmpp.errors import RemoteProtocolError

ENV = (
    b"agi_network: yes\n"
    b"agi_network_script: jabber_status\n"
    b"agi_uniqueid: 1700000000.1\n"
    b"agi_version: 22.6.0\n"
    b"agi_arg_1: asterisk\n"
    b"agi_arg_2: alice@example.com\n"
    b"\n"
)
REPLIES = [b"200 result=1\n", b"HANGUP\n", b"100 Trying...\n", b"511 Command Not Permitted\n",
           b"520-Invalid command syntax.\n", b"520 End of proper usage.\n", b"200 result=0 (x)\n",
           b"junk\n", b"200 res", b"ult=1\n", b""]


def test_drained_after_the_usual_reply():
    """After a whole env block, and after a whole one-line reply, nothing else is due."""
    conn = AgiConnection()
    assert not conn.drained()  # nothing received yet: still reading the env block
    conn.receive_data(ENV)
    assert type(conn.next_event()) is Request
    assert conn.drained()
    conn.send_command("SET VARIABLE", "JABBER_STATUS", "3")
    conn.receive_data(b"200 result=1\n")
    assert type(conn.next_event()) is Response
    assert conn.drained()
    assert conn.next_event() is NEED_DATA


def test_not_drained_while_more_is_buffered_or_due():
    """A HANGUP in the env block, a second line in the same read, or EOF: not drained."""
    conn = AgiConnection()
    conn.receive_data(ENV[:-1] + b"HANGUP\n\n")
    assert type(conn.next_event()) is Request
    assert not conn.drained()  # the HangupNotice is due
    conn = AgiConnection()
    conn.receive_data(ENV)
    conn.next_event()
    conn.send_command("NOOP")
    conn.receive_data(b"200 result=0\nHANGUP\n")
    conn.next_event()
    assert not conn.drained()
    conn.next_event()
    conn.receive_data(b"")
    assert not conn.drained()  # EndOfStream is due


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(REPLIES), max_size=12), st.integers(1, 40))
def test_drained_means_need_data(chunks, split):
    """Whatever arrives, in whatever pieces: drained() is True only when next_event() would
    return NEED_DATA (so skipping that call loses nothing)."""
    conn = AgiConnection()
    stream = ENV + b"".join(chunks)
    for start in range(0, len(stream), split):
        conn.receive_data(stream[start : start + split])
        while True:
            if conn.state.value == "idle":
                conn.send_command("NOOP")
            drained = conn.drained()
            try:
                event = conn.next_event()
            except RemoteProtocolError:
                return
            if drained:
                assert event is NEED_DATA
            if event is NEED_DATA:
                break
