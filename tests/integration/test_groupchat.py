"""jabber_join, jabber_leave and jabber_send_group through the whole service and a real Prosody."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from service_harness import eventually, running_harness, service_config

from agi_xmpp.jid import parse_jid

pytestmark = pytest.mark.integration

ALL_JOIN = {"JABBER_JOIN_STATUS", "JABBER_JOIN_ERROR"}
ALL_LEAVE = {"JABBER_LEAVE_STATUS", "JABBER_LEAVE_ERROR"}
ALL_SEND = {"JABBER_SEND_GROUP_STATUS", "JABBER_SEND_GROUP_ERROR"}


@pytest.fixture
async def svc(prosody, xmpp_accounts, tmp_path):
    """The service with one account ('asterisk') on the shared Prosody."""
    jid, password = xmpp_accounts("asterisk")
    async with running_harness(service_config(prosody, jid, password, tmp_path)) as harness:
        harness.jid = jid
        harness.nick = jid.split("@")[0]
        yield harness


def new_room(server) -> str:
    return f"room-{secrets.token_hex(4)}@{server.muc_domain}"


def session(svc):
    return svc.pool.session("asterisk")


async def occupant(client, room: str, nick: str):
    """Join ``room`` as a test client that also records the room's occupant presence.

    slixmpp's XEP-0045 plugin reports presence from a joined room as ``groupchat_presence``
    only, which ``XmppTestClient.next_presence`` does not see; route it there."""
    client.xmpp.add_event_handler("groupchat_presence", client._on_presence)
    await client.join_room(room, nick)
    return client


async def test_join_succeeds_once_the_room_confirms(svc, prosody, xmpp_accounts, xmpp_client):
    """jabber_join returns SUCCESS with the default nick only after the room's self-presence."""
    room = new_room(prosody)
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    await occupant(bob, room, "bob")
    result = await svc.call("jabber_join", "asterisk", room)
    assert result.variables == {"JABBER_JOIN_STATUS": "SUCCESS", "JABBER_JOIN_ERROR": ""}
    # confirmed means the room already told us (and the other occupants) that we are in
    assert session(svc).joined_rooms() == {room: svc.nick}
    await bob.next_presence(5, sender=f"{room}/{svc.nick}", type="available")


async def test_join_with_nickname_and_again_is_idempotent(svc, prosody):
    """NICKNAME is used; joining again with the same nick succeeds without a new join."""
    room = new_room(prosody)
    first = await svc.call("jabber_join", "asterisk", room, "PBX")
    assert first.variables["JABBER_JOIN_STATUS"] == "SUCCESS"
    assert session(svc).room_nick(room) == "PBX"
    again = await svc.call("jabber_join", "", room, "PBX")  # empty ACCOUNT: default_account
    assert again.variables == {"JABBER_JOIN_STATUS": "SUCCESS", "JABBER_JOIN_ERROR": ""}
    assert session(svc).joined_rooms() == {room: "PBX"}


async def test_join_refused_by_nickname_conflict_is_failure(svc, prosody, xmpp_accounts, xmpp_client):
    """A nickname taken by another occupant: FAILURE naming the conflict; the room is not kept."""
    room = new_room(prosody)
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    await bob.join_room(room, "operator")
    result = await svc.call("jabber_join", "asterisk", room, "operator")
    assert result.variables["JABBER_JOIN_STATUS"] == "FAILURE"
    assert "conflict" in result.variables["JABBER_JOIN_ERROR"]
    assert room not in session(svc).joined_rooms()
    assert session(svc).room_nick(room) is None


async def test_join_on_unknown_conference_service_fails_within_ten_seconds(svc):
    """A room on a service that does not exist: FAILURE with a reason, ended by the server's
    refusal or by the 10 s join bound (the error says which), never a hang."""
    result = await svc.call("jabber_join", "asterisk", "room@nosuch.invalid", timeout=60)
    assert result.variables["JABBER_JOIN_STATUS"] == "FAILURE"
    error = result.variables["JABBER_JOIN_ERROR"]
    assert "refused the join" in error or "did not confirm the join within 10 s" in error, error
    assert session(svc).joined_rooms() == {}


