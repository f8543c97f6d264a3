"""Hostile input from the XMPP side: text built to break a dialplan, huge bodies, invalid
sender JIDs, presence floods and senders imitating the JID a call waits for.

tests/integration/test_core_scripts.py already checks that a hostile inbound body is sanitised
and exact in its _B64 twin, and that a prefix or another resource does not match a waiting call;
these tests add the way out (jabber_send), hostile sender resources, sizes, floods and several
waiters at once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import socket
import statistics
import threading
import time
from pathlib import Path

import pytest
from fake_asterisk import agi_call, asterisk_parse_args
from service_harness import eventually
from service_process import ServiceProcess
from slixmpp.stanza import Message, Presence
from slixmpp.xmlstream import ET
from structlog.testing import capture_logs

from agi_xmpp.config import AccountConfig
from agi_xmpp.jid import Jid, parse_jid
from agi_xmpp.xmpp_session import XmppSession

pytestmark = pytest.mark.integration

ACCOUNT = "asterisk"
# What a chat body can hold that a dialplan could trip on: XML carries no C0 controls except
# TAB and LF (CR arrives as LF), so DEL, NEL and U+2028 are the "control-like" worst case.
HOSTILE = 'line 1\nline "2", \'3\'\t\\ back\\slash ${SHELL(rm -rf /)} $[1+1] \x7f\x85\u2028 ;EXEC Hangup'


def figure(name: str, **values: object) -> None:
    print(f"FIGURE {name} {json.dumps(values, sort_keys=True)}")


# -- text built to break a dialplan -------------------------------------------------------------


async def test_hostile_text_goes_out_exactly_and_is_archived_exactly(svc, xmpp_accounts, xmpp_client):
    """jabber_send?var= carries newlines, quotes, backslashes, ${...}, DEL, NEL and U+2028 to the
    recipient byte for byte, and the archive holds the same text."""
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    result = await svc.call("jabber_send?var=NOTE", ACCOUNT, bob_jid, channel_vars={"NOTE": HOSTILE})
    assert result.variables["JABBER_SEND_STATUS"] == "SUCCESS"
    assert (await bob.next_message(10, sender=svc.jid)).body == HOSTILE
    archived = await svc.services.storage.archive_recent(ACCOUNT, bob_jid, 1)
    assert [a.body for a in archived] == [HOSTILE]


async def test_hostile_sender_resource_reaches_the_dialplan_quoted(svc, xmpp_accounts, xmpp_client):
    """A sender whose resource holds quotes, a backslash and ${...} is matched exactly as a full
    JID argument, and JABBER_RECEIVE_FROM arrives intact through Asterisk's argument parser."""
    bob_jid, bob_pw = xmpp_accounts("bob")
    resource = 'desk "A" \\ ${EXEC(Hangup)} $[1]'
    bob = await xmpp_client(bob_jid, bob_pw, resource=resource)
    bob.send_message(svc.jid, HOSTILE)
    result = await svc.call("jabber_receive", ACCOUNT, f"{bob_jid}/{resource}", "10")
    assert result.variables["JABBER_RECEIVE_STATUS"] == "SUCCESS"
    assert result.variables["JABBER_RECEIVE_FROM"] == f"{bob_jid}/{resource}"
    assert base64.b64decode(result.variables["JABBER_RECEIVE_B64"]).decode() == HOSTILE
    assert all(len(words) == 4 for words in result.commands)  # no argument split or merged


# -- sizes --------------------------------------------------------------------------------------


