"""The ack/resend state machine (agi_xmpp.delivery), driven by wire transcripts, no server.

A transcript is what the session saw, one event per line, in wire order::

    hand a            the pool handed message 'a' to the stream
    write a 1         our filter saw 'a' written, XEP-0198 seq 1 ('-' when SM is off)
    dead b            'b' reached the transport after the link had gone (NotConnectedError)
    ping p            barrier ping 'p' written        pong p    its answer arrived
    <a h='2'/>        a XEP-0198 ack                  <resumed h='1' previd='x'/>
    <message type='error' id='b'>...   a bounce
    drop              the TCP link is gone            end       the session ended for good

``run`` returns every id confirmed, in order, and what a resumption asked to write again.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from agi_xmpp.delivery import MAX_SEQ, DeliveryTracker, Stage


def run(tracker: DeliveryTracker, transcript: str) -> tuple[list[str], list[str]]:
    confirmed: list[str] = []
    rewrite: list[str] = []
    for line in filter(None, (raw.strip() for raw in transcript.splitlines())):
        if line.startswith("<"):
            xml = ET.fromstring(line)
            tag = xml.tag.rsplit("}", 1)[-1]
            if tag == "a":
                confirmed += tracker.sm_acked(int(xml.get("h")))
            elif tag == "resumed":
                done, again = tracker.resumed(int(xml.get("h")))
                confirmed += done
                rewrite += again
            elif tag == "message" and xml.get("type") == "error":
                tracker.bounced(xml.get("id"))
            continue
        verb, *args = line.split()
        if verb == "hand":
            tracker.handed(args[0])
        elif verb == "write":
            tracker.written(args[0], None if args[1] == "-" else int(args[1]))
        elif verb == "dead":
            tracker.not_written(args[0])
        elif verb == "ping":
            tracker.barrier_written(args[0])
        elif verb == "pong":
            confirmed += tracker.barrier_answered(args[0])
        elif verb == "drop":
            tracker.link_lost()
        elif verb == "end":
            tracker.session_ended()
        else:
            raise ValueError(line)
    return confirmed, rewrite


def test_barrier_after_resume_does_not_confirm_a_message_the_dead_link_dropped():
    """Break 1: a message that never reached the wire is not confirmed by a ping after <resumed/>."""
    tracker = DeliveryTracker()
    confirmed, rewrite = run(tracker, """
        hand a
        hand b
        write a 1
        drop
        dead b
        <resumed xmlns='urn:xmpp:sm:3' h='0' previd='s1'/>
        ping p
        pong p
    """)
    assert confirmed == ["a"]  # replayed by slixmpp before the ping, so the pong covers it
    assert rewrite == ["b"]
    assert tracker.stage("b") is None  # the pool writes it again (and hands it anew)


def test_h_confirms_exactly_the_stanzas_it_counts():
    """<a h='2'/> confirms the first two messages written, not the third."""
    tracker = DeliveryTracker()
    confirmed, _ = run(tracker, """
        hand a
        hand b
        hand c
        write a 1
        write b 2
        write c 3
        <a xmlns='urn:xmpp:sm:3' h='2'/>
    """)
    assert confirmed == ["a", "b"]
    assert tracker.stage("c") is Stage.WRITTEN


def test_h_counts_wrap_at_two_to_the_32():
    """XEP-0198 counters wrap: h=0 covers seq 2^32-1 and 0, not 1."""
    tracker = DeliveryTracker()
    confirmed, _ = run(tracker, f"""
        hand a
        hand b
        hand c
        write a {MAX_SEQ - 1}
        write b 0
        write c 1
        <a xmlns='urn:xmpp:sm:3' h='0'/>
    """)
    assert confirmed == ["a", "b"]


def test_resumed_h_confirms_and_the_rest_is_replayed_not_rewritten():
    """After <resumed h='1'/> the first is confirmed; the second is slixmpp's to replay."""
    tracker = DeliveryTracker()
    confirmed, rewrite = run(tracker, """
        hand a
        hand b
        write a 1
        write b 2
        drop
        <resumed xmlns='urn:xmpp:sm:3' h='1' previd='s1'/>
    """)
    assert (confirmed, rewrite) == (["a"], [])
    assert tracker.on_stream("b")


def test_answer_to_a_ping_of_an_old_link_confirms_nothing():
    """A barrier written before a drop cannot vouch for anything after it."""
    tracker = DeliveryTracker()
    confirmed, _ = run(tracker, """
        hand a
        write a -
        ping p
        drop
        pong p
    """)
    assert confirmed == []


def test_without_stream_management_a_drop_means_write_again():
    """Without XEP-0198 nothing is replayed: an unconfirmed message is no longer on the stream."""
    tracker = DeliveryTracker()
    run(tracker, """
        hand a
        write a -
        drop
    """)
    assert tracker.stage("a") is Stage.UNWRITTEN and not tracker.on_stream("a")


def test_a_bounced_message_is_never_confirmed_afterwards():
    """Break 2: an error stanza wins over a later h that counts the bounced message."""
    tracker = DeliveryTracker()
    confirmed, _ = run(tracker, """
        hand a
        write a 1
        <message xmlns='jabber:client' type='error' id='a'><error type='wait'/></message>
        <a xmlns='urn:xmpp:sm:3' h='1'/>
    """)
    assert confirmed == []
    assert tracker.stage("a") is Stage.BOUNCED


def test_session_end_forgets_the_stream_but_keeps_confirmations():
    """A fresh session resends everything unconfirmed, never what h already confirmed."""
    tracker = DeliveryTracker()
    confirmed, _ = run(tracker, """
        hand a
        hand b
        write a 1
        write b 2
        <a xmlns='urn:xmpp:sm:3' h='1'/>
        drop
        end
    """)
    assert confirmed == ["a"]
    assert "a" in tracker.confirmed  # the pool skips it even if storage has not caught up
    assert not tracker.on_stream("b")
    tracker.forget(["a"])
    assert tracker.stage("a") is None


def test_lost_barrier_hands_its_coverage_to_the_next_one():
    """A ping that timed out on a live link: the next ping covers what it covered."""
    tracker = DeliveryTracker()
    tracker.handed("a")
    tracker.written("a", None)
    tracker.barrier_written("p1")
    tracker.barrier_lost("p1")
    tracker.barrier_written("p2")
    assert tracker.barrier_answered("p2") == ["a"]


def test_window_bounds_unconfirmed_messages():
    """can_write() turns False at `window` unconfirmed messages and back after an ack."""
    tracker = DeliveryTracker(window=2)
    run(tracker, "hand a\nwrite a 1\nhand b\nwrite b 2")
    assert not tracker.can_write()
    tracker.sm_acked(1)
    assert tracker.can_write()


def test_byte_window_bounds_the_backlog_but_one_message_always_goes():
    """Two 60 KB messages do not fit a 64 KB window; a lone oversized one still may be written."""
    tracker = DeliveryTracker(window_bytes=64 * 1024)
    assert tracker.can_write()
    tracker.handed("big", size=60_000)
    assert tracker.can_write()
    tracker.handed("big2", size=60_000)
    assert not tracker.can_write()
    tracker.written("big", 1)
    tracker.written("big2", 2)
    tracker.sm_acked(2)
    assert tracker.can_write()
