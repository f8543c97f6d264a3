"""What every table shares: column sizes, the UTC timestamp type, the declarative base, and the
checks that refuse, identically on every backend, a value a column could not hold exactly.

- Time: every timestamp is timezone-aware UTC on the way in and out. PostgreSQL stores
  ``timestamptz``; SQLite and MariaDB store naive UTC (MariaDB with microseconds, ``DATETIME(6)``).
- Text: bodies are ``LONGTEXT`` on MariaDB (``TEXT`` stops at 65,535 bytes) and every MariaDB table
  is ``utf8mb4`` with the binary collation, so emoji round-trip and comparisons are exact and
  case-sensitive, as on SQLite and PostgreSQL.
- JIDs are normalised with ``jid.parse_jid`` (RFC 7622), so ``Alice@Example.COM/phone`` and
  ``alice@example.com`` are the same peer.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, MetaData, Text
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from ..errors import StorageError
from ..jid import parse_jid

# Column sizes. A full JID is at most 3 x 1023 octets plus separators (RFC 7622 §3); an account
# is a config section name; Asterisk extensions are at most 80 characters (AST_MAX_EXTENSION).
JID_LEN = 3071
ACCOUNT_LEN = 255
STANZA_ID_LEN = 255
ERROR_LEN = 1024
EXTENSION_LEN = 80
DEVICE_LEN = 255
MAILBOX_LEN = 255
# MariaDB/InnoDB index keys are at most 3072 bytes (768 utf8mb4 characters): long JID columns are
# indexed on a prefix there. The prefix only narrows the index; the WHERE clause stays exact.
MYSQL_PREFIX = 255


class UtcDateTime(TypeDecorator[datetime]):
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
        value = as_utc(value, "timestamp")
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# TEXT on MariaDB holds 65,535 bytes; a 65,536-byte message (max_message_bytes) needs more.
LongText = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
# SQLite only auto-numbers a column declared exactly INTEGER PRIMARY KEY.
RowId = BigInteger().with_variant(Integer(), "sqlite")

TABLE_OPTIONS = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
    "mariadb_engine": "InnoDB",
    "mariadb_charset": "utf8mb4",
    "mariadb_collate": "utf8mb4_bin",
}


def mysql_prefix(**columns: int) -> dict[str, Any]:
    return {"mysql_length": columns, "mariadb_length": columns}


class Base(DeclarativeBase):
    # Named constraints, so a later Alembic migration can refer to them on every backend.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise ValueError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got a naive datetime")
    return value.astimezone(UTC)


def account_key(account: str) -> str:
    # Account names are the lower-cased section names everywhere (architecture.md).
    return account.lower()


def bare_jid(jid: str) -> str:
    return parse_jid(jid).bare


def checked_text(op: str, name: str, value: str, limit: int | None = None, *, empty: bool = False) -> str:
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


def checked_choice(op: str, name: str, value: str, allowed: type[enum.StrEnum]) -> str:
    try:
        return allowed(value).value
    except ValueError:
        choices = ", ".join(m.value for m in allowed)
        raise ValueError(f"{op}: {name} must be one of {choices}, not {value!r}") from None


def clip(text: str, limit: int) -> str:
    """At most ``limit`` characters, on one line (error texts come from the network)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"

