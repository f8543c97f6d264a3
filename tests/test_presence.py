"""The presence cache behind jabber_status (agi_xmpp.presence, docs/dialplan.md)."""

from __future__ import annotations


import pytest

from fakes import FakeClock

from agi_xmpp.jid import parse_jid
from agi_xmpp.presence import (
    CODES,
    Buddy,
    PresenceCache,
    PresenceStats,
    ResourcePresence,
    Show,
    StatusAnswer,
    parse_show,
)

ACCOUNT = "work"
ALICE = "alice@example.com"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(clock: FakeClock) -> PresenceCache:
    cache = PresenceCache(clock=clock)
    cache.set_roster(ACCOUNT, [ALICE, "bob@example.com"])
    return cache


def online(
    cache: PresenceCache,
    full: str,
    show: str | None = None,
    priority: int = 0,
    status: str = "",
    account: str = ACCOUNT,
) -> bool:
    return cache.update(account, parse_jid(full), available=True, show=show, priority=priority, status=status)


def offline(cache: PresenceCache, full: str, account: str = ACCOUNT) -> bool:
    return cache.update(account, parse_jid(full), available=False, show=None, priority=0, status="")


def status(cache: PresenceCache, jid: str, account: str = ACCOUNT) -> StatusAnswer:
    return cache.status(account, parse_jid(jid))


@pytest.mark.parametrize(
    ("show", "code", "word"),
    [
        (None, 1, Show.AVAILABLE),
        ("", 1, Show.AVAILABLE),
        ("chat", 2, Show.CHAT),
        ("away", 3, Show.AWAY),
        ("xa", 4, Show.XA),
        ("dnd", 5, Show.DND),
        ("DND ", 5, Show.DND),  # lenient about case and blanks
        ("busy", 1, Show.AVAILABLE),  # not an RFC 6121 value: still available
        ("offline", 1, Show.AVAILABLE),  # a show word of ours, not a network value
    ],
)
def test_each_show_maps_to_its_code(cache: PresenceCache, show: str | None, code: int, word: Show) -> None:
    """An available presence with a given <show> reads as res_xmpp's code and show word."""
    online(cache, f"{ALICE}/phone", show=show, status="hello")
    for jid in (ALICE, f"{ALICE}/phone"):
        assert status(cache, jid) == StatusAnswer(code, word, "hello", "phone")


def test_codes_table_is_res_xmpp_compatible() -> None:
    """Show words and codes are exactly docs/dialplan.md's 1..7."""
    assert [(str(s), CODES[s]) for s in Show] == [
        ("available", 1),
        ("chat", 2),
        ("away", 3),
        ("xa", 4),
        ("dnd", 5),
        ("offline", 6),
        ("unknown", 7),
    ]


def test_parse_show_defaults_to_available() -> None:
    """parse_show maps only chat/away/xa/dnd; everything else is available."""
    assert parse_show(None) is Show.AVAILABLE
    assert parse_show("xa") is Show.XA
    assert parse_show("unknown") is Show.AVAILABLE


def test_roster_contact_without_presence_is_6(cache: PresenceCache) -> None:
    """A roster contact with no available resource reads 6 offline, bare or full."""
    assert status(cache, ALICE) == StatusAnswer(6, Show.OFFLINE, "", "")
    assert status(cache, f"{ALICE}/phone") == StatusAnswer(6, Show.OFFLINE, "", "")


def test_not_in_roster_is_7_even_with_presence(cache: PresenceCache) -> None:
    """A JID outside the roster reads 7 unknown, even if it sent presence."""
    online(cache, "mallory@example.com/x", show="chat")
    assert status(cache, "mallory@example.com") == StatusAnswer(7, Show.UNKNOWN, "", "")
    assert status(cache, "mallory@example.com/x").code == 7


def test_unknown_account_is_7(cache: PresenceCache) -> None:
    """An account the cache never heard of has no roster: every JID reads 7."""
    assert status(cache, ALICE, account="other").code == 7


