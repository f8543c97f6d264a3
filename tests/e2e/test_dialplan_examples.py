"""Every context of the shipped ``dialplan/*.conf`` examples, run as shipped by a real Asterisk 22.

The files are loaded as they ship, with only what a site changes replaced: the FastAGI port
(the service runs in-process on a free one) and the example JIDs (``bob@example.com``,
``ops@conference.example.com``...), which become accounts and a room on the test Prosody.
Subroutines (contexts ending in ``Return()``) are called the way their comments say, through
``Gosub()`` from a small test context that reports their return with a ``UserEvent``; the other
contexts are originated as ``Local/s@CONTEXT``. What the dialplan saw is read from AMI
(``VarSet`` of the script's variables, ``Newexten`` of the branch taken) and what the chat user
received from a test client, so each test checks that the context does what its comment says.

``test_every_shipped_context_is_exercised`` keeps it that way: a context added to
``dialplan/`` without an end-to-end test (its name quoted in a ``tests/e2e`` test) fails.
The README's "Wiring Asterisk" snippet is checked here too, as written in README.md.
"""

from __future__ import annotations

import re
import secrets
import socket
from pathlib import Path

import pytest
from lab import AsteriskLab
from readme_blocks import fenced_blocks
from service_harness import eventually, running_harness, service_config

from agi_xmpp.config import make_directory_entry
from agi_xmpp.jid import parse_jid

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "dialplan"
E2E_DIR = Path(__file__).resolve().parent
IO_TIMEOUT = 30.0  # generous: the machine is shared
CALL_TIMEOUT = 60  # seconds a call may last (the dialplan side never answers for most)
CALLER = '"Alice Smith" <5551234>'

TEST_CONTEXTS = r"""
[e2e-examples]
; Gosub(SUB,SUBEXTEN,1(SUBARG)), as the examples' comments say to call a subroutine.
exten => gosub,1,Gosub(${SUB},${SUBEXTEN},1(${SUBARG}))
 same => n,UserEvent(ExampleReturned,TOKEN: ${TOKEN},SUB: ${SUB})
 same => n,Hangup()
"""


def shipped_dialplan(port: int, names: dict[str, str]) -> str:
    """Every shipped example, pointed at this test's service and accounts."""
    parts = [TEST_CONTEXTS]
    for path in sorted(SHIPPED.glob("*.conf")):
        text = path.read_text().replace("agi://127.0.0.1/", f"agi://127.0.0.1:{port}/")
        for example, real in names.items():
            text = text.replace(example, real)
        parts.append(text)
    return "\n".join(parts)


def shipped_contexts() -> list[str]:
    return [name for path in sorted(SHIPPED.glob("*.conf"))
            for name in re.findall(r"^\[([^\]]+)\]", path.read_text(), re.MULTILINE)]


def test_every_shipped_context_is_exercised():
    """Each context in dialplan/*.conf is named (quoted) by an end-to-end test of tests/e2e."""
    sources = "".join(p.read_text() for p in E2E_DIR.glob("test_*.py"))
    missing = [ctx for ctx in shipped_contexts() if f'"{ctx}"' not in sources]
    assert missing == [], f"dialplan contexts without an end-to-end test: {missing}"


def test_no_example_suggests_originating_a_subroutine():
    """The 'try it' lines of dialplan/, README and docs originate only contexts without Return()
    (originating a subroutine ends in "Return without Gosub")."""
    bodies: dict[str, str] = {}
    for path in sorted(SHIPPED.glob("*.conf")):
        for name, body in re.findall(r"^\[([^\]]+)\]\n(.*?)(?=^\[|\Z)", path.read_text(), re.MULTILINE | re.DOTALL):
            bodies[name] = body
    texts = [p.read_text() for p in [*SHIPPED.glob("*.conf"), ROOT / "README.md", *(ROOT / "docs").glob("*.md")]]
    originated = {ctx for text in texts for ctx in re.findall(r"originate Local/[^@\s]+@([\w-]+)", text)}
    subroutines = {ctx for ctx, body in bodies.items() if "Return()" in body}
    assert originated & set(bodies), "the examples should show how to try one"
    assert originated & subroutines == set()


