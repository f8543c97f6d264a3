"""presence_route and call_notify driven by a real Asterisk 22 dialplan, with the real service.

The service runs in the test's event loop (``running_harness``) on the shared Prosody; Asterisk
runs the dialplan and reports what it saw through AMI: ``UserEvent``s from the test's own
contexts, ``VarSet``/``Newexten`` events from the shipped ``dialplan/*.conf`` examples (which are
loaded as they ship, with only the FastAGI port changed). Real phones cannot be dialled, so the
ring group's dial string is asserted instead.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest
from service_harness import eventually, running_harness, service_config

from agi_xmpp.config import make_directory_entry
from agi_xmpp.jid import parse_jid

pytestmark = pytest.mark.e2e

SHIPPED = Path(__file__).resolve().parents[2] / "dialplan"
SHIPPED_FILES = ("agi-xmpp-ringgroup.conf", "agi-xmpp-notify.conf", "agi-xmpp-groupchat.conf")

TEST_CONTEXTS = r"""
[e2e-ringgroup]
exten => s,1,AGI(agi://127.0.0.1:@PORT@/presence_route,asterisk,${MEMBERS},${POLICY})
 same => n,GotoIf($["${PRESENCE_ROUTE_STATUS}" = "SUCCESS"]?ring)
 same => n,UserEvent(RingGroup,TOKEN: ${TOKEN},BRANCH: voicemail,STATUS: ${PRESENCE_ROUTE_STATUS},DIAL: ${PRESENCE_ROUTE_DIAL},SKIPPED: ${PRESENCE_ROUTE_SKIPPED},AGISTATUS: ${AGISTATUS})
 same => n,Hangup()
 same => n(ring),UserEvent(RingGroup,TOKEN: ${TOKEN},BRANCH: dial,STATUS: ${PRESENCE_ROUTE_STATUS},DIAL: ${PRESENCE_ROUTE_DIAL},COUNT: ${PRESENCE_ROUTE_COUNT},SKIPPED: ${PRESENCE_ROUTE_SKIPPED},AGISTATUS: ${AGISTATUS})
 same => n,Hangup()

[e2e-notify]
exten => 100,1,AGI(agi://127.0.0.1:@PORT@/call_notify,asterisk,${TARGET})
 same => n,UserEvent(Notify,TOKEN: ${TOKEN},STATUS: ${CALL_NOTIFY_STATUS},ERROR: ${CALL_NOTIFY_ERROR},AGISTATUS: ${AGISTATUS})
 same => n,Hangup()
exten => 101,1,Gosub(agi-xmpp-screen-pop,${TARGET},1)
 same => n,UserEvent(Notify,TOKEN: ${TOKEN},STATUS: ${CALL_NOTIFY_STATUS},ERROR: ${CALL_NOTIFY_ERROR},AGISTATUS: ${AGISTATUS})
 same => n,Hangup()
"""

# The members the shipped [agi-xmpp-ringgroup] context lists (Set(RG_MEMBERS=201&202&203)).
PRESENCES = {"201": "available", "202": "dnd", "203": "chat"}


def extensions_conf(port: int) -> str:
    """The test contexts plus every shipped example, pointed at the test's FastAGI port."""
    parts = [TEST_CONTEXTS.replace("@PORT@", str(port))]
    for name in SHIPPED_FILES:
        parts.append((SHIPPED / name).read_text().replace("agi://127.0.0.1/", f"agi://127.0.0.1:{port}/"))
    return "\n".join(parts)


@pytest.fixture
async def office(prosody, xmpp_accounts, xmpp_client, tmp_path, lab):
    """The service (directory 201-203, one user each, befriended) and the dialplan loaded."""
    service_jid, service_pw = xmpp_accounts("asterisk")
    users = {ext: xmpp_accounts(f"e2e{ext}") for ext in PRESENCES}
    directory = tuple(make_directory_entry(ext, jid) for ext, (jid, _pw) in users.items())
    config = service_config(prosody, service_jid, service_pw, tmp_path, directory=directory)
    async with running_harness(config) as svc:
        svc.jid = service_jid
        svc.clients = {}
        for ext, (jid, pw) in users.items():
            client = await xmpp_client(jid, pw)
            client.subscribe(service_jid)
            await eventually(lambda jid=jid: jid in svc.services.presence.contacts("asterisk"))
            svc.clients[ext] = client
        svc.users = {ext: jid for ext, (jid, _pw) in users.items()}
        lab.set_dialplan(extensions_conf(svc.port))
        yield svc


async def set_presences(svc, presences: dict[str, str]) -> None:
    """Set each member's presence and wait until the service reads it (re-sent every second:
    slixmpp's auto-authorisation may re-send a client's initial presence after ours)."""
    codes = {"available": 1, "chat": 2, "away": 3, "xa": 4, "dnd": 5}
    loop = asyncio.get_running_loop()
    for ext, show in presences.items():
        jid = parse_jid(svc.users[ext])
        deadline = loop.time() + 60  # bounds a hang only: a busy machine is slow
        while True:
            svc.clients[ext].send_presence(show=show)
            try:
                await eventually(
                    lambda jid=jid, code=codes[show]: svc.services.presence.status("asterisk", jid).code == code,
                    timeout=1, what=f"{ext} to be {show}",
                )
                break
            except AssertionError:
                if loop.time() > deadline:
                    raise


async def ring_group(lab, members: str, policy: str = "") -> dict[str, str]:
    token = secrets.token_hex(4)
    call = lab.originate("s", "e2e-ringgroup", timeout=30,
                         variables={"MEMBERS": members, "POLICY": policy, "TOKEN": token})
    return await lab.wait_user_event("RingGroup", 20, TOKEN=token, Uniqueid=call.uniqueid)


async def test_ring_group_dials_only_members_that_pass_and_falls_to_voicemail(office, lab):
    """The dialplan gets the passing members' devices in order, and the voicemail branch on NONE."""
    await set_presences(office, {"201": "available", "202": "dnd", "203": "chat"})
    event = await ring_group(lab, "203&202&201&999")
    assert event["BRANCH"] == "dial"
    assert event["DIAL"] == "PJSIP/203&PJSIP/201"
    assert event["COUNT"] == "2"
    assert event["SKIPPED"] == "999"
    assert event["AGISTATUS"] == "SUCCESS"

    present = await ring_group(lab, "201&202&203", "not_dnd")
    assert present["DIAL"] == "PJSIP/201&PJSIP/203"

    await set_presences(office, {"201": "away", "203": "dnd"})
    nobody = await ring_group(lab, "201&202&203")
    assert nobody["BRANCH"] == "voicemail"
    assert nobody["STATUS"] == "NONE"
    assert nobody["DIAL"] == ""
    assert nobody["AGISTATUS"] == "SUCCESS"
    # away passes "present", so the same group rings 201 under that policy
    assert (await ring_group(lab, "201&202&203", "present"))["DIAL"] == "PJSIP/201"


async def test_shipped_ring_group_example_dials_or_goes_to_voicemail(office, lab):
    """dialplan/agi-xmpp-ringgroup.conf as shipped: Dial() the available members, else VoiceMail()."""
    await set_presences(office, PRESENCES)
    call = lab.originate("s", "agi-xmpp-ringgroup", timeout=30)
    dial = await lab.wait_event("Newexten", 20, Uniqueid=call.uniqueid, Application="Dial")
    assert dial["AppData"] == "PJSIP/201&PJSIP/203,25"

    await set_presences(office, {"201": "xa", "203": "away"})
    call = lab.originate("s", "agi-xmpp-ringgroup", timeout=30)
    status = await lab.wait_event("VarSet", 20, Uniqueid=call.uniqueid, Variable="PRESENCE_ROUTE_STATUS")
    assert status["Value"] == "NONE"
    voicemail = await lab.wait_event("Newexten", 20, Uniqueid=call.uniqueid, Application="VoiceMail")
    assert voicemail["AppData"].startswith("600@default")


async def test_call_notify_from_the_dialplan_reaches_the_extensions_jid(office, lab):
    """A screen pop from the dialplan reaches 201's JID with the originate's caller ID in it."""
    token = secrets.token_hex(4)
    call = lab.originate("100", "e2e-notify", timeout=30, callerid='"Alice Smith" <5551234>',
                         variables={"TARGET": "201", "TOKEN": token})
    event = await lab.wait_user_event("Notify", 20, TOKEN=token, Uniqueid=call.uniqueid)
    assert event["STATUS"] == "SUCCESS" and event["AGISTATUS"] == "SUCCESS", event
    message = await office.clients["201"].next_message(10, sender=office.jid)
    assert message.body == "Incoming call from Alice Smith 5551234 to 100"


async def test_shipped_screen_pop_subroutine(office, lab):
    """dialplan/agi-xmpp-notify.conf's Gosub sends the pop; a bad target only logs, the call goes on."""
    token = secrets.token_hex(4)
    call = lab.originate("101", "e2e-notify", timeout=30, callerid='"Bob Jones" <5550000>',
                         variables={"TARGET": "203", "TOKEN": token})
    event = await lab.wait_user_event("Notify", 20, TOKEN=token, Uniqueid=call.uniqueid)
    assert event["STATUS"] == "SUCCESS", event
    body = (await office.clients["203"].next_message(10, sender=office.jid)).body
    # inside a Gosub EXTEN is "s": the text then names the dialled number if Asterisk has one
    assert body == "Incoming call from Bob Jones 5550000 to 203"

    token = secrets.token_hex(4)
    call = lab.originate("101", "e2e-notify", timeout=30, variables={"TARGET": "999", "TOKEN": token})
    event = await lab.wait_user_event("Notify", 20, TOKEN=token, Uniqueid=call.uniqueid)
    assert event["STATUS"] == "FAILURE"
    assert "unknown extension" in event["ERROR"]
