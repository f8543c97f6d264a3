"""The live presence cache behind ``jabber_status`` and ``presence_route`` (docs/dialplan.md, jabber_status).

Pure data: the XMPP side calls ``set_roster``/``update``/``drop_presence`` as stanzas arrive;
scripts call ``status`` and never wait on the network. The clock is injected (``time.monotonic`` by default) so tests can pin "most recent update".

Theory of operation. Per account (the caller's key, the lower-cased config section name) the
cache holds the roster (a set of normalised bare JIDs) and, separately, the available resources
of each contact: ``bare -> {resource -> presence}``. A resource exists from its first available
presence until its unavailable presence, the contact's removal from the roster, or
``drop_presence`` (the session ended unresumed; the roster stays, so contacts read ``6`` until
the server re-sends presence). ``status`` maps the chosen resource to res_xmpp's codes:

====  =========  ==============================================================
code  show       meaning
====  =========  ==============================================================
1     available  available, no ``<show>``
2     chat       ``<show>chat</show>``
3     away       ``<show>away</show>``
4     xa         ``<show>xa</show>``
5     dnd        ``<show>dnd</show>``
6     offline    in the roster, no available resource (or the named one is absent)
7     unknown    not in the roster (even if it sent us presence)
====  =========  ==============================================================

For a bare JID the chosen resource is the one with the highest priority; ties go to the more
available show (chat > available > away > xa > dnd), then to the most recent update (clock, then
arrival order). Decisions made here (docs/dialplan.md, jabber_status):

- Negative priority does not hide a resource. RFC 6121 §4.7.2.3 only says such a resource gets no
  messages sent to the bare JID; the person is still online, and res_xmpp also keeps and reports
  those resources. They simply lose to any resource with a higher priority.
- A ``<show>`` other than ``away``/``chat``/``dnd``/``xa`` (RFC 6121 §4.7.2.1 allows no other
  value) is read as plain available: the sender *is* available, we just don't understand the
  detail. Matching is case-insensitive and ignores surrounding blanks, to be lenient.
- Priority is clamped to RFC 6121's -128..127.
- An unavailable presence from a bare JID (no resource) removes every resource of that contact.
- Presence from a contact not (yet) in the roster is kept — a roster push may be a moment behind
  the presence — but ``status`` answers ``7`` until the contact is in the roster, and these
  strangers are refused once the account holds ``max_entries`` resources, so a presence flood
  cannot exhaust memory. A contact keeps at most ``max_resources_per_contact`` resources (the
  least recently updated goes first).
- Removing a contact from the roster (``set_roster`` without it) forgets
  its presence too: an unsubscribed contact sends no further updates, so what we have would go
  stale.

Cost: ``update`` and ``status`` are O(number of resources of that one contact).
"""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .errors import InvalidJid
from .jid import Jid, parse_jid

__all__ = [
    "Show",
    "StatusAnswer",
    "ResourcePresence",
    "Buddy",
    "PresenceStats",
    "PresenceCache",
    "parse_show",
    "CODES",
]


class Show(enum.StrEnum):
    """The ``JABBER_STATUS_SHOW`` word."""

    AVAILABLE = "available"
    CHAT = "chat"
    AWAY = "away"
    XA = "xa"
    DND = "dnd"
    OFFLINE = "offline"
    UNKNOWN = "unknown"


#: Show word -> res_xmpp ``JABBER_STATUS`` code.
CODES: dict[Show, int] = {
    Show.AVAILABLE: 1,
    Show.CHAT: 2,
    Show.AWAY: 3,
    Show.XA: 4,
    Show.DND: 5,
    Show.OFFLINE: 6,
    Show.UNKNOWN: 7,
}

# The tie-break of docs/dialplan.md (jabber_status): chat > available > away > xa > dnd.
_AVAILABILITY = {Show.CHAT: 4, Show.AVAILABLE: 3, Show.AWAY: 2, Show.XA: 1, Show.DND: 0}
_NETWORK_SHOWS = {"chat": Show.CHAT, "away": Show.AWAY, "xa": Show.XA, "dnd": Show.DND}
_MIN_PRIORITY, _MAX_PRIORITY = -128, 127


def parse_show(value: str | None) -> Show:
    """The ``<show>`` element's text (``None`` when absent) as a ``Show`` of an available resource."""
    if not value:
        return Show.AVAILABLE
    return _NETWORK_SHOWS.get(value.strip().lower(), Show.AVAILABLE)