def test_account_names_are_case_insensitive(cache: PresenceCache) -> None:
    """Account keys are lower-cased, so 'WORK' and 'work' are the same account."""
    online(cache, f"{ALICE}/phone", account="WORK")
    assert status(cache, ALICE, account="work").code == 1


def test_full_jid_reads_only_that_resource(cache: PresenceCache) -> None:
    """A full JID reads its own resource; an absent resource of a roster contact is 6."""
    online(cache, f"{ALICE}/phone", show="dnd", priority=10, status="busy")
    online(cache, f"{ALICE}/desk", show="chat", priority=1, status="free")
    assert status(cache, f"{ALICE}/desk") == StatusAnswer(2, Show.CHAT, "free", "desk")
    assert status(cache, f"{ALICE}/phone") == StatusAnswer(5, Show.DND, "busy", "phone")
    assert status(cache, f"{ALICE}/tablet") == StatusAnswer(6, Show.OFFLINE, "", "")
    assert status(cache, f"{ALICE}/Desk").code == 6  # resources are case-sensitive


def test_bare_jid_lookup_is_case_insensitive(cache: PresenceCache) -> None:
    """The bare part is normalised: ALICE@EXAMPLE.COM is alice@example.com."""
    online(cache, "Alice@Example.com/phone", show="away")
    assert status(cache, "ALICE@EXAMPLE.COM").code == 3
    assert status(cache, "alice@example.com/phone").code == 3


@pytest.mark.parametrize(
    ("resources", "chosen"),
    [
        # (resource, show, priority) ..., expected resource
        ([("a", None, 5), ("b", "chat", 1)], "a"),  # highest priority wins over a better show
        ([("a", "dnd", 1), ("b", "away", 0)], "a"),
        ([("a", "dnd", -1), ("b", "xa", -5)], "a"),  # negative priorities still count
        ([("a", "away", 0), ("b", None, 0)], "b"),  # tie: available > away
        ([("a", None, 0), ("b", "chat", 0)], "b"),  # tie: chat > available
        ([("a", "xa", 0), ("b", "away", 0)], "b"),  # tie: away > xa
        ([("a", "dnd", 0), ("b", "xa", 0)], "b"),  # tie: xa > dnd
        ([("a", "dnd", 3), ("b", "chat", 3), ("c", "away", 3)], "b"),
        ([("a", "dnd", -128), ("b", "chat", 127)], "b"),
    ],
)
def test_bare_jid_chooses_priority_then_show(
    cache: PresenceCache, clock: FakeClock, resources: list[tuple[str, str | None, int]], chosen: str
) -> None:
    """For a bare JID the highest priority wins, ties go to the more available show."""
    for resource, show, priority in resources:
        online(cache, f"{ALICE}/{resource}", show=show, priority=priority)
        clock.advance()
    assert status(cache, ALICE).resource == chosen
    # the order of arrival does not matter for priority and show
    other = PresenceCache(clock=clock)
    other.set_roster(ACCOUNT, [ALICE])
    for resource, show, priority in reversed(resources):
        online(other, f"{ALICE}/{resource}", show=show, priority=priority)
        clock.advance()
    assert status(other, ALICE).resource == chosen


def test_full_tie_goes_to_most_recent_update(cache: PresenceCache, clock: FakeClock) -> None:
    """Same priority and show: the resource updated most recently is chosen."""
    online(cache, f"{ALICE}/a", show="away", status="first")
    clock.advance(5)
    online(cache, f"{ALICE}/b", show="away", status="second")
    assert status(cache, ALICE).resource == "b"
    clock.advance(5)
    online(cache, f"{ALICE}/a", show="away", status="third")
    assert status(cache, ALICE) == StatusAnswer(3, Show.AWAY, "third", "a")


