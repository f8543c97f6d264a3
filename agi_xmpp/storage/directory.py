"""The ``directory`` table: extension → JID, dial string, voicemail box (docs/storage.md).

Entries come from the ``[directory]`` section (source ``config``, made equal to the file at every
start) or from the CLI and HTTP API (source ``db``, which win). A malformed or duplicated entry is
a ``DirectoryError`` naming the extension.
"""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Iterable
from typing import Any, Protocol

from sqlalchemy import CheckConstraint, Index, String, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from ..config import DirectoryEntry  # one DirectoryEntry for config and database alike
from ..errors import DirectoryError, InvalidJid, StorageError
from ..jid import parse_jid
from .core import StorageCore, rowcount
from .schema import (
    DEVICE_LEN, EXTENSION_LEN, JID_LEN, MAILBOX_LEN, MYSQL_PREFIX, TABLE_OPTIONS, Base,
    bare_jid, mysql_prefix,
)


class DirectorySource(enum.StrEnum):
    """Where a directory row came from: the ``[directory]`` section, or the CLI/HTTP API."""

    CONFIG = "config"
    DB = "db"


class EntryLike(Protocol):
    """Anything shaped like ``config.DirectoryEntry`` (duck-typed: storage only reads it)."""

    @property
    def extension(self) -> str: ...
    @property
    def jid(self) -> str: ...
    @property
    def device(self) -> str | None: ...
    @property
    def mailbox(self) -> str | None: ...


class DirectoryRow(Base):
    __tablename__ = "directory"
    __table_args__ = (
        CheckConstraint("source IN ('config', 'db')", name="source"),
        Index(None, "jid_bare", **mysql_prefix(jid_bare=MYSQL_PREFIX)),
        Index(None, "mailbox"),
        TABLE_OPTIONS,
    )

    extension: Mapped[str] = mapped_column(String(EXTENSION_LEN), primary_key=True)
    jid: Mapped[str] = mapped_column(String(JID_LEN))
    # The bare form of ``jid`` (normalised), for lookups by sender.
    jid_bare: Mapped[str] = mapped_column(String(JID_LEN))
    device: Mapped[str | None] = mapped_column(String(DEVICE_LEN))
    mailbox: Mapped[str | None] = mapped_column(String(MAILBOX_LEN))
    source: Mapped[str] = mapped_column(String(8))


class DirectoryTable(StorageCore):
    """The directory: extension → JID, device, mailbox; ``config`` rows follow the
    ``[directory]`` section, ``db`` rows (CLI, HTTP API) win over them."""

    def directory_list(self) -> list[DirectoryEntry]:
        """Every entry, ordered by extension (code-point order, the same on every backend)."""
        with self._read("directory_list") as session:
            rows = [_entry(row) for row in session.scalars(select(DirectoryRow))]
        return sorted(rows, key=lambda e: e.extension)

    def directory_get(self, extension: str) -> DirectoryEntry | None:
        """The entry for ``extension``, or ``None``."""
        with self._read("directory_get") as session:
            row = session.get(DirectoryRow, extension)
            return None if row is None else _entry(row)

    def directory_find_jid(self, bare: str) -> DirectoryEntry | None:
        """The entry whose JID has this bare JID (lowest extension if several), or ``None``."""
        try:
            wanted = bare_jid(bare)
        except InvalidJid:
            return None  # nothing invalid is ever stored
        with self._read("directory_find_jid") as session:
            rows = session.scalars(select(DirectoryRow).where(DirectoryRow.jid_bare == wanted))
            return _first_entry(rows)

    def directory_find_mailbox(self, mailbox: str) -> DirectoryEntry | None:
        """The entry owning voicemail box ``mailbox`` (lowest extension if several), or ``None``."""
        with self._read("directory_find_mailbox") as session:
            rows = session.scalars(select(DirectoryRow).where(DirectoryRow.mailbox == mailbox))
            return _first_entry(rows)

    def directory_put(self, entry: EntryLike, replace: bool = False) -> None:
        """Add an entry (source ``db``); an existing extension is an error unless ``replace``."""
        values = _directory_values(entry, DirectorySource.DB)
        extension = values["extension"]
        try:
            with self._write("directory_put") as session:
                row = session.get(DirectoryRow, extension)
                if row is None:
                    session.add(DirectoryRow(**values))
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
                delete(DirectoryRow)
                .where(DirectoryRow.extension == extension)
                .execution_options(synchronize_session=False)
            )
            return rowcount(result) > 0

    def directory_load_config(self, entries: Iterable[EntryLike]) -> tuple[str, ...]:
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
            existing = {row.extension: row for row in session.scalars(select(DirectoryRow))}
            for extension, values in wanted.items():
                row = existing.get(extension)
                if row is None:
                    session.add(DirectoryRow(**values))
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

def _duplicate(extension: str, jid: str) -> DirectoryError:
    return DirectoryError(
        f"directory: extension {extension!r} already exists (jid {jid}); "
        "remove it first or replace it"
    )


def _directory_values(entry: EntryLike, source: DirectorySource) -> dict[str, Any]:
    """Validate and normalise one entry; DirectoryError names the extension and the problem."""
    extension = entry.extension
    if not isinstance(extension, str) or not extension:
        raise DirectoryError("directory: an entry has an empty extension")
    where = f"directory entry {_shown(extension)!r}"
    if len(extension) > EXTENSION_LEN:
        raise DirectoryError(f"{where}: extension longer than {EXTENSION_LEN} characters")
    if any(_is_blank(ch) or ch in "&,;=/" for ch in extension):
        raise DirectoryError(f"{where}: extension may not contain spaces, controls or & , ; = /")
    if not isinstance(entry.jid, str) or not entry.jid:
        raise DirectoryError(f"{where}: empty JID")
    try:
        jid = parse_jid(entry.jid)
    except InvalidJid as exc:
        raise DirectoryError(f"{where}: {exc}") from None
    fields = {"device": (entry.device, DEVICE_LEN), "mailbox": (entry.mailbox, MAILBOX_LEN)}
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


def _first_entry(rows: Iterable[DirectoryRow]) -> DirectoryEntry | None:
    entries = [_entry(row) for row in rows]
    return min(entries, key=lambda e: e.extension) if entries else None


def _entry(row: DirectoryRow) -> DirectoryEntry:
    # A NULL device means the default dial string, which DirectoryEntry fills in (PJSIP/<ext>).
    return DirectoryEntry(
        extension=row.extension, jid=row.jid, device=row.device or "", mailbox=row.mailbox
    )

