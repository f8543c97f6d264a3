"""An XMPP session's group chats (XEP-0045; part of ``XmppSession``).

Every room the account is in, or will re-join, is remembered with our nick in it. A join waits
for the room's self-presence (status 110, or our nick), shared by every caller asking for the
same join while it is in flight (the re-join after a reconnect and the outbox resend both ask);
a refused or unconfirmed join raises ``RoomJoinFailed`` and leaves the previous state. On a fresh
session every remembered room is joined again (``XmppSession._on_session_start``).

A mixin of ``XmppSession`` (xmpp_session.py), which sets the attributes declared below.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import slixmpp
from slixmpp.xmlstream import ET

from .config import AccountConfig
from .errors import RoomJoinFailed
from .jid import Jid, parse_jid

MUC_NS = "http://jabber.org/protocol/muc"
MUC_USER_NS = "http://jabber.org/protocol/muc#user"


@dataclass(slots=True)
class _Room:
    nick: str
    joined: bool = False
    waiter: asyncio.Future[None] | None = None


class SessionRooms:
    """The rooms we are in or will re-join, and our nick in each (module docstring)."""

    # Set by XmppSession.__init__ (and kept current by it).
    name: str
    account: AccountConfig
    _jid: Jid
    _client: slixmpp.ClientXMPP | None
    _rooms: dict[str, _Room]
    log: Any
    online: bool

    @property
    def default_nick(self) -> str:
        """docs/dialplan.md (group chat): the account's local part, as written in ``username``."""
        local, at, _domain = self.account.username.split("/", 1)[0].partition("@")
        return local if at and local else (self._jid.local or self.name)

    def joined_rooms(self) -> dict[str, str]:
        return {room: state.nick for room, state in self._rooms.items() if state.joined}

    def room_nick(self, room: str) -> str | None:
        state = self._rooms.get(room)
        return state.nick if state is not None and state.joined else None

    def remembered_nick(self, room: str) -> str | None:
        """Our nick in ``room`` if we are in it or will re-join it (joined or not right now)."""
        state = self._rooms.get(room)
        return state.nick if state is not None else None

    def remember_room(self, room: Jid, nick: str | None = None) -> None:
        """Join ``room`` on the next fresh session (used while offline); nothing is sent now."""
        self._rooms.setdefault(room.bare, _Room(nick=nick or self.default_nick))

    async def join_room(self, room: Jid, nick: str | None = None, timeout: float = 10.0) -> str:
        """Join (or change nick) and wait for the room's self-presence; returns our nick.

        ``nick=None`` keeps the nick we use (or last asked for) in that room, else
        ``default_nick``. A join already in flight with the same nick is shared, not sent twice
        (the re-join after a reconnect and the outbox resend both ask). Raises ``RoomJoinFailed``.
        """
        if not self.online or self._client is None:
            raise RoomJoinFailed(f"account '{self.name}' is not connected")
        previous = self._rooms.get(room.bare)
        if nick is None:
            nick = previous.nick if previous is not None else self.default_nick
        if previous is not None and previous.nick == nick:
            if previous.joined:
                return nick
            if previous.waiter is not None and not previous.waiter.done():
                await self._await_join(room, previous, None, timeout)
                return previous.nick
        loop = asyncio.get_running_loop()
        state = _Room(nick=nick, waiter=loop.create_future())
        self._rooms[room.bare] = state
        self._send_join(room.bare, nick)
        await self._await_join(room, state, previous, timeout)
        return state.nick

    async def _await_join(self, room: Jid, state: _Room, previous: _Room | None, timeout: float) -> None:
        try:
            # shielded: another caller may share this join and must not see it cancelled.
            # asyncio.timeout(), not wait_for(): see storage/async_storage.py.
            async with asyncio.timeout(timeout):
                await asyncio.shield(state.waiter)  # type: ignore[arg-type]
        except (TimeoutError, RoomJoinFailed) as exc:
            if self._rooms.get(room.bare) is state and not state.joined:
                # a refused nick change leaves us in the room under the old nick
                if previous is not None and previous.joined:
                    self._rooms[room.bare] = previous
                else:
                    del self._rooms[room.bare]
            if isinstance(exc, RoomJoinFailed):
                raise
            raise RoomJoinFailed(
                f"room {room.bare} did not confirm the join within {timeout:g} s"
            ) from None

    async def _rejoin(self, room: str, nick: str) -> None:
        try:
            await self.join_room(parse_jid(room), nick)
            self.log.info("xmpp_room_rejoined", room=room)
        except RoomJoinFailed as exc:
            self.log.warning("xmpp_room_rejoin_failed", room=room, error=str(exc))
            # keep it listed so the next fresh session tries again
            self._rooms.setdefault(room, _Room(nick=nick))

    def _send_join(self, room: str, nick: str) -> None:
        presence = self._client.make_presence(pto=f"{room}/{nick}")  # type: ignore[union-attr]
        x = ET.Element(f"{{{MUC_NS}}}x")
        history = ET.SubElement(x, f"{{{MUC_NS}}}history")
        history.set("maxstanzas", "0")  # old room chatter must not answer a new jabber_receive
        presence.append(x)
        presence.send()

    async def leave_room(self, room: Jid) -> bool:
        """Leave a room under the nick we use there (and stop re-joining it); False when we
        were not in it."""
        state = self._rooms.pop(room.bare, None)
        if state is None:
            return False
        if state.waiter is not None and not state.waiter.done():
            state.waiter.set_exception(RoomJoinFailed(f"left room {room.bare} before the join completed"))
        if self.online and self._client is not None:
            self._client.send_presence(pto=f"{room.bare}/{state.nick}", ptype="unavailable")
        return True

    def _on_room_presence(self, room: _Room, sender: Jid, presence: object, kind: str | None) -> None:
        waiter = room.waiter
        if kind == "error":
            # the bounce of our join comes from room/nick (or the bare room for some services)
            if sender.resource in (room.nick, "") and waiter is not None and not waiter.done():
                condition = presence["error"]["condition"] or "refused"  # type: ignore[index]
                waiter.set_exception(RoomJoinFailed(f"room {sender.bare} refused the join: {condition}"))
            return
        codes = {
            el.get("code")
            for el in presence.xml.iterfind(f"{{{MUC_USER_NS}}}x/{{{MUC_USER_NS}}}status")  # type: ignore[attr-defined]
        }
        # XEP-0045 §7.2.2: status 110 marks our own presence, even when the room rewrote the nick
        if sender.resource != room.nick and "110" not in codes:
            return  # other occupants' presence is not ours to track
        if kind == "unavailable":
            if "303" not in codes:  # 303: our nick is changing; the new nick's presence follows
                room.joined = False
            return
        if sender.resource != room.nick:
            room.nick = sender.resource  # status 210: the room assigned this nick
        room.joined = True
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
