"""Calls that follow chat: presence_route and call_notify (docs/features.md).

``presence_route`` answers from the live presence cache and the directory (local database): no
network round trip on the call path. ``call_notify`` sends through the durable outbox like
``jabber_send``.

Decisions where the product contract is silent (docs/features.md has the full list):

- A target that cannot be routed — an extension not in the directory, a JID without a directory
  entry (docs/features.md: skipped), a JID that does not parse — is skipped, never fatal: a typo in one member
  must not stop the others ringing. Skipped targets are listed in ``PRESENCE_ROUTE_SKIPPED`` and
  logged as warnings. ``PRESENCE_ROUTE_ERROR`` is empty on ``SUCCESS`` and ``NONE`` (an answer,
  not an error); ``FAILURE`` is only for a bad call (unknown account or policy, no targets).
- A target listed twice (or an extension and its own JID) is dialled once, at its first place.
- ``call_notify``: ``TEXT`` replaces the default text; the caller's recent chat is appended in
  both cases (option ``history=no`` turns it off).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from ..agi_channel import Channel
from ..config import DirectoryEntry
from ..errors import ScriptError, StorageError
from ..jid import Jid, parse_jid
from ..values import check_message_size
from .base import Variables, account_for, arg, dialplan_script, message_text, send_with_confirm

if TYPE_CHECKING:  # types only: importing a script must not load the XMPP side or the database
    from ..services_bundle import Services
    from ..storage import ArchivedMessage

# Which jabber_status codes (docs/dialplan.md, "jabber_status") let a target ring
# (docs/features.md, "presence_route").
POLICIES: dict[str, Callable[[int], bool]] = {
    "available": lambda code: code in (1, 2),
    "present": lambda code: 1 <= code <= 4,
    "not_dnd": lambda code: code != 5,
}
DEFAULT_POLICY = "available"

HISTORY_MESSAGES = 3
HISTORY_BODY_CHARS = 200  # one long message must not bury the call details


async def resolve_target(services: Services, target: str) -> tuple[Jid, DirectoryEntry | None]:
    """An extension (through the directory) or a JID (with its directory entry, if any).

    Raises ``ScriptError`` for an extension that is not in the directory, ``InvalidJid`` for a
    JID that does not parse; a database failure (``StorageError``) is the script's, not the
    target's (scripts/base.py answers it)."""
    if "@" in target:
        jid = parse_jid(target)
        entry = await services.storage.directory_find_jid(jid.bare)
        return jid, entry
    entry = await services.storage.directory_get(target)
    if entry is None:
        raise ScriptError(f"unknown extension {target!r} (not in the directory)")
    return parse_jid(entry.jid), entry


# -- presence_route ----------------------------------------------------------------------------


@dialplan_script(
    "presence_route",
    variables=(
        "PRESENCE_ROUTE_DIAL",
        "PRESENCE_ROUTE_COUNT",
        "PRESENCE_ROUTE_SKIPPED",
        "PRESENCE_ROUTE_STATUS",
        "PRESENCE_ROUTE_ERROR",
    ),
    status="PRESENCE_ROUTE_STATUS",
    error="PRESENCE_ROUTE_ERROR",
    help="presence_route,ACCOUNT,TARGETS[,POLICY]\n"
    "TARGETS: extensions (directory) or JIDs separated by '&'. POLICY: available (default: chat\n"
    "presence 1-2), present (1-4) or not_dnd (all but 5). PRESENCE_ROUTE_DIAL: the '&'-joined\n"
    "devices of the targets that pass, in the order given, for Dial(); PRESENCE_ROUTE_COUNT;\n"
    "PRESENCE_ROUTE_STATUS: SUCCESS, NONE (nobody passes) or FAILURE. Targets that cannot be\n"
    "routed (unknown extension, JID without a directory entry) are skipped and listed in\n"
    "PRESENCE_ROUTE_SKIPPED.",
)
async def presence_route(channel: Channel, services: Services, out: Variables) -> None:
    account = account_for(channel, services)
    targets = [t.strip() for t in arg(channel, 1).split("&") if t.strip()]
    if not targets:
        raise ScriptError("missing TARGETS argument (extensions or JIDs separated by '&')")
    policy_name = arg(channel, 2).lower() or DEFAULT_POLICY
    passes = POLICIES.get(policy_name)
    if passes is None:
        raise ScriptError(f"unknown POLICY {arg(channel, 2)!r} (use {', '.join(POLICIES)})")

    devices: list[str] = []
    skipped: list[str] = []
    for target in targets:
        try:
            jid, entry = await resolve_target(services, target)
        except ScriptError as exc:  # unknown extension, invalid JID
            skipped.append(target)
            channel.log.warning("presence_route_target_skipped", target=target, reason=str(exc))
            continue
        if entry is None:
            skipped.append(target)
            channel.log.warning(
                "presence_route_target_skipped", target=target, reason="JID not in the directory"
            )
            continue
        code = services.xmpp.status(account, jid).code
        if passes(code) and entry.device not in devices:
            devices.append(entry.device)

    out["PRESENCE_ROUTE_DIAL"] = "&".join(devices)
    out["PRESENCE_ROUTE_COUNT"] = str(len(devices))
    out["PRESENCE_ROUTE_SKIPPED"] = "&".join(skipped)
    # NONE is an answer, not an error: PRESENCE_ROUTE_ERROR stays empty, as on SUCCESS.
    out["PRESENCE_ROUTE_STATUS"] = "SUCCESS" if devices else "NONE"


