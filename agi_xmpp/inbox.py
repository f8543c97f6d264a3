"""Per-account buffer of incoming messages and the ordered waiters of ``jabber_receive`` (docs/dialplan.md).

Pure data, clock injected, no asyncio: a waiter is a plain ``deliver(msg) -> bool`` callback (the
asyncio layer passes one that resolves a Future and returns False once that Future is done).

Theory of operation. ``put(msg)`` first offers the message to the live waiters whose matcher
accepts it, in registration order; the first whose ``deliver`` returns True consumes it. A waiter
is one-shot: it leaves the queue as soon as it has been offered a message, whether it took it or
refused it (a refusal means "I am finished", e.g. the call hung up or timed out). When nobody
takes the message it is buffered for ``ttl`` seconds (the account's ``timeout``), measured on the
inbox's own clock from ``put`` — ``InboundMessage.received_at`` is informational only.
``take(matcher)`` removes and returns the *oldest* unexpired buffered match (FIFO, unlike
res_xmpp's newest-first); expired messages are purged lazily and never returned.

A caller that wants "buffered, else wait" calls ``take`` and then, without yielding to the event
loop in between, ``add_waiter``; nothing can arrive between the two calls.

Matching never compares strings by prefix: senders are normalised ``Jid`` values and a matcher
compares whole bare JIDs (and, for a full JID, the exact resource). ``chat``/``normal`` messages
only match JID matchers and ``groupchat`` messages only room matchers, so a private message from
a room occupant (``room@service/nick``, type ``chat``) is never taken for room traffic, and room
traffic never answers a ``jabber_receive`` aimed at a person.

Memory is bounded, per sender and per class of sender, so a stranger cannot crowd out a contact
(issue 10). ``is_trusted(msg)`` (wired by ``services``: a roster contact, or a room the account
joined) puts each buffered message in the ``contact`` or the ``stranger`` class. Each class has a
``Quota``: messages and characters per sender, and in total. A message past its sender's quota
evicts that sender's oldest; past its class's total, the class's oldest. A class never evicts
the other's messages. Evictions are counted per class in ``evicted`` (shown in ``/metrics``);
``dropped`` counts every message thrown away to respect a bound.

Cost: ``put`` and ``take`` touch only the buffer and waiters of that one sender's bare JID.
"""

from __future__ import annotations

import itertools
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .jid import Jid

__all__ = ["InboundMessage", "Matcher", "Inbox", "Waiter", "Quota", "GROUPCHAT",
           "CONTACT", "STRANGER", "STRANGER_QUOTA"]

GROUPCHAT = "groupchat"
CONTACT = "contact"
STRANGER = "stranger"


@dataclass(frozen=True, slots=True)
class Quota:
    """Bounds of one class of senders: per sender, and for the whole class."""

    per_sender_messages: int
    per_sender_chars: int
    total_messages: int
    total_chars: int


