"""The AMI side (docs/ami.md) against the real Asterisk 22 lab and a real Prosody.

The service logs in as an AMI user with only the privileges docs/ami.md asks for (so the docs
are tested too). Voicemails are really left: a ``Local/`` channel plays a prompt into
``VoiceMail()``; the service reads the chroot's spool from the host.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import shutil
from pathlib import Path

import pytest
from service_harness import eventually, running_harness, service_config

from agi_xmpp.config import AmiConfig, make_directory_entry
from agi_xmpp.jid import parse_jid

pytestmark = pytest.mark.e2e

VM_CONTEXT = "agxe2e"
HINT_CONTEXT = "agi-xmpp-hints"  # as shipped in dialplan/agi-xmpp-hints.conf
#: The least privileges docs/ami.md gives the service's AMI user.
AMI_READ = "system,call,agent"
AMI_WRITE = "call,originate,agent"

VOICEMAIL_CONF = f"""\
[general]
format = wav
maxsecs = 4
minsecs = 1
maxsilence = 10
silencethreshold = 128
skipms = 3000
attach = no

[{VM_CONTEXT}]
2001 => 1234,Alice
2002 => 1234,Bob
2005 => 1234,Eve,,,delete=yes
"""

QUEUES_CONF = """\
[general]
persistentmembers = no

[agx-support]
strategy = ringall
member => Local/2001@agx-phones,0,Alice,Local/2001@agx-phones
member => Local/2002@agx-phones,0,Bob,Local/2002@agx-phones
"""

DIALPLAN = f"""\
[agx-vm]
exten => leave,1,Set(CALLERID(all)=${{CID}})
 same => n,VoiceMail(${{MBOX}},${{VMOPT}})
 same => n,Hangup()
exten => speak,1,Answer()
 same => n,Playback(demo-congrats)
 same => n,Hangup()

[agx-phones]
; "phones" for click-to-call: 2001 answers, 2003 is busy, 2004 never answers
exten => 2001,1,Answer()
 same => n,Wait(2)
 same => n,Hangup()
exten => 2003,1,Busy(5)
exten => 2004,1,Ringing()
 same => n,Wait(60)

[agx-dial]
; where "call <number>" is dialled (originate_context)
exten => _X.,1,Answer()
 same => n,UserEvent(AgxDialled,NUMBER: ${{EXTEN}},CALLER: ${{AGI_XMPP_CALLER}})
 same => n,Wait(1)
 same => n,Hangup()
