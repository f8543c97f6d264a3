"""The voicemail_notified table: which msg_ids were already told (storage)."""

from __future__ import annotations

from agi_xmpp.storage import Storage


def test_notified_msg_ids_survive_a_new_storage_object(tmp_path):
    """Marked once per (mailbox, msg_id); a second mark is False; a reopened database keeps it."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    storage = Storage(url)
    storage.create_all()
    assert storage.voicemail_mark_notified("2001@default", "100-1") is True
    assert storage.voicemail_mark_notified("2001@default", "100-1") is False
    assert storage.voicemail_mark_notified("2002@default", "100-1") is True
    storage.close()
    again = Storage(url)
    assert again.voicemail_notified("2001@default", ["100-1", "100-2"]) == {"100-1"}
    again.close()
