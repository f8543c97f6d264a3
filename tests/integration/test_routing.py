"""presence_route and call_notify through the whole service, a real Prosody and the directory."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from service_harness import eventually, running_harness, service_config

from agi_xmpp.config import make_directory_entry
from agi_xmpp.jid import parse_jid

pytestmark = pytest.mark.integration

ROUTE_VARS = {
    "PRESENCE_ROUTE_DIAL",
    "PRESENCE_ROUTE_COUNT",
    "PRESENCE_ROUTE_SKIPPED",
    "PRESENCE_ROUTE_STATUS",
    "PRESENCE_ROUTE_ERROR",
}

# extension -> (presence, expected jabber_status code); "offline" = in the roster, disconnected;
# "stranger" = a directory entry whose JID is not in the account's roster.
MIX = {
    "201": ("available", 1),
    "202": ("chat", 2),
    "203": ("away", 3),
    "204": ("xa", 4),
    "205": ("dnd", 5),
    "206": ("offline", 6),
    "207": ("stranger", 7),
}


@dataclass
class Team:
    svc: object
    jids: dict[str, str]  # extension -> bare JID
    clients: dict[str, object]


async def befriend(svc, client) -> None:
    client.subscribe(svc.jid)
    await eventually(
        lambda: client.bare_jid in svc.services.presence.contacts("asterisk"),
        what="the contact in the service's roster",
    )


def code_of(svc, jid: str) -> int:
    return svc.services.presence.status("asterisk", parse_jid(jid)).code


SHOW_CODES = {"available": 1, "chat": 2, "away": 3, "xa": 4, "dnd": 5}


async def show(svc, client, presence: str) -> None:
    """Set ``client``'s presence and wait until the service reads it.

    Re-sent every second: right after a subscription, slixmpp's auto-authorisation sends the
    client's *initial* presence again, which may overtake the one we set."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60  # bounds a hang only: a busy machine is slow
    while True:
        client.send_presence(show=presence)
        try:
            await eventually(lambda: code_of(svc, client.bare_jid) == SHOW_CODES[presence], timeout=1)
            return
        except AssertionError:
            if loop.time() > deadline:
                raise


@pytest.fixture
async def team(prosody, xmpp_accounts, xmpp_client, tmp_path):
    """The service, with a [directory] of seven users in every presence from 1 to 7."""
    service_jid, service_pw = xmpp_accounts("asterisk")
    accounts = {ext: xmpp_accounts(f"u{ext}") for ext in MIX}
    directory = tuple(
        make_directory_entry(ext, jid, device="PJSIP/desk-204" if ext == "204" else None)
        for ext, (jid, _pw) in accounts.items()
    )
    config = service_config(prosody, service_jid, service_pw, tmp_path, directory=directory)
    async with running_harness(config) as svc:
        svc.jid = service_jid
        jids = {ext: jid for ext, (jid, _pw) in accounts.items()}

        async def member(ext: str, presence: str):
            jid, pw = accounts[ext]
            client = await xmpp_client(jid, pw)
            await befriend(svc, client)
            if presence == "offline":
                await eventually(lambda: code_of(svc, jid) == 1)
                await client.disconnect()
            else:
                await show(svc, client, presence)
            return ext, client

        clients = dict(await asyncio.gather(
            *(member(ext, presence) for ext, (presence, _code) in MIX.items() if presence != "stranger")
        ))
        for ext, (_presence, code) in MIX.items():
            await eventually(lambda ext=ext, code=code: code_of(svc, jids[ext]) == code,
                             what=f"{ext} to read {code}")
        yield Team(svc=svc, jids=jids, clients=clients)


ALL = "&".join(MIX)


@pytest.mark.parametrize(
    ("policy", "dial"),
    [
        ("", "PJSIP/201&PJSIP/202"),
        ("available", "PJSIP/201&PJSIP/202"),
        ("present", "PJSIP/201&PJSIP/202&PJSIP/203&PJSIP/desk-204"),
        ("not_dnd", "PJSIP/201&PJSIP/202&PJSIP/203&PJSIP/desk-204&PJSIP/206&PJSIP/207"),
        ("NOT_DND", "PJSIP/201&PJSIP/202&PJSIP/203&PJSIP/desk-204&PJSIP/206&PJSIP/207"),
    ],
)
async def test_each_policy_against_a_mix_of_presences(team, policy, dial):
    """Each policy passes exactly the presence codes docs/features.md names, dialling directory devices."""
    result = await team.svc.call("presence_route", "asterisk", ALL, policy)
    assert result.variables == {
        "PRESENCE_ROUTE_DIAL": dial,
        "PRESENCE_ROUTE_COUNT": str(dial.count("&") + 1),
        "PRESENCE_ROUTE_SKIPPED": "",
        "PRESENCE_ROUTE_STATUS": "SUCCESS",
        "PRESENCE_ROUTE_ERROR": "",
    }


