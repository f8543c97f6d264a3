"""chat_menu through the whole service, a real Prosody and the fake Asterisk (docs/chat-menu.md)."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest
from service_harness import (
    eventually,
    free_port,
    running_harness,
    service_config,
    with_account_options,
)

pytestmark = pytest.mark.integration

VARIABLES = {
    "CHAT_MENU_CHOICE",
    "CHAT_MENU_REPLY",
    "CHAT_MENU_REPLY_B64",
    "CHAT_MENU_STATUS",
    "CHAT_MENU_ERROR",
}
OPTIONS = ("forward to cellphone", "work phone", "voicemail")
MENU = "Call from 5551234 for you\n1) forward to cellphone\n2) work phone\n3) voicemail"
HINT = "Please reply with a number from 1 to 3, or the text of an option.\n" + MENU
PLAYBACK = ["EXEC", "Playback", "agi-xmpp/please-hold"]
START_MOH = ["EXEC", "StartMusicOnHold"]
STOP_MOH = ["EXEC", "StopMusicOnHold"]


@pytest.fixture
async def bob(xmpp_accounts, xmpp_client):
    """A person on the other side of the chat."""
    jid, password = xmpp_accounts("bob")
    return await xmpp_client(jid, password)


def menu(svc, bob, *, prompt: str = "Call from 5551234 for you", options=OPTIONS, **kwargs):
    """Start a chat_menu call (``url`` picks script and options) as a task."""
    url = kwargs.pop("url", "chat_menu")
    return asyncio.create_task(svc.call(url, "asterisk", bob.bare_jid, prompt, *options, **kwargs))


def execs(result) -> list[list[str]]:
    """The EXEC commands the script sent, in order."""
    return [words for words in result.commands if words[0].upper() == "EXEC"]


def first_set(result) -> int:
    return next(i for i, words in enumerate(result.commands) if words[:2] == ["SET", "VARIABLE"])


async def test_menu_text_and_reply_by_number(svc, bob):
    """The chat user reads PROMPT and numbered options; replying "2" gives SUCCESS and choice 2."""
    call = menu(svc, bob)
    received = await bob.next_message(10, sender=svc.jid)
    assert received.body == MENU
    assert received.type == "chat"
    bob.send_message(svc.jid, "2")
    result = await call
    assert result.variables == {
        "CHAT_MENU_CHOICE": "2",
        "CHAT_MENU_REPLY": "2",
        "CHAT_MENU_REPLY_B64": base64.b64encode(b"2").decode(),
        "CHAT_MENU_STATUS": "SUCCESS",
        "CHAT_MENU_ERROR": "",
    }
    assert (await bob.next_message(10, sender=svc.jid)).body == "OK: 2) work phone"
    assert not any(words[0].upper() == "HANGUP" for words in result.commands)


@pytest.mark.parametrize("reply", ["  WORK Phone ", "work   phone", "2)", " 3 "])
async def test_reply_by_option_text_case_insensitive(svc, bob, reply):
    """An option's text matches whatever its case and spacing; "2)" and " 3 " are numbers."""
    call = menu(svc, bob)
    await bob.next_message(10, sender=svc.jid)
    bob.send_message(svc.jid, reply)
    result = await call
    assert result.variables["CHAT_MENU_STATUS"] == "SUCCESS"
    assert result.variables["CHAT_MENU_CHOICE"] == ("3" if "3" in reply else "2")
    assert result.variables["CHAT_MENU_REPLY"] == reply


async def test_invalid_reply_gets_hint_and_menu_again(svc, bob):
    """An invalid reply re-sends the menu with a hint; a valid reply after two invalid ones still counts."""
    call = menu(svc, bob)
    await bob.next_message(10, sender=svc.jid)
    for wrong in ("maybe later", "4"):  # retries=2 by default: two second chances
        bob.send_message(svc.jid, wrong)
        assert (await bob.next_message(10, sender=svc.jid)).body == HINT
    bob.send_message(svc.jid, "Voicemail")
    result = await call
    assert result.variables["CHAT_MENU_STATUS"] == "SUCCESS"
    assert result.variables["CHAT_MENU_CHOICE"] == "3"
    assert result.variables["CHAT_MENU_REPLY"] == "Voicemail"
    assert (await bob.next_message(10, sender=svc.jid)).body == "OK: 3) voicemail"


