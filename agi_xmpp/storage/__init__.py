"""Durable state: the outbox, the message archive, the directory, the presence log and the
voicemail notifications, on SQLite, PostgreSQL or MariaDB.

``Storage`` (synchronous repository methods) and ``AsyncStorage`` (the same methods as coroutines,
run on one worker thread so the event loop never blocks) are the interface; import them from
here. Nothing SQLAlchemy-shaped leaves this package: callers get frozen dataclasses and our own
exceptions (``StorageError``; ``DirectoryError`` for a malformed or duplicated directory entry).
Text a column could not hold faithfully (NUL, too long) is refused before it reaches the
database, identically on every backend; arguments outside the documented domain (a direction
that is not ``in``/``out``, a naive ``datetime``) are programming errors: ``ValueError``.

One module per concern (docs/architecture.md):

- ``schema``: column sizes, the UTC timestamp type, the declarative base, value checks;
- ``core``: the engine, one transaction per call, exceptions translated at this edge;
- ``outbox``, ``archive``, ``directory``, ``presence_log``, ``voicemail_notified``: one table
  each, its row, what callers get back, its repository methods;
- ``repository``: ``Storage``, those tables on one engine, and ``create_all``;
- ``async_storage``: ``AsyncStorage``, the deadline and group commit.
"""

from ..config import DirectoryEntry
from .archive import ArchivedMessage, Direction
from .async_storage import AsyncStorage
from .directory import DirectorySource
from .outbox import MessageKind, OutboxItem, OutboxState
from .presence_log import PresenceRecord
from .repository import Storage

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