async def test_order_of_targets_is_kept_and_duplicates_ring_once(team):
    """The dial string follows the order given; a target listed twice (or by JID too) rings once."""
    targets = f"204&202&{team.jids['201']}&203&202& 201 "
    result = await team.svc.call("presence_route", "asterisk", targets, "present")
    assert result.variables["PRESENCE_ROUTE_DIAL"] == "PJSIP/desk-204&PJSIP/202&PJSIP/201&PJSIP/203"
    assert result.variables["PRESENCE_ROUTE_COUNT"] == "4"


async def test_nobody_passes_is_none_with_empty_dial(team):
    """When no target passes, STATUS is NONE, DIAL empty, COUNT 0 and ERROR empty."""
    result = await team.svc.call("presence_route", "asterisk", "203&204&205&206&207", "available")
    assert result.variables == {
        "PRESENCE_ROUTE_DIAL": "",
        "PRESENCE_ROUTE_COUNT": "0",
        "PRESENCE_ROUTE_SKIPPED": "",
        "PRESENCE_ROUTE_STATUS": "NONE",
        "PRESENCE_ROUTE_ERROR": "",
    }


async def test_jid_targets_use_the_directory_device_and_skip_unknown_jids(team):
    """A JID target rings its directory device; a JID with no directory entry is skipped."""
    jids = team.jids
    stranger = "nobody@localhost"
    targets = f"{jids['202'].upper()}&{stranger}&{jids['205']}&{jids['201']}/test"
    result = await team.svc.call("presence_route", "asterisk", targets)
    assert result.variables["PRESENCE_ROUTE_DIAL"] == "PJSIP/202&PJSIP/201"
    assert result.variables["PRESENCE_ROUTE_SKIPPED"] == stranger
    assert result.variables["PRESENCE_ROUTE_STATUS"] == "SUCCESS"
    # a full JID reads that resource only: 201 has no "phone" resource
    phone = await team.svc.call("presence_route", "asterisk", f"{jids['201']}/phone")
    assert phone.variables["PRESENCE_ROUTE_STATUS"] == "NONE"


async def test_unknown_extension_is_skipped_and_the_others_still_ring(team):
    """A typo in one member is skipped and listed in SKIPPED; the rest of the group still rings."""
    result = await team.svc.call("presence_route", "asterisk", "2O1&202&999&bad@@jid")
    assert result.variables == {
        "PRESENCE_ROUTE_DIAL": "PJSIP/202",
        "PRESENCE_ROUTE_COUNT": "1",
        "PRESENCE_ROUTE_SKIPPED": "2O1&999&bad@@jid",
        "PRESENCE_ROUTE_STATUS": "SUCCESS",
        "PRESENCE_ROUTE_ERROR": "",
    }
    only_typos = await team.svc.call("presence_route", "asterisk", "999&998")
    assert only_typos.variables["PRESENCE_ROUTE_STATUS"] == "NONE"
    assert only_typos.variables["PRESENCE_ROUTE_SKIPPED"] == "999&998"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("asterisk", "201", "sometimes"), "unknown POLICY"),
        (("asterisk", ""), "missing TARGETS"),
        (("asterisk", " & &"), "missing TARGETS"),
        (("nosuch", "201"), "unknown account"),
    ],
)
async def test_bad_calls_are_failure_with_every_variable_set(team, args, reason):
    """An unknown policy or account, or no targets: FAILURE, reason in ERROR, the rest cleared."""
    result = await team.svc.call("presence_route", *args)
    assert set(result.variables) == ROUTE_VARS
    assert result.variables["PRESENCE_ROUTE_STATUS"] == "FAILURE"
    assert reason in result.variables["PRESENCE_ROUTE_ERROR"]
    assert result.variables["PRESENCE_ROUTE_DIAL"] == "" and result.variables["PRESENCE_ROUTE_COUNT"] == ""
    assert not any(words[0].upper() == "HANGUP" for words in result.commands)