# -- the office: a service, chat users, a room, the dialplan -----------------------------------


@pytest.fixture(scope="module")
def support_queue(asterisk_lab: AsteriskLab):
    """A queue named 'support', which the examples' texts count with QUEUE_WAITING_COUNT()."""
    existed = (asterisk_lab.etc_dir / "queues.conf").exists()
    path = asterisk_lab.write_config("queues.conf", "[general]\n[support]\nstrategy = ringall\n")
    # app_queue declined to run at boot (no queues.conf then): load it again now that one exists
    asterisk_lab.rx("module unload app_queue.so")
    asterisk_lab.rx("module load app_queue.so")
    assert "support has 0 calls" in asterisk_lab.rx("queue show support")
    yield "support"
    if not existed:
        path.unlink(missing_ok=True)  # the next lab boots as before


@pytest.fixture
async def office(lab, prosody, xmpp_accounts, xmpp_client, tmp_path, support_queue):
    """The service; bob, reception and the users of extensions 201-204 (alice is 204),
    befriended with it; a fresh room; the shipped dialplan loaded with their names."""
    service_jid, service_pw = xmpp_accounts("asterisk")
    people = {name: xmpp_accounts(name) for name in ("bob", "reception", "u201", "u202", "u203", "alice")}
    extensions = {"201": "u201", "202": "u202", "203": "u203", "204": "alice"}
    directory = tuple(make_directory_entry(ext, people[name][0]) for ext, name in extensions.items())
    config = service_config(prosody, service_jid, service_pw, tmp_path, directory=directory)
    async with running_harness(config) as svc:
        svc.jid = service_jid
        svc.people = {name: jid for name, (jid, _pw) in people.items()}
        svc.passwords = {name: pw for name, (_jid, pw) in people.items()}
        svc.clients = {}
        for name, (jid, pw) in people.items():
            client = await xmpp_client(jid, pw)
            if name != "reception":
                client.subscribe(service_jid)
                await eventually(lambda jid=jid: jid in svc.services.presence.contacts("asterisk"),
                                 IO_TIMEOUT, f"{name} in the service's roster")
            svc.clients[name] = client
        svc.room = f"ops-{secrets.token_hex(4)}@{prosody.muc_domain}"
        lab.set_dialplan(shipped_dialplan(svc.port, {
            "bob@example.com": svc.people["bob"],
            "alice@example.com": svc.people["alice"],
            "reception@example.com": svc.people["reception"],
            "ops@conference.example.com": svc.room,
        }))
        try:
            yield svc
        finally:
            # Hang up while the service still serves this loop (the lab fixture's blocking
            # hangup_all would freeze a call in the middle of an AGI command).
            await lab.arx("channel request hangup all")
            await lab.wait_channels_gone("*", IO_TIMEOUT)


async def set_presence(svc, name: str, show: str) -> None:
    """Send ``show`` from ``name`` until the service reads it (re-sent while waiting: right after
    a subscription the client's initial presence may arrive after ours)."""
    code = {"available": 1, "chat": 2, "away": 3, "xa": 4, "dnd": 5}[show]
    presence = {} if show == "available" else {"show": show}
    target = parse_jid(svc.people[name])

    def settled() -> bool:
        if svc.services.presence.status("asterisk", target).code == code:
            return True
        svc.clients[name].send_presence(**presence)
        return False

    await eventually(settled, IO_TIMEOUT, f"{name} to read {show}")