def test_tie_with_a_frozen_clock_goes_to_the_later_arrival(cache: PresenceCache) -> None:
    """When the clock has not moved, the later update still wins the recency tie."""
    online(cache, f"{ALICE}/a")
    online(cache, f"{ALICE}/b")
    assert status(cache, ALICE).resource == "b"
    online(cache, f"{ALICE}/a")
    assert status(cache, ALICE).resource == "a"


def test_negative_priority_resource_alone_still_reports_its_show(cache: PresenceCache) -> None:
    """A resource with negative priority is online: its show is reported, not 6."""
    online(cache, f"{ALICE}/bot", show="xa", priority=-1, status="idle")
    assert status(cache, ALICE) == StatusAnswer(4, Show.XA, "idle", "bot")


def test_priority_is_clamped_to_rfc_range(cache: PresenceCache) -> None:
    """Priorities outside -128..127 are clamped."""
    online(cache, f"{ALICE}/a", priority=1000)
    online(cache, f"{ALICE}/b", priority=-1000)
    assert [(r.resource, r.priority) for r in cache.resources(ACCOUNT, ALICE)] == [("a", 127), ("b", -128)]


def test_unavailable_removes_that_resource(cache: PresenceCache) -> None:
    """An unavailable presence removes only that resource; the next best is chosen."""
    online(cache, f"{ALICE}/a", priority=5, show="chat")
    online(cache, f"{ALICE}/b", priority=1, show="away")
    offline(cache, f"{ALICE}/a")
    assert status(cache, ALICE).resource == "b"
    assert status(cache, f"{ALICE}/a").code == 6
    offline(cache, f"{ALICE}/b")
    assert status(cache, ALICE).code == 6
    assert cache.stats(ACCOUNT).resources == 0


def test_unavailable_from_bare_jid_removes_every_resource(cache: PresenceCache) -> None:
    """An unavailable presence from the bare JID means the whole contact went offline."""
    online(cache, f"{ALICE}/a")
    online(cache, f"{ALICE}/b")
    offline(cache, ALICE)
    assert status(cache, ALICE).code == 6
    assert cache.resources(ACCOUNT, ALICE) == []


def test_unavailable_for_unknown_resource_is_harmless(cache: PresenceCache) -> None:
    """An unavailable presence for a resource never seen changes nothing."""
    online(cache, f"{ALICE}/a", show="dnd")
    assert offline(cache, f"{ALICE}/zzz") is False
    assert offline(cache, "bob@example.com/x") is False
    assert status(cache, ALICE).code == 5


def test_available_from_bare_jid_is_a_resource(cache: PresenceCache) -> None:
    """Presence from a bare JID counts as a resource with an empty name."""
    online(cache, ALICE, show="away")
    assert status(cache, ALICE) == StatusAnswer(3, Show.AWAY, "", "")


def test_message_is_the_chosen_resources_raw_status(cache: PresenceCache) -> None:
    """JABBER_STATUS_MESSAGE comes from the chosen resource, unsanitised here."""
    online(cache, f"{ALICE}/a", priority=1, status="line1\nline2\t\x01")
    online(cache, f"{ALICE}/b", priority=0, status="other")
    assert status(cache, ALICE).message == "line1\nline2\t\x01"


def test_drop_presence_reads_6_and_keeps_roster(cache: PresenceCache) -> None:
    """After drop_presence (session ended unresumed) roster contacts read 6, strangers 7."""
    online(cache, f"{ALICE}/a", show="chat")
    online(cache, "bob@example.com/b")
    assert cache.drop_presence(ACCOUNT) == [ALICE, "bob@example.com"]
    assert status(cache, ALICE).code == 6
    assert status(cache, "bob@example.com/b").code == 6
    assert cache.contacts(ACCOUNT) == [ALICE, "bob@example.com"]
    online(cache, f"{ALICE}/a", show="away")  # the server re-sends presence
    assert status(cache, ALICE).code == 3


