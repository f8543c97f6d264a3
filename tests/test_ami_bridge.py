"""The AMI bridge's decisions, with a fake pool and a fake AMI link (no Asterisk, no XMPP).

Storage is a real SQLite database, so "never twice" is checked against what is stored.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from agi_xmpp.ami_bridge import AmiBridge
from agi_xmpp.ami_link import AmiEvent, AmiError
from agi_xmpp.config import AccountConfig, AmiConfig, Config, GeneralConfig, make_directory_entry
from agi_xmpp.inbox import InboundMessage
from agi_xmpp.jid import parse_jid
from agi_xmpp.presence import PresenceCache
from agi_xmpp.storage import AsyncStorage, Storage

from fakes import FakePool
from service_harness import eventually
from test_voicemail import write_message


class FakeLink:
    """Answers actions from a table; records them."""

    connected = True
    state = "connected"
    connects = 1  # which login this is; a reconnect makes it 2 before its LINK_UP is handled

    def __init__(self) -> None:
        self.actions: list[tuple[str, dict]] = []
        self.fail: dict[str, str] = {}

    async def action(self, name, **headers):
        self.actions.append((name, headers))
        if name in self.fail:
            raise AmiError(self.fail[name])
        if name == "MailboxCount":
            return {"Response": "Success", "NewMessages": "1", "OldMessages": "3", "UrgMessages": "0"}
        return {"Response": "Success"}

    async def run(self):
        pass

    async def stop(self):
        pass


@pytest.fixture
async def bridge(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    directory = (
        make_directory_entry("2001", "alice@example.com", mailbox="2001@default"),
        make_directory_entry("2002", "bob@example.com"),
    )
    account = AccountConfig(name="asterisk", username="pbx@example.com", secret="x")
    config = Config(
        path=None, general=GeneralConfig(state_dir=str(tmp_path)), accounts={"asterisk": account},
        ami=AmiConfig(username="u", secret="s", voicemail_spool=str(spool), originate_context="out"),
        directory=directory,
    )
    storage = Storage(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    storage.create_all()
    storage.directory_load_config(directory)
    async_storage = AsyncStorage(storage)
    pool = FakePool()
    bridge = AmiBridge(config, async_storage, PresenceCache(), pool)  # type: ignore[arg-type]
    bridge.link = FakeLink()  # type: ignore[assignment]
    bridge.spool = spool
    bridge.fake_pool = pool
    yield bridge
    await async_storage.aclose()


def event(name: str, **headers: str) -> AmiEvent:
    return AmiEvent(name, {"Event": name, **headers})


async def test_each_msg_id_is_notified_once(bridge):
    """MessageWaiting twice for the same message sends one chat, to the mailbox's owner."""
    write_message(bridge.spool, "2001@default", "INBOX", 0, msg_id="1-1")
    mw = event("MessageWaiting", Mailbox="2001@default", Waiting="1", New="1", Old="0")
    await bridge._handle(mw)
    await bridge._handle(mw)
    assert [to for _, to, _ in bridge.fake_pool.sent] == ["alice@example.com"]
    assert "1 new, 0 old" in bridge.fake_pool.sent[0][2]


async def test_resync_reads_counts_from_asterisk_and_skips_unknown_mailboxes(bridge):
    """A resync (no event) asks MailboxCount for the counts; a mailbox nobody owns is ignored."""
    write_message(bridge.spool, "2001@default", "INBOX", 0, msg_id="1-1")
    write_message(bridge.spool, "2999@default", "INBOX", 0, msg_id="9-9")
    await bridge._handle(event("agi-xmpp:link-up"))
    await bridge._handle(event("MessageWaiting", Mailbox="2999@default", New="1", Old="0"))
    assert len(bridge.fake_pool.sent) == 1
    assert "1 new, 3 old" in bridge.fake_pool.sent[0][2]


async def test_upload_failure_leaves_the_text_alone_and_success_adds_the_url(bridge):
    """voicemail_upload: a failed upload sends the text only; a good one the URL after it."""
    import dataclasses

    bridge.ami = dataclasses.replace(bridge.ami, voicemail_upload=True)

    async def broken(_account, _message):
        raise RuntimeError("no upload service")

    bridge._uploader = broken
    write_message(bridge.spool, "2001@default", "INBOX", 0, msg_id="1-1")
    await bridge.mailbox_changed("2001@default", None)
    assert len(bridge.fake_pool.sent) == 1

    async def works(_account, message):
        return f"https://upload.example.com/{message.msg_id}.wav"

    bridge._uploader = works
    write_message(bridge.spool, "2001@default", "INBOX", 1, msg_id="2-2")
    await bridge.mailbox_changed("2001@default", None)
    assert [body for _, _, body in bridge.fake_pool.sent[1:]][1] == "https://upload.example.com/2-2.wav"


