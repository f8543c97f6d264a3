"""Durable state: the outbox, the message archive, the directory and the presence log.

SQLAlchemy 2 models and repository methods (``Storage``, synchronous), and ``AsyncStorage``, which
runs the same methods on one dedicated worker thread so the event loop never blocks. Nothing
SQLAlchemy-shaped leaves this module: callers get frozen dataclasses and our own exceptions.

Theory of operation
-------------------
- Every public method is one short transaction, committed before it returns. ``outbox_add``
  returning means the row survives a kill of the process (docs/reliability.md); see docs/storage.md for what
  each backend promises beyond that (power loss).
- Errors: anything the database refuses becomes ``StorageError`` (``DirectoryError`` for a
  directory entry that is malformed or duplicated). Text we could not store faithfully (NUL, a
  value longer than its column) is refused with ``StorageError`` before it reaches the database,
  identically on every backend. Arguments outside the documented domain (a direction that is not
  ``in``/``out``, a naive ``datetime``) are programming errors: ``ValueError``.
  Exception texts never carry message bodies (``hide_parameters=True``; we quote only the driver's
  own reason), so they are safe to log at ``info``.
- Time: every timestamp is timezone-aware UTC on the way in and out. PostgreSQL stores
  ``timestamptz``; SQLite and MariaDB store naive UTC (MariaDB with microseconds, ``DATETIME(6)``).
- JIDs: ``peer`` and the directory's JIDs are normalised with ``jid.parse_jid`` (RFC 7622), so
  ``Alice@Example.COM/phone`` and ``alice@example.com`` are the same peer.
- Text: bodies are ``LONGTEXT`` on MariaDB (``TEXT`` stops at 65,535 bytes) and every MariaDB table
  is ``utf8mb4`` with the binary collation, so emoji round-trip and comparisons are exact and
  case-sensitive, as on SQLite and PostgreSQL.
- SQLite: WAL, ``synchronous=NORMAL``, foreign keys on, 5 s busy timeout. We issue ``BEGIN``
  ourselves (pysqlite's implicit transactions do not cover SELECT) and writes use
  ``BEGIN IMMEDIATE``, so a second process (the CLI) waits for the lock instead of failing with
  "database is locked" halfway through a read-then-write transaction.

Group commit (decision)
-----------------------
``AsyncStorage`` batches the append-only writes (``outbox_add``, ``archive_add``,
``presence_log_add``): callers enqueue their row and wait; the worker thread takes everything
queued so far (up to ``_MAX_BATCH`` rows) and inserts it in ONE transaction, then resolves each
caller only after that commit. Nobody waits for a batch to fill: while one commit is in progress
the next batch accumulates by itself, so an idle system commits each row at once and a busy one
amortises the commit (an fsync on PostgreSQL/MariaDB) over many rows. If the batch fails because
of one row (a duplicate stanza id, a constraint), the rows are retried one by one so only the
offending caller gets the error; if the database is unreachable every caller gets it at once.
It is kept because it is small and the 1,000 ``jabber_send``/s target needs it: measured
(docs/storage.md), one sender gets ~1,000 sends/s on SQLite and ~250 on PostgreSQL, where every
commit waits for a disk flush; 100 concurrent senders get ~12,000 and ~5,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import threading
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar

import structlog
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import URL, Dialect, Engine, make_url
from sqlalchemy.exc import ArgumentError, DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

from .config import DirectoryEntry  # one DirectoryEntry for config and database alike
from .errors import DirectoryError, InvalidJid, StorageError
from .jid import parse_jid
from .state_files import create_private_file, ensure_private_dir

__all__ = [
    "ArchivedMessage",
    "AsyncStorage",
    "Direction",
    "DirectoryEntry",
    "DirectorySource",
    "MessageKind",
    "OutboxItem",
    "OutboxState",
    "PresenceRecord",
    "Storage",
]

log = structlog.get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# Column sizes. A full JID is at most 3 x 1023 octets plus separators (RFC 7622 §3); an account
# is a config section name; Asterisk extensions are at most 80 characters (AST_MAX_EXTENSION).
_JID_LEN = 3071
_ACCOUNT_LEN = 255
_STANZA_ID_LEN = 255
_ERROR_LEN = 1024
_EXTENSION_LEN = 80
_DEVICE_LEN = 255
_MAILBOX_LEN = 255
# MariaDB/InnoDB index keys are at most 3072 bytes (768 utf8mb4 characters): long JID columns are
# indexed on a prefix there. The prefix only narrows the index; the WHERE clause stays exact.
_MYSQL_PREFIX = 255
# Bound on rows per group-commit transaction and on parameters per IN (...) list.
_MAX_BATCH = 1000
_IN_CHUNK = 500
_SQLITE_BUSY_TIMEOUT_MS = 5000
_BEGIN_OPTION = "agi_xmpp_sqlite_begin"


# -- what callers see ------------------------------------------------------------------------------


class Direction(enum.StrEnum):
    """Which way an archived message went."""

    IN = "in"
    OUT = "out"


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


class DirectorySource(enum.StrEnum):
    """Where a directory row came from: the ``[directory]`` section, or the CLI/HTTP API."""

    CONFIG = "config"
    DB = "db"


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


@dataclass(frozen=True, slots=True)
class PresenceRecord:
    """One presence-log row; ``jid`` is the full JID the presence came from."""

    account: str
    jid: str
    show: str
    priority: int
    status: str
    at: datetime


class _EntryLike(Protocol):
    """Anything shaped like ``config.DirectoryEntry`` (duck-typed: storage only reads it)."""

    @property
    def extension(self) -> str: ...
    @property
    def jid(self) -> str: ...
    @property
    def device(self) -> str | None: ...
    @property
    def mailbox(self) -> str | None: ...


# -- the schema ------------------------------------------------------------------------------------


class _UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC in and out; ``timestamptz`` on PostgreSQL, naive UTC elsewhere."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))  # default DATETIME drops µs
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.TIMESTAMP(timezone=True))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = _utc(value, "timestamp")
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# TEXT on MariaDB holds 65,535 bytes; a 65,536-byte message (max_message_bytes) needs more.
_LongText = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
# SQLite only auto-numbers a column declared exactly INTEGER PRIMARY KEY.
_RowId = BigInteger().with_variant(Integer(), "sqlite")

_TABLE_OPTIONS = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
    "mariadb_engine": "InnoDB",
    "mariadb_charset": "utf8mb4",
    "mariadb_collate": "utf8mb4_bin",
}


def _prefix(**columns: int) -> dict[str, Any]:
    return {"mysql_length": columns, "mariadb_length": columns}


class _Base(DeclarativeBase):
    # Named constraints, so a later Alembic migration can refer to them on every backend.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class _DirectoryRow(_Base):
    __tablename__ = "directory"
    __table_args__ = (
        CheckConstraint("source IN ('config', 'db')", name="source"),
        Index(None, "jid_bare", **_prefix(jid_bare=_MYSQL_PREFIX)),
        Index(None, "mailbox"),
        _TABLE_OPTIONS,
    )

    extension: Mapped[str] = mapped_column(String(_EXTENSION_LEN), primary_key=True)
    jid: Mapped[str] = mapped_column(String(_JID_LEN))
    # The bare form of ``jid`` (normalised), for lookups by sender.
    jid_bare: Mapped[str] = mapped_column(String(_JID_LEN))
    device: Mapped[str | None] = mapped_column(String(_DEVICE_LEN))
    mailbox: Mapped[str | None] = mapped_column(String(_MAILBOX_LEN))
    source: Mapped[str] = mapped_column(String(8))


class _ArchiveRow(_Base):
    __tablename__ = "message_archive"
    __table_args__ = (
        CheckConstraint("direction IN ('in', 'out')", name="direction"),
        Index(None, "account", "peer", "id", **_prefix(peer=_MYSQL_PREFIX)),
        _TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(_RowId, primary_key=True, autoincrement=True)
    direction: Mapped[str] = mapped_column(String(3))
    account: Mapped[str] = mapped_column(String(_ACCOUNT_LEN))
    peer: Mapped[str] = mapped_column(String(_JID_LEN))
    body: Mapped[str] = mapped_column(_LongText)
    stanza_id: Mapped[str | None] = mapped_column(String(_STANZA_ID_LEN))
    created_at: Mapped[datetime] = mapped_column(_UtcDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(_UtcDateTime())  # XEP-0184 receipt


class _OutboxRow(_Base):
    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint("kind IN ('chat', 'groupchat')", name="kind"),
        CheckConstraint("state IN ('pending', 'acked', 'expired', 'failed')", name="state"),
        Index(None, "account", "state", "id"),  # outbox_pending
        Index(None, "state", "created_at"),  # outbox_expire, outbox_purge
        _TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(_RowId, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(_ACCOUNT_LEN))
    to_jid: Mapped[str] = mapped_column(String(_JID_LEN))
    body: Mapped[str] = mapped_column(_LongText)
    kind: Mapped[str] = mapped_column(String(16))
    stanza_id: Mapped[str] = mapped_column(String(_STANZA_ID_LEN), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(_UtcDateTime())
    acked_at: Mapped[datetime | None] = mapped_column(_UtcDateTime())
    last_error: Mapped[str | None] = mapped_column(String(_ERROR_LEN))


class _PresenceLogRow(_Base):
    __tablename__ = "presence_log"
    __table_args__ = (
        Index(None, "account", "bare", "id", **_prefix(bare=_MYSQL_PREFIX)),
        _TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(_RowId, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(_ACCOUNT_LEN))
    jid: Mapped[str] = mapped_column(String(_JID_LEN))
    bare: Mapped[str] = mapped_column(String(_JID_LEN))
    show: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(_LongText)
    at: Mapped[datetime] = mapped_column(_UtcDateTime())


class _VoicemailNotifiedRow(_Base):
    """A voicemail (by app_voicemail's ``msg_id``) whose owner was told about it (docs/ami.md)."""

    __tablename__ = "voicemail_notified"
    __table_args__ = (_TABLE_OPTIONS,)

    mailbox: Mapped[str] = mapped_column(String(_MAILBOX_LEN), primary_key=True)
    msg_id: Mapped[str] = mapped_column(String(_STANZA_ID_LEN), primary_key=True)
    notified_at: Mapped[datetime] = mapped_column(_UtcDateTime())


@dataclass(frozen=True, slots=True)
class _Insert:
    """One prepared append-only row (the unit of group commit)."""

    op: str
    model: type[_Base]
    values: dict[str, Any]
    conflict: str = ""  # what an IntegrityError on this row means, for the caller


# -- the repository --------------------------------------------------------------------------------


class Storage:
    """Repository over one database URL (SQLite, PostgreSQL or MariaDB/MySQL). Thread-safe."""

    def __init__(self, url: str) -> None:
        sa_url = _engine_url(url)
        self._url = sa_url
        kwargs: dict[str, Any] = {"hide_parameters": True}
        if sa_url.get_backend_name() == "sqlite":
            database = sa_url.database or ""
            in_memory = database in ("", ":memory:")
            if not in_memory and not database.startswith("file:"):
                try:
                    # Private whatever the umask: the archive holds message bodies. SQLite gives
                    # its -wal/-shm/-journal files the database file's mode (os_unix.c).
                    if not Path(database).parent.exists():
                        ensure_private_dir(Path(database).parent)
                    create_private_file(database)
                except OSError as exc:
                    raise StorageError(
                        f"cannot create the directory for {database}: {exc}"
                    ) from exc
            # The pool hands a connection to one thread at a time; AsyncStorage's worker is not
            # the thread that created the first one.
            kwargs["connect_args"] = {"check_same_thread": False}
            if in_memory:
                kwargs["poolclass"] = StaticPool  # one shared connection, or each sees an empty DB
        else:
            kwargs["pool_pre_ping"] = True  # a restarted server leaves dead pooled connections
            kwargs["pool_recycle"] = 1800
        try:
            self._engine: Engine = create_engine(sa_url, **kwargs)
        except (ArgumentError, ImportError) as exc:
            raise StorageError(f"cannot use database {self}: {exc}") from exc
        self._write_engine: Engine = self._engine
        if self._engine.dialect.name == "sqlite":
            _configure_sqlite(self._engine)
            self._write_engine = self._engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})

    def __repr__(self) -> str:
        return f"<Storage {self}>"

    def __str__(self) -> str:
        return self._url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        """``sqlite``, ``postgresql``, ``mysql`` or ``mariadb``."""
        return self._engine.dialect.name

    def create_all(self) -> None:
        """Create every missing table and index (no migrations yet: see docs/storage.md)."""
        with _translated("create_all"):
            _upgrade_outbox(self._write_engine)
            _Base.metadata.create_all(self._write_engine)

    def close(self) -> None:
        """Close every pooled connection. The object must not be used afterwards."""
        self._engine.dispose()

    # -- outbox ------------------------------------------------------------------------------------

    def outbox_add(
        self, account: str, to: str, body: str, stanza_id: str, kind: str = "chat"
    ) -> None:
        """Store one outgoing message as ``pending``; committed before this returns."""
        self._insert_many([_outbox_insert(account, to, body, stanza_id, kind)])

    def outbox_pending(self, account: str, created_after: datetime) -> list[OutboxItem]:
        """Pending rows of ``account`` created at or after ``created_after``, oldest first."""
        after = _utc(created_after, "created_after")
        query = (
            select(_OutboxRow)
            .where(
                _OutboxRow.account == _account(account),
                _OutboxRow.state == OutboxState.PENDING.value,
                _OutboxRow.created_at >= after,
            )
            .order_by(_OutboxRow.id)  # insertion order: immune to clock steps
        )
        with self._read("outbox_pending") as session:
            return [_outbox_item(row) for row in session.scalars(query)]

    def outbox_get(self, stanza_id: str) -> OutboxItem | None:
        """The row with this stanza id, whatever its state, or ``None``."""
        with self._read("outbox_get") as session:
            row = session.scalars(
                select(_OutboxRow).where(_OutboxRow.stanza_id == stanza_id)
            ).first()
            return None if row is None else _outbox_item(row)

    def outbox_acked(self, stanza_ids: Iterable[str]) -> int:
        """Mark these rows ``acked`` (from ``pending`` or ``expired``, never from ``failed``);
        return how many changed."""
        ids = list(dict.fromkeys(stanza_ids))
        if not ids:
            return 0
        now = _now()
        changed = 0
        with self._write("outbox_acked") as session:
            for chunk in _chunks(ids, _IN_CHUNK):
                result = session.execute(
                    update(_OutboxRow)
                    .where(
                        _OutboxRow.stanza_id.in_(chunk),
                        _OutboxRow.state.in_([OutboxState.PENDING.value, OutboxState.EXPIRED.value]),
                    )
                    .values(state=OutboxState.ACKED.value, acked_at=now)
                    .execution_options(synchronize_session=False)
                )
                changed += _rowcount(result)
        return changed

    def outbox_bounced(self, stanza_id: str, *, permanent: bool, reason: str) -> OutboxItem | None:
        """An error stanza came back for this row: ``failed`` if ``permanent``, else ``pending``
        again (a ``wait`` error: retried later, until ``outbox_ttl``); ``last_error`` keeps
        ``reason``. Returns the updated row, or ``None`` for an unknown id."""
        state = OutboxState.FAILED if permanent else OutboxState.PENDING
        with self._write("outbox_bounced") as session:
            row = session.scalars(select(_OutboxRow).where(_OutboxRow.stanza_id == stanza_id)).first()
            if row is None:
                return None
            if row.state != OutboxState.EXPIRED.value:  # expired stays expired: its time is up
                row.state = state.value
                row.acked_at = None
            row.last_error = _clip(reason, _ERROR_LEN)
            session.flush()
            return _outbox_item(row)

    def outbox_attempted(self, stanza_id: str) -> None:
        """Count one more transmission of this row (no-op for an unknown id)."""
        with self._write("outbox_attempted") as session:
            session.execute(
                update(_OutboxRow)
                .where(_OutboxRow.stanza_id == stanza_id)
                .values(attempts=_OutboxRow.attempts + 1)
                .execution_options(synchronize_session=False)
            )

    def outbox_expire(self, created_before: datetime) -> int:
        """Turn ``pending`` rows created before the cutoff into ``expired``; return how many."""
        before = _utc(created_before, "created_before")
        with self._write("outbox_expire") as session:
            result = session.execute(
                update(_OutboxRow)
                .where(
                    _OutboxRow.state == OutboxState.PENDING.value,
                    _OutboxRow.created_at < before,
                )
                .values(state=OutboxState.EXPIRED.value)
                .execution_options(synchronize_session=False)
            )
            return _rowcount(result)

    def outbox_purge(self, created_before: datetime) -> int:
        """Delete ``acked``/``expired``/``failed`` rows created before the cutoff; return how many."""
        before = _utc(created_before, "created_before")
        with self._write("outbox_purge") as session:
            result = session.execute(
                delete(_OutboxRow)
                .where(
                    _OutboxRow.state.in_(
                        [OutboxState.ACKED.value, OutboxState.EXPIRED.value, OutboxState.FAILED.value]
                    ),
                    _OutboxRow.created_at < before,
                )
                .execution_options(synchronize_session=False)
            )
            return _rowcount(result)

    def outbox_counts(self) -> dict[tuple[str, str], int]:
        """Rows per ``(account, state)``, for ``/metrics``."""
        query = select(_OutboxRow.account, _OutboxRow.state, func.count()).group_by(
            _OutboxRow.account, _OutboxRow.state
        )
        with self._read("outbox_counts") as session:
            return {(account, state): count for account, state, count in session.execute(query)}

    # -- archive -----------------------------------------------------------------------------------

    def archive_add(
        self, direction: str, account: str, peer: str, body: str, stanza_id: str | None
    ) -> None:
        """Archive one message exchanged with ``peer`` (any JID; stored as its bare JID)."""
        self._insert_many([_archive_insert(direction, account, peer, body, stanza_id)])

    def archive_purge(self, created_before: datetime) -> int:
        """Delete archived messages created before the cutoff (``archive_retention``)."""
        before = _utc(created_before, "created_before")
        with self._write("archive_purge") as session:
            result = session.execute(
                delete(_ArchiveRow)
                .where(_ArchiveRow.created_at < before)
                .execution_options(synchronize_session=False)
            )
            return _rowcount(result)

    def archive_delivered(self, stanza_id: str) -> int:
        """Record a XEP-0184 receipt on the outgoing archived message with this id; how many."""
        with self._write("archive_delivered") as session:
            result = session.execute(
                update(_ArchiveRow)
                .where(_ArchiveRow.stanza_id == stanza_id, _ArchiveRow.direction == Direction.OUT.value,
                       _ArchiveRow.delivered_at.is_(None))
                .values(delivered_at=_now())
                .execution_options(synchronize_session=False)
            )
            return _rowcount(result)

    def archive_recent(self, account: str, peer_bare: str, limit: int = 3) -> list[ArchivedMessage]:
        """The last ``limit`` messages exchanged with ``peer_bare``, returned oldest first."""
        if limit <= 0:
            return []
        query = (
            select(_ArchiveRow)
            .where(_ArchiveRow.account == _account(account), _ArchiveRow.peer == _bare(peer_bare))
            .order_by(_ArchiveRow.id.desc())
            .limit(limit)
        )
        with self._read("archive_recent") as session:
            rows = [_archived(row) for row in session.scalars(query)]
        rows.reverse()
        return rows

    # -- directory ---------------------------------------------------------------------------------

    def directory_list(self) -> list[DirectoryEntry]:
        """Every entry, ordered by extension (code-point order, the same on every backend)."""
        with self._read("directory_list") as session:
            rows = [_entry(row) for row in session.scalars(select(_DirectoryRow))]
        return sorted(rows, key=lambda e: e.extension)

    def directory_get(self, extension: str) -> DirectoryEntry | None:
        """The entry for ``extension``, or ``None``."""
        with self._read("directory_get") as session:
            row = session.get(_DirectoryRow, extension)
            return None if row is None else _entry(row)

    def directory_find_jid(self, bare: str) -> DirectoryEntry | None:
        """The entry whose JID has this bare JID (lowest extension if several), or ``None``."""
        try:
            wanted = _bare(bare)
        except InvalidJid:
            return None  # nothing invalid is ever stored
        with self._read("directory_find_jid") as session:
            rows = session.scalars(select(_DirectoryRow).where(_DirectoryRow.jid_bare == wanted))
            return _first_entry(rows)

    def directory_find_mailbox(self, mailbox: str) -> DirectoryEntry | None:
        """The entry owning voicemail box ``mailbox`` (lowest extension if several), or ``None``."""
        with self._read("directory_find_mailbox") as session:
            rows = session.scalars(select(_DirectoryRow).where(_DirectoryRow.mailbox == mailbox))
            return _first_entry(rows)

    def directory_put(self, entry: _EntryLike, replace: bool = False) -> None:
        """Add an entry (source ``db``); an existing extension is an error unless ``replace``."""
        values = _directory_values(entry, DirectorySource.DB)
        extension = values["extension"]
        try:
            with self._write("directory_put") as session:
                row = session.get(_DirectoryRow, extension)
                if row is None:
                    session.add(_DirectoryRow(**values))
                elif replace:
                    for key, value in values.items():
                        setattr(row, key, value)
                else:
                    raise _duplicate(extension, row.jid)
        except StorageError as exc:
            if isinstance(exc.__cause__, IntegrityError):  # another process inserted it meanwhile
                raise _duplicate(extension, values["jid"]) from exc
            raise

    def directory_remove(self, extension: str) -> bool:
        """Delete an entry; ``False`` if there was none. A config entry returns at next start."""
        with self._write("directory_remove") as session:
            result = session.execute(
                delete(_DirectoryRow)
                .where(_DirectoryRow.extension == extension)
                .execution_options(synchronize_session=False)
            )
            return _rowcount(result) > 0

    def directory_load_config(self, entries: Iterable[_EntryLike]) -> tuple[str, ...]:
        """Make the ``config`` rows equal ``entries``; ``db`` rows are left alone and win.

        Config rows whose extension left the config file are deleted. Returns the extensions
        of config entries shadowed by a ``db`` entry, so the caller can warn about them.
        """
        wanted: dict[str, dict[str, Any]] = {}
        for entry in entries:
            values = _directory_values(entry, DirectorySource.CONFIG)
            if values["extension"] in wanted:
                raise DirectoryError(
                    f"directory: extension {values['extension']!r} is configured twice"
                )
            wanted[values["extension"]] = values
        shadowed: list[str] = []
        with self._write("directory_load_config") as session:
            existing = {row.extension: row for row in session.scalars(select(_DirectoryRow))}
            for extension, values in wanted.items():
                row = existing.get(extension)
                if row is None:
                    session.add(_DirectoryRow(**values))
                elif row.source == DirectorySource.CONFIG.value:
                    for key, value in values.items():
                        setattr(row, key, value)
                else:
                    shadowed.append(extension)
            for extension, row in existing.items():
                if row.source == DirectorySource.CONFIG.value and extension not in wanted:
                    session.delete(row)
        return tuple(sorted(shadowed))

    # -- presence log ------------------------------------------------------------------------------

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
        self._insert_many([_presence_insert(account, jid, show, priority, status, at)])

    def presence_log_recent(self, account: str, bare: str, limit: int = 20) -> list[PresenceRecord]:
        """The last ``limit`` presence changes of any resource of ``bare``, oldest first."""
        if limit <= 0:
            return []
        query = (
            select(_PresenceLogRow)
            .where(
                _PresenceLogRow.account == _account(account), _PresenceLogRow.bare == _bare(bare)
            )
            .order_by(_PresenceLogRow.id.desc())
            .limit(limit)
        )
        with self._read("presence_log_recent") as session:
            rows = [_presence_record(row) for row in session.scalars(query)]
        rows.reverse()
        return rows

    # -- voicemail notifications -------------------------------------------------------------------

    def voicemail_notified(self, mailbox: str, msg_ids: Iterable[str]) -> set[str]:
        """Which of ``msg_ids`` of ``mailbox`` were already notified."""
        wanted = list(dict.fromkeys(msg_ids))
        found: set[str] = set()
        with self._read("voicemail_notified") as session:
            for chunk in _chunks(wanted, _IN_CHUNK):
                query = select(_VoicemailNotifiedRow.msg_id).where(
                    _VoicemailNotifiedRow.mailbox == mailbox, _VoicemailNotifiedRow.msg_id.in_(chunk)
                )
                found.update(session.scalars(query))
        return found

    def voicemail_mark_notified(self, mailbox: str, msg_id: str) -> bool:
        """Remember that ``msg_id`` was notified; False if it already was."""
        _text("voicemail_mark_notified", "msg_id", msg_id, _STANZA_ID_LEN)
        try:
            with self._write("voicemail_mark_notified") as session:
                if session.get(_VoicemailNotifiedRow, (mailbox, msg_id)) is not None:
                    return False
                session.add(_VoicemailNotifiedRow(mailbox=mailbox, msg_id=msg_id, notified_at=_now()))
        except StorageError as exc:
            if isinstance(exc.__cause__, IntegrityError):  # another writer got there first
                return False
            raise
        return True

    # -- internals ---------------------------------------------------------------------------------

    def _insert_many(self, items: Sequence[_Insert]) -> None:
        """Insert prepared rows in one transaction (the group-commit primitive)."""
        op = items[0].op if len(items) == 1 else "group_commit"
        try:
            with self._write(op) as session:
                by_model: dict[type[_Base], list[dict[str, Any]]] = {}
                for item in items:
                    by_model.setdefault(item.model, []).append(item.values)
                for model, rows in by_model.items():
                    session.execute(insert(model), rows)
        except StorageError as exc:
            if len(items) == 1 and items[0].conflict and isinstance(exc.__cause__, IntegrityError):
                raise StorageError(f"{op}: {items[0].conflict}") from exc.__cause__
            raise

    @contextmanager
    def _read(self, op: str) -> Iterator[Session]:
        with (
            _translated(op),
            Session(self._engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    @contextmanager
    def _write(self, op: str) -> Iterator[Session]:
        with (
            _translated(op),
            Session(self._write_engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session


class AsyncStorage:
    """``Storage`` for the event loop: each method is a coroutine run on ONE worker thread.

    One thread means SQLite sees a single writer and calls run in the order they were made.
    ``outbox_add``, ``archive_add`` and ``presence_log_add`` are group-committed (module
    docstring). ``aclose()`` waits for queued work, then closes the wrapped ``Storage``.
    """

    def __init__(self, storage: Storage, *, deadline: float = 10.0) -> None:
        self.storage = storage
        # Every call answers within ``deadline`` seconds or raises StorageError: a hung database
        # must not hang jabber_send, /metrics or /api/presence with it (the worker thread may
        # still be stuck; later calls queue behind it and time out the same way).
        self.deadline = deadline
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agi-xmpp-storage")
        self._lock = threading.Lock()
        self._queued: list[tuple[_Insert, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._flush_scheduled = False
        self._closed = False
        self.group_commits = 0  # transactions used by group-committed writes
        self.group_commit_rows = 0  # rows they carried

    def __repr__(self) -> str:
        return (
            f"<AsyncStorage {self.storage} [{len(self._queued)} queued, "
            f"{self.group_commit_rows} rows in {self.group_commits} group commits]>"
        )

    async def __aenter__(self) -> AsyncStorage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Finish everything queued, close the ``Storage``, stop the worker thread."""
        if self._closed:
            return
        self._closed = True
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._drain_and_close)
        finally:
            self._executor.shutdown(wait=False)

    # Explicit one-liners rather than __getattr__, so type checkers and readers see every method;
    # tests/test_storage.py checks that none of Storage's public methods is missing here.

    async def create_all(self) -> None:
        return await self._call(self.storage.create_all, deadline=None)

    async def outbox_add(
        self, account: str, to: str, body: str, stanza_id: str, kind: str = "chat"
    ) -> None:
        await self._group_commit(_outbox_insert(account, to, body, stanza_id, kind))

    async def outbox_pending(self, account: str, created_after: datetime) -> list[OutboxItem]:
        return await self._call(self.storage.outbox_pending, account, created_after)

    async def outbox_get(self, stanza_id: str) -> OutboxItem | None:
        return await self._call(self.storage.outbox_get, stanza_id)

    async def outbox_acked(self, stanza_ids: Iterable[str]) -> int:
        return await self._call(self.storage.outbox_acked, list(stanza_ids))

    async def outbox_bounced(self, stanza_id: str, *, permanent: bool, reason: str) -> OutboxItem | None:
        return await self._call(self.storage.outbox_bounced, stanza_id, permanent=permanent, reason=reason)

    async def outbox_attempted(self, stanza_id: str) -> None:
        return await self._call(self.storage.outbox_attempted, stanza_id)

    async def outbox_expire(self, created_before: datetime) -> int:
        return await self._call(self.storage.outbox_expire, created_before)

    async def outbox_purge(self, created_before: datetime) -> int:
        return await self._call(self.storage.outbox_purge, created_before)

    async def outbox_counts(self) -> dict[tuple[str, str], int]:
        return await self._call(self.storage.outbox_counts)

    async def archive_add(
        self, direction: str, account: str, peer: str, body: str, stanza_id: str | None
    ) -> None:
        await self._group_commit(_archive_insert(direction, account, peer, body, stanza_id))

    async def archive_purge(self, created_before: datetime) -> int:
        return await self._call(self.storage.archive_purge, created_before)

    async def archive_delivered(self, stanza_id: str) -> int:
        return await self._call(self.storage.archive_delivered, stanza_id)

    async def archive_recent(
        self, account: str, peer_bare: str, limit: int = 3
    ) -> list[ArchivedMessage]:
        return await self._call(self.storage.archive_recent, account, peer_bare, limit)

    async def directory_list(self) -> list[DirectoryEntry]:
        return await self._call(self.storage.directory_list)

    async def directory_get(self, extension: str) -> DirectoryEntry | None:
        return await self._call(self.storage.directory_get, extension)

    async def directory_find_jid(self, bare: str) -> DirectoryEntry | None:
        return await self._call(self.storage.directory_find_jid, bare)

    async def directory_find_mailbox(self, mailbox: str) -> DirectoryEntry | None:
        return await self._call(self.storage.directory_find_mailbox, mailbox)

    async def directory_put(self, entry: _EntryLike, replace: bool = False) -> None:
        return await self._call(self.storage.directory_put, entry, replace)

    async def directory_remove(self, extension: str) -> bool:
        return await self._call(self.storage.directory_remove, extension)

    async def directory_load_config(self, entries: Iterable[_EntryLike]) -> tuple[str, ...]:
        return await self._call(self.storage.directory_load_config, list(entries))

    async def presence_log_add(
        self,
        account: str,
        jid: str,
        show: str,
        priority: int,
        status: str,
        at: datetime | None = None,
    ) -> None:
        await self._group_commit(_presence_insert(account, jid, show, priority, status, at))

    async def presence_log_recent(
        self, account: str, bare: str, limit: int = 20
    ) -> list[PresenceRecord]:
        return await self._call(self.storage.presence_log_recent, account, bare, limit)

    async def voicemail_notified(self, mailbox: str, msg_ids: Iterable[str]) -> set[str]:
        return await self._call(self.storage.voicemail_notified, mailbox, list(msg_ids))

    async def voicemail_mark_notified(self, mailbox: str, msg_id: str) -> bool:
        return await self._call(self.storage.voicemail_mark_notified, mailbox, msg_id)

    # -- internals ---------------------------------------------------------------------------------

    async def _call(
        self, fn: Callable[P, T], /, *args: P.args, deadline: float | None | bool = True, **kwargs: P.kwargs
    ) -> T:
        if self._closed:
            raise StorageError("storage is closed")
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        return await self._within_deadline(work, fn.__name__, deadline)

    async def _within_deadline(self, work: Awaitable[T], op: str, deadline: float | None | bool = True) -> T:
        limit = self.deadline if deadline is True else deadline
        if limit is None or limit is False:
            return await work
        try:
            return await asyncio.wait_for(work, limit)
        except TimeoutError:
            raise StorageError(f"{op}: the database did not answer within {limit:g} s") from None

    async def _group_commit(self, item: _Insert) -> None:
        """Queue one row; return once the transaction carrying it has committed."""
        if self._closed:
            raise StorageError("storage is closed")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._queued.append((item, loop, done))
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
        if schedule:
            # Not awaited on purpose: _flush never raises; its outcome reaches every caller
            # through their own future.
            self._executor.submit(self._flush)
        # A caller cancelled (or timed out) here may still have its row committed: at-least-once,
        # never lost; shielded so the commit's outcome still reaches the worker's bookkeeping.
        await self._within_deadline(asyncio.shield(done), item.op)

    def _drain_and_close(self) -> None:
        """Worker thread, last job: commit whatever is still queued, then close the Storage."""
        while self._queued:
            self._flush(resubmit=False)
        self.storage.close()

    def _flush(self, resubmit: bool = True) -> None:
        """Worker thread: commit everything queued so far (up to _MAX_BATCH) in one transaction."""
        with self._lock:
            batch, self._queued = self._queued[:_MAX_BATCH], self._queued[_MAX_BATCH:]
            more = resubmit and bool(self._queued)
            self._flush_scheduled = more
        if more:
            # The rest goes to the back of the queue, so reads queued meanwhile are not starved.
            self._executor.submit(self._flush)
        if not batch:
            return
        outcomes: list[BaseException | None]
        try:
            self.storage._insert_many([item for item, _, _ in batch])
            outcomes = [None] * len(batch)
            self.group_commits += 1
            self.group_commit_rows += len(batch)
        except StorageError as exc:
            if len(batch) > 1 and isinstance(exc.__cause__, (IntegrityError, DataError)):
                outcomes = [self._insert_one(item) for item, _, _ in batch]
            elif len(batch) == 1:
                outcomes = [exc]
            else:  # the database itself failed: every caller gets its own copy of the error
                outcomes = [_copy_error(exc) for _ in batch]
        except BaseException as exc:  # a bug: still answer every caller rather than hang them
            outcomes = [exc for _ in batch]
        for (_, loop, done), outcome in zip(batch, outcomes, strict=True):
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(_settle, done, outcome)

    def _insert_one(self, item: _Insert) -> StorageError | None:
        try:
            self.storage._insert_many([item])
        except StorageError as exc:
            return exc
        self.group_commits += 1
        self.group_commit_rows += 1
        return None


def _copy_error(exc: StorageError) -> StorageError:
    copy = StorageError(str(exc))
    copy.__cause__ = exc.__cause__
    return copy


def _settle(done: asyncio.Future[None], outcome: BaseException | None) -> None:
    if done.done():  # the caller was cancelled
        return
    if outcome is None:
        done.set_result(None)
    else:
        done.set_exception(outcome)


# -- helpers ---------------------------------------------------------------------------------------


_DRIVERS = {
    "sqlite": "sqlite",
    "postgresql": "postgresql+psycopg2",  # SQLAlchemy 2.1's default would be psycopg 3
    "postgres": "postgresql+psycopg2",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}


def _engine_url(url: str) -> URL:
    """The SQLAlchemy URL we connect with: default drivers filled in, utf8mb4 enforced."""
    try:
        sa_url = make_url(url)
    except ArgumentError as exc:
        raise StorageError(f"invalid database URL: {exc}") from None
    backend = sa_url.drivername.partition("+")[0]
    if backend not in _DRIVERS:
        raise StorageError(
            f"unsupported database {backend!r}: use a sqlite://, postgresql:// or mariadb:// URL"
        )
    if "+" not in sa_url.drivername:
        sa_url = sa_url.set(drivername=_DRIVERS[backend])
    elif backend == "postgres":
        sa_url = sa_url.set(drivername="postgresql+" + sa_url.drivername.partition("+")[2])
    if backend in ("mysql", "mariadb"):
        charset = sa_url.query.get("charset")
        if charset is None:
            sa_url = sa_url.update_query_dict({"charset": "utf8mb4"})
        elif charset != "utf8mb4":
            # utf8 (utf8mb3) cannot hold emoji: messages would not round-trip.
            raise StorageError(f"MariaDB/MySQL URLs need charset=utf8mb4, not {charset!r}")
    return sa_url


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # We emit BEGIN ourselves (below): pysqlite's implicit transactions skip SELECT.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # WAL: readers never block the writer. synchronous=NORMAL: a commit survives a kill
            # of the process; only an OS crash or power loss can lose the last commits.
            mode = cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()
        if mode.lower() not in ("wal", "memory"):
            log.warning("storage_sqlite_no_wal", journal_mode=mode)

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


@contextmanager
def _translated(op: str) -> Iterator[None]:
    """SQLAlchemy's exceptions end here: callers see StorageError with the driver's reason."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise StorageError(f"{op}: {_reason(exc)}") from exc


def _reason(exc: SQLAlchemyError) -> str:
    # str(exc) would include the SQL (and, without hide_parameters, message bodies): quote only
    # the driver's own message, on one line.
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc).split("\n[", 1)[0]
    text = " ".join(text.split())
    return text or type(exc).__name__


def _duplicate(extension: str, jid: str) -> DirectoryError:
    return DirectoryError(
        f"directory: extension {extension!r} already exists (jid {jid}); "
        "remove it first or replace it"
    )


def _clip(text: str, limit: int) -> str:
    """At most ``limit`` characters, on one line (error texts come from the network)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _upgrade_outbox(engine: Engine) -> None:
    """Bring tables created by earlier builds to the current shape (docs/storage.md).

    ``message_archive`` gains ``delivered_at`` (a plain added column). ``outbox`` gains
    ``last_error`` and ``failed`` in the state check. PostgreSQL and MariaDB swap the named check constraint; SQLite cannot alter
    a constraint, so its table is rebuilt in one transaction (the rows are kept)."""
    from sqlalchemy import inspect, text

    states = "state IN ('pending', 'acked', 'expired', 'failed')"
    with engine.begin() as conn:  # one connection: SQLite would lock a second one out
        inspector = inspect(conn)
        tables = inspector.get_table_names()
        if "message_archive" in tables and "delivered_at" not in {
            c["name"] for c in inspector.get_columns("message_archive")
        }:
            kind = _ArchiveRow.__table__.c.delivered_at.type.compile(dialect=engine.dialect)
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
            _OutboxRow.__table__.create(conn)
            conn.execute(text(f"INSERT INTO outbox ({columns}) SELECT {columns} FROM outbox_before_upgrade"))
            conn.execute(text("DROP TABLE outbox_before_upgrade"))
            return
        conn.execute(text(f"ALTER TABLE outbox ADD COLUMN last_error VARCHAR({_ERROR_LEN})"))
        conn.execute(text("ALTER TABLE outbox DROP CONSTRAINT ck_outbox_state"))
        conn.execute(text(f"ALTER TABLE outbox ADD CONSTRAINT ck_outbox_state CHECK ({states})"))


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise ValueError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got a naive datetime")
    return value.astimezone(UTC)


def _account(account: str) -> str:
    # Account names are the lower-cased section names everywhere (architecture.md).
    return account.lower()


def _bare(jid: str) -> str:
    return parse_jid(jid).bare


def _text(op: str, name: str, value: str, limit: int | None = None, *, empty: bool = False) -> str:
    """Refuse, identically on every backend, text a column could not hold exactly."""
    if not isinstance(value, str):
        raise ValueError(f"{op}: {name} must be str, not {type(value).__name__}")
    if not value and not empty:
        raise StorageError(f"{op}: {name} is empty")
    if "\x00" in value:  # PostgreSQL text cannot hold NUL; XMPP and AGI cannot carry it either
        raise StorageError(f"{op}: {name} contains a NUL character")
    if limit is not None and len(value) > limit:
        raise StorageError(f"{op}: {name} is longer than {limit} characters")
    return value


def _choice(op: str, name: str, value: str, allowed: type[enum.StrEnum]) -> str:
    try:
        return allowed(value).value
    except ValueError:
        choices = ", ".join(m.value for m in allowed)
        raise ValueError(f"{op}: {name} must be one of {choices}, not {value!r}") from None


def _outbox_insert(account: str, to: str, body: str, stanza_id: str, kind: str) -> _Insert:
    op = "outbox_add"
    return _Insert(
        op,
        _OutboxRow,
        {
            "account": _account(_text(op, "account", account, _ACCOUNT_LEN)),
            "to_jid": _text(op, "to", to, _JID_LEN),
            "body": _text(op, "body", body, empty=True),
            "kind": _choice(op, "kind", kind, MessageKind),
            "stanza_id": _text(op, "stanza_id", stanza_id, _STANZA_ID_LEN),
            "state": OutboxState.PENDING.value,
            "attempts": 0,
            "created_at": _now(),
            "acked_at": None,
        },
        conflict=f"stanza id {stanza_id!r} is already in the outbox",
    )


def _archive_insert(
    direction: str, account: str, peer: str, body: str, stanza_id: str | None
) -> _Insert:
    op = "archive_add"
    if stanza_id is not None:
        stanza_id = _text(op, "stanza_id", stanza_id, _STANZA_ID_LEN, empty=True) or None
    return _Insert(
        op,
        _ArchiveRow,
        {
            "direction": _choice(op, "direction", direction, Direction),
            "account": _account(_text(op, "account", account, _ACCOUNT_LEN)),
            "peer": _bare(_text(op, "peer", peer, _JID_LEN)),
            "body": _text(op, "body", body, empty=True),
            "stanza_id": stanza_id,
            "created_at": _now(),
        },
    )


def _presence_insert(
    account: str, jid: str, show: str, priority: int, status: str, at: datetime | None
) -> _Insert:
    op = "presence_log_add"
    parsed = parse_jid(_text(op, "jid", jid, _JID_LEN))
    return _Insert(
        op,
        _PresenceLogRow,
        {
            "account": _account(_text(op, "account", account, _ACCOUNT_LEN)),
            "jid": parsed.full,
            "bare": parsed.bare,
            "show": _text(op, "show", show, 16),
            "priority": int(priority),
            "status": _text(op, "status", status, empty=True),
            "at": _now() if at is None else _utc(at, "at"),
        },
    )


def _directory_values(entry: _EntryLike, source: DirectorySource) -> dict[str, Any]:
    """Validate and normalise one entry; DirectoryError names the extension and the problem."""
    extension = entry.extension
    if not isinstance(extension, str) or not extension:
        raise DirectoryError("directory: an entry has an empty extension")
    where = f"directory entry {_shown(extension)!r}"
    if len(extension) > _EXTENSION_LEN:
        raise DirectoryError(f"{where}: extension longer than {_EXTENSION_LEN} characters")
    if any(_is_blank(ch) or ch in "&,;=/" for ch in extension):
        raise DirectoryError(f"{where}: extension may not contain spaces, controls or & , ; = /")
    if not isinstance(entry.jid, str) or not entry.jid:
        raise DirectoryError(f"{where}: empty JID")
    try:
        jid = parse_jid(entry.jid)
    except InvalidJid as exc:
        raise DirectoryError(f"{where}: {exc}") from None
    fields = {"device": (entry.device, _DEVICE_LEN), "mailbox": (entry.mailbox, _MAILBOX_LEN)}
    optional: dict[str, str | None] = {}
    for name, (value, limit) in fields.items():
        if value is not None and not isinstance(value, str):
            raise DirectoryError(f"{where}: {name} must be text")
        value = (value or "").strip() or None
        if value is not None:
            if len(value) > limit:
                raise DirectoryError(f"{where}: {name} longer than {limit} characters")
            if any(_is_blank(ch) for ch in value):
                raise DirectoryError(f"{where}: {name} may not contain spaces or controls")
        optional[name] = value
    return {
        "extension": extension,
        "jid": jid.full,
        "jid_bare": jid.bare,
        "device": optional["device"],
        "mailbox": optional["mailbox"],
        "source": source.value,
    }


def _is_blank(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")


def _shown(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text[:40])


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _rowcount(result: Any) -> int:
    return max(int(getattr(result, "rowcount", 0) or 0), 0)


def _first_entry(rows: Iterable[_DirectoryRow]) -> DirectoryEntry | None:
    entries = [_entry(row) for row in rows]
    return min(entries, key=lambda e: e.extension) if entries else None


def _entry(row: _DirectoryRow) -> DirectoryEntry:
    # A NULL device means the default dial string, which DirectoryEntry fills in (PJSIP/<ext>).
    return DirectoryEntry(
        extension=row.extension, jid=row.jid, device=row.device or "", mailbox=row.mailbox
    )


def _outbox_item(row: _OutboxRow) -> OutboxItem:
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


def _archived(row: _ArchiveRow) -> ArchivedMessage:
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


def _presence_record(row: _PresenceLogRow) -> PresenceRecord:
    return PresenceRecord(
        account=row.account,
        jid=row.jid,
        show=row.show,
        priority=row.priority,
        status=row.status,
        at=row.at,
    )