async def test_route_follows_live_presence_changes(team):
    """A member who goes dnd stops ringing on the next call; back to available, rings again."""
    alice = team.clients["201"]
    await show(team.svc, alice, "dnd")
    assert (await team.svc.call("presence_route", "asterisk", "201&202")).variables[
        "PRESENCE_ROUTE_DIAL"
    ] == "PJSIP/202"
    await show(team.svc, alice, "available")
    assert (await team.svc.call("presence_route", "asterisk", "201&202")).variables[
        "PRESENCE_ROUTE_DIAL"
    ] == "PJSIP/201&PJSIP/202"


# -- call_notify ------------------------------------------------------------------------------


CALL_ENV = {"agi_callerid": "5551234", "agi_calleridname": "Test Caller", "agi_extension": "100"}


async def test_notify_extension_with_default_text(team):
    """To an extension: its JID gets 'Incoming call from <name> <number> to <extension>'."""
    result = await team.svc.call("call_notify", "asterisk", "201", env=CALL_ENV)
    assert result.variables == {"CALL_NOTIFY_STATUS": "SUCCESS", "CALL_NOTIFY_ERROR": ""}
    message = await team.clients["201"].next_message(10, sender=team.svc.jid)
    assert message.body == "Incoming call from Test Caller 5551234 to 100"
    assert message.type == "chat"


@pytest.mark.parametrize(
    ("env", "text"),
    [
        ({"agi_calleridname": "unknown"}, "Incoming call from 5551234 to 100"),
        ({"agi_calleridname": "5551234"}, "Incoming call from 5551234 to 100"),
        ({"agi_callerid": "unknown"}, "Incoming call from Test Caller to 100"),
        ({"agi_callerid": "unknown", "agi_calleridname": "unknown"},
         "Incoming call from an unknown caller to 100"),
        ({"agi_extension": "s", "agi_dnid": "600"}, "Incoming call from Test Caller 5551234 to 600"),
    ],
)
async def test_notify_default_text_handles_missing_caller_id(team, env, text):
    """Asterisk's 'unknown' placeholders are left out of the default text, never shown."""
    result = await team.svc.call("call_notify", "asterisk", "202", env={**CALL_ENV, **env})
    assert result.variables["CALL_NOTIFY_STATUS"] == "SUCCESS"
    assert (await team.clients["202"].next_message(10, sender=team.svc.jid)).body == text


async def test_notify_to_jid_with_custom_text(team):
    """To a JID: TEXT (the rest of the arguments, joined with ',') replaces the default text."""
    jid = team.jids["203"]
    result = await team.svc.call("call_notify", "asterisk", jid, "Queue support", " 3 waiting", env=CALL_ENV)
    assert result.variables == {"CALL_NOTIFY_STATUS": "SUCCESS", "CALL_NOTIFY_ERROR": ""}
    message = await team.clients["203"].next_message(10, sender=team.svc.jid)
    assert message.body == "Queue support, 3 waiting"


async def test_notify_custom_text_from_variable(team):
    """var=NAME takes the text, newlines included, from a channel variable."""
    text = "Call for you\nfrom: \"Test\" <5551234>"
    result = await team.svc.call(
        "call_notify?var=POP", "asterisk", "204", channel_vars={"POP": text}, env=CALL_ENV
    )
    assert result.variables["CALL_NOTIFY_STATUS"] == "SUCCESS"
    assert (await team.clients["204"].next_message(10, sender=team.svc.jid)).body == text


async def test_notify_appends_the_last_three_archived_messages_with_the_caller(team):
    """When the caller's number is a directory extension, the last three chats with it follow."""
    svc, caller = team.svc, team.clients["202"]
    caller_jid = team.jids["202"]
    # four messages between the account and 202, alternating: the oldest must not be shown
    assert (await svc.call("jabber_send", "asterisk", caller_jid, "first: not shown")).variables[
        "JABBER_SEND_STATUS"] == "SUCCESS"
    caller.send_message(svc.jid, "can you call me\nback?")
    await eventually(lambda: len(svc.pool.inboxes["asterisk"]) == 1)
    await svc.call("jabber_send", "asterisk", caller_jid, "calling you now")
    caller.send_message(svc.jid, "thanks")

    async def archived() -> bool:
        return len(await svc.services.storage.archive_recent("asterisk", caller_jid, 4)) == 4

    await eventually(archived, what="four archived messages")
    env = {**CALL_ENV, "agi_callerid": "202", "agi_calleridname": "Bob"}
    result = await svc.call("call_notify", "asterisk", "201", env=env)
    assert result.variables["CALL_NOTIFY_STATUS"] == "SUCCESS"
    body = (await team.clients["201"].next_message(10, sender=svc.jid)).body
    lines = body.split("\n")
    assert lines[0] == "Incoming call from Bob 202 to 100"
    assert lines[1] == ""
    assert lines[2] == f"Recent chat with {caller_jid}:"
    own, peer = svc.jid.split("@")[0], caller_jid.split("@")[0]
    assert [line.split("] ", 1)[1] for line in lines[3:]] == [
        f"{peer}: can you call me back?",
        f"{own}: calling you now",
        f"{peer}: thanks",
    ]
    assert all(line.startswith("[") for line in lines[3:])
    assert "not shown" not in body

    # custom text gets the history too; history=no leaves it out
    await svc.call("call_notify", "asterisk", "201", "VIP line", env=env)
    assert (await team.clients["201"].next_message(10, sender=svc.jid)).body.startswith(
        "VIP line\n\nRecent chat with"
    )
    await svc.call("call_notify?history=no", "asterisk", "201", env=env)
    assert (await team.clients["201"].next_message(10, sender=svc.jid)).body == (
        "Incoming call from Bob 202 to 100"
    )


