"""Interactive chat menus: chat_menu (docs/chat-menu.md: the reference and its decisions).

Theory of operation
-------------------
A menu is two conversations at once, joined only by the script's deadline and the hangup event:

* the *chat* side (``_dialogue``, its own task) sends the menu, waits for replies from the JID,
  re-sends the menu with a hint after an invalid reply, and decides the outcome; it touches XMPP
  only, never the AGI wire;
* the *caller* side (the script's own task) owns the AGI wire, one command at a time:
  ``EXEC Playback <hold sound>`` (blocks until the file has played), then
  ``EXEC StartMusicOnHold`` unless the chat side has already decided, then waits for the chat
  side, then ``EXEC StopMusicOnHold`` — in ``finally``, so the sound stops before the script
  returns on every path, unless the caller hung up (then Asterisk stops it itself).

A reply that arrives while the prompt plays is handled at once by the chat side (a hint goes out
straight away); the caller hears the rest of the prompt, and no music starts. Only messages that
arrive after the menu was sent count as replies: an older buffered message from the same person
cannot answer it.
"""

from __future__ import annotations

import asyncio
import re
import time
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from ..agi_channel import Channel
from ..errors import ChannelGone, NotOnline, ScriptError
from ..inbox import InboundMessage, Matcher
from ..jid import Jid
from ..values import b64, check_message_size, sanitize
from .base import (
    Variables,
    account_for,
    arg,
    dialplan_script,
    positive_seconds,
    required_jid,
    variable_name,
)

if TYPE_CHECKING:  # types only: importing a script must not load the XMPP side or the database
    from ..services_bundle import Services

DEFAULT_HOLD = "agi-xmpp/please-hold"
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 2
MAX_RETRIES = 20
MAX_SOUND_NAME = 200

