"""jabber_send, jabber_status and jabber_receive through the whole service and a real Prosody."""

from __future__ import annotations

import asyncio
import base64

import pytest

from service_harness import eventually, settle_presence

pytestmark = pytest.mark.integration


async def befriend_service(svc, client) -> None:
    """Mutual subscription between a test client and the service account, then wait for it."""
    client.subscribe(svc.jid)
    await eventually(
        lambda: client.bare_jid in svc.services.presence.contacts("asterisk"),
        what="the contact to appear in the service's roster",
    )


async def status_of(svc, jid: str) -> dict[str, str]:
    return (await svc.call("jabber_status", "asterisk", jid)).variables


async def test_send_delivers_a_chat_with_unique_id(svc, xmpp_accounts, xmpp_client):
    """jabber_send hands a type=chat message with an id to the live session: SUCCESS."""
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    result = await svc.call("jabber_send", "asterisk", bob_jid, "Call from 100", " urgent")
    assert result.variables == {"JABBER_SEND_STATUS": "SUCCESS", "JABBER_SEND_ERROR": ""}
    message = await bob.next_message(10, sender=svc.jid)
    assert message.body == "Call from 100, urgent"
    assert message.type == "chat"
    assert message.id.startswith("agx-")
    await eventually(lambda: svc.pool.counters.acked >= 1, what="the server to confirm the message")


async def test_send_var_option_reads_exact_text_from_channel(svc, xmpp_accounts, xmpp_client):
    """var=NAME sends the channel variable's exact text, newlines and quotes included."""
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    text = 'line one\nline "two", with \\ backslash'
    result = await svc.call("jabber_send?var=NOTE", "asterisk", bob_jid, channel_vars={"NOTE": text})
    assert result.variables["JABBER_SEND_STATUS"] == "SUCCESS"
    assert (await bob.next_message(10, sender=svc.jid)).body == text


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("asterisk", "not a jid@", "hi"), "invalid JID"),
        (("nosuch", "bob@localhost", "hi"), "unknown account"),
        (("asterisk", "bob@localhost", ""), "empty message"),
        (("asterisk",), "missing JID"),
    ],
)
async def test_send_bad_arguments_fail_without_hanging_up(svc, args, reason):
    """Bad arguments give FAILURE with a reason; the script still runs to the end."""
    result = await svc.call("jabber_send", *args)
    assert result.variables["JABBER_SEND_STATUS"] == "FAILURE"
    assert reason in result.variables["JABBER_SEND_ERROR"]
    assert not any(words[0].upper() == "HANGUP" for words in result.commands)


async def test_send_refuses_messages_over_max_message_bytes(svc):
    """A message longer than max_message_bytes is a FAILURE, not truncated."""
    result = await svc.call(
        "jabber_send?var=BIG", "asterisk", "bob@localhost", channel_vars={"BIG": "x" * 70000}
    )
    assert result.variables["JABBER_SEND_STATUS"] == "FAILURE"
    assert "max_message_bytes" in result.variables["JABBER_SEND_ERROR"]


@pytest.mark.parametrize(
    ("show", "code", "word"),
    [(None, "1", "available"), ("chat", "2", "chat"), ("away", "3", "away"), ("xa", "4", "xa"), ("dnd", "5", "dnd")],
)
async def test_status_code_for_each_show(svc, xmpp_accounts, xmpp_client, show, code, word):
    """Each presence show maps to res_xmpp's code and word, with the status text."""
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    await befriend_service(svc, bob)
    bob.send_presence(show=show, status=f"now {word}", priority=3)

    expected = {
        "JABBER_STATUS": code,
        "JABBER_STATUS_SHOW": word,
        "JABBER_STATUS_MESSAGE": f"now {word}",
        "JABBER_STATUS_ERROR": "",
    }

    async def settled() -> bool:
        # right after a subscription slixmpp may re-send bob's initial presence after ours
        if await status_of(svc, bob_jid) == expected:
            return True
        bob.send_presence(show=show, status=f"now {word}", priority=3)
        return False

    await eventually(settled, what=f"status {code} ({word})")


async def test_status_offline_and_not_in_roster(svc, xmpp_accounts, xmpp_client):
    """A roster contact with no resource reads 6 (offline); a stranger reads 7 (unknown)."""
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    await befriend_service(svc, bob)
    await eventually(lambda: svc.services.presence.status("asterisk", _jid(bob_jid)).code == 1)
    await bob.disconnect()
    await eventually(lambda: svc.services.presence.status("asterisk", _jid(bob_jid)).code == 6)
    assert (await status_of(svc, bob_jid))["JABBER_STATUS_SHOW"] == "offline"
    stranger = await status_of(svc, "nobody@localhost")
    assert stranger["JABBER_STATUS"] == "7" and stranger["JABBER_STATUS_SHOW"] == "unknown"