async def test_100_kb_inbound_body_is_refused_whole_never_cut(svc, xmpp_accounts, xmpp_client):
    """A 100 KB chat cannot fit Asterisk's 8191-byte AGI line: jabber_receive says FAILURE with
    the reason (never a truncated value), the archive keeps the whole text, and the service
    keeps serving; a body that fits arrives exactly. (Bob is a roster contact: a stranger's
    100 KB would be neither buffered nor archived, see the sender quotas in inbox.py.)"""
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    bob.subscribe(svc.jid)
    await eventually(lambda: svc.services.presence.status(ACCOUNT, parse_jid(bob_jid)).code != 7,
                     what="bob in the service's roster")
    huge = ("0123456789abcdé" * 7000)[:100_000]
    bob.send_message(svc.jid, huge)
    result = await svc.call("jabber_receive", ACCOUNT, bob_jid, "10")
    assert result.variables["JABBER_RECEIVE_STATUS"] == "FAILURE"
    assert "8191" in result.variables["JABBER_RECEIVE_ERROR"]
    assert result.variables["JABBER_RECEIVE"] == result.variables["JABBER_RECEIVE_B64"] == ""
    await eventually(_archived(svc, bob_jid, huge), what="the whole body in the archive")
    # The _B64 twin is the limit: 4/3 of the text plus the command must fit in 8191 bytes.
    fits, too_big = "f" * 6000, "t" * 6200
    bob.send_message(svc.jid, fits)
    assert (await svc.call("jabber_receive", ACCOUNT, bob_jid, "10")).variables["JABBER_RECEIVE"] == fits
    bob.send_message(svc.jid, too_big)
    assert (await svc.call("jabber_receive", ACCOUNT, bob_jid, "10")).variables["JABBER_RECEIVE_STATUS"] == "FAILURE"


def _archived(svc, peer: str, body: str):
    async def check() -> bool:
        return any(a.body == body for a in await svc.services.storage.archive_recent(ACCOUNT, peer, 5))

    return check


async def test_60_kb_outbound_body_through_var_arrives_exactly(svc, xmpp_accounts, xmpp_client):
    """A 60 KB message read losslessly through var= (an 80 KB base64 reply line) is sent whole."""
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    text = ("line with ümlauts and \"quotes\"\n" * 2000)[:60_000]
    result = await svc.call("jabber_send?var=BIG", ACCOUNT, bob_jid, channel_vars={"BIG": text})
    assert result.variables["JABBER_SEND_STATUS"] == "SUCCESS"
    assert (await bob.next_message(10, sender=svc.jid)).body == text


# -- invalid sender JIDs (no server lets one through: the session's handlers directly) ----------


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: self.calls.append(name)


BAD_FROM = ["bad@@jid", "@localhost", "user@", "user@localhost/", "x" * 1100 + "@localhost",
            "us er@localhost", "user@local host", "user@[::1", "ü@localhost/\u2028"]


@pytest.mark.parametrize("sender", BAD_FROM, ids=lambda s: repr(s[:20]))
async def test_stanzas_from_invalid_jids_are_dropped_quietly(sender):
    """A message or presence whose from is not a valid JID reaches neither the inbox nor the
    presence cache, raises nothing into slixmpp, and is logged at info (no traceback)."""
    recorder = _Recorder()
    session = XmppSession(AccountConfig(name=ACCOUNT, username="asterisk@localhost", secret="x"), recorder)  # type: ignore[arg-type]
    client = session._build_client()
    session._client = client
    message = ET.fromstring('<message xmlns="jabber:client" type="chat" id="m1"><body>hi</body></message>')
    presence = ET.fromstring('<presence xmlns="jabber:client"><show>away</show></presence>')
    with capture_logs() as logs:
        for element, handler in ((message, session._on_message), (presence, session._on_presence)):
            element.set("from", sender)
            stanza = (Message if element.tag.endswith("message") else Presence)(client, xml=element)
            session._guarded(handler)(stanza)
    assert recorder.calls == []
    assert [e["event"] for e in logs] == ["xmpp_message_bad_from", "xmpp_presence_bad_from"]
    assert all(e["log_level"] == "info" for e in logs)


async def test_valid_from_still_reaches_the_listener():
    """The same path with a valid JID delivers the message, normalised (control case)."""
    recorder = _Recorder()
    session = XmppSession(AccountConfig(name=ACCOUNT, username="asterisk@localhost", secret="x"), recorder)  # type: ignore[arg-type]
    session._client = session._build_client()
    element = ET.fromstring('<message xmlns="jabber:client" type="chat" from="Bob@LocalHost/Desk"><body>hi</body></message>')
    received = []
    recorder.message_received = lambda account, msg: received.append(msg)  # type: ignore[method-assign]
    session._guarded(session._on_message)(Message(session._client, xml=element))
    assert [m.sender for m in received] == [Jid("bob", "localhost", "Desk")]