"""


def hints_dialplan() -> str:
    """Our test contexts and the shipped AMI examples (loaded as they ship: they must parse)."""
    shipped = Path(__file__).resolve().parents[2] / "dialplan"
    examples = [(shipped / name).read_text() for name in ("agi-xmpp-hints.conf", "agi-xmpp-click-to-call.conf")]
    return "\n".join([DIALPLAN, *examples])


@pytest.fixture
def pbx(lab, tmp_path):
    """The lab with voicemail, a queue, our dialplan and a least-privilege AMI user."""
    spool = lab.path("/var/spool/asterisk/voicemail")
    mailboxes = spool / VM_CONTEXT
    if mailboxes.exists():
        shutil.rmtree(mailboxes)  # inside the chroot's spool only; /proc and /dev are elsewhere
    lab.write_config("voicemail.conf", VOICEMAIL_CONF)
    lab.ensure_module("app_voicemail.so")
    lab.write_config("queues.conf", QUEUES_CONF)
    lab.ensure_module("app_queue.so")
    lab.set_dialplan(hints_dialplan())
    secret = secrets.token_hex(8)
    lab.add_ami_user("agixmpp", secret, read=AMI_READ, write=AMI_WRITE)
    lab.ami_secret_for_service = secret
    lab.spool = spool
    return lab


def ami_config(lab, **overrides) -> AmiConfig:
    values = dict(
        host=lab.ami_host, port=lab.ami_port, username="agixmpp", secret=lab.ami_secret_for_service,
        voicemail_spool=str(lab.spool), originate_context="agx-dial",
    )
    values.update(overrides)
    return AmiConfig(**values)


def office_config(prosody, lab, tmp_path, service, users, **ami_overrides):
    """Service config: directory 2001 (and 2002) with mailboxes, [ami] pointed at the lab."""
    directory = tuple(
        make_directory_entry(ext, jid, device=f"Local/{ext}@agx-phones", mailbox=f"{ext}@{VM_CONTEXT}")
        for ext, jid in users.items()
    )
    config = service_config(prosody, service[0], service[1], tmp_path / "state", directory=directory)
    return dataclasses.replace(config, ami=ami_config(lab, **ami_overrides))


async def leave_voicemail(lab, mailbox: str, caller: str, options: str = "s") -> None:
    """A real caller leaves a message: Local/ channel into VoiceMail(), prompt as the voice."""
    response = await lab.ami_action(
        "Originate", Channel="Local/leave@agx-vm", Context="agx-vm", Exten="speak", Priority="1",
        Async="true", Timeout="30000",
        Variable=[f"MBOX={mailbox}", f"VMOPT={options}", f"CID={caller}"],
    )
    assert response.get("Response") == "Success", response


def inbox_files(lab, ext: str) -> list[Path]:
    box = lab.spool / VM_CONTEXT / ext
    return sorted(box.glob("*/msg*.txt")) if box.exists() else []


async def test_ami_link_is_shown_in_health_and_metrics(pbx, prosody, xmpp_accounts, tmp_path):
    """With a good AMI login, /health reports the link connected and /metrics a 1."""
    import aiohttp

    service = xmpp_accounts("asterisk")
    alice = xmpp_accounts("alice")
    config = office_config(prosody, pbx, tmp_path, service, {"2001": alice[0]})
    async with running_harness(config, http=True) as svc:
        bridge = svc.services.ami
        await eventually(lambda: bridge.link.connected, 30, "the AMI login")
        host, port = config.general.http_bind
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{host}:{port}/health") as response:
                health = await response.json()
                assert response.status == 200, health
            async with http.get(f"http://{host}:{port}/metrics") as response:
                metrics = await response.text()
        assert health["ami"]["state"] == "connected"
        assert "agi_xmpp_ami_connected 1" in metrics.splitlines()


async def test_refused_ami_login_is_one_clear_error_and_the_service_runs(pbx, prosody, xmpp_accounts, tmp_path):
    """A wrong AMI secret leaves the link 'login_refused' with a reason; chat still works."""
    service = xmpp_accounts("asterisk")
    alice = xmpp_accounts("alice")
    config = office_config(prosody, pbx, tmp_path, service, {"2001": alice[0]}, secret="wrong")
    async with running_harness(config) as svc:
        bridge = svc.services.ami
        await eventually(lambda: bridge.link.state == "login_refused", 30, "the refused login")
        assert "login refused" in bridge.link.last_error
        assert svc.pool.all_online()


async def test_voicemail_is_notified_once_with_its_details(pbx, prosody, xmpp_accounts, xmpp_client, tmp_path):
    """A voicemail left for 2001 reaches Alice's JID once, with caller, duration and counts;
    an urgent one says so."""
    service = xmpp_accounts("asterisk")
    alice_jid, alice_pw = xmpp_accounts("alice")
    alice = await xmpp_client(alice_jid, alice_pw)
    config = office_config(prosody, pbx, tmp_path, service, {"2001": alice_jid})
    async with running_harness(config) as svc:
        await eventually(lambda: svc.services.ami.link.connected, 30, "the AMI login")
        await leave_voicemail(pbx, f"2001@{VM_CONTEXT}", '"Bob Caller" <5550100>')
        msg = await alice.next_message(60, sender=service[0])
        assert "New voicemail from Bob Caller <5550100>" in msg.body
        assert f"2001@{VM_CONTEXT}" in msg.body
        assert "1 new, 0 old" in msg.body
        assert " s long" in msg.body
        await leave_voicemail(pbx, f"2001@{VM_CONTEXT}", '"Carol" <5550111>', options="sU")
        urgent = await alice.next_message(60, sender=service[0])
        assert urgent.body.startswith("Urgent voicemail from Carol <5550111>")
        await alice.no_message(2, sender=service[0])
    assert len(inbox_files(pbx, "2001")) == 2


async def test_voicemail_left_while_the_service_was_down_is_notified_once(
    pbx, prosody, xmpp_accounts, xmpp_client, tmp_path
):
    """Left while the service was stopped: notified at start; a second start sends nothing."""
    service = xmpp_accounts("asterisk")
    alice_jid, alice_pw = xmpp_accounts("alice")
    alice = await xmpp_client(alice_jid, alice_pw)
    config = office_config(prosody, pbx, tmp_path, service, {"2001": alice_jid})
    await leave_voicemail(pbx, f"2001@{VM_CONTEXT}", '"Dave" <5550122>')
    await eventually(lambda: inbox_files(pbx, "2001"), 60, "the voicemail file")
    await pbx.wait_channels_gone("Local/leave@agx-vm-*", 30)
    async with running_harness(config) as svc:
        msg = await alice.next_message(60, sender=service[0])
        assert "New voicemail from Dave <5550122>" in msg.body
        assert "1 new, 0 old" in msg.body
    async with running_harness(config) as svc:
        bridge = svc.services.ami
        await eventually(lambda: bridge.counters.resyncs >= 1, 30, "a finished resync")
        # the outbox keeps order: a marker sent after the resync arrives after anything it sent
        await svc.pool.send("asterisk", parse_jid(alice_jid), "marker")
        assert (await alice.next_message(30, sender=service[0])).body == "marker"
    assert bridge.counters.voicemail_notified == 0


async def hint_state(lab, ext: str) -> tuple[str, str, str]:
    """(ExtensionState StatusText, PresenceState State, its Message) as AMI reports them."""
    ext_state = await lab.ami_action("ExtensionState", Exten=ext, Context=HINT_CONTEXT)
    presence = await lab.ami_action("PresenceState", Provider=f"CustomPresence:{ext}")
    # the response carries two Message headers ("Presence State", then the state's message)
    return ext_state.get("StatusText", ""), presence.get("State", ""), presence.get("Message", "").split("\n")[-1]


async def wait_hint(lab, ext: str, status: str, presence: str, timeout: float = 30.0) -> tuple[str, str, str]:
    seen: list[tuple[str, str, str]] = []

    async def matches() -> bool:
        seen.append(await hint_state(lab, ext))
        return seen[-1][:2] == (status, presence)

    try:
        await eventually(matches, timeout, f"hint {ext} to read {status}/{presence}")
    except AssertionError:
        raise AssertionError(f"hint {ext} never read {status}/{presence}; last {seen[-1:]}") from None
    return seen[-1]


async def test_chat_presence_drives_the_hint_and_survives_an_asterisk_restart(
    pbx, prosody, xmpp_accounts, xmpp_client, tmp_path
):
    """dnd makes hint 2001 Busy with presence dnd (a comma in the status survives), available
    makes it Idle; after an Asterisk restart the service re-applies the state."""
    service = xmpp_accounts("asterisk")
    alice_jid, alice_pw = xmpp_accounts("alice")
    alice = await xmpp_client(alice_jid, alice_pw)
    config = office_config(prosody, pbx, tmp_path, service, {"2001": alice_jid}, presence_to_hints=True)
    async with running_harness(config) as svc:
        await eventually(lambda: svc.services.ami.link.connected, 30, "the AMI login")
        alice.subscribe(service[0])
        await eventually(lambda: alice_jid in svc.services.presence.contacts("asterisk"), 30, "the subscription")
        alice.send_presence(show="dnd", status="In a meeting, back at 3")
        _, _, message = await wait_hint(pbx, "2001", "Busy", "dnd")
        assert message == "In a meeting, back at 3"
        shown = [line for line in (await pbx.arx("core show hint 2001")).splitlines() if HINT_CONTEXT in line]
        assert shown and "Busy" in shown[0] and "dnd" in shown[0], shown
        alice.send_presence()
        await wait_hint(pbx, "2001", "Idle", "available")
        alice.send_presence(show="dnd", status="focus")
        await wait_hint(pbx, "2001", "Busy", "dnd")

        connects = svc.services.ami.link.connects
        # Asterisk keeps Custom: states in astdb across a restart, so overwrite them behind the
        # service's back first: only the service's resync can bring dnd back.
        await pbx.ami_action("Setvar", Variable="DEVICE_STATE(Custom:2001)", Value="NOT_INUSE")
        await pbx.ami_action("Setvar", Variable="PRESENCE_STATE(CustomPresence:2001)", Value="available")
        await wait_hint(pbx, "2001", "Idle", "available")
        await asyncio.to_thread(pbx.restart)
        await eventually(lambda: svc.services.ami.link.connects > connects, 90, "the AMI reconnect")
        await wait_hint(pbx, "2001", "Busy", "dnd", timeout=60)


async def test_click_to_call_from_chat(pbx, prosody, xmpp_accounts, xmpp_client, tmp_path):
    """'call N' rings the user's device then dials N in originate_context, with chat replies
    for answered, busy, no answer and a device Asterisk cannot call; 'call <jid>' dials that
    user's extension; strangers and junk get a clear answer."""
    service = xmpp_accounts("asterisk")
    users = {ext: xmpp_accounts(f"u{ext}") for ext in ("2001", "2002", "2003", "2004")}
    stranger_jid, stranger_pw = xmpp_accounts("stranger")
    config = office_config(prosody, pbx, tmp_path, service, {e: j for e, (j, _p) in users.items()})
    async with running_harness(config) as svc:
        await eventually(lambda: svc.services.ami.link.connected, 30, "the AMI login")
        alice = await xmpp_client(*users["2001"])

        async def ask(client, text: str) -> str:
            client.send_message(service[0], text)
            return (await client.next_message(60, sender=service[0])).body

        assert (await ask(alice, "call 555-1234")).startswith("Calling your phone")
        dialled = await pbx.wait_user_event("AgxDialled", 60)
        assert (dialled["NUMBER"], dialled["CALLER"]) == ("5551234", "2001")
        assert (await alice.next_message(60, sender=service[0])).body.startswith("Connected")

        assert (await ask(alice, f"call {users['2002'][0]}")).startswith("Calling your phone")
        assert (await pbx.wait_user_event("AgxDialled", 60))["NUMBER"] == "2002"
        await alice.next_message(60, sender=service[0])

        busy = await xmpp_client(*users["2003"])
        assert (await ask(busy, "call 100")).startswith("Calling your phone")
        assert (await busy.next_message(60, sender=service[0])).body.startswith("Busy")

        silent = await xmpp_client(*users["2004"])
        assert (await ask(silent, "call 100")).startswith("Calling your phone")
        assert "did not answer" in (await silent.next_message(90, sender=service[0])).body

        # a device Asterisk cannot call: the Originate is queued, then fails
        await svc.services.storage.directory_put(
            make_directory_entry("2004", users["2004"][0], device="PJSIP/agx-nowhere"), replace=True)
        assert (await ask(silent, "call 100")).startswith("Calling your phone")
        assert "could not be called" in (await silent.next_message(60, sender=service[0])).body

        assert "not a number" in await ask(alice, "call 12;Hangup")
        assert "call <number>" in await ask(alice, "help")
        stranger = await xmpp_client(stranger_jid, stranger_pw)
        assert "only users in the PBX directory" in await ask(stranger, "call 5551234")
        assert svc.services.ami.counters.calls_refused == 1