async def test_status_bare_jid_picks_highest_priority_resource(svc, xmpp_accounts, xmpp_client):
    """With two resources, a bare JID reads the higher-priority one; a full JID reads its own."""
    bob_jid, bob_pw = xmpp_accounts("bob")
    phone = await xmpp_client(bob_jid, bob_pw, resource="phone")
    desk = await xmpp_client(bob_jid, bob_pw, resource="desk")
    await befriend_service(svc, phone)
    await settle_presence(svc, phone, f"{bob_jid}/phone", 3, show="away", priority=1)
    await settle_presence(svc, desk, bob_jid, 5, show="dnd", priority=10)
    assert (await status_of(svc, f"{bob_jid}/phone"))["JABBER_STATUS"] == "3"
    assert (await status_of(svc, f"{bob_jid}/nosuch"))["JABBER_STATUS"] == "6"


async def test_status_custom_variable_and_bad_jid(svc):
    """VARNAME receives the code; a JID that does not parse leaves it empty with an error."""
    result = await svc.call("jabber_status", "asterisk", "nobody@localhost", "MYSTATUS")
    assert result.variables["MYSTATUS"] == "7"
    bad = await svc.call("jabber_status", "asterisk", "@@bad", "MYSTATUS")
    assert bad.variables["MYSTATUS"] == ""
    assert "invalid JID" in bad.variables["JABBER_STATUS_ERROR"]


async def test_receive_returns_buffered_messages_oldest_first(svc, xmpp_accounts, xmpp_client):
    """Messages that arrived before the call are returned first in, first out."""
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    for body in ("one", "two", "three"):
        bob.send_message(svc.jid, body)
    await eventually(lambda: len(svc.pool.inboxes["asterisk"]) == 3, what="three buffered messages")
    bodies = []
    for _ in range(3):
        result = await svc.call("jabber_receive", "asterisk", bob_jid, "5")
        assert result.variables["JABBER_RECEIVE_STATUS"] == "SUCCESS"
        assert result.variables["JABBER_RECEIVE_FROM"] == f"{bob_jid}/test"
        bodies.append(result.variables["JABBER_RECEIVE"])
    assert bodies == ["one", "two", "three"]


async def test_receive_waits_for_a_message_and_times_out(svc, xmpp_accounts, xmpp_client):
    """A call waits for the next message; with none, it returns TIMEOUT with empty values."""
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    waiting = asyncio.create_task(svc.call("jabber_receive", "asterisk", bob_jid, "15"))
    await eventually(lambda: svc.pool.inboxes["asterisk"].waiting == 1, what="the call to wait")
    bob.send_message(svc.jid, "later")
    assert (await waiting).variables["JABBER_RECEIVE"] == "later"
    timed_out = await svc.call("jabber_receive", "asterisk", bob_jid, "0.3")
    assert timed_out.variables == {
        "JABBER_RECEIVE": "",
        "JABBER_RECEIVE_B64": "",
        "JABBER_RECEIVE_FROM": "",
        "JABBER_RECEIVE_STATUS": "TIMEOUT",
        "JABBER_RECEIVE_ERROR": "",
    }


async def test_two_waiters_get_one_message_each_in_order(svc, xmpp_accounts, xmpp_client):
    """Two calls waiting on the same sender are served in arrival order, one message each."""
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    first = asyncio.create_task(svc.call("jabber_receive", "asterisk", bob_jid, "15"))
    await eventually(lambda: svc.pool.inboxes["asterisk"].waiting == 1)
    second = asyncio.create_task(svc.call("jabber_receive", "asterisk", bob_jid, "15"))
    await eventually(lambda: svc.pool.inboxes["asterisk"].waiting == 2)
    bob.send_message(svc.jid, "A")
    bob.send_message(svc.jid, "B")
    assert (await first).variables["JABBER_RECEIVE"] == "A"
    assert (await second).variables["JABBER_RECEIVE"] == "B"