async def test_retries_exhausted_is_timeout_with_last_reply(svc, bob):
    """With retries=1 a second invalid reply ends the menu: TIMEOUT, CHAT_MENU_REPLY the last reply."""
    call = menu(svc, bob, url="chat_menu?retries=1")
    assert (await bob.next_message(10, sender=svc.jid)).body == MENU
    bob.send_message(svc.jid, "who is it?")
    assert (await bob.next_message(10, sender=svc.jid)).body == HINT
    bob.send_message(svc.jid, "tell them\nto wait")
    result = await call
    assert result.variables == {
        "CHAT_MENU_CHOICE": "",
        "CHAT_MENU_REPLY": "tell them to wait",
        "CHAT_MENU_REPLY_B64": base64.b64encode(b"tell them\nto wait").decode(),
        "CHAT_MENU_STATUS": "TIMEOUT",
        "CHAT_MENU_ERROR": "",
    }
    closing = await bob.next_message(10, sender=svc.jid)
    assert closing.body == "No valid choice; this menu is closed."
    assert execs(result)[-1] == STOP_MOH


async def test_retries_zero_ends_at_first_invalid_reply(svc, bob):
    """retries=0: no second chance, the first invalid reply ends the menu with TIMEOUT."""
    call = menu(svc, bob, url="chat_menu?retries=0")
    await bob.next_message(10, sender=svc.jid)
    bob.send_message(svc.jid, "nope")
    result = await call
    assert result.variables["CHAT_MENU_STATUS"] == "TIMEOUT"
    assert (await bob.next_message(10, sender=svc.jid)).body.startswith("No valid choice")


@pytest.fixture
def receive_waits(monkeypatch) -> list[float]:
    """The wait (seconds) of every receive chat_menu asks the XMPP facade for, in order: what the
    script decided its deadline leaves, whatever the machine's pace."""
    from agi_xmpp.xmpp_facade import XmppFacade

    waits: list[float] = []
    receive = XmppFacade.receive

    async def recording(self, account, matcher, timeout, hangup):
        waits.append(timeout)
        return await receive(self, account, matcher, timeout, hangup)

    monkeypatch.setattr(XmppFacade, "receive", recording)
    return waits


async def test_whole_menu_timeout(svc, bob, receive_waits):
    """timeout= bounds the whole menu: with no reply it ends with TIMEOUT and empty values,
    having waited for the reply up to timeout= (1.5 s), not the 30 s default."""
    result = await menu(svc, bob, url="chat_menu?timeout=1.5")
    assert len(receive_waits) == 1 and 0 < receive_waits[0] <= 1.5, receive_waits
    assert result.variables == {
        "CHAT_MENU_CHOICE": "",
        "CHAT_MENU_REPLY": "",
        "CHAT_MENU_REPLY_B64": "",
        "CHAT_MENU_STATUS": "TIMEOUT",
        "CHAT_MENU_ERROR": "",
    }
    assert (await bob.next_message(10, sender=svc.jid)).body == MENU
    closing = await bob.next_message(10, sender=svc.jid)
    assert closing.body == "No reply in time; this menu is closed."


async def test_invalid_replies_count_against_the_same_deadline(svc, bob, receive_waits):
    """Re-sending the menu does not restart the clock: the deadline is for the whole menu."""
    call = menu(svc, bob, url="chat_menu?timeout=10&retries=5", timeout=60)
    await bob.next_message(10, sender=svc.jid)
    await asyncio.sleep(5)
    bob.send_message(svc.jid, "hmm")
    assert (await bob.next_message(10, sender=svc.jid)).body == HINT
    result = await call
    assert result.variables["CHAT_MENU_STATUS"] == "TIMEOUT"
    assert result.variables["CHAT_MENU_REPLY"] == "hmm"
    # The wait after the invalid reply is what is left of the menu's 10 s: at least the 5 s
    # slept are gone (a slow machine only takes more). A restarted clock would wait 10 s again.
    first, after_hint = receive_waits[0], receive_waits[-1]
    assert len(receive_waits) >= 2 and after_hint <= first - 5, receive_waits