@dataclass(frozen=True, slots=True)
class StatusAnswer:
    """What ``jabber_status`` reports; ``resource``/``message`` are ``""`` when none was chosen.

    ``error`` says why the answer is not live ("" when it is): set by the XMPP facade while the
    account is offline (xmpp_facade.py), never by the cache."""

    code: int
    show: Show
    message: str
    resource: str
    error: str = ""


@dataclass(frozen=True, slots=True)
class ResourcePresence:
    """One available resource of a contact. ``updated_at`` is on the cache's clock."""

    resource: str
    show: Show
    priority: int
    status: str
    updated_at: float

    @property
    def code(self) -> int:
        return CODES[self.show]


@dataclass(frozen=True, slots=True)
class Buddy:
    """A roster contact for ``show buddies`` and the HTTP API: its answer and every resource."""

    jid: str
    answer: StatusAnswer
    resources: tuple[ResourcePresence, ...]


@dataclass(frozen=True, slots=True)
class PresenceStats:
    """Counts for ``show buddies`` and ``/metrics``."""

    contacts: int  # roster size
    online_contacts: int  # roster contacts with at least one available resource
    resources: int  # available resources held (roster contacts and strangers)
    updates: int  # presence updates applied since start
    refused: int  # updates ignored, or resources evicted, because of the memory bounds


_NOT_IN_ROSTER = StatusAnswer(7, Show.UNKNOWN, "", "")
_OFFLINE = StatusAnswer(6, Show.OFFLINE, "", "")


@dataclass(slots=True)
class _Entry:
    presence: ResourcePresence
    seq: int  # arrival order: the last tie-break, for clocks that do not advance
    answer: StatusAnswer = field(init=False)  # built once here, not on every lookup

    def __post_init__(self) -> None:
        self.answer = _answer(self.presence)

    def key(self) -> tuple[int, int, float, int]:
        p = self.presence
        return (p.priority, _AVAILABILITY[p.show], p.updated_at, self.seq)


class _Account:
    __slots__ = ("roster", "online", "entries", "updates", "refused")

    def __init__(self) -> None:
        self.roster: set[str] = set()
        self.online: dict[str, dict[str, _Entry]] = {}
        self.entries = 0
        self.updates = 0
        self.refused = 0

    def forget(self, bare: str) -> bool:
        resources = self.online.pop(bare, None)
        if not resources:
            return False
        self.entries -= len(resources)
        return True


