"""The per-account message buffer and waiters behind jabber_receive (agi_xmpp.inbox, docs/dialplan.md)."""

from __future__ import annotations

import itertools

import pytest

from fakes import FakeClock

from agi_xmpp.inbox import STRANGER_QUOTA, InboundMessage, Inbox, Matcher, Waiter
from agi_xmpp.jid import parse_jid

_ids = itertools.count()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(500.0)


@pytest.fixture
def inbox(clock: FakeClock) -> Inbox:
    return Inbox(ttl=5, clock=clock)


def msg(sender: str, body: str = "hi", kind: str = "chat") -> InboundMessage:
    return InboundMessage(parse_jid(sender), body, kind, f"id{next(_ids)}", 0.0)


def jid_matcher(text: str) -> Matcher:
    return Matcher.for_jid(parse_jid(text))


ROOM = "room@conference.example.com"
ROOM_MATCHER = Matcher.for_room(parse_jid(ROOM), "pbx")


class Recorder:
    """A deliver callback that accepts (or refuses) and records what it was offered."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.got: list[InboundMessage] = []

    def __call__(self, message: InboundMessage) -> bool:
        self.got.append(message)
        return self.accept


# -- matching ------------------------------------------------------------------------------------

ALICE = "alice@example.com"

MATCHES = [
    # matcher target, sender, kind, matches?
    (ALICE, "alice@example.com/phone", "chat", True),
    (ALICE, "alice@example.com", "chat", True),
    (ALICE, "alice@example.com/phone", "normal", True),
    (ALICE, "ALICE@Example.COM/phone", "chat", True),  # bare compared after normalisation
    ("Alice@EXAMPLE.com", "alice@example.com/x", "chat", True),
    (ALICE, "alice@example.com.evil/phone", "chat", False),  # no prefix matching
    (ALICE, "alice@example.comx/phone", "chat", False),
    (ALICE, "alicex@example.com/phone", "chat", False),
    (ALICE, "ali@example.com/phone", "chat", False),
    (ALICE, "mallory@example.com/alice@example.com", "chat", False),  # spoof via resource
    (ALICE, "example.com/alice", "chat", False),
    (ALICE, "alice@example.com/phone", "groupchat", False),  # a JID matcher takes no room traffic
    ("alice@example.com/phone", "alice@example.com/phone", "chat", True),
    ("alice@example.com/phone", "alice@example.com/Phone", "chat", False),  # resources exact
    ("alice@example.com/phone", "alice@example.com/phone2", "chat", False),
    ("alice@example.com/phone", "alice@example.com", "chat", False),
    (ROOM, f"{ROOM}/bob", "chat", True),  # a JID matcher on a room's bare JID takes private messages
]


@pytest.mark.parametrize(("target", "sender", "kind", "expected"), MATCHES)
def test_jid_matcher(target: str, sender: str, kind: str, expected: bool) -> None:
    """A bare JID matches any resource of exactly that JID, a full JID only that resource."""
    assert jid_matcher(target).matches(msg(sender, kind=kind)) is expected


ROOM_MATCHES = [
    # sender, kind, matches?
    (f"{ROOM}/bob", "groupchat", True),
    (f"{ROOM.upper()}/bob", "groupchat", True),
    (ROOM, "groupchat", True),  # the room itself (subject, announcements)
    (f"{ROOM}/pbx", "groupchat", False),  # our own echo
    (f"{ROOM}/PBX", "groupchat", True),  # nicks are exact
    (f"{ROOM}/bob", "chat", False),  # private message from an occupant is not room traffic
    (f"{ROOM}/bob", "normal", False),
    (f"{ROOM}x/bob", "groupchat", False),
    ("room@conference.example.com.evil/bob", "groupchat", False),
    ("other@conference.example.com/bob", "groupchat", False),
]


@pytest.mark.parametrize(("sender", "kind", "expected"), ROOM_MATCHES)
def test_room_matcher(sender: str, kind: str, expected: bool) -> None:
    """A room matcher takes groupchat from that room's occupants except our own nick."""
    assert ROOM_MATCHER.matches(msg(sender, kind=kind)) is expected


