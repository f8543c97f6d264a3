"""The ``voicemail_notified`` table: voicemails whose owner was already told (docs/ami.md), so a
restart or an AMI resync does not notify twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from ..errors import StorageError
from .core import IN_CHUNK, StorageCore, chunks
from .schema import MAILBOX_LEN, STANZA_ID_LEN, TABLE_OPTIONS, Base, UtcDateTime, checked_text, utc_now


class VoicemailNotifiedRow(Base):
    """A voicemail (by app_voicemail's ``msg_id``) whose owner was told about it (docs/ami.md)."""

    __tablename__ = "voicemail_notified"
    __table_args__ = (TABLE_OPTIONS,)

    mailbox: Mapped[str] = mapped_column(String(MAILBOX_LEN), primary_key=True)
    msg_id: Mapped[str] = mapped_column(String(STANZA_ID_LEN), primary_key=True)
    notified_at: Mapped[datetime] = mapped_column(UtcDateTime())


class VoicemailNotifiedTable(StorageCore):
    """Which voicemails (app_voicemail's ``msg_id``) were already told to their owner."""

    def voicemail_notified(self, mailbox: str, msg_ids: Iterable[str]) -> set[str]:
        """Which of ``msg_ids`` of ``mailbox`` were already notified."""
        wanted = list(dict.fromkeys(msg_ids))
        found: set[str] = set()
        with self._read("voicemail_notified") as session:
            for chunk in chunks(wanted, IN_CHUNK):
                query = select(VoicemailNotifiedRow.msg_id).where(
                    VoicemailNotifiedRow.mailbox == mailbox, VoicemailNotifiedRow.msg_id.in_(chunk)
                )
                found.update(session.scalars(query))
        return found

    def voicemail_mark_notified(self, mailbox: str, msg_id: str) -> bool:
        """Remember that ``msg_id`` was notified; False if it already was."""
        checked_text("voicemail_mark_notified", "msg_id", msg_id, STANZA_ID_LEN)
        try:
            with self._write("voicemail_mark_notified") as session:
                if session.get(VoicemailNotifiedRow, (mailbox, msg_id)) is not None:
                    return False
                session.add(VoicemailNotifiedRow(mailbox=mailbox, msg_id=msg_id, notified_at=utc_now()))
        except StorageError as exc:
            if isinstance(exc.__cause__, IntegrityError):  # another writer got there first
                return False
            raise
        return True