class PresenceCache:
    """Roster and available resources per account; answers ``jabber_status`` from memory."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_entries: int = 100_000,
        max_resources_per_contact: int = 64,
    ) -> None:
        self._clock = clock
        self._max_entries = max_entries
        self._max_per_contact = max_resources_per_contact
        self._accounts: dict[str, _Account] = {}
        self._seq = itertools.count()

    # -- roster ----------------------------------------------------------------------------------

    def set_roster(self, account: str, bare_jids: Iterable[str | Jid]) -> None:
        """Replace the account's roster (entries that are not JIDs are skipped).

        Contacts that leave the roster lose their presence; presence already received from
        contacts that join it is kept."""
        acct = self._account(account)
        roster = {bare for bare in map(_bare_or_none, bare_jids) if bare is not None}
        for gone in acct.roster - roster:
            acct.forget(gone)
        acct.roster = roster

    def contacts(self, account: str) -> list[str]:
        """The roster's bare JIDs, sorted."""
        acct = self._accounts.get(account.lower())
        return sorted(acct.roster) if acct else []

    def in_roster(self, account: str, bare: str) -> bool:
        """Whether ``bare`` (a normalised bare JID) is a roster contact: the answer that is not 7."""
        acct = self._accounts.get(account.lower())
        return acct is not None and bare in acct.roster

    # -- presence --------------------------------------------------------------------------------

    def update(
        self,
        account: str,
        jid: Jid,
        *,
        available: bool,
        show: str | None,
        priority: int,
        status: str,
    ) -> bool:
        """Apply one presence stanza from ``jid``; True when the contact's bare answer changed."""
        acct = self._account(account)
        bare = jid.bare
        resources = acct.online.get(bare)
        before = _choose(resources)
        if not available:
            if not resources:
                return False
            if jid.resource:
                if resources.pop(jid.resource, None) is None:
                    return False
                acct.entries -= 1
                if not resources:
                    del acct.online[bare]
            else:  # unavailable from the bare JID: the whole contact is gone
                acct.forget(bare)
            acct.updates += 1
            return _choose(acct.online.get(bare)) != before
        is_new = resources is None or jid.resource not in resources
        if is_new and bare not in acct.roster and acct.entries >= self._max_entries:
            acct.refused += 1
            return False
        entry = _Entry(
            ResourcePresence(
                resource=jid.resource,
                show=parse_show(show),
                priority=min(_MAX_PRIORITY, max(_MIN_PRIORITY, int(priority))),
                status=status or "",
                updated_at=self._clock(),
            ),
            next(self._seq),
        )
        if resources is None:
            resources = acct.online[bare] = {}
        elif is_new and len(resources) >= self._max_per_contact:
            stalest = min(resources.values(), key=lambda e: e.seq)
            del resources[stalest.presence.resource]
            acct.entries -= 1
            acct.refused += 1
        resources[jid.resource] = entry
        if is_new:
            acct.entries += 1
        acct.updates += 1
        return _choose(resources) != before

    def drop_presence(self, account: str) -> list[str]:
        """The session ended unresumed: forget every resource, keep the roster (contacts read 6).

        Returns the bare JIDs that had presence (their answer may have changed)."""
        acct = self._accounts.get(account.lower())
        if acct is None:
            return []
        dropped = sorted(acct.online)
        acct.online.clear()
        acct.entries = 0
        return dropped

    # -- reading ---------------------------------------------------------------------------------

    def status(self, account: str, jid: Jid) -> StatusAnswer:
        """The ``jabber_status`` answer for a bare JID (best resource) or a full JID (that one)."""
        acct = self._accounts.get(account.lower())
        bare = jid.bare
        if acct is None or bare not in acct.roster:
            return _NOT_IN_ROSTER
        resources = acct.online.get(bare)
        if not resources:
            return _OFFLINE
        if jid.resource:
            entry = resources.get(jid.resource)
            return entry.answer if entry is not None else _OFFLINE
        return _choose(resources) or _OFFLINE

    def resources(self, account: str, bare: str | Jid) -> list[ResourcePresence]:
        """The contact's available resources, best first (the order ``status`` chooses in)."""
        acct = self._accounts.get(account.lower())
        key = _bare_or_none(bare)
        if acct is None or key is None:
            return []
        entries = acct.online.get(key)
        if not entries:
            return []
        return [e.presence for e in sorted(entries.values(), key=_Entry.key, reverse=True)]

    def buddies(self, account: str) -> list[Buddy]:
        """Every roster contact with its answer and resources, sorted by JID (``show buddies``)."""
        acct = self._accounts.get(account.lower())
        if acct is None:
            return []
        out = []
        for bare in sorted(acct.roster):
            resources = acct.online.get(bare)
            out.append(
                Buddy(
                    jid=bare,
                    answer=_choose(resources) or _OFFLINE,
                    resources=tuple(self.resources(account, bare)) if resources else (),
                )
            )
        return out

    def stats(self, account: str) -> PresenceStats:
        """Counts for one account (zeros for an account never seen)."""
        acct = self._accounts.get(account.lower())
        if acct is None:
            return PresenceStats(0, 0, 0, 0, 0)
        online = sum(1 for bare in acct.roster if bare in acct.online)
        return PresenceStats(len(acct.roster), online, acct.entries, acct.updates, acct.refused)

    def accounts(self) -> list[str]:
        """Accounts the cache has heard of, sorted."""
        return sorted(self._accounts)

    def __repr__(self) -> str:
        contacts = sum(len(a.roster) for a in self._accounts.values())
        resources = sum(a.entries for a in self._accounts.values())
        return (
            f"<PresenceCache [{len(self._accounts)} accounts, {contacts} contacts, "
            f"{resources} resources online]>"
        )

    def _account(self, account: str) -> _Account:
        key = account.lower()  # callers pass lower-case names; be forgiving all the same
        acct = self._accounts.get(key)
        if acct is None:
            acct = self._accounts[key] = _Account()
        return acct


def _answer(p: ResourcePresence) -> StatusAnswer:
    return StatusAnswer(CODES[p.show], p.show, p.status, p.resource)


def _choose(resources: dict[str, _Entry] | None) -> StatusAnswer | None:
    """The best resource's answer: highest priority, then most available, then most recent."""
    if not resources:
        return None
    if len(resources) == 1:  # the usual case: one client online
        for entry in resources.values():
            return entry.answer
    return max(resources.values(), key=_Entry.key).answer


def _bare_or_none(value: str | Jid) -> str | None:
    if isinstance(value, Jid):
        return value.bare
    try:
        return parse_jid(value).bare
    except InvalidJid:
        return None
