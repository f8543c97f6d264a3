"""The dialplan scripts, registered by name with the help text users see.

One module per feature area: ``core`` (the res_xmpp equivalents), and the modules listed in
``SCRIPT_MODULES``. This module holds what they share: the registry, the ``dialplan_script``
wrapper and argument helpers.

Every script declares all the variables it documents; the ``dialplan_script`` wrapper sets every
one of them on every run (empty unless the script filled it), so nothing from an earlier call can
leak into a later decision. The wrapper is the one place where a failure becomes dialplan
variables (errors.py): a ``ScriptError`` or ``XmppError`` becomes ``*_STATUS=FAILURE`` plus its
one-line ``*_ERROR``, a ``StorageError`` from anywhere below ``database unavailable: <reason>``;
script bodies raise and never translate. The caller is never hung up.

What a script may touch: its ``Channel``; ``services.xmpp`` (``xmpp_facade.XmppFacade``) for
everything XMPP; ``services.presence`` only through that facade; ``services.storage`` for the
directory and the archive; ``services.config``. Never the pool or its sessions.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from ..agi_channel import Channel
from ..agi_protocol import check_variable_name, quote
from ..agi_registry import ScriptRegistry
from ..errors import ChannelGone, LocalProtocolError, ScriptError, StorageError, XmppError
from ..jid import Jid, parse_jid
from ..values import check_message_size

if TYPE_CHECKING:  # a type only: importing a script must not load the XMPP side or the database
    from ..config import AccountConfig
    from ..services_bundle import Services

registry = ScriptRegistry()

Variables = dict[str, str]
Undo = Callable[[], None]
# A body fills the variables; it may return an ``Undo`` that gives back what it took (a
# message from the inbox) should the variables not reach Asterisk. A body that never waits
# (jabber_status answers from the cache) is a plain function: the listener calls it from the
# transport callback and sets the variables itself (agi_registry), and it has nothing to undo.
ScriptBody = Callable[[Channel, "Services", Variables], Awaitable[Undo | None] | None]


def dialplan_script(
    name: str, *, variables: Iterable[str], status: str | None, error: str, help: str
) -> Callable[[ScriptBody], ScriptBody]:
    """Register ``body`` as script ``name``; it fills ``out``, every variable is set after it."""
    blank: Variables = dict.fromkeys(variables, "")  # copied per call: cheaper than building it

    def failed(channel: Channel, out: Variables, exc: Exception) -> None:
        if isinstance(exc, (ScriptError, XmppError)):  # a wrong request, or XMPP cannot now
            reason = str(exc)
            channel.log.info("script_failed", error=reason)
        elif isinstance(exc, StorageError):  # unavailable or hung: say so, never hang
            reason = f"database unavailable: {exc}"
            channel.log.error("script_failed", error=reason)
        else:  # our fault: still answer, and say where to look
            reason = f"internal error ({type(exc).__name__}); see the agi-xmpp log"
            channel.log.exception("script_crashed")
        refuse(out, reason)

    def refuse(out: Variables, reason: str) -> None:
        for key in out:
            out[key] = ""
        if status is not None:
            out[status] = "FAILURE"
        out[error] = reason

    def too_long(channel: Channel, out: Variables, reason: str) -> None:
        # never cut a value: say why instead (the text stays in the archive)
        refuse(out, reason)
        channel.log.info("script_failed", error=reason)

    def decorate(body: ScriptBody) -> ScriptBody:
        if inspect.iscoroutinefunction(body):

            async def run(channel: Channel, services: Services) -> None:
                out = blank.copy()
                undo: Undo | None = None
                try:
                    undo = await body(channel, services, out)  # type: ignore[misc]
                except ChannelGone:
                    raise  # the caller left mid-command: routine, the server counts it
                except Exception as exc:  # noqa: BLE001 - the dialplan must always get an answer
                    failed(channel, out, exc)
                # on success the error variable stays as the body left it: "" unless it
                # explains a degraded answer (jabber_status while the account is offline)
                reason = oversized(channel, out)
                if reason:
                    too_long(channel, out, reason)
                delivered = await channel.set_variables(out)
                if not delivered and undo is not None:
                    undo()
                    channel.log.info("script_result_undelivered")

        else:

            def run(channel: Channel, services: Services) -> Variables:  # type: ignore[misc]
                out = blank.copy()
                try:
                    if body(channel, services, out) is not None:
                        raise TypeError(f"{name}: a plain script body has nothing to undo")
                except Exception as exc:  # noqa: BLE001 - the dialplan must always get an answer
                    failed(channel, out, exc)
                # on success the error variable stays as the body left it: "" unless it
                # explains a degraded answer (jabber_status while the account is offline)
                reason = oversized(channel, out)
                if reason:
                    too_long(channel, out, reason)
                return out

        run.__name__ = body.__name__
        registry.script(name, help=help)(run)
        return body

    return decorate


def oversized(channel: Channel, variables: Variables) -> str:
    """Why a value cannot be set on this Asterisk (its command line is too short), or ''.

    A value the wire cannot carry at all (NUL, CR, LF) is refused by the encoder, as before.
    """
    limit = channel.line_limit
    # Quoting at most doubles a character and UTF-8 takes at most 4 bytes for one, so a short
    # value needs no exact count (the usual case: status words, short texts).
    short = (limit - 20) // 4  # characters of name and value that surely fit
    for key, value in variables.items():
        if len(key) + len(value) <= short:
            continue
        size = len(f"SET VARIABLE {quote(key)} {quote(value)}\n".encode())
        if size > limit:
            return (
                f"{key} would need a {size}-byte AGI command; this Asterisk accepts "
                f"{limit} (agi_version {channel.env.get('agi_version', '?')})"
            )
    return ""


# -- argument helpers ---------------------------------------------------------------------------


def arg(channel: Channel, index: int) -> str:
    """Positional argument ``index`` (0-based), stripped; empty when absent."""
    args = channel.request.args
    return args[index].strip() if index < len(args) else ""


def required_jid(channel: Channel, index: int, what: str = "JID") -> Jid:
    text = arg(channel, index)
    if not text:
        raise ScriptError(f"missing {what} argument")
    return parse_jid(text)


def account_for(channel: Channel, services: Services) -> AccountConfig:
    """The ACCOUNT argument's account (empty: default_account); later log events name it."""
    account = services.config.account(arg(channel, 0))
    channel.bind_log(account=account.name)
    return account


