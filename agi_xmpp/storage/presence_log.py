"""The ``presence_log`` table: presence changes of contacts as each account saw them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Index, Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column

from ..jid import parse_jid
from .core import RowInsert, StorageCore
from .schema import (
    ACCOUNT_LEN, JID_LEN, MYSQL_PREFIX, TABLE_OPTIONS, Base, LongText, RowId, UtcDateTime,
    account_key, as_utc, bare_jid, checked_text, mysql_prefix, utc_now,
)


@dataclass(frozen=True, slots=True)
class PresenceRecord:
    """One presence-log row; ``jid`` is the full JID the presence came from."""

    account: str
    jid: str
    show: str
    priority: int
    status: str
    at: datetime


class PresenceLogRow(Base):
    __tablename__ = "presence_log"
    __table_args__ = (
        Index(None, "account", "bare", "id", **mysql_prefix(bare=MYSQL_PREFIX)),
        TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(ACCOUNT_LEN))
    jid: Mapped[str] = mapped_column(String(JID_LEN))
    bare: Mapped[str] = mapped_column(String(JID_LEN))
    show: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(LongText)
    at: Mapped[datetime] = mapped_column(UtcDateTime())


class PresenceLogTable(StorageCore):
    """The presence log: every presence change seen, per account."""

    def presence_log_add(
        self,
        account: str,
        jid: str,
        show: str,
        priority: int,
        status: str,
        at: datetime | None = None,
    ) -> None:
        """Record one presence change of ``jid`` (full JID) as seen by ``account``."""
        self._insert_many([presence_insert(account, jid, show, priority, status, at)])

    def presence_log_recent(self, account: str, bare: str, limit: int = 20) -> list[PresenceRecord]:
        """The last ``limit`` presence changes of any resource of ``bare``, oldest first."""
        if limit <= 0:
            return []
        query = (
            select(PresenceLogRow)
            .where(
                PresenceLogRow.account == account_key(account), PresenceLogRow.bare == bare_jid(bare)
            )
            .order_by(PresenceLogRow.id.desc())
            .limit(limit)
        )
        with self._read("presence_log_recent") as session:
            rows = [_presence_record(row) for row in session.scalars(query)]
        rows.reverse()
        return rows

    # -- voicemail notifications -------------------------------------------------------------------

def presence_insert(
    account: str, jid: str, show: str, priority: int, status: str, at: datetime | None
) -> RowInsert:
    op = "presence_log_add"
    parsed = parse_jid(checked_text(op, "jid", jid, JID_LEN))
    return RowInsert(
        op,
        PresenceLogRow,
        {
            "account": account_key(checked_text(op, "account", account, ACCOUNT_LEN)),
            "jid": parsed.full,
            "bare": parsed.bare,
            "show": checked_text(op, "show", show, 16),
            "priority": int(priority),
            "status": checked_text(op, "status", status, empty=True),
            "at": utc_now() if at is None else as_utc(at, "at"),
        },
    )


def _presence_record(row: PresenceLogRow) -> PresenceRecord:
    return PresenceRecord(
        account=row.account,
        jid=row.jid,
        show=row.show,
        priority=row.priority,
        status=row.status,
        at=row.at,
    )