# A sound name goes into "EXEC Playback <name>": Playback splits its argument on "," (options)
# and "&" (several files), and Asterisk would open an absolute path or climb out with "..".
# Relative names of plain path segments only: no dot (so no "..", no extension), no "/" first.
_SOUND_NAME = re.compile(r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*")
# A reply that is a number, optionally as the menu shows it ("2)") or with a dot ("2.").
_NUMBER_REPLY = re.compile(r"([0-9]{1,9})[).]?")
_DIGITS = re.compile(r"[0-9]+")


class MenuStatus(StrEnum):
    SUCCESS = "SUCCESS"
    TIMEOUT = "TIMEOUT"
    HANGUP = "HANGUP"
    FAILURE = "FAILURE"


# -- the menu itself: pure ----------------------------------------------------------------------


def _normalise(text: str) -> str:
    """How replies and options are compared: NFKC, case-folded, runs of blanks as one space."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


@dataclass(frozen=True, slots=True)
class Menu:
    """The prompt and its options; what the chat user reads and how a reply is understood."""

    prompt: str
    options: tuple[str, ...]

    def text(self) -> str:
        lines = [self.prompt.rstrip("\n")]
        lines += [f"{number}) {option}" for number, option in enumerate(self.options, 1)]
        return "\n".join(lines)

    def hint_text(self) -> str:
        """The menu again, after an invalid reply, with a one-line hint first."""
        count = len(self.options)
        numbers = "1" if count == 1 else f"a number from 1 to {count}"
        return f"Please reply with {numbers}, or the text of an option.\n{self.text()}"

    def choose(self, reply: str) -> int | None:
        """The 1-based option a reply picks (by number or by text), or None if it is invalid."""
        key = _normalise(reply)
        number = _NUMBER_REPLY.fullmatch(key)
        if number is not None:
            value = int(number.group(1))
            return value if 1 <= value <= len(self.options) else None
        for index, option in enumerate(self.options, 1):
            if _normalise(option) == key:
                return index
        return None

    def label(self, choice: int) -> str:
        return f"{choice}) {self.options[choice - 1]}"


def parse_options(args: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """OPTION1[, OPTION2...]: stripped; trailing empty arguments dropped; ScriptError otherwise."""
    options = [a.strip() for a in args]
    while options and not options[-1]:
        options.pop()  # "...,voicemail," in a dialplan passes one empty argument more
    if not options:
        raise ScriptError("no options: give at least OPTION1 after PROMPT")
    seen: dict[str, int] = {}
    for number, option in enumerate(options, 1):
        if not option:
            raise ScriptError(f"option {number} is empty")
        if _DIGITS.fullmatch(option):
            raise ScriptError(
                f"option {number} ({option!r}) is a number: a reply that is a number picks an "
                "option by its position"
            )
        key = _normalise(option)
        if key in seen:
            raise ScriptError(f"option {number} repeats option {seen[key]} ({option!r})")
        seen[key] = number
    return tuple(options)


@dataclass(frozen=True, slots=True)
class Hold:
    """What the caller hears while the menu waits: a sound file first (or not), then MOH (or not)."""

    sound: str | None
    music: bool


def parse_hold(text: str) -> Hold:
    """``hold=``: empty → the default prompt then MOH; ``moh``; ``none``; or a sound name."""
    text = text.strip()
    if not text:
        return Hold(DEFAULT_HOLD, True)
    word = text.lower()
    if word == "moh":
        return Hold(None, True)
    if word == "none":
        return Hold(None, False)
    if len(text) > MAX_SOUND_NAME or not _SOUND_NAME.fullmatch(text):
        raise ScriptError(
            f"hold= must be moh, none or a sound name made of letters, digits, '_', '-' and '/' "
            f"(no extension, no leading '/'), not {text[:60]!r}"
        )
    return Hold(text, True)


def parse_retries(text: str) -> int:
    text = text.strip()
    if not text:
        return DEFAULT_RETRIES
    if not _DIGITS.fullmatch(text) or int(text) > MAX_RETRIES:
        raise ScriptError(f"retries must be a whole number from 0 to {MAX_RETRIES}, not {text[:40]!r}")
    return int(text)


@dataclass(frozen=True, slots=True)
class RepliesSince(Matcher):
    """Messages from the JID (as ``Matcher.for_jid``) that arrived at or after ``since``.

    ``since`` is on the event loop's clock, like ``InboundMessage.received_at``. It keeps a
    message sent before the menu (buffered for ``jabber_receive``, or a late answer to an earlier
    menu) from being taken as the answer to this one; such messages stay buffered for others.
    """

    since: float = 0.0

    @classmethod
    def build(cls, jid: Jid, since: float) -> RepliesSince:
        return cls(bare=jid.bare, resource=None if jid.is_bare else jid.resource, since=since)

    def matches(self, msg: InboundMessage) -> bool:
        # Explicit base call: zero-argument super() does not work in a slots dataclass.
        return msg.received_at >= self.since and Matcher.matches(self, msg)


# -- the chat side --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    status: MenuStatus
    choice: int | None = None
    reply: str | None = None  # the reply that chose, or the last invalid one (TIMEOUT)
    invalid: int = 0  # invalid replies received
    exhausted: bool = False  # TIMEOUT because more than `retries` replies were invalid


async def _dialogue(
    channel: Channel,
    services: Services,
    account: str,
    jid: Jid,
    menu: Menu,
    matcher: Matcher,
    deadline: float,
    retries: int,
) -> Outcome:
    """Wait for a valid reply (the menu has been sent), re-sending after invalid ones."""
    xmpp = services.xmpp
    loop = asyncio.get_running_loop()
    to = jid  # after the first reply, talk to the resource that answered (RFC 6121 §5.1)
    invalid = 0
    last_invalid: str | None = None
    while True:
        remaining = deadline - loop.time()
        message = None
        if remaining > 0 and not channel.hangup.is_set():
            message = await xmpp.receive(account, matcher, remaining, channel.hangup)
        if channel.hangup.is_set():  # as jabber_receive: a reply taken meanwhile went back
            outcome = Outcome(MenuStatus.HANGUP, invalid=invalid)
            break
        if message is None:
            outcome = Outcome(MenuStatus.TIMEOUT, reply=last_invalid, invalid=invalid)
            break
        if jid.is_bare:
            to = message.sender
        choice = menu.choose(message.body)
        if choice is not None:
            outcome = Outcome(MenuStatus.SUCCESS, choice, message.body, invalid)
            break
        invalid += 1
        last_invalid = message.body
        if invalid > retries:
            outcome = Outcome(MenuStatus.TIMEOUT, reply=last_invalid, invalid=invalid,
                              exhausted=True)
            break
        await services.xmpp.send(account, to, menu.hint_text())
    await _close_notice(channel, services, account, to, menu, outcome)
    return outcome


async def _close_notice(
    channel: Channel, services: Services, account: str, to: Jid, menu: Menu, outcome: Outcome
) -> None:
    """Tell the chat user the menu is over, so a late reply is not typed into the void."""
    if outcome.status is MenuStatus.SUCCESS:
        assert outcome.choice is not None
        text = f"OK: {menu.label(outcome.choice)}"
    elif outcome.status is MenuStatus.HANGUP:
        text = "The caller hung up; this menu is closed."
    elif outcome.exhausted:
        text = "No valid choice; this menu is closed."
    else:
        text = "No reply in time; this menu is closed."
    try:
        await services.xmpp.send(account, to, text)
    except Exception as exc:  # noqa: BLE001 - best effort: the outcome stands
        channel.log.warning("chat_menu_notice_failed", error=str(exc))


# -- the caller side ------------------------------------------------------------------------------


async def _hold(channel: Channel, hold: Hold, dialogue: asyncio.Task[Outcome]) -> bool:
    """Play the hold prompt, then start music on hold; True when the music was started."""
    if hold.sound is not None and not dialogue.done() and not channel.hangup.is_set():
        reply = await channel.command("EXEC", "Playback", hold.sound)
        if reply.code != 200 or reply.result == "-1":
            return False  # the channel is going away (HANGUP follows)
        if not channel.hangup.is_set():
            # app_playback answers 0 even when the file is missing: it sets PLAYBACKSTATUS.
            status = await channel.command("GET VARIABLE", "PLAYBACKSTATUS")
            if status.result == "1" and status.data == "FAILED":
                channel.log.warning("chat_menu_hold_sound_failed", sound=hold.sound)
    if hold.music and not dialogue.done() and not channel.hangup.is_set():
        # No class argument: the channel's CHANNEL(musicclass), else "default" (res_musiconhold).
        reply = await channel.command("EXEC", "StartMusicOnHold")
        return reply.code == 200
    return False


@dialplan_script(
    "chat_menu",
    variables=(
        "CHAT_MENU_CHOICE",
        "CHAT_MENU_REPLY",
        "CHAT_MENU_REPLY_B64",
        "CHAT_MENU_STATUS",
        "CHAT_MENU_ERROR",
    ),
    status="CHAT_MENU_STATUS",
    error="CHAT_MENU_ERROR",
    help="chat_menu,ACCOUNT,JID,PROMPT,OPTION1[,OPTION2...]\n"
    "  options: timeout=SECONDS (30, whole menu), retries=N (2), hold=SOUND|moh|none\n"
    "  (default agi-xmpp/please-hold then music on hold), var=NAME (PROMPT from ${NAME}; leave\n"
    "  the PROMPT argument empty)\n"
    "Sends PROMPT and the numbered options to JID and waits for a reply: a number or an option's\n"
    "text (case-insensitive). An invalid reply re-sends the menu with a hint, up to retries times.\n"
    "The caller hears the hold sound meanwhile; it stops before the script returns.\n"
    "CHAT_MENU_CHOICE (1-based, empty unless SUCCESS), CHAT_MENU_REPLY (sanitised),\n"
    "CHAT_MENU_REPLY_B64 (exact); CHAT_MENU_STATUS: SUCCESS, TIMEOUT (no reply, or no valid\n"
    "reply within retries: then CHAT_MENU_REPLY is the last one), HANGUP or FAILURE.",
)
async def chat_menu(channel: Channel, services: Services, out: Variables) -> None:
    account = account_for(channel, services).name
    jid = required_jid(channel, 1)
    options = channel.options
    general = services.config.general
    timeout = positive_seconds(
        options.get("timeout", "").strip(), DEFAULT_TIMEOUT, general.max_receive_timeout, "timeout"
    )
    retries = parse_retries(options.get("retries", ""))
    hold = parse_hold(options.get("hold", ""))
    menu = Menu(await _prompt(channel), parse_options(channel.args[3:]))
    check_message_size(menu.hint_text(), general.max_message_bytes, "the menu")
    if channel.hangup.is_set():
        out["CHAT_MENU_STATUS"] = MenuStatus.HANGUP.value
        return
    # A queued menu would reach the person long after the caller has gone.
    services.xmpp.require_online(account, "the menu was not sent")

    loop = asyncio.get_running_loop()
    started = time.monotonic()
    deadline = loop.time() + timeout
    matcher = RepliesSince.build(jid, since=loop.time())
    if await services.xmpp.send(account, jid, menu.text()) != "SUCCESS":  # a SendOutcome (StrEnum)
        raise NotOnline(f"account {account} went offline; the menu is queued, not shown")
    channel.log.debug("chat_menu_sent", account=account, options=len(menu.options))

    dialogue = asyncio.create_task(
        _dialogue(channel, services, account, jid, menu, matcher, deadline, retries)
    )
    music = False
    try:
        music = await _hold(channel, hold, dialogue)
        outcome = await dialogue
    finally:
        if not dialogue.done():
            dialogue.cancel()
            await asyncio.wait((dialogue,))
        elif not dialogue.cancelled():
            dialogue.exception()  # retrieved; when it is our answer, `await dialogue` raised it
        if music and not channel.hangup.is_set():
            try:
                await channel.command("EXEC", "StopMusicOnHold")
            except ChannelGone:
                pass

    channel.log.info(
        "chat_menu_closed",
        account=account,
        status=outcome.status.value,
        choice=outcome.choice,
        invalid_replies=outcome.invalid,
        seconds=round(time.monotonic() - started, 2),
    )
    out["CHAT_MENU_STATUS"] = outcome.status.value
    if outcome.status is MenuStatus.SUCCESS:
        out["CHAT_MENU_CHOICE"] = str(outcome.choice)
    if outcome.reply is not None:
        out["CHAT_MENU_REPLY"] = sanitize(outcome.reply)
        out["CHAT_MENU_REPLY_B64"] = b64(outcome.reply)


async def _prompt(channel: Channel) -> str:
    """PROMPT (argument 3), or the exact text of channel variable ``var=NAME``."""
    source = channel.options.get("var", "").strip()
    if source:
        variable_name(source, "var= name")
        if arg(channel, 2):
            # Positions never shift with an option: with var= the PROMPT slot stays, empty.
            raise ScriptError("give PROMPT either as an argument or with var=, not both "
                              "(with var= leave the PROMPT argument empty)")
        text = await channel.get_variable_exact(source)
        if not text.strip():
            raise ScriptError(f"empty PROMPT: channel variable {source} is empty")
        return text
    text = arg(channel, 2)
    if not text:
        raise ScriptError("empty PROMPT")
    return text