async def test_hangup_ends_the_menu_at_once(svc, bob):
    """A HANGUP while waiting ends the menu at once with HANGUP; no EXEC follows the hangup."""
    result = await menu(svc, bob, hangup_after=0.5, timeout=10)
    # Ended by the HANGUP itself: a menu cut short by the hangup grace would not have set its
    # status, nor sent the notice below.
    assert result.variables["CHAT_MENU_STATUS"] == "HANGUP"
    assert set(result.variables) == VARIABLES
    assert result.variables["CHAT_MENU_CHOICE"] == ""
    assert execs(result) == [PLAYBACK, START_MOH]  # Asterisk stops MOH on a dead channel itself
    assert result.closed_by_server
    await bob.next_message(10, sender=svc.jid)  # the menu
    notice = await bob.next_message(10, sender=svc.jid)
    assert notice.body == "The caller hung up; this menu is closed."


async def test_hangup_during_hold_prompt(svc, bob):
    """A hangup while the hold prompt plays ends the menu with HANGUP and starts no music."""
    result = await menu(svc, bob, hangup_after=0.5, exec_delays={"Playback": 5}, timeout=10)
    assert result.variables["CHAT_MENU_STATUS"] == "HANGUP"
    assert execs(result) == [PLAYBACK]


async def test_exec_order_prompt_then_moh_stopped_before_variables(svc, bob):
    """Default hold: Playback of agi-xmpp/please-hold, StartMusicOnHold, StopMusicOnHold, then the variables."""
    call = menu(svc, bob)
    await bob.next_message(10, sender=svc.jid)
    await asyncio.sleep(0.3)
    bob.send_message(svc.jid, "1")
    result = await call
    assert execs(result) == [PLAYBACK, START_MOH, STOP_MOH]
    stop = result.commands.index(STOP_MOH)
    assert stop < first_set(result)
    assert all(words[:2] == ["SET", "VARIABLE"] for words in result.commands[stop + 1 :])
    assert [words[2] for words in result.commands[stop + 1 :]] == [
        "CHAT_MENU_CHOICE",
        "CHAT_MENU_REPLY",
        "CHAT_MENU_REPLY_B64",
        "CHAT_MENU_STATUS",
        "CHAT_MENU_ERROR",
    ]


async def test_reply_during_hold_prompt_needs_no_music(svc, bob):
    """While the prompt plays the chat goes on (the hint is not held back); a choice made then starts no music."""
    call = menu(svc, bob, exec_delays={"Playback": 4})
    await bob.next_message(10, sender=svc.jid)
    bob.send_message(svc.jid, "what?")
    assert (await bob.next_message(10, sender=svc.jid)).body == HINT
    hint_at = time.monotonic()
    bob.send_message(svc.jid, "2")
    result = await call
    # answered while Playback was still running: before the fake Asterisk answered the EXEC
    # and the script's next command (GET VARIABLE PLAYBACKSTATUS) arrived
    assert hint_at < result.command_times[1]
    assert result.variables["CHAT_MENU_CHOICE"] == "2"
    assert execs(result) == [PLAYBACK]  # the prompt finished; the choice was already made
    assert result.commands[1] == ["GET", "VARIABLE", "PLAYBACKSTATUS"]