# -- senders imitating the one a call waits for --------------------------------------------------


async def test_spoofed_senders_never_reach_another_jids_waiter(svc, prosody, xmpp_accounts, xmpp_client):
    """Calls waiting on bob (bare) and on alice/phone (full) are not served by strangers outside
    the roster imitating them (bobx, bo, alice/Phone, alice/phone2, alice/phone/x): each waiter
    gets its own sender's message, and each imitation stays buffered for its exact JID."""
    tag = secrets.token_hex(3)
    password = secrets.token_urlsafe(10)
    bob_jid = prosody.register(f"bob{tag}", password)
    alice_jid = prosody.register(f"alice{tag}", password)
    bobx_jid = prosody.register(f"bob{tag}x", password)
    bo_jid = prosody.register(f"bob{tag}"[:-1], password)
    bob = await xmpp_client(bob_jid, password)
    alice_phone = await xmpp_client(alice_jid, password, resource="phone")
    impostors = {
        "bobx": (await xmpp_client(bobx_jid, password), bobx_jid),
        "bo": (await xmpp_client(bo_jid, password), bo_jid),
        "alice/Phone": (await xmpp_client(alice_jid, password, resource="Phone"), f"{alice_jid}/Phone"),
        "alice/phone2": (await xmpp_client(alice_jid, password, resource="phone2"), f"{alice_jid}/phone2"),
        "alice/phone/x": (await xmpp_client(alice_jid, password, resource="phone/x"), f"{alice_jid}/phone/x"),
    }
    inbox = svc.pool.inboxes[ACCOUNT]
    waiting_bob = asyncio.create_task(svc.call("jabber_receive", ACCOUNT, bob_jid, "20"))
    waiting_alice = asyncio.create_task(svc.call("jabber_receive", ACCOUNT, f"{alice_jid}/phone", "20"))
    await eventually(lambda: inbox.waiting == 2, what="both calls to wait")
    for name, (client, _) in impostors.items():
        client.send_message(svc.jid, f"I am {name}")
    await eventually(lambda: len(inbox) == len(impostors), what="every imitation to be buffered")
    assert not waiting_bob.done() and not waiting_alice.done()
    alice_phone.send_message(svc.jid, "the real alice")
    bob.send_message(svc.jid, "the real bob")
    assert (await waiting_bob).variables["JABBER_RECEIVE"] == "the real bob"
    assert (await waiting_alice).variables["JABBER_RECEIVE"] == "the real alice"
    for name, (_, exact) in impostors.items():
        result = await svc.call("jabber_receive", ACCOUNT, exact, "2")
        assert result.variables["JABBER_RECEIVE"] == f"I am {name}"
        assert result.variables["JABBER_RECEIVE_FROM"].lower().startswith(exact.split("/")[0])
    assert len(inbox) == 0


# -- presence floods -----------------------------------------------------------------------------


