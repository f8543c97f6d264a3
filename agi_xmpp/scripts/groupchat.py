"""Group chat: jabber_join, jabber_leave, jabber_send_group (docs/features.md, "Group chat").

The account's session remembers every room it is in and re-joins them on a fresh session; a
groupchat message goes through the pool's durable outbox like a chat message, and the outbox
resend joins a message's room (and waits for the room to confirm) before sending it again.

Decisions where the product contract is silent (docs/features.md has the full list):

- ``ROOM`` is ``room@service``; ``room@service/nick`` is accepted and its resource is the
  nickname when ``NICKNAME`` is not given.
- ``jabber_join`` on a room the account is already in with that nickname succeeds at once; with
  another nickname it changes the nickname (XEP-0045 §7.6), confirmed like a join.
- ``jabber_leave`` succeeds when the account is not in the room (the wanted end state holds) and
  while offline (the room is no longer re-joined); ``NICKNAME`` is accepted for res_xmpp
  compatibility, but the account leaves under the nickname it joined with.
- ``jabber_send_group`` while the account is offline: the room is remembered and the message is
  stored (``QUEUED``); when the session returns, the room is joined first, then the message is
  sent, within ``outbox_ttl``. Online, a room that refuses the join is a ``FAILURE`` and nothing
  is stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..agi_channel import Channel
from ..errors import InvalidJid, ScriptError
from ..jid import Jid, parse_jid
from .base import Variables, account_for, arg, dialplan_script, message_text

if TYPE_CHECKING:  # a type only: importing a script must not load the XMPP side or the database
    from ..services_bundle import Services


def room_and_nick(channel: Channel, index: int, nick_text: str) -> tuple[Jid, str | None]:
    """``ROOM`` (bare room JID) and the nickname (``NICKNAME``, else ROOM's resource, else None)."""
    text = arg(channel, index)
    if not text:
        raise ScriptError("missing ROOM argument")
    jid = parse_jid(text)
    if not jid.local:
        raise ScriptError(f"ROOM must be a room JID (room@service), not {text!r}")
    nick = nick_text.strip() or (None if jid.is_bare else jid.resource)
    if nick is not None:
        try:
            parse_jid(f"{jid.bare}/{nick}")
        except InvalidJid as exc:
            raise ScriptError(f"invalid NICKNAME {nick!r}: {exc}") from None
    return jid.bare_jid(), nick


@dialplan_script(
    "jabber_join",
    variables=("JABBER_JOIN_STATUS", "JABBER_JOIN_ERROR"),
    status="JABBER_JOIN_STATUS",
    error="JABBER_JOIN_ERROR",
    help="jabber_join,ACCOUNT,ROOM[,NICKNAME]\n"
    "Joins a multi-user chat room (NICKNAME defaults to the account's local part) and waits up to\n"
    "10 s for the room to confirm. JABBER_JOIN_STATUS: SUCCESS or FAILURE (see JABBER_JOIN_ERROR).\n"
    "Joined rooms are re-joined after every reconnect.",
)
async def jabber_join(channel: Channel, services: Services, out: Variables) -> None:
    account = account_for(channel, services)
    room, nick = room_and_nick(channel, 1, arg(channel, 2))
    joined_as = await services.xmpp.join_room(account.name, room, nick)
    channel.log.info("room_joined", account=account.name, room=room.bare, nick=joined_as)
    out["JABBER_JOIN_STATUS"] = "SUCCESS"


@dialplan_script(
    "jabber_leave",
    variables=("JABBER_LEAVE_STATUS", "JABBER_LEAVE_ERROR"),
    status="JABBER_LEAVE_STATUS",
    error="JABBER_LEAVE_ERROR",
    help="jabber_leave,ACCOUNT,ROOM[,NICKNAME]\n"
    "Leaves a room and stops re-joining it. JABBER_LEAVE_STATUS: SUCCESS (also when the account\n"
    "was not in the room) or FAILURE (see JABBER_LEAVE_ERROR).",
)
async def jabber_leave(channel: Channel, services: Services, out: Variables) -> None:
    account = account_for(channel, services)
    room, _nick = room_and_nick(channel, 1, arg(channel, 2))  # validated; we leave as joined
    was_in = await services.xmpp.leave_room(account.name, room)
    channel.log.info("room_left", account=account.name, room=room.bare, was_in=was_in)
    out["JABBER_LEAVE_STATUS"] = "SUCCESS"


@dialplan_script(
    "jabber_send_group",
    variables=("JABBER_SEND_GROUP_STATUS", "JABBER_SEND_GROUP_ERROR"),
    status="JABBER_SEND_GROUP_STATUS",
    error="JABBER_SEND_GROUP_ERROR",
    help="jabber_send_group,ACCOUNT,ROOM,MESSAGE...  (options nickname=NICK, var=NAME)\n"
    "Sends a groupchat message to a room, joining it first if the account is not in it.\n"
    "JABBER_SEND_GROUP_STATUS: SUCCESS (handed to the live session), QUEUED (account offline:\n"
    "stored; the room is joined and the message sent when the account reconnects, within\n"
    "outbox_ttl) or FAILURE (see JABBER_SEND_GROUP_ERROR, e.g. the room refused the join).",
)
async def jabber_send_group(channel: Channel, services: Services, out: Variables) -> None:
    account = account_for(channel, services)
    room, nick = room_and_nick(channel, 1, channel.options.get("nickname", ""))
    body = await message_text(channel, services, first=2)
    outcome = await services.xmpp.send_to_room(account.name, room, nick, body)
    out["JABBER_SEND_GROUP_STATUS"] = outcome.value