def test_room_matcher_uses_the_rooms_bare_jid() -> None:
    """for_room given room@service/nick matches the room's traffic, like the bare room JID."""
    matcher = Matcher.for_room(parse_jid(f"{ROOM}/pbx"), "pbx")
    assert matcher == ROOM_MATCHER
    assert matcher.matches(msg(f"{ROOM}/bob", kind="groupchat"))


def test_matcher_str_names_the_target() -> None:
    """str(matcher) is a readable description for logs."""
    assert str(jid_matcher("alice@example.com/x")) == "alice@example.com/x"
    assert str(jid_matcher(ALICE)) == ALICE
    assert str(ROOM_MATCHER) == f"room {ROOM} (not 'pbx')"


# -- buffering -----------------------------------------------------------------------------------


def test_take_is_fifo_and_consumes(inbox: Inbox) -> None:
    """take() returns the oldest match first and each message only once."""
    first, second, third = msg(f"{ALICE}/a", "1"), msg(f"{ALICE}/b", "2"), msg(f"{ALICE}/a", "3")
    for m in (first, second, third):
        assert inbox.put(m) is False
    assert len(inbox) == 3
    assert inbox.take(jid_matcher(ALICE)) is first
    assert inbox.take(jid_matcher(ALICE)) is second
    assert inbox.take(jid_matcher(ALICE)) is third
    assert inbox.take(jid_matcher(ALICE)) is None
    assert len(inbox) == 0


def test_take_skips_non_matching_and_keeps_them(inbox: Inbox) -> None:
    """A full-JID take skips other resources' messages and leaves them buffered, in order."""
    a1, b1, a2 = msg(f"{ALICE}/a", "a1"), msg(f"{ALICE}/b", "b1"), msg(f"{ALICE}/a", "a2")
    bob = msg("bob@example.com/x")
    for m in (a1, bob, b1, a2):
        inbox.put(m)
    assert inbox.take(jid_matcher(f"{ALICE}/b")) is b1
    assert inbox.take(jid_matcher(f"{ALICE}/b")) is None
    assert inbox.take(jid_matcher(ALICE)) is a1
    assert inbox.take(jid_matcher("bob@example.com")) is bob
    assert inbox.take(jid_matcher(f"{ALICE}/a")) is a2


def test_take_never_matches_by_prefix(inbox: Inbox) -> None:
    """Messages from look-alike senders are never taken for the real contact."""
    for spoof in ("alice@example.com.evil/a", "alice@example.comx/a", "alicex@example.com/a"):
        inbox.put(msg(spoof))
    assert inbox.take(jid_matcher(ALICE)) is None
    assert len(inbox) == 3


def test_take_is_case_insensitive_on_bare(inbox: Inbox) -> None:
    """A message from ALICE@EXAMPLE.COM/x is taken by a receive on alice@example.com."""
    m = msg("ALICE@EXAMPLE.COM/x")
    inbox.put(m)
    assert inbox.take(jid_matcher("Alice@example.com")) is m


def test_room_take_skips_own_echo_and_private_messages(inbox: Inbox) -> None:
    """A room take ignores our own groupchat echo and private messages from the same room."""
    echo = msg(f"{ROOM}/pbx", "mine", "groupchat")
    private = msg(f"{ROOM}/bob", "psst", "chat")
    public = msg(f"{ROOM}/bob", "hello all", "groupchat")
    for m in (echo, private, public):
        inbox.put(m)
    assert inbox.take(ROOM_MATCHER) is public
    assert inbox.take(ROOM_MATCHER) is None
    assert inbox.take(jid_matcher(f"{ROOM}/bob")) is private


def test_messages_expire_after_ttl(inbox: Inbox, clock: FakeClock) -> None:
    """A buffered message is gone ttl seconds after it was put, and never returned after that."""
    old = msg(f"{ALICE}/a", "old")
    inbox.put(old)
    clock.advance(3)
    new = msg(f"{ALICE}/a", "new")
    inbox.put(new)
    clock.advance(1.999)
    assert len(inbox) == 2
    clock.advance(0.001)  # old is exactly 5 s old now
    assert inbox.take(jid_matcher(ALICE)) is new
    assert inbox.expired == 1
    assert len(inbox) == 0