@pytest.mark.parametrize(
    ("script", "args", "reason"),
    [
        ("jabber_join", ("asterisk",), "missing ROOM"),
        ("jabber_join", ("asterisk", "conference.localhost"), "room@service"),
        ("jabber_join", ("asterisk", "@@bad"), "invalid JID"),
        ("jabber_join", ("nosuch", "room@conference.localhost"), "unknown account"),
        ("jabber_leave", ("asterisk",), "missing ROOM"),
        ("jabber_send_group", ("asterisk", "room@conference.localhost", ""), "empty message"),
        ("jabber_send_group", ("asterisk", "", "hello"), "missing ROOM"),
    ],
)
async def test_bad_arguments_fail_without_hanging_up(svc, script, args, reason):
    """Bad arguments give FAILURE with a reason, every variable set, and no hangup."""
    result = await svc.call(script, *args)
    prefix = {"jabber_join": "JABBER_JOIN", "jabber_leave": "JABBER_LEAVE"}.get(script, "JABBER_SEND_GROUP")
    assert result.variables[f"{prefix}_STATUS"] == "FAILURE"
    assert reason in result.variables[f"{prefix}_ERROR"]
    assert set(result.variables) == {f"{prefix}_STATUS", f"{prefix}_ERROR"}
    assert not any(words[0].upper() == "HANGUP" for words in result.commands)


async def test_leave_leaves_the_room_and_is_idempotent(svc, prosody, xmpp_accounts, xmpp_client):
    """jabber_leave: the other occupants see us go; leaving a room we are not in is SUCCESS too."""
    room = new_room(prosody)
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    await occupant(bob, room, "bob")
    assert (await svc.call("jabber_join", "asterisk", room)).variables["JABBER_JOIN_STATUS"] == "SUCCESS"
    await bob.next_presence(5, sender=f"{room}/{svc.nick}", type="available")
    result = await svc.call("jabber_leave", "asterisk", room)
    assert result.variables == {"JABBER_LEAVE_STATUS": "SUCCESS", "JABBER_LEAVE_ERROR": ""}
    await bob.next_presence(5, sender=f"{room}/{svc.nick}", type="unavailable")
    assert session(svc).joined_rooms() == {}
    again = await svc.call("jabber_leave", "asterisk", room, "whatever")
    assert again.variables == {"JABBER_LEAVE_STATUS": "SUCCESS", "JABBER_LEAVE_ERROR": ""}


async def test_send_group_joins_first_then_sends(svc, prosody, xmpp_accounts, xmpp_client):
    """jabber_send_group in a room the account is not in: joins (default nick), then SUCCESS."""
    room = new_room(prosody)
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    await occupant(bob, room, "bob")
    result = await svc.call("jabber_send_group", "asterisk", room, "Call from 100", " queue 2")
    assert result.variables == {"JABBER_SEND_GROUP_STATUS": "SUCCESS", "JABBER_SEND_GROUP_ERROR": ""}
    message = await bob.next_message(10, sender=f"{room}/{svc.nick}")
    assert message.body == "Call from 100, queue 2"
    assert message.type == "groupchat"
    assert message.id.startswith("agx-")
    assert session(svc).joined_rooms() == {room: svc.nick}
    await eventually(lambda: svc.pool.counters.acked >= 1, what="the server to confirm the message")


async def test_send_group_nickname_option_and_var(svc, prosody, xmpp_accounts, xmpp_client):
    """nickname= picks the nick for the join; var=NAME sends a channel variable's exact text."""
    room = new_room(prosody)
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    await occupant(bob, room, "bob")
    text = 'two\nlines, "quoted"'
    result = await svc.call(
        "jabber_send_group?nickname=PBX&var=NOTE", "asterisk", room, channel_vars={"NOTE": text}
    )
    assert result.variables["JABBER_SEND_GROUP_STATUS"] == "SUCCESS"
    assert (await bob.next_message(10, sender=f"{room}/PBX")).body == text
    assert session(svc).room_nick(room) == "PBX"
    # already in the room: no nickname= keeps the nick we have
    await svc.call("jabber_send_group", "asterisk", room, "still PBX")
    assert (await bob.next_message(10, sender=f"{room}/PBX")).body == "still PBX"