# -- call_notify -------------------------------------------------------------------------------


def _known(value: str | None) -> str:
    """An AGI environment value, or "" for Asterisk's placeholders for "no value"."""
    value = (value or "").strip()
    return "" if value.lower() in ("", "unknown", "<unknown>") else value


def default_notice(env: dict[str, str]) -> str:
    """``Incoming call from <callerid name> <callerid number> to <extension>``
    (docs/features.md, "call_notify")."""
    name = _known(env.get("agi_calleridname"))
    number = _known(env.get("agi_callerid"))
    extension = _known(env.get("agi_extension"))
    if extension in ("", "s"):  # inside a subroutine EXTEN is 's'; the dialled number is better
        extension = _known(env.get("agi_dnid")) or ("" if extension == "s" else extension)
    if name and number and name != number:
        caller = f"{name} {number}"
    else:
        caller = name or number or "an unknown caller"
    return f"Incoming call from {caller}" + (f" to {extension}" if extension else "")


def format_history(
    messages: list[ArchivedMessage], peer_name: str, own_name: str, peer_jid: str
) -> str:
    """The caller's recent chat, oldest first, one readable line per message."""
    lines = [f"Recent chat with {peer_jid}:"]
    for message in messages:
        when = _local_time(message.created_at)
        who = peer_name if message.direction == "in" else own_name
        body = " ".join(message.body.split())  # newlines and tabs would break the layout
        if len(body) > HISTORY_BODY_CHARS:
            body = body[: HISTORY_BODY_CHARS - 1] + "\u2026"
        lines.append(f"[{when}] {who}: {body}")
    return "\n".join(lines)


def _local_time(at: datetime) -> str:
    return at.astimezone().strftime("%Y-%m-%d %H:%M")


@dialplan_script(
    "call_notify",
    variables=("CALL_NOTIFY_STATUS", "CALL_NOTIFY_ERROR"),
    status="CALL_NOTIFY_STATUS",
    error="CALL_NOTIFY_ERROR",
    help="call_notify,ACCOUNT,TARGET[,TEXT...]  (options var=NAME, history=no, confirm=server|receipt, timeout=S)\n"
    "Screen pop: sends TARGET (an extension from the directory, or a JID) a chat saying\n"
    "'Incoming call from <name> <number> to <extension>' (or TEXT), followed by the last three\n"
    "archived messages with the caller when the caller's number is a directory extension.\n"
    "CALL_NOTIFY_STATUS: SUCCESS, QUEUED (account offline: sent when it reconnects), FAILURE, or\n"
    "DELIVERED (confirm=receipt: the recipient's client confirmed it; see jabber_send).",
)
async def call_notify(channel: Channel, services: Services, out: Variables) -> None:
    account = account_for(channel, services)
    target = arg(channel, 1)
    if not target:
        raise ScriptError("missing TARGET argument (an extension or a JID)")
    jid, _entry = await resolve_target(services, target)

    custom = "var" in channel.options or ",".join(channel.args[2:]).strip()
    text = await message_text(channel, services, first=2) if custom else default_notice(channel.env)

    history_option = channel.options.get("history", "yes").strip().lower()
    if history_option not in ("yes", "no", "1", "0", "true", "false", "on", "off"):
        raise ScriptError(f"history= must be yes or no, not {history_option!r}")
    caller = _known(channel.env.get("agi_callerid"))
    if caller and history_option in ("yes", "1", "true", "on"):
        text = await _with_history(channel, services, account.name, caller, text)

    status, reason = await send_with_confirm(channel, services, account.name, jid, text)
    out["CALL_NOTIFY_STATUS"] = status
    out["CALL_NOTIFY_ERROR"] = reason


async def _with_history(
    channel: Channel, services: Services, account: str, caller: str, text: str
) -> str:
    """``text`` plus the caller's recent chat, if the caller is a directory extension."""
    try:
        entry = await services.storage.directory_get(caller)
        if entry is None:
            return text
        messages = await services.storage.archive_recent(account, entry.jid, HISTORY_MESSAGES)
    except StorageError as exc:  # the screen pop matters more than its history
        channel.log.warning("call_notify_history_unavailable", error=f"database unavailable: {exc}")
        return text
    if not messages:
        return text
    peer = parse_jid(entry.jid).local or entry.jid
    own = services.xmpp.nick(account)
    full = f"{text}\n\n{format_history(messages, peer, own, entry.jid)}"
    try:
        check_message_size(full, services.config.general.max_message_bytes)
    except ScriptError:
        return text  # the notice matters more than its history
    return full