def gosub(lab: AsteriskLab, sub: str, exten: str = "s", arg: str = ""):
    """Call subroutine ``sub`` with Gosub(sub,exten,1(arg)); returns (call, token)."""
    token = secrets.token_hex(4)
    call = lab.originate("gosub", "e2e-examples", timeout=CALL_TIMEOUT, callerid=CALLER,
                         variables={"SUB": sub, "SUBEXTEN": exten, "SUBARG": arg, "TOKEN": token})
    return call, token


async def returned(lab: AsteriskLab, call, token: str) -> None:
    """The subroutine came back with Return() (no "Return without Gosub")."""
    await lab.wait_user_event("ExampleReturned", IO_TIMEOUT, TOKEN=token, Uniqueid=call.uniqueid)


async def variable(lab: AsteriskLab, call, name: str) -> str:
    event = await lab.wait_event("VarSet", IO_TIMEOUT, Uniqueid=call.uniqueid, Variable=name)
    return event["Value"]


async def application(lab: AsteriskLab, call, app: str) -> str:
    """The data of the next ``app`` the call's dialplan ran (its branch)."""
    event = await lab.wait_event("Newexten", IO_TIMEOUT, Uniqueid=call.uniqueid, Application=app)
    return event["AppData"]


def ran(lab: AsteriskLab, call, app: str) -> bool:
    return any(e.get("Event") == "Newexten" and e.get("Uniqueid") == call.uniqueid
               and e.get("Application") == app for e in lab.events())


def originate(lab: AsteriskLab, context: str):
    return lab.originate("s", context, timeout=CALL_TIMEOUT, callerid=CALLER)


async def occupant(client, room: str, nick: str = "member"):
    """``client`` in ``room``, recording the room's presences (slixmpp reports them apart)."""
    client.xmpp.add_event_handler("groupchat_presence", client._on_presence)
    await client.join_room(room, nick)
    return client


# -- dialplan/agi-xmpp-core.conf -----------------------------------------------------------------


async def test_notify_tells_bob_who_calls_on_which_line(office, lab):
    """[agi-xmpp-notify] via Gosub(...,s,1(201)): Bob reads caller and line; SUCCESS; it returns."""
    call, token = gosub(lab, "agi-xmpp-notify", arg="201")
    assert await variable(lab, call, "JABBER_SEND_STATUS") == "SUCCESS"
    await returned(lab, call, token)
    message = await office.clients["bob"].next_message(IO_TIMEOUT, sender=office.jid)
    assert message.body == "Call from Alice Smith <5551234>, on line 201"


async def test_notify_long_delivers_real_newlines(office, lab):
    """[agi-xmpp-notify-long]: Bob gets three lines (real newlines, not a literal backslash-n)."""
    call, token = gosub(lab, "agi-xmpp-notify-long")
    assert await variable(lab, call, "JABBER_SEND_STATUS") == "SUCCESS"
    await returned(lab, call, token)
    body = (await office.clients["bob"].next_message(IO_TIMEOUT, sender=office.jid)).body
    assert re.fullmatch(r'Caller: "Alice Smith" <5551234>\nQueue: support\nWaiting since \d\d:\d\d:\d\d', body), body


async def test_ring_if_online_rings_when_available_and_goes_to_voicemail_on_dnd(office, lab):
    """[agi-xmpp-ring-if-online]: available -> Dial(PJSIP/100); dnd -> VoiceMail, no Dial."""
    await set_presence(office, "bob", "available")
    call = originate(lab, "agi-xmpp-ring-if-online")
    assert await variable(lab, call, "JABBER_STATUS") == "1"
    assert await application(lab, call, "Dial") == "PJSIP/100,20"

    await set_presence(office, "bob", "dnd")
    call = originate(lab, "agi-xmpp-ring-if-online")
    assert await variable(lab, call, "JABBER_STATUS") == "5"
    assert (await application(lab, call, "VoiceMail")).startswith("100@default")
    assert not ran(lab, call, "Dial")