async def test_shipped_click_to_call_context_dials_as_the_user(
    pbx, prosody, xmpp_accounts, xmpp_client, tmp_path
):
    """With originate_context = "agi-xmpp-click-to-call" (dialplan/agi-xmpp-click-to-call.conf
    as shipped), 'call 2002' rings the user's phone, then the shipped context sets the caller ID
    to the user's extension and dials PJSIP/2002, as its comment says."""
    service = xmpp_accounts("asterisk")
    alice_jid, alice_pw = xmpp_accounts("u2001")
    config = office_config(prosody, pbx, tmp_path, service, {"2001": alice_jid},
                           originate_context="agi-xmpp-click-to-call")
    async with running_harness(config) as svc:
        await eventually(lambda: svc.services.ami.link.connected, 30, "the AMI login")
        alice = await xmpp_client(alice_jid, alice_pw)
        mark = pbx.mark()
        alice.send_message(service[0], "call 2002")
        assert (await alice.next_message(60, sender=service[0])).body.startswith("Calling your phone")
        shipped = {"Context": "agi-xmpp-click-to-call", "Extension": "2002"}
        caller_id = await pbx.wait_event("Newexten", 60, since=mark, Application="Set", **shipped)
        assert caller_id["AppData"] == "CALLERID(num)=2001"
        dial = await pbx.wait_event("Newexten", 60, since=mark, Application="Dial", **shipped)
        assert dial["AppData"] == "PJSIP/2002,30"