async def test_receive_matches_exact_sender_never_a_prefix(svc, prosody, xmpp_accounts, xmpp_client):
    """A wait for bob@ ignores bobx@ (a prefix match), and a full JID ignores other resources."""
    bob_jid, bob_pw = xmpp_accounts("bob")
    local, domain = bob_jid.split("@")
    spoof_jid = prosody.register(f"{local}x", "spoof-password")
    spoofer = await xmpp_client(spoof_jid, "spoof-password")
    bob = await xmpp_client(bob_jid, bob_pw, resource="phone")
    spoofer.send_message(svc.jid, "I am not bob")
    bob.send_message(svc.jid, "from phone")
    await eventually(lambda: len(svc.pool.inboxes["asterisk"]) == 2, what="both messages buffered")
    desk = await svc.call("jabber_receive", "asterisk", f"{bob_jid}/desk", "0.3")
    assert desk.variables["JABBER_RECEIVE_STATUS"] == "TIMEOUT"
    got = await svc.call("jabber_receive", "asterisk", bob_jid, "5")
    assert got.variables["JABBER_RECEIVE"] == "from phone"
    assert (await svc.call("jabber_receive", "asterisk", bob_jid, "0.3")).variables["JABBER_RECEIVE_STATUS"] == "TIMEOUT"


async def test_hostile_body_is_sanitised_and_exact_in_b64(svc, xmpp_accounts, xmpp_client):
    """Newlines, quotes, backslashes, ${...} and control characters reach the dialplan harmless."""
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    # XML cannot carry C0 controls other than TAB/LF (and parsers turn CR into LF), so this is the
    # worst a chat body can hold: line breaks, quotes, backslashes, DEL, NEL, U+2028, ${...}.
    hostile = 'a\nb "c"\t\\d ${SHELL(rm -rf /)} \x7f\x85\u2028\nEXEC Hangup'
    bob.send_message(svc.jid, hostile)
    result = await svc.call("jabber_receive", "asterisk", bob_jid, "10")
    plain = result.variables["JABBER_RECEIVE"]
    assert not any(ch in plain for ch in "\n\t\x7f\x85\u2028")
    assert base64.b64decode(result.variables["JABBER_RECEIVE_B64"]).decode() == hostile
    assert all(len(cmd) == 4 and cmd[0] == "SET" for cmd in result.commands)


async def test_receive_bad_timeout_is_failure(svc):
    """A TIMEOUT that is not a positive number is a FAILURE with a reason."""
    for timeout in ("0", "-3", "soon"):
        result = await svc.call("jabber_receive", "asterisk", "bob@localhost", timeout)
        assert result.variables["JABBER_RECEIVE_STATUS"] == "FAILURE"
        assert "TIMEOUT" in result.variables["JABBER_RECEIVE_ERROR"]


async def test_hangup_ends_the_wait_and_keeps_the_message(svc, xmpp_accounts, xmpp_client):
    """A HANGUP while waiting ends the call at once with HANGUP; later messages stay buffered."""
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    result = await svc.call("jabber_receive", "asterisk", bob_jid, "30", hangup_after=0.3, timeout=20)
    assert result.variables["JABBER_RECEIVE_STATUS"] == "HANGUP"
    assert result.closed_by_server
    bob.send_message(svc.jid, "after the hangup")
    await eventually(lambda: len(svc.pool.inboxes["asterisk"]) == 1, what="the message to be buffered")


def _jid(text: str):
    from agi_xmpp.jid import parse_jid

    return parse_jid(text)


async def test_message_too_long_for_asterisk_is_a_failure_not_a_cut(svc, xmpp_accounts, xmpp_client):
    """A body whose variable would exceed the AGI line limit gives FAILURE with a reason, not a cut."""
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    bob.send_message(svc.jid, "y" * 3000)  # base64 of 3000 bytes is 4000: over 2047 (old Asterisk)
    result = await svc.call("jabber_receive", "asterisk", bob_jid, "10", agi_version="18.20.0")
    assert result.variables["JABBER_RECEIVE_STATUS"] == "FAILURE"
    assert "JABBER_RECEIVE" in result.variables["JABBER_RECEIVE_ERROR"]
    assert result.variables["JABBER_RECEIVE_B64"] == ""
    bob.send_message(svc.jid, "y" * 3000)
    modern = await svc.call("jabber_receive", "asterisk", bob_jid, "10", agi_version="22.6.0")
    assert modern.variables["JABBER_RECEIVE"] == "y" * 3000


async def test_storage_failure_still_answers_the_dialplan(svc, monkeypatch):
    """If the database fails, jabber_send still sets FAILURE and a reason (never silence)."""
    from agi_xmpp.errors import StorageError

    async def broken(*args, **kwargs):
        raise StorageError("database is unreachable")

    monkeypatch.setattr(svc.services.storage, "outbox_add", broken)
    result = await svc.call("jabber_send", "asterisk", "bob@localhost", "hello")
    assert result.variables["JABBER_SEND_STATUS"] == "FAILURE"
    assert "database unavailable: database is unreachable" in result.variables["JABBER_SEND_ERROR"]