def test_drop_presence_touches_one_account_only(cache: PresenceCache) -> None:
    """drop_presence on one account leaves the other accounts' presence alone."""
    cache.set_roster("home", [ALICE])
    online(cache, f"{ALICE}/a", account="home")
    online(cache, f"{ALICE}/a")
    cache.drop_presence(ACCOUNT)
    assert status(cache, ALICE, account="home").code == 1
    assert status(cache, ALICE).code == 6
    assert cache.drop_presence("never-seen") == []


def test_roster_join_and_leave(cache: PresenceCache) -> None:
    """Joining the roster makes a contact 6 (or its presence visible); leaving it makes it 7."""
    online(cache, "carol@example.com/x", show="dnd")  # presence ahead of the roster push
    assert status(cache, "carol@example.com").code == 7
    cache.set_roster(ACCOUNT, [ALICE, "Carol@Example.com"])
    assert status(cache, "carol@example.com").code == 5
    cache.set_roster(ACCOUNT, [ALICE])
    assert status(cache, "carol@example.com").code == 7
    cache.set_roster(ACCOUNT, [ALICE, "carol@example.com"])
    assert status(cache, "carol@example.com").code == 6  # presence forgotten with the removal


def test_set_roster_replaces_and_skips_junk(cache: PresenceCache) -> None:
    """set_roster replaces the roster, normalises entries, ignores invalid ones, forgets leavers."""
    online(cache, f"{ALICE}/a")
    online(cache, "bob@example.com/b")
    cache.set_roster(ACCOUNT, ["BOB@example.com", "@bad", "carol@example.com", parse_jid("dave@x.org/r")])
    assert cache.contacts(ACCOUNT) == ["bob@example.com", "carol@example.com", "dave@x.org"]
    assert status(cache, ALICE).code == 7
    assert status(cache, "bob@example.com").code == 1
    cache.set_roster(ACCOUNT, ["bob@example.com", "carol@example.com", "dave@x.org", ALICE])
    assert status(cache, ALICE).code == 6


def test_spoofed_lookalikes_are_other_contacts(cache: PresenceCache) -> None:
    """Presence from look-alike JIDs never changes the answer for the real contact."""
    spoofs = ("alice@example.com.evil/a", "alice@example.comx/a", "alicex@example.com/a", "example.com/alice")
    for spoof in spoofs:
        online(cache, spoof, show="chat")
    assert status(cache, ALICE).code == 6


def test_update_reports_whether_the_answer_changed(cache: PresenceCache) -> None:
    """update() returns True only when the contact's bare-JID answer changed."""
    assert online(cache, f"{ALICE}/a", show="away", priority=5) is True
    assert online(cache, f"{ALICE}/a", show="away", priority=5) is False
    assert online(cache, f"{ALICE}/b", show="chat", priority=0) is False  # lower priority: not chosen
    assert online(cache, f"{ALICE}/a", show="away", priority=5, status="brb") is True
    assert offline(cache, f"{ALICE}/b") is False
    assert offline(cache, f"{ALICE}/a") is True


def test_resources_are_listed_best_first(cache: PresenceCache, clock: FakeClock) -> None:
    """resources() lists every available resource in the order status() chooses."""
    online(cache, f"{ALICE}/low", show="chat", priority=-1, status="s1")
    clock.advance()
    online(cache, f"{ALICE}/high", show="dnd", priority=9, status="s2")
    assert cache.resources(ACCOUNT, "ALICE@example.com") == [
        ResourcePresence("high", Show.DND, 9, "s2", clock.now),
        ResourcePresence("low", Show.CHAT, -1, "s1", clock.now - 1),
    ]
    assert cache.resources(ACCOUNT, "nobody@example.com") == []
    assert cache.resources("other", ALICE) == []