async def test_send_group_to_a_refusing_room_is_failure(svc, prosody, xmpp_accounts, xmpp_client):
    """When the room refuses the join, jabber_send_group is FAILURE and nothing is sent."""
    room = new_room(prosody)
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    await bob.join_room(room, "taken")
    result = await svc.call("jabber_send_group?nickname=taken", "asterisk", room, "hello")
    assert result.variables["JABBER_SEND_GROUP_STATUS"] == "FAILURE"
    assert "conflict" in result.variables["JABBER_SEND_GROUP_ERROR"]
    assert svc.pool.counters.sent == 0 and svc.pool.counters.queued == 0
    await bob.no_message(0.5)


async def test_receive_on_room_ignores_our_own_messages(svc, prosody, xmpp_accounts, xmpp_client):
    """jabber_receive on a joined room JID returns another occupant's message, never our echo."""
    room = new_room(prosody)
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    await occupant(bob, room, "bob")
    assert (await svc.call("jabber_send_group", "asterisk", room, "mine")).variables[
        "JABBER_SEND_GROUP_STATUS"
    ] == "SUCCESS"
    await bob.next_message(10, sender=f"{room}/{svc.nick}")
    inbox = svc.pool.inboxes["asterisk"]
    await eventually(lambda: len(inbox) == 1, what="the room's echo of our own message")
    bob.send_group_message(room, "theirs")
    result = await svc.call("jabber_receive", "asterisk", room, "10")
    assert result.variables["JABBER_RECEIVE_STATUS"] == "SUCCESS"
    assert result.variables["JABBER_RECEIVE"] == "theirs"
    assert result.variables["JABBER_RECEIVE_FROM"] == f"{room}/bob"
    nothing = await svc.call("jabber_receive", "asterisk", room, "0.5")
    assert nothing.variables["JABBER_RECEIVE_STATUS"] == "TIMEOUT"


async def test_receive_on_room_waits_for_the_next_message(svc, prosody, xmpp_accounts, xmpp_client):
    """A jabber_receive waiting on the room JID gets the next groupchat message from anyone else."""
    room = new_room(prosody)
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    await occupant(bob, room, "bob")
    assert (await svc.call("jabber_join", "asterisk", room)).variables["JABBER_JOIN_STATUS"] == "SUCCESS"
    waiting = asyncio.create_task(svc.call("jabber_receive", "asterisk", room, "15"))
    await eventually(lambda: svc.pool.inboxes["asterisk"].waiting == 1, what="the call to wait")
    bob.send_message(svc.jid, "a private chat is not room traffic")
    bob.send_group_message(room, "201")
    result = await waiting
    assert result.variables["JABBER_RECEIVE"] == "201"
    assert result.variables["JABBER_RECEIVE_FROM"] == f"{room}/bob"


# -- outages: a server of our own ----------------------------------------------------------------


@pytest.fixture
async def private_svc(private_prosody, tmp_path):
    """The service with one account on a Prosody this test may kill and restart."""
    password = secrets.token_urlsafe(12)
    jid = private_prosody.register("asterisk", password)
    async with running_harness(service_config(private_prosody, jid, password, tmp_path)) as harness:
        harness.jid = jid
        harness.nick = "asterisk"
        harness.server = private_prosody
        yield harness


async def _restart_server(svc) -> None:
    """SIGKILL Prosody, start it again on the same ports, and wait for a fresh session."""
    sessions_before = svc.pool.session("asterisk").reconnects
    svc.server.kill()
    await eventually(lambda: not svc.pool.session("asterisk").online, what="the session to drop")
    await asyncio.to_thread(svc.server.restart)
    await eventually(
        lambda: svc.pool.session("asterisk").online
        and svc.pool.session("asterisk").reconnects > sessions_before,
        timeout=30,
        what="the session to come back",
    )


