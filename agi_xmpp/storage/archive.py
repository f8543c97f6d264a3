"""The ``message_archive`` table: messages exchanged with each peer (``call_notify`` reads the
last few), and XEP-0184 delivery receipts recorded on the outgoing ones (``delivered_at``).

``peer`` is always the normalised bare JID of the other side.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import CheckConstraint, Index, String, delete, select, update
from sqlalchemy.orm import Mapped, mapped_column

from .core import RowInsert, StorageCore, rowcount
from .schema import (
    ACCOUNT_LEN, JID_LEN, MYSQL_PREFIX, STANZA_ID_LEN, TABLE_OPTIONS, Base, LongText, RowId,
    UtcDateTime, account_key, as_utc, bare_jid, checked_choice, checked_text, mysql_prefix,
    utc_now,
)


class Direction(enum.StrEnum):
    """Which way an archived message went."""

    IN = "in"
    OUT = "out"


@dataclass(frozen=True, slots=True)
class ArchivedMessage:
    """One archived message; ``peer`` is the normalised bare JID of the other side."""

    id: int
    direction: Direction
    account: str
    peer: str
    body: str
    stanza_id: str | None
    created_at: datetime
    delivered_at: datetime | None = None  # when the recipient's client sent a XEP-0184 receipt


class ArchiveRow(Base):
    __tablename__ = "message_archive"
    __table_args__ = (
        CheckConstraint("direction IN ('in', 'out')", name="direction"),
        Index(None, "account", "peer", "id", **mysql_prefix(peer=MYSQL_PREFIX)),
        TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    direction: Mapped[str] = mapped_column(String(3))
    account: Mapped[str] = mapped_column(String(ACCOUNT_LEN))
    peer: Mapped[str] = mapped_column(String(JID_LEN))
    body: Mapped[str] = mapped_column(LongText)
    stanza_id: Mapped[str | None] = mapped_column(String(STANZA_ID_LEN))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())  # XEP-0184 receipt


class ArchiveTable(StorageCore):
    """The message archive, and XEP-0184 receipts on its outgoing rows."""

    def archive_add(
        self, direction: str, account: str, peer: str, body: str, stanza_id: str | None
    ) -> None:
        """Archive one message exchanged with ``peer`` (any JID; stored as its bare JID)."""
        self._insert_many([archive_insert(direction, account, peer, body, stanza_id)])

    def archive_purge(self, created_before: datetime) -> int:
        """Delete archived messages created before the cutoff (``archive_retention``)."""
        before = as_utc(created_before, "created_before")
        with self._write("archive_purge") as session:
            result = session.execute(
                delete(ArchiveRow)
                .where(ArchiveRow.created_at < before)
                .execution_options(synchronize_session=False)
            )
            return rowcount(result)

    def archive_delivered(self, stanza_id: str) -> int:
        """Record a XEP-0184 receipt on the outgoing archived message with this id; how many."""
        with self._write("archive_delivered") as session:
            result = session.execute(
                update(ArchiveRow)
                .where(ArchiveRow.stanza_id == stanza_id, ArchiveRow.direction == Direction.OUT.value,
                       ArchiveRow.delivered_at.is_(None))
                .values(delivered_at=utc_now())
                .execution_options(synchronize_session=False)
            )
            return rowcount(result)

    def archive_recent(self, account: str, peer_bare: str, limit: int = 3) -> list[ArchivedMessage]:
        """The last ``limit`` messages exchanged with ``peer_bare``, returned oldest first."""
        if limit <= 0:
            return []
        query = (
            select(ArchiveRow)
            .where(ArchiveRow.account == account_key(account), ArchiveRow.peer == bare_jid(peer_bare))
            .order_by(ArchiveRow.id.desc())
            .limit(limit)
        )
        with self._read("archive_recent") as session:
            rows = [_archived(row) for row in session.scalars(query)]
        rows.reverse()
        return rows

    # -- directory ---------------------------------------------------------------------------------

def archive_insert(
    direction: str, account: str, peer: str, body: str, stanza_id: str | None
) -> RowInsert:
    op = "archive_add"
    if stanza_id is not None:
        stanza_id = checked_text(op, "stanza_id", stanza_id, STANZA_ID_LEN, empty=True) or None
    return RowInsert(
        op,
        ArchiveRow,
        {
            "direction": checked_choice(op, "direction", direction, Direction),
            "account": account_key(checked_text(op, "account", account, ACCOUNT_LEN)),
            "peer": bare_jid(checked_text(op, "peer", peer, JID_LEN)),
            "body": checked_text(op, "body", body, empty=True),
            "stanza_id": stanza_id,
            "created_at": utc_now(),
        },
    )


def _archived(row: ArchiveRow) -> ArchivedMessage:
    return ArchivedMessage(
        id=row.id,
        direction=Direction(row.direction),
        account=row.account,
        peer=row.peer,
        body=row.body,
        stanza_id=row.stanza_id,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
    )