async def test_status_into_variable_reads_the_phone_resource(office, lab, xmpp_client):
    """[agi-xmpp-status-into-variable]: BOBPHONE holds the code of bob's 'phone' resource."""
    bob_phone = await xmpp_client(office.people["bob"], office.passwords["bob"],
                                  resource="phone", show="away")
    await eventually(lambda: office.services.presence.status("asterisk", parse_jid(bob_phone.jid)).code == 3,
                     IO_TIMEOUT, "bob/phone to read away")
    call, token = gosub(lab, "agi-xmpp-status-into-variable")
    assert await variable(lab, call, "BOBPHONE") == "3"
    assert await variable(lab, call, "JABBER_STATUS_SHOW") == "away"
    await returned(lab, call, token)


async def test_ask_dials_when_bob_answers_take(office, lab):
    """[agi-xmpp-ask]: Bob is asked by chat; his 'Take' makes the call Dial(PJSIP/100)."""
    call = originate(lab, "agi-xmpp-ask")
    bob = office.clients["bob"]
    question = await bob.next_message(IO_TIMEOUT, sender=office.jid)
    assert question.body == "5551234 is on hold for you. Reply 'take' or 'vm'."
    bob.send_message(office.jid, "Take")
    assert await variable(lab, call, "JABBER_RECEIVE_STATUS") == "SUCCESS"
    assert await application(lab, call, "Dial") == "PJSIP/100,30"


# -- dialplan/agi-xmpp-groupchat.conf ------------------------------------------------------------


async def test_join_ops_room_enters_as_pbx(office, lab):
    """[agi-xmpp-join-ops-room]: SUCCESS once the room confirmed; the room sees 'PBX' arrive."""
    member = await occupant(office.clients["u201"], office.room)
    call, token = gosub(lab, "agi-xmpp-join-ops-room")
    assert await variable(lab, call, "JABBER_JOIN_STATUS") == "SUCCESS"
    await returned(lab, call, token)
    await member.next_presence(IO_TIMEOUT, sender=f"{office.room}/PBX", type="available")


async def test_ops_room_tells_the_room_as_pbx(office, lab):
    """[agi-xmpp-ops-room]: the room reads who calls and the queue count, from nickname PBX."""
    member = await occupant(office.clients["u201"], office.room)
    call, token = gosub(lab, "agi-xmpp-ops-room")
    assert await variable(lab, call, "JABBER_SEND_GROUP_STATUS") == "SUCCESS"
    await returned(lab, call, token)
    message = await member.next_message(IO_TIMEOUT, sender=f"{office.room}/PBX")
    assert message.body == "5551234 is calling the support line, queue 0"


async def test_ops_room_long_delivers_real_newlines(office, lab):
    """[agi-xmpp-ops-room-long]: the room gets three lines (real newlines)."""
    member = await occupant(office.clients["u201"], office.room)
    call, token = gosub(lab, "agi-xmpp-ops-room-long")
    assert await variable(lab, call, "JABBER_SEND_GROUP_STATUS") == "SUCCESS"
    await returned(lab, call, token)
    body = (await member.next_message(IO_TIMEOUT, sender=office.room, mtype="groupchat")).body
    assert re.fullmatch(r'Queue support\nCaller: "Alice Smith" <5551234>\nSince: \d\d:\d\d:\d\d', body), body


async def test_ask_the_room_dials_whoever_answers(office, lab):
    """[agi-xmpp-ask-the-room]: the room is asked; a member's '201' makes it Dial(PJSIP/201)."""
    member = await occupant(office.clients["u201"], office.room)
    call = originate(lab, "agi-xmpp-ask-the-room")
    question = await member.next_message(IO_TIMEOUT, sender=office.room, mtype="groupchat")
    assert question.body == "5551234 is waiting on the support line: who takes it? Reply with your extension"
    member.send_group_message(office.room, "201")
    assert await variable(lab, call, "JABBER_RECEIVE_STATUS") == "SUCCESS"
    assert await variable(lab, call, "JABBER_RECEIVE_FROM") == f"{office.room}/member"
    assert await application(lab, call, "Dial") == "PJSIP/201,30"


