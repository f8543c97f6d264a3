"""The dialplan scripts, one function each, registered by name with the help text users see.

Every script declares all the variables it documents; the ``dialplan_script`` wrapper sets every
one of them on every run (empty unless the script filled it), so nothing from an earlier call can
leak into a later decision. A ``ScriptError`` becomes ``*_STATUS=FAILURE`` plus a one-line
``*_ERROR``; the caller is never hung up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from .agi_protocol import check_variable_name
from .agi_server import Channel, ScriptRegistry
from .config import AccountConfig
from .errors import LocalProtocolError, ScriptError
from .inbox import Matcher
from .jid import Jid, parse_jid
from .services import Services
from .values import b64, sanitize

registry = ScriptRegistry()

Variables = dict[str, str]
ScriptBody = Callable[[Channel, Services, Variables], Awaitable[None]]


def dialplan_script(
    name: str, *, variables: Iterable[str], status: str | None, error: str, help: str
) -> Callable[[ScriptBody], ScriptBody]:
    """Register ``body`` as script ``name``; it fills ``out``, we set every variable after it."""
    names = tuple(variables)

    def decorate(body: ScriptBody) -> ScriptBody:
        @registry.script(name, help=help)
        async def run(channel: Channel, services: Services) -> None:
            out: Variables = dict.fromkeys(names, "")
            try:
                await body(channel, services, out)
            except ScriptError as exc:
                for key in out:
                    out[key] = ""
                if status is not None:
                    out[status] = "FAILURE"
                out[error] = str(exc)
                channel.log.info("script_failed", error=str(exc))
            else:
                out[error] = ""
            for key, value in out.items():
                await channel.set_variable(key, value)

        run.__name__ = body.__name__
        return body

    return decorate


# -- argument helpers ---------------------------------------------------------------------------


def arg(channel: Channel, index: int) -> str:
    """Positional argument ``index`` (0-based), stripped; empty when absent."""
    return channel.args[index].strip() if index < len(channel.args) else ""


def required_jid(channel: Channel, index: int, what: str = "JID") -> Jid:
    text = arg(channel, index)
    if not text:
        raise ScriptError(f"missing {what} argument")
    return parse_jid(text)


def account_for(channel: Channel, services: Services) -> AccountConfig:
    account = services.config.account(arg(channel, 0))
    return account


async def message_text(channel: Channel, services: Services, first: int) -> str:
    """A trailing free-text argument (the rest joined with ','), or channel variable ``var=``."""
    source = channel.options.get("var")
    if source:
        try:
            check_variable_name(source)
        except LocalProtocolError as exc:
            raise ScriptError(f"invalid var= name: {exc}") from None
        text = await channel.get_variable_exact(source)
    else:
        text = ",".join(channel.args[first:])
    if not text.strip():
        raise ScriptError("empty message")
    limit = services.config.general.max_message_bytes
    size = len(text.encode("utf-8"))
    if size > limit:
        raise ScriptError(f"message is {size} bytes, more than max_message_bytes ({limit})")
    return text


def positive_seconds(text: str, default: float, maximum: float, what: str = "TIMEOUT") -> float:
    """A positive number of seconds; empty means ``default``; clamped to ``maximum``."""
    if not text:
        return min(default, maximum)
    try:
        value = float(text)
    except ValueError:
        raise ScriptError(f"{what} must be a positive number of seconds, not {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ScriptError(f"{what} must be a positive number of seconds, not {text!r}")
    return min(value, maximum)


def receive_matcher(services: Services, account: str, jid: Jid) -> Matcher:
    """A room JID the account has joined means "the room's next message"; otherwise the sender."""
    if jid.is_bare:
        nick = services.pool.session(account).room_nick(jid.bare)
        if nick is not None:
            return Matcher.for_room(jid, nick)
    return Matcher.for_jid(jid)


# -- the res_xmpp equivalents -------------------------------------------------------------------


@dialplan_script(
    "jabber_send",
    variables=("JABBER_SEND_STATUS", "JABBER_SEND_ERROR"),
    status="JABBER_SEND_STATUS",
    error="JABBER_SEND_ERROR",
    help="jabber_send,ACCOUNT,JID,MESSAGE...  (option var=NAME reads the message from ${NAME})\n"
    "Sends a chat message. JABBER_SEND_STATUS: SUCCESS (handed to a live session), QUEUED (stored,\n"
    "sent when the account reconnects, within outbox_ttl) or FAILURE (see JABBER_SEND_ERROR).",
)
async def jabber_send(channel: Channel, services: Services, out: Variables) -> None:
    account = account_for(channel, services)
    to = required_jid(channel, 1)
    body = await message_text(channel, services, first=2)
    outcome = await services.pool.send(account.name, to, body)
    out["JABBER_SEND_STATUS"] = outcome.value


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
async def jabber_status(channel: Channel, services: Services, out: Variables) -> None:
    target = arg(channel, 2)
    if target:
        try:
            check_variable_name(target)
        except LocalProtocolError as exc:
            raise ScriptError(f"invalid VARNAME: {exc}") from None
        # The code goes to VARNAME instead of JABBER_STATUS; both are set so neither is stale.
        out[target] = ""
    account = account_for(channel, services)
    jid = required_jid(channel, 1)
    answer = services.presence.status(account.name, jid)
    out[target or "JABBER_STATUS"] = str(answer.code)
    out["JABBER_STATUS_SHOW"] = answer.show.value
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
async def jabber_receive(channel: Channel, services: Services, out: Variables) -> None:
    account = account_for(channel, services)
    jid = required_jid(channel, 1)
    timeout = positive_seconds(arg(channel, 2), 20.0, services.config.general.max_receive_timeout)
    matcher = receive_matcher(services, account.name, jid)
    message = await services.pool.receive(account.name, matcher, timeout, channel.hangup)
    if channel.hangup.is_set():
        if message is not None:
            services.pool.inboxes[account.name].put(message)  # the caller left; keep it for others
        out["JABBER_RECEIVE_STATUS"] = "HANGUP"
        return
    if message is None:
        out["JABBER_RECEIVE_STATUS"] = "TIMEOUT"
        return
    out["JABBER_RECEIVE"] = sanitize(message.body)
    out["JABBER_RECEIVE_B64"] = b64(message.body)
    out["JABBER_RECEIVE_FROM"] = sanitize(message.sender.full)
    out["JABBER_RECEIVE_STATUS"] = "SUCCESS"
