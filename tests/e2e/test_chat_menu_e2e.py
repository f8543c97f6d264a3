"""chat_menu end to end: a real Asterisk 22 caller on hold, a real Prosody, the service in-process.

The shipped prompt (``sounds/agi-xmpp/``) is copied into the lab's sounds directory. What the
caller hears is read from AMI: ``AGIExecStart``/``AGIExecEnd`` for each ``EXEC`` and
``MusicOnHoldStart``/``MusicOnHoldStop``; what the dialplan saw comes back in a ``UserEvent``.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab import AsteriskLab
from service_harness import running_harness, service_config

pytestmark = pytest.mark.e2e

IO_TIMEOUT = 20.0  # generous: shared machines stall
SOUNDS = Path(__file__).resolve().parents[2] / "sounds" / "agi-xmpp"
OPTIONS = "forward to cellphone,work phone,voicemail"

DIALPLAN = r"""
[chat-menu-e2e]
exten => menu,1,AGI(agi://127.0.0.1:@PORT@/${SCRIPT},asterisk,${BOB},Call from ${CALLERID(num)},@OPTIONS@)
 same => n,UserEvent(ChatMenu,TOKEN: ${TOKEN},STATUS: ${CHAT_MENU_STATUS},CHOICE: ${CHAT_MENU_CHOICE},REPLY: ${CHAT_MENU_REPLY},ERROR: ${CHAT_MENU_ERROR},AGISTATUS: ${AGISTATUS})
 same => n,Hangup()

exten => h,1,UserEvent(ChatMenuHangup,TOKEN: ${TOKEN},STATUS: ${CHAT_MENU_STATUS},CHOICE: ${CHAT_MENU_CHOICE},AGISTATUS: ${AGISTATUS})
"""


@pytest.fixture
def hold_sounds(lab: AsteriskLab) -> Iterator[Path]:
    """sounds/agi-xmpp/* installed as /usr/share/asterisk/sounds/en/agi-xmpp/ in the lab."""
    target = lab.path("/usr/share/asterisk/sounds/en") / "agi-xmpp"
    if not str(target).startswith(str(lab.root) + "/"):
        raise AssertionError(f"{target} resolves outside the lab chroot")
    created = not target.exists()
    target.mkdir(exist_ok=True)
    copied = []
    for source in sorted(SOUNDS.iterdir()):
        if not (target / source.name).exists():
            copied.append(target / source.name)
        shutil.copyfile(source, target / source.name)
    try:
        yield target
    finally:
        for path in copied:  # only what this fixture added; never a recursive delete
            path.unlink(missing_ok=True)
        if created and not any(target.iterdir()):
            target.rmdir()


@pytest.fixture
async def svc(prosody, xmpp_accounts, tmp_path, dialplan):
    """The service (account 'asterisk') on the shared Prosody, and the lab's dialplan calling it."""
    jid, password = xmpp_accounts("asterisk")
    async with running_harness(service_config(prosody, jid, password, tmp_path)) as harness:
        harness.jid = jid
        dialplan(DIALPLAN, PORT=harness.port, OPTIONS=OPTIONS)
        yield harness


@pytest.fixture
async def bob(xmpp_accounts, xmpp_client):
    jid, password = xmpp_accounts("bob")
    return await xmpp_client(jid, password)


def call_menu(lab: AsteriskLab, bob, script: str = "chat_menu"):
    token = f"t-{secrets.token_hex(4)}"
    call = lab.originate("menu", "chat-menu-e2e", timeout=60, callerid="5551234",
                         variables={"SCRIPT": script, "BOB": bob.bare_jid, "TOKEN": token})
    return call, token


def is_exec(app: str):
    return lambda event: f'"{app}"' in event.get("Command", "") or f" {app}" in event.get("Command", "")


def for_call(events: list[dict[str, str]], uniqueid: str, name: str, app: str | None = None) -> list[int]:
    """Positions in ``events`` of event ``name`` on the call (for EXEC events: of ``app``)."""
    return [
        i for i, e in enumerate(events)
        if e.get("Event") == name and e.get("Uniqueid") == uniqueid
        and (app is None or is_exec(app)(e))
    ]


def playback_status(events: list[dict[str, str]], uniqueid: str) -> list[str]:
    return [e["Value"] for e in events if e.get("Event") == "VarSet"
            and e.get("Uniqueid") == uniqueid and e.get("Variable") == "PLAYBACKSTATUS"]


async def test_menu_answered_while_caller_hears_prompt_then_music(lab, hold_sounds, svc, bob):
    """The caller hears the shipped prompt, then MOH; a chat reply stops the music and CHAT_MENU_CHOICE reaches the dialplan."""
    call, token = call_menu(lab, bob)
    menu = await bob.next_message(IO_TIMEOUT, sender=svc.jid)
    assert menu.body == ("Call from 5551234\n1) forward to cellphone\n2) work phone\n"
                         "3) voicemail")

    start = await lab.wait_event("AGIExecStart", IO_TIMEOUT, consume=False,
                                 Uniqueid=call.uniqueid, predicate=is_exec("Playback"))
    end = await lab.wait_event("AGIExecEnd", IO_TIMEOUT, consume=False,
                               Uniqueid=call.uniqueid, predicate=is_exec("Playback"))
    assert start["CommandId"] == end["CommandId"]
    assert (end["ResultCode"], end["Result"]) == ("200", "Success")
    await lab.wait_event("MusicOnHoldStart", IO_TIMEOUT, consume=False, Uniqueid=call.uniqueid)

    bob.send_message(svc.jid, "Work Phone")
    event = await lab.wait_user_event("ChatMenu", IO_TIMEOUT, TOKEN=token)
    assert (event["STATUS"], event["CHOICE"], event["REPLY"], event["ERROR"]) == (
        "SUCCESS", "2", "Work Phone", "")
    assert event["AGISTATUS"] == "SUCCESS"
    assert (await bob.next_message(IO_TIMEOUT, sender=svc.jid)).body == "OK: 2) work phone"

    events = lab.events()
    uid = call.uniqueid
    [play_start] = for_call(events, uid, "AGIExecStart", "Playback")
    [play_end] = for_call(events, uid, "AGIExecEnd", "Playback")
    [moh_exec] = for_call(events, uid, "AGIExecEnd", "StartMusicOnHold")
    [moh_start] = for_call(events, uid, "MusicOnHoldStart")
    [moh_stop] = for_call(events, uid, "MusicOnHoldStop")
    [unmoh_exec] = for_call(events, uid, "AGIExecEnd", "StopMusicOnHold")
    assert play_start < play_end < moh_start < moh_stop
    assert play_end < moh_exec < unmoh_exec
    # The music stopped before the script returned, so before the dialplan's next priority.
    assert moh_stop < unmoh_exec
    # Asterisk found and played the shipped file: app_playback sets PLAYBACKSTATUS=SUCCESS
    # (FAILED, with a 0 result all the same, when no format of the file exists).
    assert playback_status(events, uid) == ["SUCCESS"]


async def test_reply_during_prompt_starts_no_music(lab, hold_sounds, svc, bob):
    """A choice made while the prompt still plays ends the menu when it finishes, with no music at all."""
    call, token = call_menu(lab, bob)
    await bob.next_message(IO_TIMEOUT, sender=svc.jid)
    await lab.wait_event("AGIExecStart", IO_TIMEOUT, consume=False, Uniqueid=call.uniqueid,
                         predicate=is_exec("Playback"))
    bob.send_message(svc.jid, "1")
    event = await lab.wait_user_event("ChatMenu", IO_TIMEOUT, TOKEN=token)
    assert (event["STATUS"], event["CHOICE"]) == ("SUCCESS", "1")
    events = lab.events()
    assert for_call(events, call.uniqueid, "AGIExecEnd", "Playback")
    assert not for_call(events, call.uniqueid, "MusicOnHoldStart")
    assert not for_call(events, call.uniqueid, "AGIExecStart", "StartMusicOnHold")


async def test_caller_hangup_on_hold_ends_menu(lab, hold_sounds, svc, bob):
    """A caller who hangs up on hold ends the menu at once: HANGUP in the h extension, the chat user told."""
    call, token = call_menu(lab, bob, "chat_menu?hold=moh&timeout=60")
    await bob.next_message(IO_TIMEOUT, sender=svc.jid)
    await lab.wait_event("MusicOnHoldStart", IO_TIMEOUT, consume=False, Uniqueid=call.uniqueid)
    assert lab.hangup(call.uniqueid)
    event = await lab.wait_user_event("ChatMenuHangup", IO_TIMEOUT, TOKEN=token)
    assert (event["STATUS"], event["CHOICE"], event["AGISTATUS"]) == ("HANGUP", "", "HANGUP")
    notice = await bob.next_message(IO_TIMEOUT, sender=svc.jid)
    assert notice.body == "The caller hung up; this menu is closed."
    events = lab.events()
    assert for_call(events, call.uniqueid, "MusicOnHoldStop")  # Asterisk stops it on hangup
    assert not for_call(events, call.uniqueid, "AGIExecStart", "Playback")
    assert not for_call(events, call.uniqueid, "AGIExecStart", "StopMusicOnHold")
    assert not [e for e in events if e.get("UserEvent") == "ChatMenu"]


async def test_missing_hold_sound_still_gives_music_and_menu(lab, svc, bob):
    """A hold sound that is not installed plays nothing (PLAYBACKSTATUS=FAILED) but the music and the menu go on."""
    call, token = call_menu(lab, bob, "chat_menu?hold=agi-xmpp/no-such-prompt")
    await bob.next_message(IO_TIMEOUT, sender=svc.jid)
    await lab.wait_event("MusicOnHoldStart", IO_TIMEOUT, consume=False, Uniqueid=call.uniqueid)
    bob.send_message(svc.jid, "voicemail")
    event = await lab.wait_user_event("ChatMenu", IO_TIMEOUT, TOKEN=token)
    assert (event["STATUS"], event["CHOICE"]) == ("SUCCESS", "3")
    events = lab.events()
    assert playback_status(events, call.uniqueid) == ["FAILED"]
    assert for_call(events, call.uniqueid, "MusicOnHoldStop")


async def test_shipped_dialplan_example_branches_on_the_choice(lab, hold_sounds, svc, bob):
    """dialplan/agi-xmpp-chat-menu.conf loads as shipped and "work phone" makes it Dial PJSIP/100."""
    example = (Path(__file__).resolve().parents[2] / "dialplan" / "agi-xmpp-chat-menu.conf").read_text()
    example = example.replace("agi://127.0.0.1/", f"agi://127.0.0.1:{svc.port}/")
    example = example.replace("bob@example.com", bob.bare_jid)
    lab.set_dialplan(example)
    call = lab.originate("s", "agi-xmpp-chat-menu", timeout=60, callerid='"Ann, Lee" <5551234>')
    menu = await bob.next_message(IO_TIMEOUT, sender=svc.jid)
    assert menu.body == ("Call from Ann, Lee <5551234>. What shall I do?\n"
                         "1) forward to cellphone\n2) work phone\n3) voicemail")
    bob.send_message(svc.jid, "2")
    dial = await lab.wait_event("Newexten", IO_TIMEOUT, Uniqueid=call.uniqueid, Application="Dial")
    assert dial["AppData"] == "PJSIP/100,20"


def test_every_shipped_format_is_read_by_asterisk(lab, hold_sounds):
    """Asterisk's own format modules read each shipped file (wav, gsm, ulaw, alaw, sln16) as the whole ~3 s prompt."""
    work = lab.path("/tmp") / f"agx-sounds-{secrets.token_hex(4)}"
    work.mkdir()
    try:
        for ext in ("wav", "gsm", "ulaw", "alaw", "sln16"):
            out = work / f"{ext}.sln16"
            converted = lab.rx(f"file convert /usr/share/asterisk/sounds/en/agi-xmpp/please-hold.{ext}"
                               f" /tmp/{work.name}/{ext}.sln16")
            assert "Converted" in converted, converted
            seconds = out.stat().st_size / 2 / 16000  # signed linear, 16 kHz, 16 bits
            assert 2.5 < seconds < 3.5, (ext, seconds)
            assert max(abs(s) for s in memoryview(out.read_bytes()).cast("h")) > 8000, ext
    finally:
        for path in work.iterdir():
            path.unlink()
        work.rmdir()
