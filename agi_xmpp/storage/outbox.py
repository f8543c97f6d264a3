"""The ``outbox`` table: the delivery promise (docs/reliability.md, docs/storage.md).

``outbox_add`` returning means the row survives a kill of the process; ``XmppPool`` drains
``pending`` rows, marks them ``acked`` when the server's XEP-0198 ``h`` covers them, ``failed``
on a permanent error stanza, and ``expired`` once ``outbox_ttl`` has passed.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import CheckConstraint, Index, Integer, String, delete, func, select, update
from sqlalchemy.orm import Mapped, mapped_column

from .core import IN_CHUNK, RowInsert, StorageCore, chunks, rowcount
from .schema import (
    ACCOUNT_LEN, ERROR_LEN, JID_LEN, STANZA_ID_LEN, TABLE_OPTIONS, Base, LongText, RowId,
    UtcDateTime, account_key, as_utc, checked_choice, checked_text, clip, utc_now,
)


class OutboxState(enum.StrEnum):
    """``pending`` until the server acks it (``acked``) or ``outbox_ttl`` ends (``expired``);
    ``failed`` when an error stanza refused it for good (``last_error`` says why)."""

    PENDING = "pending"
    ACKED = "acked"
    EXPIRED = "expired"
    FAILED = "failed"


class MessageKind(enum.StrEnum):
    """The stanza type an outbox row is sent as."""

    CHAT = "chat"
    GROUPCHAT = "groupchat"


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One outbox row."""

    id: int
    account: str
    to_jid: str
    body: str
    kind: MessageKind
    stanza_id: str
    state: OutboxState
    attempts: int
    created_at: datetime
    acked_at: datetime | None
    last_error: str | None = None  # the last error stanza's condition and text, if any