async def test_hold_moh_plays_music_only(svc, bob):
    """hold=moh: music on hold without a prompt, stopped before the variables are set."""
    call = menu(svc, bob, url="chat_menu?hold=moh")
    await bob.next_message(10, sender=svc.jid)
    bob.send_message(svc.jid, "1")
    result = await call
    assert result.variables["CHAT_MENU_STATUS"] == "SUCCESS"
    assert execs(result) == [START_MOH, STOP_MOH]
    assert result.commands.index(STOP_MOH) < first_set(result)


async def test_hold_none_sends_no_exec(svc, bob):
    """hold=none: the caller hears nothing from us; no EXEC at all."""
    call = menu(svc, bob, url="chat_menu?hold=none")
    await bob.next_message(10, sender=svc.jid)
    bob.send_message(svc.jid, "3")
    result = await call
    assert result.variables["CHAT_MENU_CHOICE"] == "3"
    assert execs(result) == []


async def test_hold_custom_sound_name(svc, bob):
    """hold=NAME plays that sound (a relative name with '/', '-', '_') before the music."""
    call = menu(svc, bob, url="chat_menu?hold=custom/ring_back-2")
    await bob.next_message(10, sender=svc.jid)
    bob.send_message(svc.jid, "1")
    result = await call
    assert execs(result) == [["EXEC", "Playback", "custom/ring_back-2"], START_MOH, STOP_MOH]


@pytest.mark.parametrize(
    "hold",
    ["../../../etc/passwd", "/var/lib/asterisk/sounds/x", "beep,skip", "beep&tt-weasels",
     "tt monkeys", "beep.gsm", "a//b", "sounds/", "beep|x", "beep\"x", "x" * 201],
)
async def test_bad_hold_name_is_failure(svc, bob, hold):
    """A hold= that is not a plain relative sound name is FAILURE: nothing played, nothing sent."""
    result = await menu(svc, bob, url=f"chat_menu?hold={_q(hold)}")
    assert result.variables["CHAT_MENU_STATUS"] == "FAILURE"
    assert "hold=" in result.variables["CHAT_MENU_ERROR"]
    assert set(result.variables) == VARIABLES
    assert execs(result) == []
    await bob.no_message(0.5, sender=svc.jid)


@pytest.mark.parametrize(
    ("url", "args", "reason"),
    [
        ("chat_menu", ("asterisk", "bob@localhost", "Who?"), "no options"),
        ("chat_menu", ("asterisk", "bob@localhost", "Who?", "", ""), "no options"),
        ("chat_menu", ("asterisk", "not a jid@", "Who?", "a"), "invalid JID"),
        ("chat_menu", ("asterisk", "", "Who?", "a"), "missing JID"),
        ("chat_menu", ("nosuch", "bob@localhost", "Who?", "a"), "unknown account"),
        ("chat_menu", ("asterisk", "bob@localhost", " ", "a"), "empty PROMPT"),
        ("chat_menu", ("asterisk", "bob@localhost", "Who?", "a", "", "b"), "option 2 is empty"),
        ("chat_menu", ("asterisk", "bob@localhost", "Who?", "Yes", "yes "), "repeats option 1"),
        ("chat_menu", ("asterisk", "bob@localhost", "Who?", "a", "42"), "is a number"),
        ("chat_menu?retries=-1", ("asterisk", "bob@localhost", "Who?", "a"), "retries"),
        ("chat_menu?retries=21", ("asterisk", "bob@localhost", "Who?", "a"), "retries"),
        ("chat_menu?timeout=0", ("asterisk", "bob@localhost", "Who?", "a"), "timeout"),
        ("chat_menu?timeout=soon", ("asterisk", "bob@localhost", "Who?", "a"), "timeout"),
        ("chat_menu?var=1bad", ("asterisk", "bob@localhost", "", "a"), "var="),
        ("chat_menu?var=P", ("asterisk", "bob@localhost", "Who?", "a"), "not both"),
        ("chat_menu?var=NOPE", ("asterisk", "bob@localhost", "", "a"), "empty PROMPT"),
    ],
)
async def test_bad_arguments_are_failure(svc, url, args, reason):
    """Bad arguments give FAILURE with a reason, every variable set, no sound and no hangup."""
    result = await svc.call(url, *args)
    assert result.variables["CHAT_MENU_STATUS"] == "FAILURE"
    assert reason in result.variables["CHAT_MENU_ERROR"]
    assert set(result.variables) == VARIABLES
    assert result.variables["CHAT_MENU_CHOICE"] == ""
    assert execs(result) == []
    assert not any(words[0].upper() == "HANGUP" for words in result.commands)