async def queue_member(lab, interface: str) -> dict[str, str]:
    """The QueueMember event of ``interface`` in agx-support (from QueueStatus)."""
    mark = lab.mark()
    await lab.ami_action("QueueStatus", Queue="agx-support", ActionID=f"qs-{secrets.token_hex(4)}")
    return await lab.wait_event("QueueMember", 30, since=mark, StateInterface=interface)


async def test_queue_member_is_paused_while_dnd_and_again_after_an_asterisk_restart(
    pbx, prosody, xmpp_accounts, xmpp_client, tmp_path
):
    """dnd pauses 2001 in its queue with reason 'chat: dnd', available unpauses it; a pause the
    agent made (2002, 'lunch') is left alone; after an Asterisk restart the pause is applied
    again."""
    service = xmpp_accounts("asterisk")
    alice_jid, alice_pw = xmpp_accounts("alice")
    alice = await xmpp_client(alice_jid, alice_pw)
    interface = "Local/2001@agx-phones"
    bob_jid, _ = xmpp_accounts("bob")
    await pbx.ami_action("QueuePause", Interface="Local/2002@agx-phones", Paused="true", Reason="lunch")
    config = office_config(prosody, pbx, tmp_path, service, {"2001": alice_jid, "2002": bob_jid},
                           queue_pause=True)
    async with running_harness(config) as svc:
        await eventually(lambda: svc.services.ami.link.connected, 30, "the AMI login")
        alice.subscribe(service[0])
        await eventually(lambda: alice_jid in svc.services.presence.contacts("asterisk"), 30, "the subscription")

        async def paused(expected: str) -> None:
            async def check() -> bool:
                member = await queue_member(pbx, interface)
                return member.get("Paused") == expected
            await eventually(check, 30, f"Paused: {expected}")

        alice.send_presence(show="dnd")
        await paused("1")
        assert (await queue_member(pbx, interface)).get("PausedReason") == "chat: dnd"
        alice.send_presence()
        await paused("0")
        alice.send_presence(show="dnd")
        await paused("1")
        bob = await queue_member(pbx, "Local/2002@agx-phones")
        assert (bob.get("Paused"), bob.get("PausedReason")) == ("1", "lunch")

        bridge = svc.services.ami
        connects, pauses = bridge.link.connects, bridge.counters.queue_pauses
        await asyncio.to_thread(pbx.restart)
        await eventually(lambda: bridge.link.connects > connects, 90, "the AMI reconnect")
        await eventually(lambda: bridge.counters.queue_pauses > pauses, 30, "the pause re-applied")
        await paused("1")