def test_expired_messages_are_not_returned_even_before_a_purge(inbox: Inbox, clock: FakeClock) -> None:
    """With a clock that went backwards, take() still checks each message's own deadline."""
    later = msg(f"{ALICE}/a", "later")
    inbox.put(later)  # deadline 505
    clock.advance(-10)  # a misbehaving clock
    inbox.put(msg(f"{ALICE}/a", "earlier"))  # deadline 495, queued behind "later"
    clock.advance(6)  # now 496: "earlier" has expired, "later" has not
    assert inbox.take(jid_matcher(ALICE)) is later
    assert inbox.take(jid_matcher(ALICE)) is None


def test_received_at_does_not_drive_expiry(clock: FakeClock) -> None:
    """Expiry uses the inbox clock at put(), not the message's received_at."""
    inbox = Inbox(ttl=5, clock=clock)
    m = InboundMessage(parse_jid(f"{ALICE}/a"), "x", "chat", "id", received_at=0.0)
    inbox.put(m)
    assert inbox.take(jid_matcher(ALICE)) is m


def test_zero_ttl_buffers_nothing(clock: FakeClock) -> None:
    """With ttl 0 a message nobody waits for is not kept."""
    inbox = Inbox(ttl=0, clock=clock)
    inbox.put(msg(f"{ALICE}/a"))
    assert inbox.take(jid_matcher(ALICE)) is None
    assert inbox.expired == 1


def test_negative_ttl_is_refused(clock: FakeClock) -> None:
    """A negative ttl is a programming error."""
    with pytest.raises(ValueError):
        Inbox(ttl=-1, clock=clock)


def test_buffer_is_bounded_by_count(clock: FakeClock) -> None:
    """Past max_messages the oldest messages are dropped and counted."""
    inbox = Inbox(ttl=60, clock=clock, max_messages=3)
    sent = [msg(f"{ALICE}/a", str(n)) for n in range(5)]
    for m in sent:
        inbox.put(m)
    assert len(inbox) == 3
    assert inbox.dropped == 2
    assert [inbox.take(jid_matcher(ALICE)) for _ in range(4)] == [*sent[2:], None]


def test_buffer_is_bounded_by_size(clock: FakeClock) -> None:
    """Past max_chars of bodies the oldest are dropped; a single oversized message is dropped itself."""
    inbox = Inbox(ttl=60, clock=clock, max_chars=10)
    a, b, c = msg(f"{ALICE}/a", "aaaa"), msg(f"{ALICE}/a", "bbbb"), msg(f"{ALICE}/a", "cccc")
    for m in (a, b, c):
        inbox.put(m)
    assert inbox.dropped == 1
    inbox.put(msg(f"{ALICE}/a", "x" * 11))
    assert inbox.dropped == 2
    assert [inbox.take(jid_matcher(ALICE)) for _ in range(3)] == [b, c, None]


def test_flood_from_one_sender_does_not_hide_others_beyond_bound(clock: FakeClock) -> None:
    """A 10,050-message flood from one contact keeps only its newest 1,000 (the per-sender
    quota), and others still flow afterwards."""
    inbox = Inbox(ttl=60, clock=clock)
    for n in range(10_050):
        inbox.put(msg("spam@example.com/x", str(n)))
    assert len(inbox) == 1_000
    assert inbox.dropped == 9_050 and inbox.evicted == {"contact": 9_050, "stranger": 0}
    assert inbox.take(jid_matcher("spam@example.com")).body == "9050"  # the oldest kept
    real = msg(f"{ALICE}/a")
    inbox.put(real)
    assert inbox.take(jid_matcher(ALICE)) is real


def _roster(*contacts: str):
    bare = {parse_jid(c).bare for c in contacts}
    return lambda m: m.sender.bare in bare


def test_stranger_flood_never_evicts_a_contacts_message(clock: FakeClock) -> None:
    """Issue 10: 10,400 messages from strangers (one, then thousands of made-up JIDs) arrive
    after a contact's reply: the reply is still there, and strangers hold at most their quota."""
    inbox = Inbox(ttl=60, clock=clock, is_trusted=_roster(ALICE))
    reply = msg(f"{ALICE}/phone", "1")
    inbox.put(reply)
    for n in range(5_200):
        inbox.put(msg("stranger@evil.example/x", f"spam {n}"))
        inbox.put(msg(f"s{n}@evil.example/x", f"spam {n}"))
    assert inbox.take(jid_matcher(ALICE)) is reply
    assert len(inbox) == STRANGER_QUOTA.total_messages
    assert inbox.evicted["contact"] == 0 and inbox.evicted["stranger"] == 10_400 - STRANGER_QUOTA.total_messages