async def test_var_option_reads_the_prompt_exactly(svc, bob):
    """var=NAME takes PROMPT from the channel variable, newlines, quotes and commas included."""
    prompt = 'Caller: "Ann, Lee" <5551234>\nQueue: support'
    call = menu(svc, bob, url="chat_menu?var=MENU_PROMPT&hold=none", prompt="",
                channel_vars={"MENU_PROMPT": prompt})
    received = await bob.next_message(10, sender=svc.jid)
    assert received.body == prompt + "\n1) forward to cellphone\n2) work phone\n3) voicemail"
    bob.send_message(svc.jid, "1")
    assert (await call).variables["CHAT_MENU_CHOICE"] == "1"


async def test_message_from_before_the_menu_is_not_a_reply(svc, bob):
    """A message buffered before the menu was sent cannot answer it, and stays buffered for others."""
    bob.send_message(svc.jid, "1")
    await eventually(lambda: len(svc.pool.inboxes["asterisk"]) == 1, what="the early message")
    result = await menu(svc, bob, url="chat_menu?timeout=1&hold=none")
    assert result.variables["CHAT_MENU_STATUS"] == "TIMEOUT"
    assert len(svc.pool.inboxes["asterisk"]) == 1
    early = await svc.call("jabber_receive", "asterisk", bob.bare_jid, "1")
    assert early.variables["JABBER_RECEIVE"] == "1"


async def test_other_senders_do_not_answer(svc, bob, xmpp_accounts, xmpp_client):
    """Only the menu's JID can answer; another person's "1" is left alone."""
    eve_jid, eve_pw = xmpp_accounts("eve")
    eve = await xmpp_client(eve_jid, eve_pw)
    call = menu(svc, bob, url="chat_menu?hold=none")
    await bob.next_message(10, sender=svc.jid)
    eve.send_message(svc.jid, "1")
    await eventually(lambda: len(svc.pool.inboxes["asterisk"]) == 1, what="eve's message")
    bob.send_message(svc.jid, "2")
    result = await call
    assert result.variables["CHAT_MENU_CHOICE"] == "2"


async def test_hostile_reply_is_sanitised(svc, bob):
    """A reply's control characters become spaces in CHAT_MENU_REPLY; the B64 twin is exact."""
    hostile = 'no "way"\t${SHELL(id)}\x85\u2028EXEC Hangup'
    call = menu(svc, bob, url="chat_menu?retries=0&hold=none")
    await bob.next_message(10, sender=svc.jid)
    bob.send_message(svc.jid, hostile)
    result = await call
    plain = result.variables["CHAT_MENU_REPLY"]
    assert not any(ch in plain for ch in "\t\x85\u2028")
    assert base64.b64decode(result.variables["CHAT_MENU_REPLY_B64"]).decode() == hostile
    assert all(words[:2] == ["SET", "VARIABLE"] and len(words) == 4 for words in result.commands)


async def test_account_not_connected_is_failure(prosody, xmpp_accounts, tmp_path):
    """With no live XMPP session the menu is not queued: FAILURE at once, no sound."""
    jid, password = xmpp_accounts("asterisk")
    config = with_account_options(service_config(prosody, jid, password, tmp_path), port=free_port())
    async with running_harness(config, wait_online=False) as harness:
        result = await harness.call("chat_menu", "asterisk", "bob@localhost", "Who?", "a", "b")
    assert result.variables["CHAT_MENU_STATUS"] == "FAILURE"
    assert "not connected" in result.variables["CHAT_MENU_ERROR"]
    assert execs(result) == []


def _q(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")