async def test_voicemail_recording_is_uploaded_and_linked_with_oob(pbx, prosody, xmpp_accounts, xmpp_client, tmp_path):
    """With voicemail_upload, the recording goes to the server's XEP-0363 service; its URL
    arrives as a message of its own with an XEP-0066 element, and fetching it gives the
    spool's bytes back exactly."""
    import aiohttp

    service = xmpp_accounts("asterisk")
    alice_jid, alice_pw = xmpp_accounts("alice")
    alice = await xmpp_client(alice_jid, alice_pw)
    oob_urls: list[str] = []
    alice.xmpp.add_event_handler(
        "message", lambda msg: oob_urls.extend(e.text for e in msg.xml.iter("{jabber:x:oob}url"))
    )
    config = office_config(prosody, pbx, tmp_path, service, {"2001": alice_jid}, voicemail_upload=True)
    async with running_harness(config) as svc:
        await eventually(lambda: svc.services.ami.link.connected, 30, "the AMI login")
        await leave_voicemail(pbx, f"2001@{VM_CONTEXT}", '"Erin" <5550133>')
        text = await alice.next_message(60, sender=service[0])
        assert "New voicemail from Erin <5550133>" in text.body
        link = await alice.next_message(60, sender=service[0])
    assert link.body.startswith("http://") and " " not in link.body
    assert oob_urls == [link.body]
    (recording,) = sorted((pbx.spool / VM_CONTEXT / "2001" / "INBOX").glob("msg*.wav"))
    async with aiohttp.ClientSession() as http:
        async with http.get(link.body) as response:
            assert response.status == 200
            assert await response.read() == recording.read_bytes()