async def test_delete_yes_notifies_from_the_event_once_and_not_for_the_owner(bridge):
    """voicemail_delete: no files, so the event's caller is told; the owner's own session and a
    repeat of the same caller channel send nothing."""
    import dataclasses

    bridge.ami = dataclasses.replace(bridge.ami, voicemail_delete=True)
    caller = event("MessageWaiting", Mailbox="2001@default", New="0", Old="0", Uniqueid="17.1",
                   CallerIDNum="5550100", CallerIDName="Bob")
    await bridge._handle(caller)
    await bridge._handle(caller)
    await bridge._handle(event("MessageWaiting", Mailbox="2001@default", New="0", Old="0",
                               Uniqueid="18.1", CallerIDNum="2001"))
    assert len(bridge.fake_pool.sent) == 1
    assert "Bob <5550100>" in bridge.fake_pool.sent[0][2]


def chat(sender: str, body: str) -> InboundMessage:
    return InboundMessage(sender=parse_jid(sender), body=body, kind="chat", stanza_id="x",
                          received_at=time.monotonic())


async def test_only_commands_are_taken_from_the_chat(bridge):
    """'call'/'help' are consumed; any other text goes on to the inbox (jabber_receive)."""
    await bridge.start()
    try:
        (hook,) = bridge.fake_pool.message_hooks
        assert hook("asterisk", chat("alice@example.com/phone", "call 5551234")) is True
        assert hook("asterisk", chat("alice@example.com/phone", "1")) is False
        assert hook("other", chat("alice@example.com/phone", "help")) is False
    finally:
        await bridge.stop()


async def test_originate_and_its_response_reach_the_user(bridge):
    """'call N' originates from the user's device into originate_context; the matching
    OriginateResponse becomes the chat reply."""
    await bridge._command(chat("alice@example.com/phone", "call 5551234"))
    (name, headers), = bridge.link.actions
    assert name == "Originate"
    assert (headers["Channel"], headers["Context"], headers["Exten"], headers["Async"]) == (
        "PJSIP/2001", "out", "5551234", "true")
    assert headers["ChannelId"] == headers["ActionID"]
    await bridge._handle(event("OriginateResponse", ActionID=headers["ActionID"], Response="Failure", Reason="5"))
    bodies = [body for _, _, body in bridge.fake_pool.sent]
    assert bodies[0].startswith("Calling your phone") and bodies[1].startswith("Busy")


async def test_an_early_originate_response_waits_for_the_announcement_without_blocking_events(bridge):
    """An OriginateResponse that comes while "Calling your phone" is still being queued does not
    hold up the event consumer; its outcome is sent right after the announcement, never before."""
    send, release = bridge.fake_pool.send, asyncio.Event()

    async def slow_announcement(account, to, body, kind="chat"):
        if body.startswith("Calling your phone"):
            await release.wait()  # e.g. the outbox write is slow
        return await send(account, to, body, kind)

    bridge.fake_pool.send = slow_announcement
    command = asyncio.create_task(bridge._command(chat("alice@example.com/phone", "call 5551234")))
    await eventually(lambda: bridge.link.actions, what="the Originate")
    (_, headers), = bridge.link.actions
    await bridge._handle(event("OriginateResponse", ActionID=headers["ActionID"], Response="Failure", Reason="5"))
    assert not release.is_set() and bridge.fake_pool.sent == []  # handled, nothing overtook
    release.set()
    await command
    bodies = [body for _, _, body in bridge.fake_pool.sent]
    assert len(bodies) == 2 and bodies[0].startswith("Calling your phone") and bodies[1].startswith("Busy")


async def test_rejected_originate_and_strangers_get_answers(bridge):
    """An Originate Asterisk refuses is reported; a sender not in the directory is refused."""
    bridge.link.fail["Originate"] = "Originate: Permission denied"
    await bridge._command(chat("bob@example.com", "call 100"))
    await bridge._command(chat("mallory@example.net", "call 100"))
    (_, bob, reply), (_, mallory, refusal) = bridge.fake_pool.sent
    assert bob == "bob@example.com" and "Permission denied" in reply
    assert mallory == "mallory@example.net" and "only users in the PBX directory" in refusal


async def test_a_call_pending_when_the_link_drops_is_answered_at_resync(bridge):
    """No OriginateResponse will come for a call of the old connection: the user is told."""
    await bridge._command(chat("alice@example.com/phone", "call 5551234"))
    bridge.link.connects += 1  # the link dropped and logged in again
    await bridge._handle(event("agi-xmpp:link-up"))
    bodies = [body for _, _, body in bridge.fake_pool.sent]
    assert bodies[-1].startswith("The connection to the PBX was lost")
    assert not bridge._calls


async def test_a_call_placed_on_the_new_link_before_its_resync_is_kept(bridge):
    """A call placed after the reconnect but before the LINK_UP event is handled belongs to the
    new connection (its OriginateResponse will come): the resync must not call it lost."""
    await bridge._command(chat("alice@example.com/phone", "call 5551234"))
    bridge.link.connects += 1
    await bridge._command(chat("bob@example.com", "call 5550000"))  # on the new connection
    await bridge._handle(event("agi-xmpp:link-up"))
    lost = [body for _, _, body in bridge.fake_pool.sent if body.startswith("The connection to the PBX was lost")]
    assert len(lost) == 1 and "5551234" in lost[0]
    assert [c.target for c in bridge._calls.values()] == ["5550000"]
    # and a FullyBooted on that same connection loses nothing
    await bridge._handle(event("FullyBooted"))
    assert [c.target for c in bridge._calls.values()] == ["5550000"]