def test_one_stranger_holds_at_most_its_own_quota_newest_first(clock: FakeClock) -> None:
    """A single stranger keeps only its newest per-sender quota; other strangers keep theirs."""
    inbox = Inbox(ttl=60, clock=clock, is_trusted=_roster())
    inbox.put(msg("other@evil.example/x", "other"))
    for n in range(100):
        inbox.put(msg("stranger@evil.example/x", str(n)))
    kept = [inbox.take(jid_matcher("stranger@evil.example")) for _ in range(STRANGER_QUOTA.per_sender_messages + 1)]
    assert [m.body for m in kept[:-1]] == [str(n) for n in range(100 - STRANGER_QUOTA.per_sender_messages, 100)]
    assert kept[-1] is None
    assert inbox.take(jid_matcher("other@evil.example")).body == "other"


def test_stranger_characters_are_bounded_too(clock: FakeClock) -> None:
    """A stranger's body larger than its per-sender character quota is not buffered at all;
    a contact's of the same size is."""
    inbox = Inbox(ttl=60, clock=clock, is_trusted=_roster(ALICE))
    big = "x" * (STRANGER_QUOTA.per_sender_chars + 1)
    inbox.put(msg("stranger@evil.example/x", big))
    inbox.put(msg(f"{ALICE}/a", big))
    assert inbox.take(jid_matcher("stranger@evil.example")) is None
    assert inbox.take(jid_matcher(ALICE)).body == big
    assert inbox.evicted == {"contact": 0, "stranger": 1}


def test_contacts_class_bound_evicts_only_contacts(clock: FakeClock) -> None:
    """When the contacts' total is reached, the oldest contact message goes, never a stranger's."""
    inbox = Inbox(ttl=60, clock=clock, max_messages=3, is_trusted=_roster(ALICE, "bob@example.com"))
    stranger = msg("stranger@evil.example/x", "s")
    inbox.put(stranger)
    sent = [msg(f"{ALICE}/a", "a1"), msg("bob@example.com/b", "b1"), msg(f"{ALICE}/a", "a2"), msg("bob@example.com/b", "b2")]
    for m in sent:
        inbox.put(m)
    assert inbox.take(jid_matcher("stranger@evil.example")) is stranger
    assert inbox.take(jid_matcher(ALICE)).body == "a2"
    assert inbox.evicted == {"contact": 1, "stranger": 0}


# -- waiters -------------------------------------------------------------------------------------


def test_put_goes_to_a_waiter_instead_of_the_buffer(inbox: Inbox) -> None:
    """A live matching waiter gets the message; nothing is buffered."""
    rec = Recorder()
    waiter = inbox.add_waiter(jid_matcher(ALICE), rec)
    assert inbox.waiting == 1
    m = msg(f"{ALICE}/a")
    assert inbox.put(m) is True
    assert rec.got == [m]
    assert len(inbox) == 0
    assert inbox.waiting == 0
    assert not waiter.active
    assert inbox.delivered == 1


def test_waiters_are_served_in_registration_order_one_each(inbox: Inbox) -> None:
    """Two waiters on the same sender each get one message, in arrival order."""
    first, second = Recorder(), Recorder()
    inbox.add_waiter(jid_matcher(ALICE), first)
    inbox.add_waiter(jid_matcher(ALICE), second)
    m1, m2, m3 = msg(f"{ALICE}/a", "1"), msg(f"{ALICE}/b", "2"), msg(f"{ALICE}/a", "3")
    for m in (m1, m2, m3):
        inbox.put(m)
    assert first.got == [m1]
    assert second.got == [m2]
    assert inbox.take(jid_matcher(ALICE)) is m3


def test_non_matching_waiter_is_passed_over(inbox: Inbox) -> None:
    """A waiter whose matcher does not accept the message keeps waiting; a later one gets it."""
    phone, anyone = Recorder(), Recorder()
    inbox.add_waiter(jid_matcher(f"{ALICE}/phone"), phone)
    inbox.add_waiter(jid_matcher(ALICE), anyone)
    m = msg(f"{ALICE}/desk")
    inbox.put(m)
    assert phone.got == [] and anyone.got == [m]
    assert inbox.waiting == 1


