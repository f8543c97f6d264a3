"""The XMPP side as a dialplan script sees it: one object whose methods say what a script wants.

Scripts reach XMPP only through ``services.xmpp`` (an :class:`XmppFacade`): a contact's status,
a send (optionally confirmed), a receive that gives the message back when the caller has left,
rooms, the account's nick, a live account where a script needs one. They never touch the pool's
inboxes, its sessions or its confirmation bookkeeping. What a script still reads elsewhere, and why:
``services.storage`` for the directory and the archive (local data, not the XMPP side), and
``services.config`` for accounts and limits.

Failures are errors.py's tree, nothing else: the session module translates slixmpp's own errors
where it owns the library (``RoomJoinFailed``, ``NotOnline``); this facade turns a state a
script cannot work with (a live menu on an offline account) into the same tree; the database's
``StorageError`` passes through untouched. ``scripts/base.py``'s wrapper is the one place where
each class becomes ``*_STATUS=FAILURE`` and its ``*_ERROR`` text.

Importing this module loads neither slixmpp nor SQLAlchemy: the pool is a type only here
(``tests/test_purity.py``).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

from .errors import NotOnline
from .inbox import InboundMessage, Matcher
from .jid import Jid
from .presence import PresenceCache, Show, StatusAnswer

if TYPE_CHECKING:  # types only: the pool is built (and slixmpp loaded) by services.py
    from .config import AccountConfig
    from .xmpp_pool import SendOutcome, XmppPool


class XmppFacade:
    """What a dialplan script may ask of the XMPP side (module docstring)."""

    __slots__ = ("_pool", "_presence", "_sessions")

    def __init__(self, pool: XmppPool, presence: PresenceCache) -> None:
        self._pool = pool
        self._presence = presence
        self._sessions = pool.sessions  # read on jabber_status's path: one lookup fewer

    # -- presence -------------------------------------------------------------------------------

    def status(self, account: AccountConfig, jid: Jid) -> StatusAnswer:
        """The contact's status from the cache (no network); ``error`` says why it is not live.

        While the account has no live session (docs/dialplan.md, jabber_status) configured
        buddies count as in the roster even before the server sent it (6, never 7), and
        ``error`` (``account offline (<state>)``) lets the dialplan tell "contact offline" from
        "our link is down"."""
        answer = self._presence.status(account.name, jid)
        session = self._sessions[account.name]  # every configured account has one
        if session.online:
            return answer
        if answer.code == 7 and jid.bare in {b.lower() for b in account.buddies}:
            answer = StatusAnswer(code=6, show=Show.OFFLINE, message="", resource="")
        return replace(answer, error=f"account offline ({session.state})")

    def require_online(self, account: str, consequence: str) -> None:
        """Raise ``NotOnline`` ("account X is not connected; <consequence>") unless it is live."""
        if not self._pool.session(account).online:
            raise NotOnline(f"account {account} is not connected; {consequence}")

    def nick(self, account: str) -> str:
        """The account's own name in chat: its default room nick (the username's local part)."""
        return self._pool.session(account).default_nick

    # -- sending --------------------------------------------------------------------------------

    async def send(self, account: str, to: Jid, body: str) -> SendOutcome:
        """Durably accept one chat message: SUCCESS (a live session took it) or QUEUED."""
        return await self._pool.send(account, to, body)

    async def send_confirmed(
        self, account: str, to: Jid, body: str, *, confirm: str, timeout: float
    ) -> tuple[str, str]:
        """Send, then wait as ``confirm`` asks (``""``, ``server`` or ``receipt``); returns
        (status word, error text).

        ``""``: SUCCESS or QUEUED at once. ``server``: SUCCESS once the server acknowledged the
        stanza (XEP-0198 ``h`` or a barrier written after it), FAILURE with the server's error if
        it bounced, QUEUED otherwise (link down, or no proof within ``timeout``: the message is
        still sent later). ``receipt``: also asks the recipient's client for a XEP-0184 receipt;
        DELIVERED when it comes in time, else what ``server`` answers."""
        pool = self._pool
        receipt = confirm == "receipt"
        outcome, stanza_id = await pool.submit(account, to, body, confirm=bool(confirm), receipt=receipt)
        if not confirm:
            return outcome.value, ""
        if outcome.value == "QUEUED":
            pool.forget_confirmation(stanza_id)
            return "QUEUED", "account offline: not confirmed (still queued)"
        status, reason = await pool.confirm(stanza_id, timeout, receipt=receipt)
        return status.value, reason

    # -- receiving ------------------------------------------------------------------------------

    def sender_matcher(self, account: str, jid: Jid) -> Matcher:
        """A room JID the account is in (or will re-join) means "the room's next message, not
        our own"; any other JID means that sender (bare: any resource; full: that one)."""
        if jid.is_bare:
            # a room being re-joined after a reconnect is still that room: its messages will come
            nick = self._pool.session(account).remembered_nick(jid.bare)
            if nick is not None:
                return Matcher.for_room(jid, nick)
        return Matcher.for_jid(jid)

    async def receive(
        self, account: str, matcher: Matcher, timeout: float, hangup: asyncio.Event
    ) -> InboundMessage | None:
        """The oldest buffered match, or the next within ``timeout``; None on timeout or hangup.

        When ``hangup`` is set (the caller left) the wait ends at once, and a message taken
        meanwhile goes back to the buffer for others (docs/dialplan.md, jabber_receive): the
        caller tells HANGUP from TIMEOUT by ``hangup`` itself."""
        message = await self._pool.receive(account, matcher, timeout, hangup)
        if message is not None and hangup.is_set():
            self.put_back(account, message)
            return None
        return message

    def put_back(self, account: str, message: InboundMessage) -> None:
        """Give back a message that did not reach the dialplan; the next matching caller gets it."""
        self._pool.inboxes[account].put(message)

    # -- rooms (XEP-0045) -----------------------------------------------------------------------

    async def join_room(self, account: str, room: Jid, nick: str | None) -> str:
        """Join ``room`` as ``nick`` (None: the account's nick) and wait for the room to confirm;
        returns the nick the room gave us. Raises ``RoomJoinFailed``."""
        session = self._pool.session(account)
        return await session.join_room(room, nick or session.default_nick)

    async def leave_room(self, account: str, room: Jid) -> bool:
        """Leave ``room`` and stop re-joining it; False when the account was not in it."""
        return await self._pool.session(account).leave_room(room)

    async def send_to_room(self, account: str, room: Jid, nick: str | None, body: str) -> SendOutcome:
        """A groupchat message, joining first if the account is not in the room (as ``nick``,
        None: the nick it used there, else its own). Offline: the room is remembered and joined
        with the queued message when the account reconnects (QUEUED)."""
        session = self._pool.session(account)
        if session.online:
            if nick is not None or session.room_nick(room.bare) is None:
                await session.join_room(room, nick)  # None: the remembered nick, else the default
        else:
            session.remember_room(room, nick)
        return await self._pool.send(account, room, body, kind="groupchat")