def test_buddies_and_stats_for_show_buddies(cache: PresenceCache) -> None:
    """buddies() and stats() give show buddies every contact, its answer and resources."""
    online(cache, f"{ALICE}/a", show="away", priority=2, status="out")
    online(cache, "stranger@example.com/z")
    buddies = cache.buddies(ACCOUNT)
    assert [b.jid for b in buddies] == [ALICE, "bob@example.com"]
    assert buddies[0] == Buddy(
        ALICE,
        StatusAnswer(3, Show.AWAY, "out", "a"),
        (ResourcePresence("a", Show.AWAY, 2, "out", 1000.0),),
    )
    assert buddies[1] == Buddy("bob@example.com", StatusAnswer(6, Show.OFFLINE, "", ""), ())
    assert buddies[0].resources[0].code == 3
    assert cache.stats(ACCOUNT) == PresenceStats(
        contacts=2, online_contacts=1, resources=2, updates=2, refused=0
    )
    assert cache.stats("nobody") == PresenceStats(0, 0, 0, 0, 0)
    assert cache.accounts() == [ACCOUNT]
    assert repr(cache) == "<PresenceCache [1 accounts, 2 contacts, 2 resources online]>"


def test_strangers_are_bounded(clock: FakeClock) -> None:
    """Presence from non-roster JIDs is refused past max_entries; roster contacts always fit."""
    cache = PresenceCache(clock=clock, max_entries=3)
    cache.set_roster(ACCOUNT, [ALICE])
    for n in range(10):
        online(cache, f"spam{n}@example.com/x")
    online(cache, f"{ALICE}/a", show="chat")
    stats = cache.stats(ACCOUNT)
    assert stats.resources == 4
    assert stats.refused == 7
    assert status(cache, ALICE).code == 2
    online(cache, "spam0@example.com/x", show="dnd")  # an existing resource may still update
    assert cache.resources(ACCOUNT, "spam0@example.com")[0].show is Show.DND


def test_resources_per_contact_are_bounded(clock: FakeClock) -> None:
    """A contact keeps at most max_resources_per_contact resources; the stalest goes first."""
    cache = PresenceCache(clock=clock, max_resources_per_contact=2)
    cache.set_roster(ACCOUNT, [ALICE])
    for name in ("a", "b", "c"):
        online(cache, f"{ALICE}/{name}")
        clock.advance()
    assert sorted(r.resource for r in cache.resources(ACCOUNT, ALICE)) == ["b", "c"]
    assert cache.stats(ACCOUNT).resources == 2


def test_many_updates_with_interleaved_lookups_stay_consistent(clock: FakeClock) -> None:
    """10,000 updates with interleaved lookups leave exactly the last-announced resources
    available (their speed is measured by make bench's presence_ingest, not asserted here)."""
    cache = PresenceCache(clock=clock)
    contacts = [f"user{n}@example.com" for n in range(1000)]
    cache.set_roster(ACCOUNT, contacts)
    jids = [parse_jid(f"{c}/r{n % 3}") for n, c in enumerate(contacts * 10)]
    bares = [parse_jid(c) for c in contacts]
    shows = [None, "away", "chat", "dnd", "xa"]
    for n, jid in enumerate(jids):
        cache.update(ACCOUNT, jid, available=n % 7 != 0, show=shows[n % 5], priority=n % 4, status="s")
        cache.status(ACCOUNT, bares[n % 1000])
    last_available = {str(jid): n % 7 != 0 for n, jid in enumerate(jids)}
    assert cache.stats(ACCOUNT).resources == sum(last_available.values())


def test_in_roster_agrees_with_status_7(cache: PresenceCache) -> None:
    """in_roster is True exactly for the JIDs whose jabber_status answer is not 7."""
    for bare in (ALICE, "bob@example.com", "mallory@example.net"):
        assert cache.in_roster(ACCOUNT, bare) is (cache.status(ACCOUNT, parse_jid(bare)).code != 7)
    assert cache.in_roster(ACCOUNT, ALICE) and not cache.in_roster(ACCOUNT, "mallory@example.net")
    assert not cache.in_roster("no-such-account", ALICE)
