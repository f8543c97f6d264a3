"""Voicemail spool reading and the notification text (agi_xmpp.voicemail)."""

from __future__ import annotations

import os
from datetime import timezone
from pathlib import Path

import pytest

from agi_xmpp.voicemail import (
    Counts,
    check_spool,
    describe_caller,
    format_event_only,
    format_notification,
    mailbox_dir,
    parse_message_txt,
    scan_mailbox,
)

# As app_voicemail 22 writes it (copied from a message left in the lab).
MSG_TXT = """\
;
; Message Information file
;
[message]
origmailbox=2001
context=agx-vm
macrocontext=
exten=leave
rdnis=unknown
priority=2
callerchan=Local/leave@agx-vm-00000001;2
callerid="Bob Caller" <5550100>
origdate=Mon Dec  7 04:05:06 PM UTC 2026
origtime={origtime}
category=
msg_id={msg_id}
flag={flag}
duration={duration}
"""


def write_message(spool: Path, mailbox: str, folder: str, n: int, *, msg_id: str, origtime: int = 1796659506,
                  duration: int = 4, flag: str = "", audio: tuple[str, ...] = ("wav",)) -> Path:
    box = mailbox_dir(spool, mailbox) / folder
    box.mkdir(parents=True, exist_ok=True)
    txt = box / f"msg{n:04d}.txt"
    txt.write_text(MSG_TXT.format(origtime=origtime, msg_id=msg_id, flag=flag, duration=duration))
    for ext in audio:
        (box / f"msg{n:04d}.{ext}").write_bytes(b"RIFF....")
    return txt


def test_parse_message_txt_reads_the_message_keys():
    """Keys are read case-insensitively; comments and the section header are skipped."""
    values = parse_message_txt(MSG_TXT.format(origtime=1, msg_id="1-0", flag="", duration=7))
    assert values["callerid"] == '"Bob Caller" <5550100>'
    assert values["msg_id"] == "1-0"
    assert values["duration"] == "7"
    assert "message" not in values


def test_scan_finds_inbox_and_urgent_keyed_by_msg_id_oldest_first(tmp_path):
    """INBOX and Urgent are scanned, Old is not; each message carries its msg_id and recording."""
    write_message(tmp_path, "2001@default", "INBOX", 0, msg_id="200-1", origtime=200)
    write_message(tmp_path, "2001@default", "Urgent", 0, msg_id="100-2", origtime=100, flag="Urgent",
                  audio=("WAV", "gsm"))
    write_message(tmp_path, "2001@default", "Old", 0, msg_id="50-3", origtime=50)
    found = scan_mailbox(tmp_path, "2001@default")
    assert [(m.msg_id, m.folder, m.urgent) for m in found] == [("100-2", "Urgent", True), ("200-1", "INBOX", False)]
    assert found[0].recording.name == "msg0000.WAV"  # wav49 preferred to gsm
    assert found[1].recording.name == "msg0000.wav"
    assert found[1].content_type == "audio/wav"


def test_renumbered_files_keep_their_msg_id(tmp_path):
    """After Asterisk renumbers msg0001 to msg0000 the message is still the same msg_id."""
    write_message(tmp_path, "2001@default", "INBOX", 1, msg_id="300-9")
    before = {m.msg_id for m in scan_mailbox(tmp_path, "2001@default")}
    box = mailbox_dir(tmp_path, "2001@default") / "INBOX"
    for f in box.iterdir():
        f.rename(box / f.name.replace("0001", "0000"))
    assert {m.msg_id for m in scan_mailbox(tmp_path, "2001@default")} == before == {"300-9"}


def test_missing_mailbox_is_empty_and_a_path_escape_is_refused(tmp_path):
    """A mailbox never used has no folders (empty); '..' in a mailbox is a ValueError."""
    assert scan_mailbox(tmp_path, "2009@default") == []
    with pytest.raises(ValueError):
        scan_mailbox(tmp_path, "..@default")


def test_txt_without_msg_id_gets_a_stable_key(tmp_path):
    """Asterisk before 12 wrote no msg_id: folder, number and origtime stand in for it."""
    txt = write_message(tmp_path, "7@ctx", "INBOX", 3, msg_id="", origtime=42)
    (found,) = scan_mailbox(tmp_path, "7@ctx")
    assert found.msg_id == "INBOX-msg0003-42"
    assert txt.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_unreadable_spool_is_one_line(tmp_path):
    """check_spool names the path when it cannot be read."""
    tmp_path.chmod(0)
    try:
        assert "not readable" in check_spool(tmp_path)
    finally:
        tmp_path.chmod(0o700)


def test_check_spool_reports_missing_and_not_a_directory(tmp_path):
    """A missing spool and a file in its place each get their own reason; a good one None."""
    assert "does not exist" in check_spool(tmp_path / "nope")
    (tmp_path / "file").write_text("")
    assert "not a directory" in check_spool(tmp_path / "file")
    assert check_spool(tmp_path) is None


def test_notification_text_has_caller_time_duration_urgency_and_counts(tmp_path):
    """The chat says who called, when, how long, urgent or not, and the mailbox counts."""
    write_message(tmp_path, "2001@default", "Urgent", 0, msg_id="1-1", origtime=1796659506, duration=12)
    (message,) = scan_mailbox(tmp_path, "2001@default")
    text = format_notification(message, Counts(new=2, old=5), tz=timezone.utc)
    assert text.splitlines() == [
        "Urgent voicemail from Bob Caller <5550100> for 2001@default",
        "Left 2026-12-07 16:05 UTC, 12 s long.",
        "Mailbox: 2 new, 5 old.",
    ]


def test_event_only_text_and_unknown_callers():
    """delete=yes: the text says the file was not kept; an unknown caller is named so."""
    assert describe_caller("") == describe_caller("Unknown") == "an unknown caller"
    text = format_event_only("2001@default", "Bob <5550100>", Counts(1, 0))
    assert "New voicemail from Bob <5550100>" in text and "not kept" in text
