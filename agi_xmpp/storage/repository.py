"""``Storage``: the tables put together on one engine, and ``create_all`` (with the in-place
upgrade of tables made by earlier builds)."""

from __future__ import annotations

from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

from .archive import ArchiveRow, ArchiveTable
from .core import translated
from .directory import DirectoryTable
from .outbox import OutboxRow, OutboxTable
from .presence_log import PresenceLogTable
from .schema import ERROR_LEN, Base
from .voicemail_notified import VoicemailNotifiedTable


class Storage(OutboxTable, ArchiveTable, DirectoryTable, PresenceLogTable, VoicemailNotifiedTable):
    """Repository over one database URL (SQLite, PostgreSQL or MariaDB/MySQL). Thread-safe.

    Each table's methods live in its own module; they share one engine (``core.StorageCore``).
    """

    def create_all(self) -> None:
        """Create every missing table and index (no migrations yet: see docs/storage.md)."""
        with translated("create_all"):
            _upgrade_tables(self._write_engine)
            Base.metadata.create_all(self._write_engine)


def _upgrade_tables(engine: Engine) -> None:
    """Bring tables created by earlier builds to the current shape (docs/storage.md).

    ``message_archive`` gains ``delivered_at`` (a plain added column). ``outbox`` gains
    ``last_error`` and ``failed`` in the state check. PostgreSQL and MariaDB swap the named check
    constraint; SQLite cannot alter a constraint, so its table is rebuilt in one transaction (the
    rows are kept)."""
    states = "state IN ('pending', 'acked', 'expired', 'failed')"
    with engine.begin() as conn:  # one connection: SQLite would lock a second one out
        inspector = inspect(conn)
        tables = inspector.get_table_names()
        if "message_archive" in tables and "delivered_at" not in {
            c["name"] for c in inspector.get_columns("message_archive")
        }:
            kind = ArchiveRow.__table__.c.delivered_at.type.compile(dialect=engine.dialect)
            conn.execute(text(f"ALTER TABLE message_archive ADD COLUMN delivered_at {kind}"))
        if "outbox" not in tables:
            return
        if "last_error" in {c["name"] for c in inspector.get_columns("outbox")}:
            return
        if engine.dialect.name == "sqlite":
            columns = "id, account, to_jid, body, kind, stanza_id, state, attempts, created_at, acked_at"
            for index in inspector.get_indexes("outbox"):
                conn.execute(text(f'DROP INDEX "{index["name"]}"'))
            conn.execute(text("ALTER TABLE outbox RENAME TO outbox_before_upgrade"))
            OutboxRow.__table__.create(conn)
            conn.execute(text(f"INSERT INTO outbox ({columns}) SELECT {columns} FROM outbox_before_upgrade"))
            conn.execute(text("DROP TABLE outbox_before_upgrade"))
            return
        conn.execute(text(f"ALTER TABLE outbox ADD COLUMN last_error VARCHAR({ERROR_LEN})"))
        conn.execute(text("ALTER TABLE outbox DROP CONSTRAINT ck_outbox_state"))
        conn.execute(text(f"ALTER TABLE outbox ADD CONSTRAINT ck_outbox_state CHECK ({states})"))

