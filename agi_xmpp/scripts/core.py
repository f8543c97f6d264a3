"""The res_xmpp equivalents: jabber_send, jabber_status, jabber_receive."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..agi_channel import Channel
from ..values import b64, sanitize
from .base import (
    Undo,
    Variables,
    account_for,
    arg,
    dialplan_script,
    message_text,
    positive_seconds,
    required_jid,
    send_with_confirm,
    variable_name,
)

if TYPE_CHECKING:  # a type only: importing a script must not load the XMPP side or the database
    from ..services_bundle import Services


# -- the res_xmpp equivalents -------------------------------------------------------------------


@dialplan_script(
    "jabber_send",
    variables=("JABBER_SEND_STATUS", "JABBER_SEND_ERROR"),
    status="JABBER_SEND_STATUS",
    error="JABBER_SEND_ERROR",
    help="jabber_send,ACCOUNT,JID,MESSAGE...  (options var=NAME, confirm=server|receipt, timeout=S)\n"
    "Sends a chat message. JABBER_SEND_STATUS: SUCCESS (handed to a live session), QUEUED (stored,\n"
    "sent when the account reconnects, within outbox_ttl) or FAILURE (see JABBER_SEND_ERROR).\n"
    "confirm=server: SUCCESS only once the server acknowledged it (FAILURE if it bounced);\n"
    "confirm=receipt: DELIVERED once the recipient's client confirms it (XEP-0184).",
)
async def jabber_send(channel: Channel, services: Services, out: Variables) -> None:
    account = account_for(channel, services)
    to = required_jid(channel, 1)
    body = await message_text(channel, services, first=2)
    status, reason = await send_with_confirm(channel, services, account.name, to, body)
    out["JABBER_SEND_STATUS"] = status
    out["JABBER_SEND_ERROR"] = reason


@dialplan_script(
    "jabber_status",
    variables=("JABBER_STATUS", "JABBER_STATUS_SHOW", "JABBER_STATUS_MESSAGE", "JABBER_STATUS_ERROR"),
    status=None,
    error="JABBER_STATUS_ERROR",
    help="jabber_status,ACCOUNT,JID[,VARNAME]\n"
    "Sets JABBER_STATUS (or VARNAME) to res_xmpp's code: 1 available, 2 chat, 3 away, 4 xa, 5 dnd,\n"
    "6 offline, 7 not in roster; JABBER_STATUS_SHOW to the word and JABBER_STATUS_MESSAGE to the\n"
    "status text. Answered from the live presence cache, without a network round trip.",
)
def jabber_status(channel: Channel, services: Services, out: Variables) -> None:
    target = arg(channel, 2)
    if target:
        variable_name(target, "VARNAME")
        # The code goes to VARNAME instead of JABBER_STATUS; both are set so neither is stale.
        out[target] = ""
    account = account_for(channel, services)
    jid = required_jid(channel, 1)
    # From the cache; while the account is offline the error says the answer is not live
    # (docs/dialplan.md, jabber_status).
    answer = services.xmpp.status(account, jid)
    if answer.error:  # "" while the account is live (the usual case): nothing to set
        out["JABBER_STATUS_ERROR"] = answer.error
    out[target or "JABBER_STATUS"] = str(answer.code)
    out["JABBER_STATUS_SHOW"] = str(answer.show)  # a StrEnum: its value, without the enum lookup
    out["JABBER_STATUS_MESSAGE"] = sanitize(answer.message)


@dialplan_script(
    "jabber_receive",
    variables=(
        "JABBER_RECEIVE",
        "JABBER_RECEIVE_B64",
        "JABBER_RECEIVE_FROM",
        "JABBER_RECEIVE_STATUS",
        "JABBER_RECEIVE_ERROR",
    ),
    status="JABBER_RECEIVE_STATUS",
    error="JABBER_RECEIVE_ERROR",
    help="jabber_receive,ACCOUNT,JID[,TIMEOUT]\n"
    "Returns the oldest message from JID (bare: any resource; full: that resource; a joined room:\n"
    "its next message) buffered within the account's timeout, or waits up to TIMEOUT seconds\n"
    "(default 20). JABBER_RECEIVE (sanitised), JABBER_RECEIVE_B64 (exact), JABBER_RECEIVE_FROM;\n"
    "JABBER_RECEIVE_STATUS: SUCCESS, TIMEOUT, HANGUP or FAILURE.",
)
async def jabber_receive(channel: Channel, services: Services, out: Variables) -> Undo | None:
    account = account_for(channel, services)
    jid = required_jid(channel, 1)
    timeout = positive_seconds(arg(channel, 2), 20.0, services.config.general.max_receive_timeout)
    xmpp = services.xmpp
    matcher = xmpp.sender_matcher(account.name, jid)
    message = await xmpp.receive(account.name, matcher, timeout, channel.hangup)
    if channel.hangup.is_set():  # the caller left: a message taken meanwhile went back
        out["JABBER_RECEIVE_STATUS"] = "HANGUP"
        return None
    if message is None:
        out["JABBER_RECEIVE_STATUS"] = "TIMEOUT"
        return None
    out["JABBER_RECEIVE"] = sanitize(message.body)
    out["JABBER_RECEIVE_B64"] = b64(message.body)
    out["JABBER_RECEIVE_FROM"] = sanitize(message.sender.full)
    out["JABBER_RECEIVE_STATUS"] = "SUCCESS"
    # if the connection dies before Asterisk has the variables, the message goes back
    return lambda: xmpp.put_back(account.name, message)
