"""chat_menu's pure parts: the menu text, reply matching, and option/hold/retries parsing."""

from __future__ import annotations

import pytest

from agi_xmpp.errors import ScriptError
from agi_xmpp.inbox import InboundMessage
from agi_xmpp.jid import parse_jid
from agi_xmpp.scripts.chat_menu import (
    DEFAULT_HOLD,
    Hold,
    Menu,
    RepliesSince,
    parse_hold,
    parse_options,
    parse_retries,
)

MENU = Menu("Call from 100", ("forward to cellphone", "work phone", "voicemail"))


def test_menu_text_numbers_options_after_the_prompt():
    """The chat user reads the prompt, then one "N) option" line per option."""
    assert MENU.text() == "Call from 100\n1) forward to cellphone\n2) work phone\n3) voicemail"
    assert MENU.hint_text() == (
        "Please reply with a number from 1 to 3, or the text of an option.\n" + MENU.text()
    )
    assert Menu("Take it?", ("yes",)).hint_text().startswith("Please reply with 1, or")


@pytest.mark.parametrize(
    ("reply", "choice"),
    [
        ("1", 1), (" 3 ", 3), ("2)", 2), ("2.", 2), ("02", 2), ("２", 2),  # fullwidth digit
        ("Work Phone", 2), ("  work   PHONE\n", 2), ("VOICEMAIL", 3),
        ("0", None), ("4", None), ("-1", None), ("1 2", None), ("work", None), ("", None),
        ("1)2", None), ("99999999999999", None), ("forward to cellphone!", None),
    ],
)
def test_choose_by_number_or_text(reply, choice):
    """A reply picks by 1-based number or by option text (case, blanks and width ignored); else None."""
    assert MENU.choose(reply) == choice


def test_parse_options_strips_and_drops_trailing_empties():
    """Options are stripped; empty arguments at the end (a trailing comma) are dropped."""
    assert parse_options([" a ", "b", "", " "]) == ("a", "b")


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ([], "no options"), (["", ""], "no options"), (["a", "", "b"], "option 2 is empty"),
        (["Yes", " yes"], "option 2 repeats option 1"), (["a", "7"], "option 2 ('7') is a number"),
    ],
)
def test_parse_options_refuses(args, reason):
    """No options, a hole, a duplicate or a bare number is a ScriptError naming the option."""
    with pytest.raises(ScriptError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_options(args)


@pytest.mark.parametrize(
    ("text", "hold"),
    [
        ("", Hold(DEFAULT_HOLD, True)), ("moh", Hold(None, True)), ("MOH", Hold(None, True)),
        ("none", Hold(None, False)), ("custom/x_y-2", Hold("custom/x_y-2", True)),
        ("beep", Hold("beep", True)),
    ],
)
def test_parse_hold(text, hold):
    """hold=: empty is the default prompt then music; moh; none; or a relative sound name."""
    assert parse_hold(text) == hold


@pytest.mark.parametrize(
    "text",
    ["../x", "a/../b", "/abs", "a,b", "a&b", "a b", "a.gsm", "a//b", "a/", "a|b", "a(b)",
     "a\\b", "${X}", "é", "x" * 201],
)
def test_parse_hold_refuses_anything_but_plain_names(text):
    """Nothing that Playback would split (',' '&'), or a path could escape with, reaches EXEC."""
    with pytest.raises(ScriptError, match="hold="):
        parse_hold(text)


@pytest.mark.parametrize(("text", "value"), [("", 2), ("0", 0), ("20", 20), (" 5 ", 5)])
def test_parse_retries(text, value):
    """retries= is a whole number from 0 to 20; empty means 2."""
    assert parse_retries(text) == value


@pytest.mark.parametrize("text", ["-1", "21", "1.5", "two", "+3"])
def test_parse_retries_refuses(text):
    """Anything else is a ScriptError."""
    with pytest.raises(ScriptError, match="retries"):
        parse_retries(text)


def _msg(sender: str, at: float, kind: str = "chat") -> InboundMessage:
    return InboundMessage(parse_jid(sender), "1", kind, "id", at)


def test_replies_since_ignores_older_messages():
    """Only messages from the JID received at or after the menu was sent count as replies."""
    matcher = RepliesSince.build(parse_jid("Bob@Example.com"), since=100.0)
    assert matcher.matches(_msg("bob@example.com/phone", 100.0))
    assert not matcher.matches(_msg("bob@example.com/phone", 99.9))
    assert not matcher.matches(_msg("bobx@example.com/phone", 101.0))
    assert not matcher.matches(_msg("bob@example.com/phone", 101.0, kind="groupchat"))
    full = RepliesSince.build(parse_jid("bob@example.com/desk"), since=0.0)
    assert full.matches(_msg("bob@example.com/desk", 1.0))
    assert not full.matches(_msg("bob@example.com/phone", 1.0))