async def test_a_call_placed_while_resync_replies_is_kept(bridge):
    """Resync tells each pending caller their call is lost; a call placed meanwhile (the
    commands task runs while a reply is stored) neither breaks the resync nor is dropped."""
    await bridge._command(chat("alice@example.com/phone", "call 5551234"))
    send = bridge.fake_pool.send

    async def send_and_call_again(account, to, body, kind="chat"):
        outcome = await send(account, to, body, kind)
        if body.startswith("The connection to the PBX was lost"):
            await bridge._command(chat("bob@example.com", "call 5550000"))
        return outcome

    bridge.fake_pool.send = send_and_call_again
    bridge.link.connects += 1
    await bridge._handle(event("agi-xmpp:link-up"))
    assert bridge.counters.resyncs == 1
    assert [c.target for c in bridge._calls.values()] == ["5550000"]


async def test_unreadable_spool_is_reported_once_and_events_do_not_fail(tmp_path, bridge):
    """A missing spool sets spool_error at construction; MessageWaiting then sends nothing and
    raises nothing (without voicemail_delete)."""
    import dataclasses

    ami = dataclasses.replace(bridge.ami, voicemail_spool=str(tmp_path / "missing"))
    config = dataclasses.replace(bridge.config, ami=ami)
    broken = AmiBridge(config, bridge.storage, PresenceCache(), bridge.fake_pool)  # type: ignore[arg-type]
    broken.link = FakeLink()  # type: ignore[assignment]
    assert "does not exist" in broken.spool_error
    await broken._handle(event("MessageWaiting", Mailbox="2001@default", New="1", Old="0"))
    assert bridge.fake_pool.sent == []


async def test_fullybooted_rescans_mailboxes(bridge):
    """FullyBooted (Asterisk came up under a live link) is a resync: the mailbox is rescanned."""
    write_message(bridge.spool, "2001@default", "INBOX", 0, msg_id="5-5")
    await bridge._handle(event("FullyBooted", Status="Fully Booted"))
    assert bridge.counters.resyncs == 1
    assert [to for _, to, _ in bridge.fake_pool.sent] == ["alice@example.com"]


async def test_a_spool_fixed_after_start_is_read_at_the_next_resync(tmp_path, bridge):
    """A spool missing at start (one error) that appears later is read at the next resync
    (reconnect or FullyBooted): its voicemail is notified without restarting the service."""
    import dataclasses

    spool = tmp_path / "late-spool"
    ami = dataclasses.replace(bridge.ami, voicemail_spool=str(spool))
    late = AmiBridge(dataclasses.replace(bridge.config, ami=ami), bridge.storage, PresenceCache(),
                     bridge.fake_pool)  # type: ignore[arg-type]
    late.link = FakeLink()  # type: ignore[assignment]
    assert "does not exist" in late.spool_error
    spool.mkdir()
    write_message(spool, "2001@default", "INBOX", 0, msg_id="7-7")
    await late._handle(event("FullyBooted", Status="Fully Booted"))
    assert late.spool_error is None
    assert [to for _, to, _ in bridge.fake_pool.sent] == ["alice@example.com"]


async def test_a_spool_fixed_after_start_is_read_at_the_next_voicemail(tmp_path, bridge):
    """While the spool is broken each MessageWaiting looks again: the first voicemail after it
    is fixed is notified, with no resync needed."""
    import dataclasses

    spool = tmp_path / "late-spool"
    ami = dataclasses.replace(bridge.ami, voicemail_spool=str(spool))
    late = AmiBridge(dataclasses.replace(bridge.config, ami=ami), bridge.storage, PresenceCache(),
                     bridge.fake_pool)  # type: ignore[arg-type]
    late.link = FakeLink()  # type: ignore[assignment]
    await late._handle(event("MessageWaiting", Mailbox="2001@default", New="1", Old="0"))
    assert bridge.fake_pool.sent == []
    spool.mkdir()
    write_message(spool, "2001@default", "INBOX", 0, msg_id="8-8")
    await late._handle(event("MessageWaiting", Mailbox="2001@default", New="1", Old="0"))
    assert [to for _, to, _ in bridge.fake_pool.sent] == ["alice@example.com"]


async def test_after_stop_chat_commands_go_on_to_the_inbox(bridge):
    """The pool keeps the bridge's hooks: once stopped, a 'call' chat is not taken into a queue
    nobody reads any more, it goes on to the inbox like any message."""
    await bridge.start()
    (hook,) = bridge.fake_pool.message_hooks
    await bridge.stop()
    assert hook("asterisk", chat("alice@example.com/phone", "call 5551234")) is False