async def test_rooms_are_rejoined_after_a_server_restart(private_svc, xmpp_client):
    """After Prosody is killed and restarted the room is re-joined: send and receive work again."""
    svc = private_svc
    room = f"ops@{svc.server.muc_domain}"
    assert (await svc.call("jabber_join", "asterisk", room)).variables["JABBER_JOIN_STATUS"] == "SUCCESS"

    await _restart_server(svc)
    await eventually(lambda: session(svc).room_nick(room) == "asterisk", what="the room re-joined")

    bob_pw = secrets.token_urlsafe(12)
    bob_jid = svc.server.register("bob", bob_pw)
    bob = await xmpp_client(bob_jid, bob_pw, server=svc.server)
    await occupant(bob, room, "bob")
    result = await svc.call("jabber_send_group", "asterisk", room, "back again")
    assert result.variables["JABBER_SEND_GROUP_STATUS"] == "SUCCESS"
    assert (await bob.next_message(10, sender=f"{room}/asterisk")).body == "back again"
    bob.send_group_message(room, "welcome back")
    got = await svc.call("jabber_receive", "asterisk", room, "10")
    assert got.variables["JABBER_RECEIVE"] == "welcome back"
    assert got.variables["JABBER_RECEIVE_FROM"] == f"{room}/bob"


async def test_queued_group_message_is_sent_after_the_room_is_rejoined(private_svc):
    """QUEUED while offline: after the restart the room is joined first, then the room takes it."""
    svc = private_svc
    room = f"ops@{svc.server.muc_domain}"
    assert (await svc.call("jabber_join", "asterisk", room, "PBX")).variables["JABBER_JOIN_STATUS"] == "SUCCESS"
    other = f"other@{svc.server.muc_domain}"  # never joined: remembered while offline

    seen = []
    svc.pool.add_message_hook(lambda _account, msg: seen.append(msg) and False)
    sessions_before = session(svc).reconnects
    svc.server.kill()
    await eventually(lambda: not session(svc).online, what="the session to drop")
    queued = await svc.call("jabber_send_group", "asterisk", room, "while you were out")
    assert queued.variables == {"JABBER_SEND_GROUP_STATUS": "QUEUED", "JABBER_SEND_GROUP_ERROR": ""}
    queued2 = await svc.call("jabber_send_group", "asterisk", other, "to the other room")
    assert queued2.variables["JABBER_SEND_GROUP_STATUS"] == "QUEUED"
    await asyncio.to_thread(svc.server.restart)
    await eventually(lambda: session(svc).online and session(svc).reconnects > sessions_before, timeout=30)

    # The room echoes a message back to its sender only if it accepted it from an occupant.
    def echoed(room_jid: str, nick: str, body: str) -> bool:
        return any(
            m.sender == parse_jid(f"{room_jid}/{nick}") and m.body == body and m.kind == "groupchat"
            for m in seen
        )

    await eventually(lambda: echoed(room, "PBX", "while you were out"), timeout=60, what="the room's echo")
    await eventually(lambda: echoed(other, "asterisk", "to the other room"), timeout=60, what="the echo")
    assert session(svc).joined_rooms() == {room: "PBX", other: "asterisk"}
    await eventually(lambda: svc.pool.counters.retransmitted == 2)


async def test_queued_group_message_survives_a_service_restart(private_prosody, tmp_path):
    """A QUEUED group message outlives our own restart: the new process joins the room, then sends."""
    password = secrets.token_urlsafe(12)
    jid = private_prosody.register("asterisk", password)
    config = service_config(private_prosody, jid, password, tmp_path)
    room = f"ops@{private_prosody.muc_domain}"
    async with running_harness(config) as first:
        private_prosody.kill()
        await eventually(lambda: not first.pool.session("asterisk").online, what="the session to drop")
        result = await first.call("jabber_send_group", "asterisk", room, "queued before the restart")
        assert result.variables["JABBER_SEND_GROUP_STATUS"] == "QUEUED"
    await asyncio.to_thread(private_prosody.restart)

    async with running_harness(config, wait_online=False) as second:
        seen = []
        second.pool.add_message_hook(lambda _account, msg: seen.append(msg) and False)
        await second.wait_online()
        await eventually(
            lambda: any(
                m.sender == parse_jid(f"{room}/asterisk") and m.body == "queued before the restart"
                for m in seen
            ),
            timeout=15,
            what="the room to accept the resent message",
        )
        assert second.pool.session("asterisk").joined_rooms() == {room: "asterisk"}
