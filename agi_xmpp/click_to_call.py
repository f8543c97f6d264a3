"""Chat commands to the service account (``call``, ``help``), decided without I/O.

``ami_bridge`` feeds each chat message from a directory user to :func:`parse_command` and does
what the returned command says; the texts sent back are here too, beside the command they answer
(aiosmtpd's habit: help text next to the command).

Click-to-call is AMI ``Originate`` (async): Asterisk first rings the user's own ``device``; when it
is answered, it dials the number in ``originate_context``. Asterisk reports the first leg's fate
in ``OriginateResponse`` (``Reason`` is the channel's control frame, include/asterisk/frame.h:
4 answered, 5 busy, 3 ringing but no answer, 8 congestion, 1 hung up, 0 failed to start).
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

#: The first words that make a chat message a command; any other message goes on to the inbox
#: (jabber_receive and chat menus read the same account).
CALL_VERBS = ("call", "dial")
HELP_VERBS = ("help",)

#: What may be dialled: digits, and * # + as a dialplan number can carry them.
NUMBER = re.compile(r"\+?[0-9*#]{1,32}")

HELP = (
    "Commands:\n"
    "call <number>: your phone rings; answer it and the number is dialled\n"
    "call <extension> or call <name@example.com>: the same, for someone in the directory\n"
    "help: this list"
)
REFUSED = "Sorry, only users in the PBX directory may use this service."
CALLING = "Calling your phone… answer it to be connected to {target}."
CONNECTED = "Connected: you answered, now dialling {target}."
OUTCOMES = {
    "4": CONNECTED,
    "5": "Busy: your phone is busy, the call to {target} was not made.",
    "3": "Your phone did not answer; the call to {target} was not made.",
    "8": "The network is congested; the call to {target} was not made.",
    "1": "Your phone hung up; the call to {target} was not made.",
    "0": "Your phone could not be called (is its device in the directory right?); "
         "the call to {target} was not made.",
}
FAILED = "The call to {target} could not be made ({reason})."
LOST = "The connection to the PBX was lost: I cannot tell whether your call to {target} was made."


@dataclass(frozen=True, slots=True)
class Help:
    pass


@dataclass(frozen=True, slots=True)
class Call:
    """Dial ``target``: a number, an extension, or a JID still to be looked up."""

    target: str
    is_jid: bool = False


@dataclass(frozen=True, slots=True)
class Invalid:
    reply: str


Command = Help | Call | Invalid


def is_command(body: str) -> bool:
    """Whether this chat message is for us (its first word is a command verb)."""
    words = body.split(None, 1)
    return bool(words) and words[0].lower() in CALL_VERBS + HELP_VERBS


def parse_command(body: str) -> Command:
    """One chat message → the command it asks for."""
    words = body.strip().split()
    if not words:
        return Invalid("Empty message. " + HELP)
    verb = words[0].lower()
    if verb in HELP_VERBS:
        return Help()
    if verb in CALL_VERBS:
        if len(words) != 2:
            return Invalid("Use: call <number>, e.g. call 5551234")
        target = words[1]
        if "@" in target:
            return Call(target.removeprefix("xmpp:"), is_jid=True)
        compact = re.sub(r"[\s().\-]", "", target)
        if NUMBER.fullmatch(compact):
            return Call(compact)
        return Invalid(f"'{target[:40]}' is not a number I can dial. Use digits, e.g. call 5551234")
    return Invalid(f"Unknown command '{verb[:20]}'. " + HELP)


def outcome_text(response: str, reason: str, target: str) -> str:
    """The chat reply for an ``OriginateResponse`` (``Response``, ``Reason`` headers)."""
    if response == "Success":
        return CONNECTED.format(target=target)
    template = OUTCOMES.get(reason)
    if template is None or reason == "4":
        return FAILED.format(target=target, reason=f"reason {reason or 'unknown'}")
    return template.format(target=target)


@dataclass(slots=True)
class RateLimit:
    """At most ``per_minute`` attempts per user in any 60 s window (sliding)."""

    per_minute: int
    clock: Callable[[], float] = time.monotonic
    _seen: dict[str, deque[float]] = field(default_factory=dict)

    def allow(self, user: str) -> bool:
        now = self.clock()
        times = self._seen.setdefault(user, deque())
        while times and now - times[0] >= 60.0:
            times.popleft()
        if len(times) >= self.per_minute:
            return False
        times.append(now)
        return True