@pytest.mark.slow
async def test_presence_flood_leaves_jabber_status_answering(private_prosody, xmpp_client, tmp_path):
    """Four contacts offering 10,000 presence updates/s for 3 s: jabber_status keeps answering
    correctly throughout, and once the flood stops the cache shows each contact's last presence.

    The per-call deadline only catches a hang; the latencies are reported as a figure and
    measured properly by ``make bench``, since a busy machine makes any time bound flaky."""
    password = secrets.token_urlsafe(10)
    service_jid = private_prosody.register("asterisk", password)
    service = ServiceProcess(tmp_path / "service", private_prosody, service_jid, password)
    flooders = []
    try:
        await service.start()
        for n in range(4):
            jid = private_prosody.register(f"flood{n}", password)
            client = await xmpp_client(jid, password, server=private_prosody)
            client.subscribe(service_jid)
            flooders.append(client)

        async def status(jid: str) -> dict[str, str]:
            return (await agi_call(service.agi_port, "jabber_status", ACCOUNT, jid, timeout=HANG)).variables

        for client in flooders:
            await eventually(_status_is(status, client.bare_jid, "1"), 60, "the contact's presence")

        rate, seconds = 2500, 3.0  # per client
        shows = ("away", "xa", "chat")
        # Directed to the service: the contact's own resources get no echo (that would flood
        # this test process, not the service), and a stranger could send exactly this.
        updates = [f"<presence to='{service_jid}'><show>{shows[n % 3]}</show>"
                   f"<status>flood {n}</status></presence>" for n in range(int(rate * seconds))]
        sent = 0

        async def flood(client) -> None:
            """Keep up with ``rate`` updates/s: each turn writes what the clock says is due."""
            nonlocal sent
            loop = asyncio.get_running_loop()
            start = loop.time()
            n = 0
            while n < len(updates):
                due = min(len(updates), int((loop.time() - start) * rate) + 1)
                client.xmpp.send_raw("".join(updates[n:due]))
                sent += due - n
                n = due
                await asyncio.sleep(0.005)
            client.send_presence(show="dnd", status="final", to=service_jid)

        latencies: list[float] = []
        flooding = threading.Event()

        def probe() -> None:
            """jabber_status calls from a thread of their own, so this process's busy event
            loop does not count as the service's latency."""
            while flooding.is_set():
                started = time.monotonic()
                variables = blocking_agi_call(service.agi_port, "jabber_status", ACCOUNT,
                                              flooders[0].bare_jid, timeout=HANG)
                assert variables["JABBER_STATUS_ERROR"] == "" and variables["JABBER_STATUS"]
                latencies.append(time.monotonic() - started)
                time.sleep(0.01)

        cpu_before = {"service": cpu_seconds(service.proc.pid), "prosody": cpu_seconds(private_prosody.pid)}
        flooding.set()
        prober = asyncio.ensure_future(asyncio.to_thread(probe))
        flood_started = time.monotonic()
        try:
            await asyncio.gather(*(flood(c) for c in flooders))
        finally:
            flood_ended = time.monotonic()
            flooding.clear()
            await prober  # a failed call surfaces here
        for client in flooders:
            await eventually(_status_is(status, client.bare_jid, "5", "final"), 60, "the last presence")
        settled_after = time.monotonic() - flood_ended
        cpu = {"service": cpu_seconds(service.proc.pid), "prosody": cpu_seconds(private_prosody.pid)}
    finally:
        await service.close()
    assert len(latencies) >= 5  # (this process's busy loop starves the probing thread somewhat)
    figure(
        "presence_flood",
        offered_per_s=round(sent / (flood_ended - flood_started)),
        status_calls=len(latencies),
        status_p50_ms=round(statistics.median(latencies) * 1000, 1),
        status_max_ms=round(max(latencies) * 1000, 1),
        settled_after_flood_s=round(settled_after, 2),
        cpu_s={name: round(cpu[name] - cpu_before[name], 2) for name in cpu},
    )


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process, in seconds (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_is(status, jid: str, code: str, message: str | None = None):
    async def check() -> bool:
        variables = await status(jid)
        return variables["JABBER_STATUS"] == code and (message is None or variables["JABBER_STATUS_MESSAGE"] == message)

    return check


#: Seconds after which a FastAGI call counts as hung (not slow: slowness is for make bench).
HANG = 60.0


def blocking_agi_call(port: int, script: str, *args: str, timeout: float = HANG) -> dict[str, str]:
    """One FastAGI call on a plain blocking socket (for a thread): the variables it set. A call
    that takes longer than ``timeout`` seconds fails as hung."""
    env = ["agi_network: yes", f"agi_network_script: {script}", "agi_version: 22.6.0",
           "agi_uniqueid: 1700000000.9", *(f"agi_arg_{n}: {a}" for n, a in enumerate(args, 1))]
    variables: dict[str, str] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(("\n".join(env) + "\n\n").encode())
        lines = sock.makefile("rb")
        while line := lines.readline():
            words = asterisk_parse_args(line.decode().rstrip("\n"))
            if words[:2] == ["SET", "VARIABLE"]:
                variables[words[2]] = words[3]
            sock.sendall(b"200 result=1\n")
    return variables
