"""The voicemail_notified table: which msg_ids were already told (storage), on every backend."""

from __future__ import annotations

from agi_xmpp.storage import Storage

from test_storage import db_url, mariadb_database, postgresql_database  # noqa: F401 - fixtures


def test_notified_msg_ids_survive_a_new_storage_object(db_url):  # noqa: F811
    """Marked once per (mailbox, msg_id); a second mark is False; a reopened database keeps it."""
    storage = Storage(db_url)
    storage.create_all()
    assert storage.voicemail_mark_notified("2001@default", "1796659506-00000001") is True
    assert storage.voicemail_mark_notified("2001@default", "1796659506-00000001") is False
    assert storage.voicemail_mark_notified("2002@default", "1796659506-00000001") is True
    storage.close()
    again = Storage(db_url)
    assert again.voicemail_notified("2001@default", ["1796659506-00000001", "x"]) == {"1796659506-00000001"}
    assert again.voicemail_notified("2001@default", []) == set()
    again.close()