async def test_leave_ops_room_leaves(office, lab):
    """[agi-xmpp-leave-ops-room]: after a join, SUCCESS and the room sees PBX go."""
    member = await occupant(office.clients["u201"], office.room)
    call, token = gosub(lab, "agi-xmpp-join-ops-room")
    await returned(lab, call, token)
    await member.next_presence(IO_TIMEOUT, sender=f"{office.room}/PBX", type="available")
    call, token = gosub(lab, "agi-xmpp-leave-ops-room")
    assert await variable(lab, call, "JABBER_LEAVE_STATUS") == "SUCCESS"
    await returned(lab, call, token)
    await member.next_presence(IO_TIMEOUT, sender=f"{office.room}/PBX", type="unavailable")


# -- dialplan/agi-xmpp-notify.conf ---------------------------------------------------------------


async def test_screen_pop_reaches_the_called_extension(office, lab):
    """[agi-xmpp-screen-pop] via Gosub(agi-xmpp-screen-pop,201,1): 201's user reads the pop."""
    call, token = gosub(lab, "agi-xmpp-screen-pop", exten="201")
    assert await variable(lab, call, "CALL_NOTIFY_STATUS") == "SUCCESS"
    await returned(lab, call, token)
    message = await office.clients["u201"].next_message(IO_TIMEOUT, sender=office.jid)
    assert message.body == "Incoming call from Alice Smith 5551234 to 201"


async def test_screen_pop_queue_sends_its_own_text(office, lab):
    """[agi-xmpp-screen-pop-queue] via Gosub(...,s,1(202)): 202's user reads the queue line."""
    call, token = gosub(lab, "agi-xmpp-screen-pop-queue", arg="202")
    assert await variable(lab, call, "CALL_NOTIFY_STATUS") == "SUCCESS"
    await returned(lab, call, token)
    message = await office.clients["u202"].next_message(IO_TIMEOUT, sender=office.jid)
    assert message.body == "Queue support: Alice Smith (5551234), waiting 0"


async def test_screen_pop_details_delivers_real_newlines(office, lab):
    """[agi-xmpp-screen-pop-details] via Gosub(...,s,1(203)): three lines, no history."""
    call, token = gosub(lab, "agi-xmpp-screen-pop-details", arg="203")
    assert await variable(lab, call, "CALL_NOTIFY_STATUS") == "SUCCESS"
    await returned(lab, call, token)
    body = (await office.clients["u203"].next_message(IO_TIMEOUT, sender=office.jid)).body
    assert re.fullmatch(r'Call for 203\nFrom: "Alice Smith" <5551234>\nLine: Local/gosub@e2e-examples-\w+;2', body), body


async def test_screen_pop_reception_reaches_a_jid(office, lab):
    """[agi-xmpp-screen-pop-reception]: a JID with no directory entry gets the pop."""
    call, token = gosub(lab, "agi-xmpp-screen-pop-reception")
    assert await variable(lab, call, "CALL_NOTIFY_STATUS") == "SUCCESS"
    await returned(lab, call, token)
    message = await office.clients["reception"].next_message(IO_TIMEOUT, sender=office.jid)
    assert message.body == "Incoming call from Alice Smith 5551234"  # EXTEN is "s", no dialled number


# -- dialplan/agi-xmpp-ringgroup.conf ------------------------------------------------------------


async def test_ringgroup_dials_the_available_members(office, lab):
    """[agi-xmpp-ringgroup]: 201 available, 202 dnd, 203 chat -> Dial(PJSIP/201&PJSIP/203)."""
    for name, show in (("u201", "available"), ("u202", "dnd"), ("u203", "chat")):
        await set_presence(office, name, show)
    call = originate(lab, "agi-xmpp-ringgroup")
    assert await variable(lab, call, "PRESENCE_ROUTE_SKIPPED") == ""
    assert await application(lab, call, "Dial") == "PJSIP/201&PJSIP/203,25"