def variable_name(text: str, what: str) -> str:
    """``text`` if it is a usable channel variable name, else a ``ScriptError`` naming ``what``."""
    try:
        return check_variable_name(text)
    except LocalProtocolError as exc:
        raise ScriptError(f"invalid {what}: {exc}") from None


async def message_text(channel: Channel, services: Services, first: int) -> str:
    """A trailing free-text argument (the rest joined with ','), or channel variable ``var=``."""
    source = channel.options.get("var")
    if source:
        text = await channel.get_variable_exact(variable_name(source, "var= name"))
    else:
        text = ",".join(channel.args[first:])
    if not text.strip():
        raise ScriptError("empty message")
    check_message_size(text, services.config.general.max_message_bytes)
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


CONFIRM_TIMEOUT = 10.0  # seconds confirm= waits by default (option timeout=)


async def send_with_confirm(
    channel: Channel, services: Services, account: str, to: Jid, body: str
) -> tuple[str, str]:
    """Send through the outbox, honouring ``confirm=`` (``server`` / ``receipt``) and
    ``timeout=``; returns (status, error text). Without ``confirm=``: SUCCESS or QUEUED at once
    (what each answer means: ``XmppFacade.send_confirmed``)."""
    mode = channel.options.get("confirm", "").strip().lower()
    if mode not in ("", "server", "receipt"):
        raise ScriptError(f"confirm= must be server or receipt, not {mode!r}")
    timeout = positive_seconds(channel.options.get("timeout", ""), CONFIRM_TIMEOUT,
                               float(services.config.general.max_receive_timeout), "timeout=")
    return await services.xmpp.send_confirmed(account, to, body, confirm=mode, timeout=timeout)
