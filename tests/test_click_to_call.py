"""Chat commands and click-to-call outcomes (agi_xmpp.click_to_call)."""

from __future__ import annotations

import pytest

from agi_xmpp.click_to_call import Call, Help, Invalid, RateLimit, is_command, outcome_text, parse_command


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("call 5551234", Call("5551234")),
        ("Call +1 (555) 123-4567", Invalid),  # two words after call
        ("call +1(555)123-4567", Call("+15551234567")),
        ("call 2002", Call("2002")),
        ("call bob@example.com", Call("bob@example.com", is_jid=True)),
        ("call xmpp:bob@example.com", Call("bob@example.com", is_jid=True)),
        ("help", Help()),
        ("  HELP ", Help()),
        ("call", Invalid),
        ("call 12;Hangup", Invalid),
        ("call ${SHELL(id)}", Invalid),
        ("dance", Invalid),
        ("", Invalid),
    ],
)
def test_parse_command(body, expected):
    """Numbers are normalised, JIDs recognised, anything else is Invalid with a reply."""
    got = parse_command(body)
    if expected is Invalid:
        assert isinstance(got, Invalid) and got.reply
    else:
        assert got == expected


@pytest.mark.parametrize(("body", "taken"), [
    ("call 5551234", True), (" Dial 2002", True), ("HELP", True), ("call", True),
    ("1", False), ("?", False), ("callback later", False), ("", False), ("please call me", False),
])
def test_is_command_decides_which_chats_are_ours(body, taken):
    """Only messages whose first word is call, dial or help are commands; the rest (a chat
    menu's "1", a question) go on to the inbox. parse_command knows the same verbs."""
    assert is_command(body) is taken
    if taken:
        assert not (isinstance(parse_command(body), Invalid) and "Unknown command" in parse_command(body).reply)


@pytest.mark.parametrize(
    ("response", "reason", "words"),
    [("Success", "4", "Connected"), ("Failure", "5", "Busy"), ("Failure", "3", "did not answer"),
     ("Failure", "0", "could not be called"), ("Failure", "99", "could not be made (reason 99)")],
)
def test_outcome_texts(response, reason, words):
    """OriginateResponse Response/Reason become the documented chat replies."""
    assert words in outcome_text(response, reason, "5551234")


def test_rate_limit_is_per_user_and_slides():
    """At most N per user in 60 s; another user is not affected; the window slides."""
    now = [0.0]
    limit = RateLimit(2, clock=lambda: now[0])
    assert limit.allow("a") and limit.allow("a")
    assert not limit.allow("a")
    assert limit.allow("b")
    now[0] = 60.0
    assert limit.allow("a")