async def test_notify_without_history_when_caller_has_no_chat(team):
    """A caller in the directory with no archived chat gets the plain text, no empty header."""
    env = {**CALL_ENV, "agi_callerid": "203"}
    await team.svc.call("call_notify", "asterisk", "201", env=env)
    body = (await team.clients["201"].next_message(10, sender=team.svc.jid)).body
    assert body == "Incoming call from Test Caller 203 to 100"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("asterisk", "999"), "unknown extension"),
        (("asterisk", "bad@@jid"), "invalid JID"),
        (("asterisk", ""), "missing TARGET"),
        (("nosuch", "201"), "unknown account"),
    ],
)
async def test_notify_bad_target_is_failure(team, args, reason):
    """An unknown extension, bad JID or account: FAILURE with the reason, nothing sent."""
    result = await team.svc.call("call_notify", *args, env=CALL_ENV)
    assert result.variables["CALL_NOTIFY_STATUS"] == "FAILURE"
    assert reason in result.variables["CALL_NOTIFY_ERROR"]
    assert team.svc.pool.counters.sent == 0


@pytest.mark.parametrize(
    ("script", "args", "prefix"),
    [
        ("presence_route", ("asterisk", "201&202"), "PRESENCE_ROUTE"),
        ("call_notify", ("asterisk", "201"), "CALL_NOTIFY"),
        ("call_notify", ("asterisk", "someone@localhost"), "CALL_NOTIFY"),
    ],
)
async def test_a_directory_outage_is_the_one_database_failure(team, monkeypatch, script, args, prefix):
    """A directory the database cannot read is FAILURE 'database unavailable: ...', as for every
    script (scripts/base.py), never a skipped target or another wording."""
    from agi_xmpp.errors import StorageError

    async def database_down(*_args, **_kwargs):
        raise StorageError("directory_get: database is unreachable")

    monkeypatch.setattr(team.svc.services.storage, "directory_get", database_down)
    monkeypatch.setattr(team.svc.services.storage, "directory_find_jid", database_down)
    result = await team.svc.call(script, *args, env=CALL_ENV)
    assert result.variables[f"{prefix}_STATUS"] == "FAILURE"
    assert result.variables[f"{prefix}_ERROR"] == "database unavailable: directory_get: database is unreachable"


async def test_notify_while_offline_is_queued_and_delivered_later(private_prosody, xmpp_client, tmp_path):
    """With the account offline the screen pop is QUEUED, and delivered once it reconnects."""
    jid = private_prosody.register("asterisk", "service-pw")
    alice_jid = private_prosody.register("alice", "alice-pw")
    directory = (make_directory_entry("201", alice_jid),)
    config = service_config(private_prosody, jid, "service-pw", tmp_path, directory=directory)
    async with running_harness(config) as svc:
        private_prosody.kill()
        await eventually(lambda: not svc.pool.session("asterisk").online, what="the session to drop")
        result = await svc.call("call_notify", "asterisk", "201", env=CALL_ENV)
        assert result.variables == {"CALL_NOTIFY_STATUS": "QUEUED", "CALL_NOTIFY_ERROR": ""}
        await asyncio.to_thread(private_prosody.restart)
        alice = await xmpp_client(alice_jid, "alice-pw", server=private_prosody)
        await svc.wait_online(30)
        message = await alice.next_message(15, sender=jid)
        assert message.body == "Incoming call from Test Caller 5551234 to 100"