class OutboxRow(Base):
    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint("kind IN ('chat', 'groupchat')", name="kind"),
        CheckConstraint("state IN ('pending', 'acked', 'expired', 'failed')", name="state"),
        Index(None, "account", "state", "id"),  # outbox_pending
        Index(None, "state", "created_at"),  # outbox_expire, outbox_purge
        TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(ACCOUNT_LEN))
    to_jid: Mapped[str] = mapped_column(String(JID_LEN))
    body: Mapped[str] = mapped_column(LongText)
    kind: Mapped[str] = mapped_column(String(16))
    stanza_id: Mapped[str] = mapped_column(String(STANZA_ID_LEN), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    acked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_error: Mapped[str | None] = mapped_column(String(ERROR_LEN))


class OutboxTable(StorageCore):
    """The outbox: messages to send, until the server acks them, ``outbox_ttl`` ends, or an
error stanza refuses them."""

    def outbox_add(
        self, account: str, to: str, body: str, stanza_id: str, kind: str = "chat"
    ) -> None:
        """Store one outgoing message as ``pending``; committed before this returns."""
        self._insert_many([outbox_insert(account, to, body, stanza_id, kind)])

    def outbox_pending(self, account: str, created_after: datetime) -> list[OutboxItem]:
        """Pending rows of ``account`` created at or after ``created_after``, oldest first."""
        after = as_utc(created_after, "created_after")
        query = (
            select(OutboxRow)
            .where(
                OutboxRow.account == account_key(account),
                OutboxRow.state == OutboxState.PENDING.value,
                OutboxRow.created_at >= after,
            )
            .order_by(OutboxRow.id)  # insertion order: immune to clock steps
        )
        with self._read("outbox_pending") as session:
            return [_outbox_item(row) for row in session.scalars(query)]

    def outbox_get(self, stanza_id: str) -> OutboxItem | None:
        """The row with this stanza id, whatever its state, or ``None``."""
        with self._read("outbox_get") as session:
            row = session.scalars(
                select(OutboxRow).where(OutboxRow.stanza_id == stanza_id)
            ).first()
            return None if row is None else _outbox_item(row)

    def outbox_in_states(self, states: Iterable[str]) -> list[OutboxItem]:
        """Every row in one of ``states`` (any account), oldest first: a read-only view for
        reports such as the soak's count of refused messages."""
        wanted = [checked_choice("outbox_in_states", "state", s, OutboxState) for s in states]
        if not wanted:
            return []
        query = select(OutboxRow).where(OutboxRow.state.in_(wanted)).order_by(OutboxRow.id)
        with self._read("outbox_in_states") as session:
            return [_outbox_item(row) for row in session.scalars(query)]

    def outbox_acked(self, stanza_ids: Iterable[str]) -> int:
        """Mark these rows ``acked`` (from ``pending`` or ``expired``, never from ``failed``);
        return how many changed."""
        ids = list(dict.fromkeys(stanza_ids))
        if not ids:
            return 0
        now = utc_now()
        changed = 0
        with self._write("outbox_acked") as session:
            for chunk in chunks(ids, IN_CHUNK):
                result = session.execute(
                    update(OutboxRow)
                    .where(
                        OutboxRow.stanza_id.in_(chunk),
                        OutboxRow.state.in_([OutboxState.PENDING.value, OutboxState.EXPIRED.value]),
                    )
                    .values(state=OutboxState.ACKED.value, acked_at=now)
                    .execution_options(synchronize_session=False)
                )
                changed += rowcount(result)
        return changed

    def outbox_bounced(self, stanza_id: str, *, permanent: bool, reason: str) -> OutboxItem | None:
        """An error stanza came back for this row: ``failed`` if ``permanent``, else ``pending``
        again (a ``wait`` error: retried later, until ``outbox_ttl``); ``last_error`` keeps
        ``reason``. Returns the updated row, or ``None`` for an unknown id."""
        state = OutboxState.FAILED if permanent else OutboxState.PENDING
        with self._write("outbox_bounced") as session:
            row = session.scalars(select(OutboxRow).where(OutboxRow.stanza_id == stanza_id)).first()
            if row is None:
                return None
            if row.state != OutboxState.EXPIRED.value:  # expired stays expired: its time is up
                row.state = state.value
                row.acked_at = None
            row.last_error = clip(reason, ERROR_LEN)
            session.flush()
            return _outbox_item(row)

    def outbox_attempted(self, stanza_id: str) -> None:
        """Count one more transmission of this row (no-op for an unknown id)."""
        with self._write("outbox_attempted") as session:
            session.execute(
                update(OutboxRow)
                .where(OutboxRow.stanza_id == stanza_id)
                .values(attempts=OutboxRow.attempts + 1)
                .execution_options(synchronize_session=False)
            )

    def outbox_expire(self, created_before: datetime) -> int:
        """Turn ``pending`` rows created before the cutoff into ``expired``; return how many."""
        before = as_utc(created_before, "created_before")
        with self._write("outbox_expire") as session:
            result = session.execute(
                update(OutboxRow)
                .where(
                    OutboxRow.state == OutboxState.PENDING.value,
                    OutboxRow.created_at < before,
                )
                .values(state=OutboxState.EXPIRED.value)
                .execution_options(synchronize_session=False)
            )
            return rowcount(result)

    def outbox_purge(self, created_before: datetime) -> int:
        """Delete ``acked``/``expired``/``failed`` rows created before the cutoff; return how many."""
        before = as_utc(created_before, "created_before")
        with self._write("outbox_purge") as session:
            result = session.execute(
                delete(OutboxRow)
                .where(
                    OutboxRow.state.in_(
                        [OutboxState.ACKED.value, OutboxState.EXPIRED.value, OutboxState.FAILED.value]
                    ),
                    OutboxRow.created_at < before,
                )
                .execution_options(synchronize_session=False)
            )
            return rowcount(result)

    def outbox_counts(self) -> dict[tuple[str, str], int]:
        """Rows per ``(account, state)``, for ``/metrics``."""
        query = select(OutboxRow.account, OutboxRow.state, func.count()).group_by(
            OutboxRow.account, OutboxRow.state
        )
        with self._read("outbox_counts") as session:
            return {(account, state): count for account, state, count in session.execute(query)}

    # -- archive -----------------------------------------------------------------------------------

def outbox_insert(account: str, to: str, body: str, stanza_id: str, kind: str) -> RowInsert:
    op = "outbox_add"
    return RowInsert(
        op,
        OutboxRow,
        {
            "account": account_key(checked_text(op, "account", account, ACCOUNT_LEN)),
            "to_jid": checked_text(op, "to", to, JID_LEN),
            "body": checked_text(op, "body", body, empty=True),
            "kind": checked_choice(op, "kind", kind, MessageKind),
            "stanza_id": checked_text(op, "stanza_id", stanza_id, STANZA_ID_LEN),
            "state": OutboxState.PENDING.value,
            "attempts": 0,
            "created_at": utc_now(),
            "acked_at": None,
        },
        conflict=f"stanza id {stanza_id!r} is already in the outbox",
    )


def _outbox_item(row: OutboxRow) -> OutboxItem:
    return OutboxItem(
        id=row.id,
        account=row.account,
        to_jid=row.to_jid,
        body=row.body,
        kind=MessageKind(row.kind),
        stanza_id=row.stanza_id,
        state=OutboxState(row.state),
        attempts=row.attempts,
        created_at=row.created_at,
        acked_at=row.acked_at,
        last_error=row.last_error,
    )