# Strangers (not in the roster, not a joined room) get little: enough for a reply that races
# the roster push, not enough to matter when a flood arrives from thousands of made-up JIDs.
STRANGER_QUOTA = Quota(per_sender_messages=20, per_sender_chars=64 * 1024,
                       total_messages=1_000, total_chars=1024 * 1024)


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message with a body, as received. For ``groupchat``, ``sender`` is ``room@service/nick``."""

    sender: Jid
    body: str
    kind: str  # the stanza type: chat, normal or groupchat
    stanza_id: str
    received_at: float


@dataclass(frozen=True, slots=True)
class Matcher:
    """Which messages a ``jabber_receive`` wants. Build with ``for_jid`` or ``for_room``."""

    bare: str
    resource: str | None = None  # None: any resource (including none)
    room: bool = False
    own_nick: str = ""  # room matchers: our own nickname, whose messages are skipped

    @classmethod
    def for_jid(cls, jid: Jid) -> Matcher:
        """Non-groupchat messages from exactly this bare JID (any resource) or this full JID."""
        return cls(bare=jid.bare, resource=None if jid.is_bare else jid.resource)

    @classmethod
    def for_room(cls, room: Jid, own_nick: str) -> Matcher:
        """Groupchat messages in ``room`` (its bare JID) from anyone but ``own_nick``."""
        return cls(bare=room.bare, room=True, own_nick=unicodedata.normalize("NFC", own_nick))

    def matches(self, msg: InboundMessage) -> bool:
        sender = msg.sender
        if sender.bare != self.bare:
            return False
        if self.room:
            return msg.kind == GROUPCHAT and sender.resource != self.own_nick
        if msg.kind == GROUPCHAT:
            return False
        return self.resource is None or sender.resource == self.resource

    def __str__(self) -> str:
        if self.room:
            return f"room {self.bare} (not {self.own_nick!r})"
        return self.bare if self.resource is None else f"{self.bare}/{self.resource}"


Deliver = Callable[[InboundMessage], bool]


class Waiter:
    """A registered wait for one message; ``cancel()`` withdraws it (safe to call repeatedly)."""

    __slots__ = ("matcher", "_deliver", "_inbox", "_key")

    def __init__(self, inbox: Inbox, matcher: Matcher, deliver: Deliver, key: int) -> None:
        self.matcher = matcher
        self._deliver = deliver
        self._inbox: Inbox | None = inbox
        self._key = key

    @property
    def active(self) -> bool:
        """True until it has been offered a message or cancelled."""
        return self._inbox is not None

    def cancel(self) -> None:
        inbox, self._inbox = self._inbox, None
        if inbox is not None:
            inbox._forget_waiter(self)

    def __repr__(self) -> str:
        return f"<Waiter {self.matcher} {'active' if self.active else 'done'}>"


@dataclass(slots=True)
class _Buffered:
    msg: InboundMessage
    bare: str
    deadline: float
    seq: int
    sender_class: str


@dataclass(slots=True)
class _ClassBooks:
    quota: Quota
    order: OrderedDict[int, _Buffered]  # this class's messages, oldest first
    chars: int = 0


class Inbox:
    """One account's buffered messages and waiters."""

    def __init__(
        self,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_messages: int = 10_000,
        max_chars: int = 16 * 1024 * 1024,
        per_sender_messages: int = 1_000,
        per_sender_chars: int = 1024 * 1024,
        stranger_quota: Quota = STRANGER_QUOTA,
        is_trusted: Callable[[InboundMessage], bool] | None = None,
    ) -> None:
        """``max_*`` bound the contacts' class in total, ``per_sender_*`` each contact;
        ``is_trusted`` None counts every sender as a contact."""
        if ttl < 0:
            raise ValueError("ttl must not be negative")
        self.ttl = float(ttl)
        self._clock = clock
        self.is_trusted = is_trusted
        contact_quota = Quota(per_sender_messages, per_sender_chars, max_messages, max_chars)
        self._classes = {
            CONTACT: _ClassBooks(contact_quota, OrderedDict()),
            STRANGER: _ClassBooks(stranger_quota, OrderedDict()),
        }
        self._sender_chars: dict[str, int] = {}
        self.evicted: dict[str, int] = {CONTACT: 0, STRANGER: 0}
        self._order: OrderedDict[int, _Buffered] = OrderedDict()  # oldest first
        self._by_sender: dict[str, OrderedDict[int, _Buffered]] = {}
        self._waiters: dict[str, OrderedDict[int, Waiter]] = {}
        self._seq = itertools.count()
        self._waiting = 0
        self.dropped = 0  # buffered messages thrown away to respect the bounds
        self.expired = 0  # buffered messages nobody took within ttl
        self.delivered = 0  # messages handed straight to a waiter
        self.delivery_errors = 0  # deliver callbacks that raised (treated as a refusal)

    # -- incoming --------------------------------------------------------------------------------

    def put(self, msg: InboundMessage) -> bool:
        """Hand ``msg`` to the oldest matching waiter that takes it, else buffer it.

        Returns True when a waiter took it."""
        bare = msg.sender.bare
        waiters = self._waiters.get(bare)
        if waiters:
            for waiter in list(waiters.values()):  # deliver() may add or cancel waiters
                if not waiter.active or not waiter.matcher.matches(msg):
                    continue
                deliver = waiter._deliver
                waiter.cancel()  # one-shot, and out of the queue before any re-entrant call
                try:
                    taken = deliver(msg)
                except Exception:
                    self.delivery_errors += 1
                    taken = False
                if taken:
                    self.delivered += 1
                    return True
        self._buffer(bare, msg)
        return False

    def _buffer(self, bare: str, msg: InboundMessage) -> None:
        now = self._clock()
        self._purge(now)
        if self.ttl <= 0:
            self.expired += 1
            return
        size = len(msg.body)
        trusted = self.is_trusted is None or self.is_trusted(msg)
        sender_class = CONTACT if trusted else STRANGER
        books = self._classes[sender_class]
        quota = books.quota
        if size > quota.per_sender_chars or size > quota.total_chars:
            self.dropped += 1
            self.evicted[sender_class] += 1
            return
        entry = _Buffered(msg, bare, now + self.ttl, next(self._seq), sender_class)
        self._order[entry.seq] = entry
        books.order[entry.seq] = entry
        queue = self._by_sender.setdefault(bare, OrderedDict())
        queue[entry.seq] = entry
        books.chars += size
        self._sender_chars[bare] = self._sender_chars.get(bare, 0) + size
        # The sender's own oldest go first, then its class's: never the other class's.
        while len(queue) > quota.per_sender_messages or self._sender_chars[bare] > quota.per_sender_chars:
            self._evict(queue[next(iter(queue))])
        while len(books.order) > quota.total_messages or books.chars > quota.total_chars:
            self._evict(books.order[next(iter(books.order))])

    def _evict(self, entry: _Buffered) -> None:
        del self._order[entry.seq]
        self._unindex(entry)
        self.dropped += 1
        self.evicted[entry.sender_class] += 1

    # -- reading ---------------------------------------------------------------------------------

    def take(self, matcher: Matcher) -> InboundMessage | None:
        """Remove and return the oldest unexpired buffered message ``matcher`` accepts."""
        now = self._clock()
        self._purge(now)
        entries = self._by_sender.get(matcher.bare)
        if not entries:
            return None
        for entry in entries.values():
            if entry.deadline > now and matcher.matches(entry.msg):
                break
        else:
            return None
        del self._order[entry.seq]
        self._unindex(entry)
        return entry.msg

    def add_waiter(self, matcher: Matcher, deliver: Deliver) -> Waiter:
        """Queue a one-shot wait; ``deliver(msg)`` returns False to pass the message on.

        Does not look at the buffer: call ``take`` first."""
        waiter = Waiter(self, matcher, deliver, next(self._seq))
        self._waiters.setdefault(matcher.bare, OrderedDict())[waiter._key] = waiter
        self._waiting += 1
        return waiter

    def _forget_waiter(self, waiter: Waiter) -> None:
        queue = self._waiters.get(waiter.matcher.bare)
        if queue is not None and queue.pop(waiter._key, None) is not None:
            self._waiting -= 1
            if not queue:
                del self._waiters[waiter.matcher.bare]

    # -- counts ----------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Waiters registered and not yet served or cancelled."""
        return self._waiting

    def __len__(self) -> int:
        """Unexpired buffered messages."""
        self._purge(self._clock())
        return len(self._order)

    def __repr__(self) -> str:
        return (
            f"<Inbox [{len(self)} buffered, {self._waiting} waiting, "
            f"{self.dropped} dropped, {self.expired} expired]>"
        )

    # -- internals -------------------------------------------------------------------------------

    def _purge(self, now: float) -> None:
        # Every message gets the same ttl, so deadlines grow with arrival: expired ones are a
        # prefix of the arrival order and the purge stops at the first live one.
        order = self._order
        while order:
            oldest = order[next(iter(order))]
            if oldest.deadline > now:
                return
            order.popitem(last=False)
            self._unindex(oldest)
            self.expired += 1

    def _unindex(self, entry: _Buffered) -> None:
        size = len(entry.msg.body)
        books = self._classes[entry.sender_class]
        del books.order[entry.seq]
        books.chars -= size
        queue = self._by_sender[entry.bare]
        del queue[entry.seq]
        if not queue:
            del self._by_sender[entry.bare]
            del self._sender_chars[entry.bare]
        else:
            self._sender_chars[entry.bare] -= size