async def test_ringgroup_escalate_rings_available_then_not_dnd(office, lab):
    """[agi-xmpp-ringgroup-escalate]: alice (available) first, then everyone not on dnd."""
    for name, show in (("u201", "away"), ("u202", "dnd"), ("u203", "xa"), ("alice", "available")):
        await set_presence(office, name, show)
    call = originate(lab, "agi-xmpp-ringgroup-escalate")
    assert await application(lab, call, "Dial") == "PJSIP/204,15"
    assert await application(lab, call, "Dial") == "PJSIP/201&PJSIP/203,20"
    assert (await application(lab, call, "VoiceMail")).startswith("600@default")


# -- dialplan/agi-xmpp-chat-menu.conf (the main menu: tests/e2e/test_chat_menu_e2e.py) ----------


async def test_chat_menu_moh_takes_the_call_on_choice_1(office, lab):
    """[agi-xmpp-chat-menu-moh]: Bob's menu arrives while the caller hears music; '1' dials him."""
    call = originate(lab, "agi-xmpp-chat-menu-moh")
    bob = office.clients["bob"]
    menu = await bob.next_message(IO_TIMEOUT, sender=office.jid)
    assert menu.body.startswith("Support call from 5551234\n"), menu.body
    assert "1) take it" in menu.body and "2) send to the queue" in menu.body
    await lab.wait_event("MusicOnHoldStart", IO_TIMEOUT, Uniqueid=call.uniqueid)
    bob.send_message(office.jid, "1")
    assert await variable(lab, call, "CHAT_MENU_CHOICE") == "1"
    assert await application(lab, call, "Dial") == "PJSIP/100,30"


# -- README.md: the "Wiring Asterisk" snippet ----------------------------------------------------


def readme_snippet() -> str:
    """The dialplan lines of README.md's "Wiring Asterisk to it", exactly as written there."""
    (snippet,) = [body for _lang, body in fenced_blocks() if "exten =>" in body]
    return snippet


async def test_readme_snippet_is_safe_when_the_status_is_empty(lab, prosody, xmpp_accounts, tmp_path):
    """README's snippet, pasted: no expression warning when JABBER_STATUS is empty (service
    unreachable) or 7 (unknown contact); both go to voicemail."""
    snippet = readme_snippet()
    assert "agi://127.0.0.1/jabber_status" in snippet
    with socketless_port() as closed_port:
        lab.set_dialplan("[readme-snippet]\n" + snippet.replace("agi://127.0.0.1/", f"agi://127.0.0.1:{closed_port}/"))
        logged = len(lab.log_text())
        call = lab.originate("100", "readme-snippet", timeout=CALL_TIMEOUT)
        assert (await application(lab, call, "VoiceMail")).startswith("100@default")
        assert not ran(lab, call, "Dial")
    jid, password = xmpp_accounts("asterisk")
    async with running_harness(service_config(prosody, jid, password, tmp_path)) as svc:
        lab.set_dialplan("[readme-snippet]\n" + snippet.replace("agi://127.0.0.1/", f"agi://127.0.0.1:{svc.port}/"))
        call = lab.originate("100", "readme-snippet", timeout=CALL_TIMEOUT)
        assert await variable(lab, call, "JABBER_STATUS") == "7"
        assert (await application(lab, call, "VoiceMail")).startswith("100@default")
        await lab.arx("channel request hangup all")
        await lab.wait_channels_gone("*", IO_TIMEOUT)
    warnings = [line for line in lab.log_text()[logged:].splitlines() if "ast_expr" in line or "syntax error" in line]
    assert warnings == []


class socketless_port:
    """A loopback port that nothing listens on while the block runs (bound, never listening)."""

    def __enter__(self) -> int:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        return self._sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self._sock.close()
