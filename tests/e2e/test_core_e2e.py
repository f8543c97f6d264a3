"""jabber_send, jabber_status and jabber_receive end to end: real Asterisk 22, real Prosody.

The whole service runs in-process (``running_harness``) on a free FastAGI port; the lab's
Asterisk runs a dialplan that calls the scripts with ``AGI(agi://127.0.0.1:PORT/SCRIPT,...)``
and reports what it saw with ``UserEvent``s, read back over AMI. A test client on Prosody plays
the human on the other side of the chat.

Conventions of the dialplan below:
- every call carries ``TOKEN`` (unique per test) and the JIDs it needs as channel variables set
  by the originate, so one dialplan serves every test;
- a value that may hold commas (or be empty) is reported as ``${BASE64_ENCODE(...)}`` or in
  ``[...]``: UserEvent's arguments are split on commas *after* substitution, and an empty header
  would be indistinguishable from a missing one;
- header names never reuse AMI's own (``Channel``, ``Uniqueid``, ``Priority``...).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets

import pytest
from lab import AsteriskLab
from service_harness import eventually, running_harness, service_config

from agi_xmpp.jid import parse_jid

pytestmark = pytest.mark.e2e

IO_TIMEOUT = 20.0  # generous: shared CI machines stall
CALL_TIMEOUT = 90.0  # originate timeout: the dialplan never answers, so this bounds each call
ACCOUNT = "asterisk"

DIALPLAN = r"""
[core-e2e]
; 1. jabber_send: trailing arguments joined with ',', then var=NAME with a literal and a decoded value
exten => send,1,AGI(agi://127.0.0.1:@PORT@/jabber_send,asterisk,${BOB},Call from ${TOKEN},urgent,please call back)
 same => n,UserEvent(CoreSend,TOKEN: ${TOKEN},STATUS: ${JABBER_SEND_STATUS},ERR: [${JABBER_SEND_ERROR}],AGISTATUS: ${AGISTATUS})
 same => n,Set(NOTE=He said "hi", then 'bye', and left)
 same => n,AGI(agi://127.0.0.1:@PORT@/jabber_send?var=NOTE,asterisk,${BOB})
 same => n,UserEvent(CoreSendVar,TOKEN: ${TOKEN},STATUS: ${JABBER_SEND_STATUS},ERR: [${JABBER_SEND_ERROR}],AGISTATUS: ${AGISTATUS},NOTE_B64: ${BASE64_ENCODE(${NOTE})})
 same => n,Set(NOTE2=${BASE64_DECODE(${NOTE2_B64})})
 same => n,AGI(agi://127.0.0.1:@PORT@/jabber_send?var=NOTE2,asterisk,${BOB})
 same => n,UserEvent(CoreSendVar2,TOKEN: ${TOKEN},STATUS: ${JABBER_SEND_STATUS},ERR: [${JABBER_SEND_ERROR}],AGISTATUS: ${AGISTATUS},NOTE2_SEEN_B64: ${BASE64_ENCODE(${NOTE2})})
 same => n,Hangup()

; 2. jabber_status: default variable, then the VARNAME form
exten => status,1,AGI(agi://127.0.0.1:@PORT@/jabber_status,asterisk,${BOB})
 same => n,UserEvent(CoreStatus,TOKEN: ${TOKEN},CODE: ${JABBER_STATUS},SHOW: ${JABBER_STATUS_SHOW},MSG_B64: ${BASE64_ENCODE(${JABBER_STATUS_MESSAGE})},ERR: [${JABBER_STATUS_ERROR}],AGISTATUS: ${AGISTATUS})
 same => n,AGI(agi://127.0.0.1:@PORT@/jabber_status,asterisk,${STRANGER},MYSTATUS)
 same => n,UserEvent(CoreStatusVar,TOKEN: ${TOKEN},CODE: ${MYSTATUS},SHOW: ${JABBER_STATUS_SHOW},DEFAULT: [${JABBER_STATUS}],MSG: [${JABBER_STATUS_MESSAGE}],ERR: [${JABBER_STATUS_ERROR}],AGISTATUS: ${AGISTATUS})
 same => n,AGI(agi://127.0.0.1:@PORT@/jabber_status,asterisk,${BOB},BOBSTATUS)
 same => n,UserEvent(CoreStatusVar2,TOKEN: ${TOKEN},CODE: ${BOBSTATUS},SHOW: ${JABBER_STATUS_SHOW},DEFAULT: [${JABBER_STATUS}],AGISTATUS: ${AGISTATUS})
 same => n,Hangup()

; 3. jabber_receive: a hostile reply, decoded by Asterisk itself, and the next priority runs
exten => receive,1,AGI(agi://127.0.0.1:@PORT@/jabber_receive,asterisk,${BOB},20)
 same => n,Set(DECODED=${BASE64_DECODE(${JABBER_RECEIVE_B64})})
 same => n,UserEvent(CoreReceive,TOKEN: ${TOKEN},STATUS: ${JABBER_RECEIVE_STATUS},FROM: ${JABBER_RECEIVE_FROM},ERR: [${JABBER_RECEIVE_ERROR}],B64: ${JABBER_RECEIVE_B64},DECODED_B64: ${BASE64_ENCODE(${DECODED})},PLAIN_B64: ${BASE64_ENCODE(${JABBER_RECEIVE})},AGISTATUS: ${AGISTATUS},PRIO: ${PRIORITY})
 same => n,Hangup()

; 4. jabber_receive with a caller who hangs up while it waits
exten => hangwait,1,AGI(agi://127.0.0.1:@PORT@/jabber_receive,asterisk,${BOB},300)
 same => n,UserEvent(CoreHangWaitContinued,TOKEN: ${TOKEN},AGISTATUS: ${AGISTATUS})
 same => n,Hangup()

; 5. a script the service does not know, then a known one spelt in mixed case
exten => unknown,1,Set(AGISTATUS=unset)
 same => n,AGI(agi://127.0.0.1:@PORT@/no_such_script,asterisk,x)
 same => n,UserEvent(CoreUnknown,TOKEN: ${TOKEN},AGISTATUS: ${AGISTATUS},PRIO: ${PRIORITY})
 same => n,AGI(agi://127.0.0.1:@PORT@/Jabber_Status,asterisk,${STRANGER})
 same => n,UserEvent(CoreMixedCase,TOKEN: ${TOKEN},AGISTATUS: ${AGISTATUS},CODE: ${JABBER_STATUS})
 same => n,Hangup()

; 6. a JID that does not parse
exten => badjid,1,Set(JABBER_SEND_STATUS=stale)
 same => n,AGI(agi://127.0.0.1:@PORT@/jabber_send,asterisk,not a jid@,hello)
 same => n,UserEvent(CoreBadJid,TOKEN: ${TOKEN},STATUS: ${JABBER_SEND_STATUS},ERR_B64: ${BASE64_ENCODE(${JABBER_SEND_ERROR})},AGISTATUS: ${AGISTATUS},PRIO: ${PRIORITY})
 same => n,Hangup()

; 7. two jabber_receive calls: SUCCESS, then TIMEOUT must clear the values of the first
exten => twice,1,AGI(agi://127.0.0.1:@PORT@/jabber_receive,asterisk,${BOB},10)
 same => n,UserEvent(CoreFirst,TOKEN: ${TOKEN},STATUS: ${JABBER_RECEIVE_STATUS},PLAIN: [${JABBER_RECEIVE}],B64: [${JABBER_RECEIVE_B64}],FROM: [${JABBER_RECEIVE_FROM}],AGISTATUS: ${AGISTATUS})
 same => n,AGI(agi://127.0.0.1:@PORT@/jabber_receive,asterisk,${BOB},1)
 same => n,UserEvent(CoreSecond,TOKEN: ${TOKEN},STATUS: ${JABBER_RECEIVE_STATUS},PLAIN: [${JABBER_RECEIVE}],B64: [${JABBER_RECEIVE_B64}],FROM: [${JABBER_RECEIVE_FROM}],ERR: [${JABBER_RECEIVE_ERROR}],AGISTATUS: ${AGISTATUS})
 same => n,Hangup()

exten => h,1,UserEvent(CoreHangup,TOKEN: ${TOKEN},AGISTATUS: ${AGISTATUS},STATUS: ${JABBER_RECEIVE_STATUS})
"""


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture
async def svc(lab, prosody, xmpp_accounts, tmp_path):
    """The whole service with one account ('asterisk') on the shared Prosody, FastAGI on a free port."""
    jid, password = xmpp_accounts("asterisk")
    async with running_harness(service_config(prosody, jid, password, tmp_path)) as harness:
        harness.jid = jid
        try:
            yield harness
        finally:
            # Hang up while the service still runs on this loop: the lab fixture's own (blocking)
            # hangup_all would freeze the service mid-AGI, so the channel could never go away.
            await lab.arx("channel request hangup all")
            with contextlib.suppress(TimeoutError):
                await lab.wait_channels_gone("*", IO_TIMEOUT)


@pytest.fixture
def core_dialplan(svc, dialplan) -> AsteriskLab:
    """The lab with DIALPLAN loaded, pointing at this test's service."""
    return dialplan(DIALPLAN, PORT=svc.port)


def token() -> str:
    return f"t{secrets.token_hex(4)}"


def call(lab: AsteriskLab, exten: str, tok: str, **variables: str):
    return lab.originate(exten, "core-e2e", timeout=CALL_TIMEOUT,
                         variables={"TOKEN": tok, **variables})


def unb64(value: str) -> str:
    return base64.b64decode(value).decode("utf-8")


async def befriend_service(svc, client) -> None:
    """Mutual subscription between a test client and the service account, then wait for it."""
    client.subscribe(svc.jid)
    await eventually(
        lambda: client.bare_jid in svc.services.presence.contacts(ACCOUNT),
        timeout=IO_TIMEOUT,
        what="the contact to appear in the service's roster",
    )


def inbox(svc):
    return svc.pool.inboxes[ACCOUNT]


# -- 1. jabber_send ------------------------------------------------------------------------------


async def test_jabber_send_from_dialplan_reaches_chat_user(core_dialplan, svc, xmpp_accounts, xmpp_client):
    """jabber_send from a real dialplan delivers the comma-joined args and var=NAME texts exactly, with SUCCESS."""
    lab = core_dialplan
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    tok = token()
    note2 = "line one\nline \"two\", with \\ backslash, 'single' and ${TOKEN} $[1+1]"
    call(lab, "send", tok, BOB=bob_jid, NOTE2_B64=base64.b64encode(note2.encode()).decode())

    plain = await lab.wait_user_event("CoreSend", IO_TIMEOUT, TOKEN=tok)
    assert (plain["STATUS"], plain["ERR"], plain["AGISTATUS"]) == ("SUCCESS", "[]", "SUCCESS")
    first = await bob.next_message(IO_TIMEOUT, sender=svc.jid)
    assert first.body == f"Call from {tok},urgent,please call back"
    assert first.type == "chat"

    var = await lab.wait_user_event("CoreSendVar", IO_TIMEOUT, TOKEN=tok)
    assert (var["STATUS"], var["ERR"], var["AGISTATUS"]) == ("SUCCESS", "[]", "SUCCESS")
    note = "He said \"hi\", then 'bye', and left"
    assert unb64(var["NOTE_B64"]) == note  # what the channel holds, as written in the dialplan
    second = await bob.next_message(IO_TIMEOUT, sender=svc.jid)
    assert second.body == note

    var2 = await lab.wait_user_event("CoreSendVar2", IO_TIMEOUT, TOKEN=tok)
    assert (var2["STATUS"], var2["ERR"], var2["AGISTATUS"]) == ("SUCCESS", "[]", "SUCCESS")
    assert unb64(var2["NOTE2_SEEN_B64"]) == note2
    third = await bob.next_message(IO_TIMEOUT, sender=svc.jid)
    assert third.body == note2
    assert len({first.id, second.id, third.id}) == 3


# -- 2. jabber_status ----------------------------------------------------------------------------


async def test_jabber_status_dnd_contact_and_stranger(core_dialplan, svc, xmpp_accounts, xmpp_client):
    """jabber_status gives 5/dnd with the status text for a dnd contact, 7/unknown for a stranger, and honours VARNAME."""
    lab = core_dialplan
    bob_jid, bob_pw = xmpp_accounts("bob")
    stranger_jid, _ = xmpp_accounts("stranger")
    bob = await xmpp_client(bob_jid, bob_pw)
    await befriend_service(svc, bob)
    bob.send_presence(show="dnd", status="in a meeting", priority=5)
    await eventually(
        lambda: svc.services.presence.status(ACCOUNT, parse_jid(bob_jid)).code == 5,
        timeout=IO_TIMEOUT, what="bob to read dnd in the presence cache",
    )
    tok = token()
    call(lab, "status", tok, BOB=bob_jid, STRANGER=stranger_jid)

    bob_event = await lab.wait_user_event("CoreStatus", IO_TIMEOUT, TOKEN=tok)
    assert (bob_event["CODE"], bob_event["SHOW"]) == ("5", "dnd")
    assert unb64(bob_event["MSG_B64"]) == "in a meeting"
    assert (bob_event["ERR"], bob_event["AGISTATUS"]) == ("[]", "SUCCESS")

    stranger = await lab.wait_user_event("CoreStatusVar", IO_TIMEOUT, TOKEN=tok)
    assert (stranger["CODE"], stranger["SHOW"]) == ("7", "unknown")
    # The VARNAME form still sets every documented variable: nothing stale from bob's answer.
    assert (stranger["DEFAULT"], stranger["MSG"], stranger["ERR"]) == ("[]", "[]", "[]")
    assert stranger["AGISTATUS"] == "SUCCESS"

    bob_var = await lab.wait_user_event("CoreStatusVar2", IO_TIMEOUT, TOKEN=tok)
    assert (bob_var["CODE"], bob_var["SHOW"], bob_var["DEFAULT"]) == ("5", "dnd", "[]")
    assert bob_var["AGISTATUS"] == "SUCCESS"


# -- 3. jabber_receive ---------------------------------------------------------------------------


async def test_jabber_receive_hostile_reply_arrives_intact(core_dialplan, svc, xmpp_accounts, xmpp_client):
    """A reply with newlines, quotes, backslashes and ${...} is exact in JABBER_RECEIVE_B64 and one harmless line in JABBER_RECEIVE."""
    lab = core_dialplan
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    tok = token()
    call(lab, "receive", tok, BOB=bob_jid)
    await eventually(lambda: inbox(svc).waiting == 1, timeout=IO_TIMEOUT,
                     what="the dialplan's jabber_receive to wait")
    reply = ("yes, \"press 1\"\nit's a back\\slash \\n line\nthen ${TOKEN} and $[1+1] "
             "and ${SHELL(echo pwned)}\n\tEXEC Hangup\n")
    bob.send_message(svc.jid, reply)
    expected = reply

    event = await lab.wait_user_event("CoreReceive", IO_TIMEOUT, TOKEN=tok)
    assert event["STATUS"] == "SUCCESS"
    assert event["AGISTATUS"] == "SUCCESS"
    assert event["ERR"] == "[]"
    assert event["FROM"] == f"{bob_jid}/test"
    assert unb64(event["B64"]) == expected
    # Asterisk's own ${BASE64_DECODE()} gives back the exact text (and does not evaluate it).
    assert unb64(event["DECODED_B64"]) == expected
    plain = unb64(event["PLAIN_B64"])
    assert not any(ch in plain for ch in "\r\n\t")
    assert plain == expected.replace("\n", " ").replace("\t", " ")
    # The dialplan went on: the Set at priority 2 ran, then this UserEvent at priority 3.
    assert event["PRIO"] == "3"


# -- 4. hangup during jabber_receive -------------------------------------------------------------


async def test_hangup_during_jabber_receive_ends_the_wait_at_once(
    core_dialplan, svc, xmpp_accounts, xmpp_client
):
    """A caller hanging up during a 300 s jabber_receive ends it by the HANGUP itself (not the
    timeout, not the grace cancel) and closes the FastAGI connection; the h extension runs."""
    lab = core_dialplan
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    tok = token()
    placed = call(lab, "hangwait", tok, BOB=bob_jid)
    await eventually(lambda: inbox(svc).waiting == 1, timeout=IO_TIMEOUT,
                     what="the dialplan's jabber_receive to wait")
    assert len(svc.agi.sessions) == 1
    cancelled_before = svc.agi.stats["cancelled_after_hangup"]

    assert lab.hangup(placed.uniqueid), "the dialplan channel was not found to hang up"
    # A bound on a hang only (a busy machine is slow); what is asserted is the mechanism: the
    # wait ended on the HANGUP notice, far short of its 300 s timeout, and the script finished
    # by itself rather than being cancelled when the hangup grace ran out.
    await eventually(lambda: not svc.agi.sessions, timeout=60,
                     what="the FastAGI connection to close after the hangup")
    assert inbox(svc).waiting == 0
    assert svc.agi.stats["cancelled_after_hangup"] == cancelled_before

    event = await lab.wait_user_event("CoreHangup", IO_TIMEOUT, TOKEN=tok)
    assert event["AGISTATUS"] == "HANGUP"
    assert event["STATUS"] == "HANGUP"  # set on the dead channel before the server closed
    await lab.wait_channels_gone(placed.uniqueid, IO_TIMEOUT)
    assert not [e for e in lab.events()
                if e.get("UserEvent") == "CoreHangWaitContinued" and e.get("TOKEN") == tok]

    # The wait is over: a message that arrives now stays buffered for a later call.
    bob.send_message(svc.jid, "too late")
    await eventually(lambda: len(inbox(svc)) == 1, timeout=IO_TIMEOUT,
                     what="the late message to be buffered")


# -- 5. unknown script ---------------------------------------------------------------------------


async def test_unknown_script_gives_agistatus_failure_and_dialplan_continues(core_dialplan, svc, xmpp_accounts):
    """An unknown script makes AGISTATUS=FAILURE and the dialplan continues; script names are case-insensitive."""
    lab = core_dialplan
    stranger_jid, _ = xmpp_accounts("stranger")
    tok = token()
    call(lab, "unknown", tok, STRANGER=stranger_jid)

    event = await lab.wait_user_event("CoreUnknown", IO_TIMEOUT, TOKEN=tok)
    assert event["AGISTATUS"] == "FAILURE"
    assert event["PRIO"] == "3"
    mixed = await lab.wait_user_event("CoreMixedCase", IO_TIMEOUT, TOKEN=tok)
    assert (mixed["AGISTATUS"], mixed["CODE"]) == ("SUCCESS", "7")
    assert svc.agi.stats["unknown_script"] == 1


# -- 6. bad JID ----------------------------------------------------------------------------------


async def test_bad_jid_is_failure_with_error_and_dialplan_continues(core_dialplan, svc):
    """A JID that does not parse gives JABBER_SEND_STATUS=FAILURE with an error, AGISTATUS=SUCCESS, next priority runs."""
    lab = core_dialplan
    tok = token()
    call(lab, "badjid", tok)

    event = await lab.wait_user_event("CoreBadJid", IO_TIMEOUT, TOKEN=tok)
    assert event["STATUS"] == "FAILURE"
    error = unb64(event["ERR_B64"])
    assert "invalid JID" in error
    assert "\n" not in error
    assert event["AGISTATUS"] == "SUCCESS"
    assert event["PRIO"] == "3"
    # The call was not hung up by the script: the dialplan ran to its own Hangup().
    hangup = await lab.wait_user_event("CoreHangup", IO_TIMEOUT, TOKEN=tok)
    assert hangup["AGISTATUS"] == "SUCCESS"


# -- 7. variables reset on every run -------------------------------------------------------------


async def test_second_jabber_receive_clears_values_of_the_first(core_dialplan, svc, xmpp_accounts, xmpp_client):
    """After a SUCCESS then a TIMEOUT jabber_receive, JABBER_RECEIVE, _B64 and _FROM are empty."""
    lab = core_dialplan
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    bob.send_message(svc.jid, "first reply")
    await eventually(lambda: len(inbox(svc)) == 1, timeout=IO_TIMEOUT,
                     what="the reply to be buffered")
    tok = token()
    call(lab, "twice", tok, BOB=bob_jid)

    first = await lab.wait_user_event("CoreFirst", IO_TIMEOUT, TOKEN=tok)
    assert (first["STATUS"], first["AGISTATUS"]) == ("SUCCESS", "SUCCESS")
    assert first["PLAIN"] == "[first reply]"
    assert first["B64"] == f"[{base64.b64encode(b'first reply').decode()}]"
    assert first["FROM"] == f"[{bob_jid}/test]"

    second = await lab.wait_user_event("CoreSecond", IO_TIMEOUT, TOKEN=tok)
    assert (second["STATUS"], second["AGISTATUS"]) == ("TIMEOUT", "SUCCESS")
    assert (second["PLAIN"], second["B64"], second["FROM"], second["ERR"]) == ("[]", "[]", "[]", "[]")