async def test_delete_yes_mailbox_is_notified_from_the_event(pbx, prosody, xmpp_accounts, xmpp_client, tmp_path):
    """voicemail.conf delete=yes removes the files before the event: the chat carries the
    caller from the event, once."""
    service = xmpp_accounts("asterisk")
    eve_jid, eve_pw = xmpp_accounts("eve")
    eve = await xmpp_client(eve_jid, eve_pw)
    config = office_config(prosody, pbx, tmp_path, service, {"2005": eve_jid}, voicemail_delete=True)
    async with running_harness(config) as svc:
        await eventually(lambda: svc.services.ami.link.connected, 30, "the AMI login")
        await leave_voicemail(pbx, f"2005@{VM_CONTEXT}", '"Frank" <5550144>')
        msg = await eve.next_message(60, sender=service[0])
        assert "New voicemail from Frank <5550144>" in msg.body and "not kept" in msg.body
        await eve.no_message(3, sender=service[0])
    assert inbox_files(pbx, "2005") == []


async def test_recording_over_the_upload_limit_falls_back_to_text_only(pbx, xmpp_client, tmp_path):
    """The upload service's max-file-size is honoured: a bigger recording is not uploaded and
    the owner gets the text notification alone."""
    from tools.local_prosody import LocalProsody

    server = LocalProsody(tmp_path / "small-uploads", extra_config="http_file_share_size_limit = 64")
    server.start()
    try:
        service = (server.register("asterisk", "pw-service"), "pw-service")
        alice_jid = server.register("alice", "pw-alice")
        alice = await xmpp_client(alice_jid, "pw-alice", server=server)
        config = office_config(server, pbx, tmp_path, service, {"2001": alice_jid}, voicemail_upload=True)
        async with running_harness(config) as svc:
            await eventually(lambda: svc.services.ami.link.connected, 30, "the AMI login")
            await leave_voicemail(pbx, f"2001@{VM_CONTEXT}", '"Gina" <5550155>')
            text = await alice.next_message(60, sender=service[0])
            assert "New voicemail from Gina <5550155>" in text.body
            await eventually(lambda: svc.services.ami.counters.voicemail_failed == 1, 30, "the refused upload")
            await alice.no_message(2, sender=service[0])
    finally:
        server.stop()