def test_cancelled_waiter_is_skipped_and_message_buffered(inbox: Inbox) -> None:
    """A cancelled waiter gets nothing; with no other waiter the message is buffered."""
    rec = Recorder()
    waiter = inbox.add_waiter(jid_matcher(ALICE), rec)
    waiter.cancel()
    waiter.cancel()  # twice is fine
    assert inbox.waiting == 0
    m = msg(f"{ALICE}/a")
    assert inbox.put(m) is False
    assert rec.got == []
    assert inbox.take(jid_matcher(ALICE)) is m


def test_refusing_waiter_passes_message_on(inbox: Inbox) -> None:
    """A waiter whose deliver returns False (future already done) passes to the next, then the buffer."""
    done, live = Recorder(accept=False), Recorder()
    inbox.add_waiter(jid_matcher(ALICE), done)
    inbox.add_waiter(jid_matcher(ALICE), live)
    m1, m2 = msg(f"{ALICE}/a", "1"), msg(f"{ALICE}/a", "2")
    inbox.put(m1)
    assert done.got == [m1] and live.got == [m1]
    inbox.put(m2)  # the refusing waiter is gone: one-shot
    assert done.got == [m1]
    assert inbox.take(jid_matcher(ALICE)) is m2


def test_raising_deliver_counts_as_refusal(inbox: Inbox) -> None:
    """A deliver callback that raises does not lose the message: it is buffered and counted."""

    def broken(message: InboundMessage) -> bool:
        raise RuntimeError("bug")

    inbox.add_waiter(jid_matcher(ALICE), broken)
    m = msg(f"{ALICE}/a")
    assert inbox.put(m) is False
    assert inbox.delivery_errors == 1
    assert inbox.take(jid_matcher(ALICE)) is m


def test_deliver_may_register_or_cancel_waiters(inbox: Inbox) -> None:
    """deliver() calling back into the inbox (add or cancel a waiter) is safe."""
    later = Recorder()
    other: list[Waiter] = []

    def chain(message: InboundMessage) -> bool:
        other.append(inbox.add_waiter(jid_matcher(ALICE), later))
        return True

    inbox.add_waiter(jid_matcher(ALICE), chain)
    inbox.put(msg(f"{ALICE}/a", "1"))
    assert later.got == [] and inbox.waiting == 1
    m2 = msg(f"{ALICE}/a", "2")
    inbox.put(m2)
    assert later.got == [m2]
    other[0].cancel()
    assert inbox.waiting == 0


def test_room_waiter_ignores_private_and_own_messages(inbox: Inbox) -> None:
    """A room waiter is not woken by our own echo or a private message from the room."""
    rec = Recorder()
    inbox.add_waiter(ROOM_MATCHER, rec)
    inbox.put(msg(f"{ROOM}/pbx", kind="groupchat"))
    inbox.put(msg(f"{ROOM}/bob", kind="chat"))
    assert rec.got == []
    public = msg(f"{ROOM}/bob", kind="groupchat")
    inbox.put(public)
    assert rec.got == [public]
    assert len(inbox) == 2


def test_jid_waiter_not_woken_by_room_traffic_or_spoofs(inbox: Inbox) -> None:
    """A JID waiter ignores groupchat and look-alike senders."""
    rec = Recorder()
    inbox.add_waiter(jid_matcher(ALICE), rec)
    inbox.put(msg(f"{ALICE}/a", kind="groupchat"))
    inbox.put(msg("alice@example.com.evil/a"))
    inbox.put(msg("mallory@example.com/alice@example.com"))
    assert rec.got == []
    assert inbox.waiting == 1


def test_repr_summarises_state(inbox: Inbox) -> None:
    """repr(inbox) shows buffered, waiting, dropped and expired counts."""
    inbox.put(msg(f"{ALICE}/a"))
    inbox.add_waiter(jid_matcher("bob@example.com"), Recorder())
    assert repr(inbox) == "<Inbox [1 buffered, 1 waiting, 0 dropped, 0 expired]>"
