"""The engine and its sessions: one database URL, one transaction per call, SQLAlchemy's
exceptions translated to ``StorageError`` at this one edge.

``StorageCore`` is what every table's repository methods stand on (``_read``/``_write`` give a
session inside one transaction; ``_insert_many`` is the group-commit primitive); ``Storage``
(``repository.py``) puts the tables together on it.

- Every public method is one short transaction, committed before it returns (docs/storage.md
  says what each backend promises beyond a kill of the process).
- Errors: anything the database refuses becomes ``StorageError`` with the driver's own reason,
  never the SQL or its parameters (``hide_parameters=True``), so texts are safe to log at ``info``.
- SQLite: WAL, ``synchronous=NORMAL``, foreign keys on, 5 s busy timeout. We issue ``BEGIN``
  ourselves (pysqlite's implicit transactions do not cover SELECT) and writes use
  ``BEGIN IMMEDIATE``, so a second process (the CLI) waits for the lock instead of failing with
  "database is locked" halfway through a read-then-write transaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import create_engine, event, insert
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from ..errors import StorageError
from ..state_files import create_private_file, ensure_private_dir
from .schema import Base

log = structlog.get_logger("agi_xmpp.storage")

# Bound on parameters per IN (...) list.
IN_CHUNK = 500
_SQLITE_BUSY_TIMEOUT_MS = 5000
_BEGIN_OPTION = "agi_xmpp_sqlite_begin"


@dataclass(frozen=True, slots=True)
class RowInsert:
    """One prepared append-only row (the unit of group commit)."""

    op: str
    model: type[Base]
    values: dict[str, Any]
    conflict: str = ""  # what an IntegrityError on this row means, for the caller


class StorageCore:
    """One database URL (SQLite, PostgreSQL or MariaDB/MySQL) and its engine. Thread-safe."""

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

    def close(self) -> None:
        """Close every pooled connection. The object must not be used afterwards."""
        self._engine.dispose()

    def _insert_many(self, items: Sequence[RowInsert]) -> None:
        """Insert prepared rows in one transaction (the group-commit primitive)."""
        op = items[0].op if len(items) == 1 else "group_commit"
        try:
            with self._write(op) as session:
                by_model: dict[type[Base], list[dict[str, Any]]] = {}
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
            translated(op),
            Session(self._engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    @contextmanager
    def _write(self, op: str) -> Iterator[Session]:
        with (
            translated(op),
            Session(self._write_engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session


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
def translated(op: str) -> Iterator[None]:
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


def chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def rowcount(result: Any) -> int:
    return max(int(getattr(result, "rowcount", 0) or 0), 0)