async def test_voicemail_left_while_xmpp_is_down_arrives_when_it_returns(pbx, private_prosody, xmpp_client, tmp_path):
    """The notification is an outbox message: queued while the XMPP server is dead, delivered
    once it is back."""
    server = private_prosody
    service = (server.register("asterisk", "pw-service"), "pw-service")
    alice_jid = server.register("alice", "pw-alice")
    config = office_config(server, pbx, tmp_path, service, {"2001": alice_jid})
    config = dataclasses.replace(config, general=dataclasses.replace(config.general, reconnect_max_delay=2))
    async with running_harness(config) as svc:
        bridge = svc.services.ami
        await eventually(lambda: bridge.link.connected, 30, "the AMI login")
        server.kill()
        await eventually(lambda: not svc.pool.all_online(), 30, "the XMPP link to drop")
        await leave_voicemail(pbx, f"2001@{VM_CONTEXT}", '"Hank" <5550166>')
        await eventually(lambda: bridge.counters.voicemail_notified == 1, 60, "the queued notification")
        assert svc.pool.counters.queued >= 1
        server.start()
        await svc.wait_online(60)
        alice = await xmpp_client(alice_jid, "pw-alice", server=server)
        msg = await alice.next_message(60, sender=service[0])
        assert "New voicemail from Hank <5550166>" in msg.body


async def test_cli_shows_the_real_link_and_checks_the_real_spool(pbx, prosody, xmpp_accounts, tmp_path):
    """`agi-xmpp show connections` against a real `serve` logged in to the lab: Connected, one
    login and its resync; `check-config` of that file, with the lab's spool and its voicemail.conf
    beside it as in /etc/asterisk: no warning for a mailbox with no message yet, one for the
    delete=yes mailbox while voicemail_delete is off."""
    import re
    import subprocess

    from service_process import SERVICE_BIN, ServiceProcess

    jid, password = xmpp_accounts("asterisk")[:2]
    alice = xmpp_accounts("alice")[0]
    service = ServiceProcess(tmp_path / "svc", prosody, jid, password)
    with service.config_path.open("a") as conf:
        conf.write(f"[ami]\nhost = {pbx.ami_host}\nport = {pbx.ami_port}\nusername = agixmpp\n"
                   f"secret = {pbx.ami_secret_for_service}\nvoicemail_spool = {pbx.spool}\n"
                   f"originate_context = agx-dial\n[directory]\n"
                   f"2001 = {alice}, device=Local/2001@agx-phones, mailbox=2001@{VM_CONTEXT}\n")
    vm_conf = service.config_path.with_name("voicemail.conf")
    shutil.copyfile(pbx.root / "etc/asterisk/voicemail.conf", vm_conf)

    def agi_xmpp(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SERVICE_BIN), "-c", str(service.config_path), *argv],
                              capture_output=True, text=True, timeout=60)

    await service.start()  # /health 200: the account online and the AMI link logged in
    try:
        async def resynced() -> bool:
            shown = await asyncio.to_thread(agi_xmpp, "show", "connections")
            return "resyncs: 1" in shown.stdout
        await eventually(resynced, 60, "the first resync in show connections")
        shown = await asyncio.to_thread(agi_xmpp, "show", "connections")
    finally:
        await service.close()
    lines = shown.stdout.splitlines()
    assert lines[1].startswith(f"       [asterisk] {jid}") and lines[1].endswith("- Connected")
    assert lines[4] == "Asterisk Manager (AMI) link:"
    assert re.fullmatch(rf"       \[ami\] {pbx.ami_host}:{pbx.ami_port} +- Connected \(AMI \d+\.\d+\.\d+\)", lines[5])
    assert lines[6:] == ["             connects: 1, resyncs: 1"]
    checked = agi_xmpp("check-config")
    assert (checked.returncode, checked.stderr) == (0, ""), checked
    assert checked.stdout == f"{service.config_path}: OK, 1 account(s), 1 directory entr(y/ies)\n"
    with service.config_path.open("a") as conf:
        conf.write(f"2005 = {alice}, mailbox=2005@{VM_CONTEXT}\n")
    checked = agi_xmpp("check-config")
    assert checked.returncode == 0
    assert checked.stdout.splitlines()[0].endswith(
        f"directory entry '2005': mailbox=2005@{VM_CONTEXT}: {vm_conf} deletes its messages (delete=yes) "
        "before the event: set voicemail_delete = yes in [ami], or its voicemail is not notified")
