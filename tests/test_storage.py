"""Storage on real databases: every repository method on SQLite, PostgreSQL and MariaDB (docs/storage.md).

PostgreSQL and MariaDB get a fresh, uniquely named database per test session, dropped at the
end, so parallel runs never collide. A server that cannot be reached FAILS the run (docs/storage.md
promises these are tested for real); set ``AGI_XMPP_DB_BACKENDS=sqlite`` (a comma-separated
subset) to skip the others on purpose. Admin URLs: ``AGI_XMPP_TEST_POSTGRESQL_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``) and ``AGI_XMPP_TEST_MARIADB_URL`` (default
``mariadb://root@127.0.0.1:3306/test``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import itertools
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

import agi_xmpp.storage
from agi_xmpp.config import DirectoryEntry
from agi_xmpp.errors import DirectoryError, StorageError
from agi_xmpp.storage import (
    ArchivedMessage,
    AsyncStorage,
    Direction,
    MessageKind,
    OutboxItem,
    OutboxState,
    PresenceRecord,
    Storage,
)

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("sqlite", "postgresql", "mariadb")
TABLES = ("directory", "message_archive", "outbox", "presence_log")
PG_ADMIN_URL = os.environ.get(
    "AGI_XMPP_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MARIADB_ADMIN_URL = os.environ.get(
    "AGI_XMPP_TEST_MARIADB_URL", "mariadb://root@127.0.0.1:3306/test"
)
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


def _selected_backends() -> frozenset[str]:
    raw = os.environ.get("AGI_XMPP_DB_BACKENDS")
    if raw is None:
        return frozenset(BACKENDS)
    chosen = frozenset(name.strip().lower() for name in raw.split(",") if name.strip())
    unknown = chosen - set(BACKENDS)
    if unknown:
        raise ValueError(
            f"AGI_XMPP_DB_BACKENDS: unknown backend(s) {sorted(unknown)}; use {BACKENDS}"
        )
    return chosen


SELECTED = _selected_backends()
BACKEND_PARAMS = [
    pytest.param(
        name,
        id=name,
        marks=(
            ()
            if name in SELECTED
            else pytest.mark.skip(
                reason=f"{name} not in AGI_XMPP_DB_BACKENDS={os.environ['AGI_XMPP_DB_BACKENDS']}"
            )
        ),
    )
    for name in BACKENDS
]


# -- throwaway server databases (driver-level admin: only storage.py imports SQLAlchemy) -----------


class _Server:
    """Create/drop databases on one server through its DB-API driver."""

    def __init__(self, backend: str, admin_url: str) -> None:
        self.backend = backend
        self.admin_url = admin_url
        parts = urlsplit(admin_url)
        self.scheme = parts.scheme.partition("+")[0]
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port
        self.user = unquote(parts.username or "")
        self.password = unquote(parts.password or "")
        self.admin_db = parts.path.lstrip("/") or None

    @property
    def shown(self) -> str:
        return f"{self.host}:{self.port or 'default port'} as {self.user or 'default user'}"

    def connect(self, database: str | None = None) -> Any:  # a DB-API connection
        if self.backend == "postgresql":
            import psycopg2

            conn = psycopg2.connect(
                host=self.host,
                port=self.port or 5432,
                user=self.user or None,
                password=self.password or None,
                dbname=database or self.admin_db or "postgres",
                connect_timeout=5,
            )
            conn.autocommit = True
            return conn
        import pymysql

        return pymysql.connect(
            host=self.host,
            port=self.port or 3306,
            user=self.user or "root",
            password=self.password,
            database=database or self.admin_db,
            connect_timeout=5,
            autocommit=True,
            charset="utf8mb4",
        )

    def url(self, database: str) -> str:
        auth = self.user + (f":{self.password}" if self.password else "")
        port = f":{self.port}" if self.port else ""
        return f"{self.scheme}://{auth}@{self.host}{port}/{database}"

    def create(self, name: str) -> None:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                if self.backend == "postgresql":
                    cur.execute(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0")
                else:
                    cur.execute(
                        f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                    )
        finally:
            conn.close()

    def drop(self, name: str) -> None:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                if self.backend == "postgresql":
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                else:
                    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()

    def drop_tables(self, name: str) -> None:
        conn = self.connect(name)
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS {', '.join(TABLES)}")
        finally:
            conn.close()


def _throwaway_database(backend: str, admin_url: str) -> Iterator[tuple[_Server, str]]:
    server = _Server(backend, admin_url)
    label = {"postgresql": "PostgreSQL", "mariadb": "MariaDB"}[backend]
    reason = ""
    try:
        server.connect().close()
    except Exception as exc:  # any driver error means "not reachable"
        reason = " ".join(str(exc).split()) or type(exc).__name__
    if reason:
        pytest.fail(
            f"{label} is not reachable at {server.shown} ({reason}). Storage is promised to be "
            f"tested on a real {label}: start the server (docs/storage.md), point "
            f"AGI_XMPP_TEST_{backend.upper()}_URL at one, or set AGI_XMPP_DB_BACKENDS to the "
            "backends you mean to test (e.g. AGI_XMPP_DB_BACKENDS=sqlite).",
            pytrace=False,
        )
    name = f"agi_xmpp_test_{os.getpid()}_{secrets.token_hex(4)}"
    server.create(name)
    try:
        yield server, name
    finally:
        server.drop(name)


@pytest.fixture(scope="session")
def postgresql_database() -> Iterator[tuple[_Server, str]]:
    yield from _throwaway_database("postgresql", PG_ADMIN_URL)


@pytest.fixture(scope="session")
def mariadb_database() -> Iterator[tuple[_Server, str]]:
    yield from _throwaway_database("mariadb", MARIADB_ADMIN_URL)


@pytest.fixture(params=BACKEND_PARAMS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL to an empty database of the parametrised backend."""
    backend: str = request.param
    if backend == "sqlite":
        # A directory that does not exist yet: Storage must create it.
        return f"sqlite:///{tmp_path}/state/agi_xmpp.sqlite3"
    server, name = request.getfixturevalue(f"{backend}_database")
    server.drop_tables(name)
    return server.url(name)


@pytest.fixture
def storage(db_url: str) -> Iterator[Storage]:
    store = Storage(db_url)
    store.create_all()
    yield store
    store.close()


def _now() -> datetime:
    return datetime.now(UTC)


# -- outbox ----------------------------------------------------------------------------------------


def test_outbox_add_survives_restart(db_url: str) -> None:
    """A row from outbox_add is there, intact, for a new Storage on the same URL."""
    first = Storage(db_url)
    first.create_all()
    first.outbox_add("work", "bob@example.com/desk", "see you at 10", "id-restart")
    first.close()

    second = Storage(db_url)
    second.create_all()  # idempotent on an existing schema
    try:
        [item] = second.outbox_pending("work", LONG_AGO)
    finally:
        second.close()
    assert isinstance(item, OutboxItem)
    assert (item.account, item.to_jid, item.body, item.stanza_id) == (
        "work",
        "bob@example.com/desk",
        "see you at 10",
        "id-restart",
    )
    assert (item.kind, item.state, item.attempts, item.acked_at) == (
        MessageKind.CHAT,
        OutboxState.PENDING,
        0,
        None,
    )


def test_outbox_add_survives_process_kill(db_url: str) -> None:
    """Once outbox_add returns, SIGKILL of the process does not lose the row."""
    Storage(db_url).create_all()
    code = textwrap.dedent("""
        import os, signal, sys
        from agi_xmpp.storage import Storage
        store = Storage(sys.argv[1])
        store.outbox_add("work", "bob@example.com", "accepted, then killed", "id-kill")
        os.kill(os.getpid(), signal.SIGKILL)
        """)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code, db_url], env=env, timeout=60, capture_output=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    store = Storage(db_url)
    try:
        assert [i.stanza_id for i in store.outbox_pending("work", LONG_AGO)] == ["id-kill"]
    finally:
        store.close()


def test_outbox_pending_is_oldest_first_per_account(storage: Storage) -> None:
    """outbox_pending lists only that account's pending rows, in the order they were added."""
    for n in range(5):
        storage.outbox_add("work", f"u{n}@example.com", f"m{n}", f"w{n}")
        storage.outbox_add("home", "x@example.com", f"h{n}", f"h{n}")
    items = storage.outbox_pending("work", LONG_AGO)
    assert [i.stanza_id for i in items] == ["w0", "w1", "w2", "w3", "w4"]
    assert [i.id for i in items] == sorted(i.id for i in items)
    assert all(a.created_at <= b.created_at for a, b in itertools.pairwise(items))
    assert storage.outbox_pending("nobody", LONG_AGO) == []


def test_outbox_account_is_case_insensitive(storage: Storage) -> None:
    """Account names are stored and matched lower-cased, like config section names."""
    storage.outbox_add("Work", "bob@example.com", "hi", "id-case")
    assert [i.account for i in storage.outbox_pending("WORK", LONG_AGO)] == ["work"]


def test_outbox_pending_respects_created_after(storage: Storage) -> None:
    """Rows created before the cutoff are not pending for resend; naive datetimes are refused."""
    storage.outbox_add("work", "bob@example.com", "hi", "id-1")
    assert storage.outbox_pending("work", _now() + timedelta(seconds=5)) == []
    assert len(storage.outbox_pending("work", _now() - timedelta(seconds=60))) == 1
    other_zone = _now().astimezone(timezone(timedelta(hours=-7)))
    assert len(storage.outbox_pending("work", other_zone - timedelta(seconds=60))) == 1
    with pytest.raises(ValueError, match="timezone-aware"):
        storage.outbox_pending("work", datetime.now())


def test_outbox_acked(storage: Storage) -> None:
    """outbox_acked marks exactly the given pending rows acked, once, with an aware acked_at."""
    for n in range(4):
        storage.outbox_add("work", "bob@example.com", f"m{n}", f"id-{n}")
    assert storage.outbox_acked(["id-1", "id-3", "id-3", "unknown"]) == 2
    assert storage.outbox_acked(iter(["id-1"])) == 0  # already acked
    assert storage.outbox_acked([]) == 0
    assert [i.stanza_id for i in storage.outbox_pending("work", LONG_AGO)] == ["id-0", "id-2"]
    counts = storage.outbox_counts()
    assert counts == {("work", "pending"): 2, ("work", "acked"): 2}


def test_outbox_acked_many_ids(storage: Storage) -> None:
    """Acknowledging more ids than one IN list may hold works (chunked)."""
    ids = [f"bulk-{n}" for n in range(600)]
    for stanza_id in ids:
        storage.outbox_add("work", "bob@example.com", "x", stanza_id)
    assert storage.outbox_acked(ids) == 600
    assert storage.outbox_counts() == {("work", "acked"): 600}


def test_outbox_get_and_acked_at(storage: Storage) -> None:
    """outbox_get returns any row by stanza id; acking records acked_at in UTC."""
    storage.outbox_add("work", "bob@example.com", "hi", "id-at")
    assert storage.outbox_get("id-at").acked_at is None
    assert storage.outbox_get("nope") is None
    before = _now()
    storage.outbox_acked(["id-at"])
    item = storage.outbox_get("id-at")
    assert item.state is OutboxState.ACKED
    assert item.acked_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= item.acked_at <= _now() + timedelta(seconds=1)
    assert item.created_at <= item.acked_at


def test_outbox_attempted(storage: Storage) -> None:
    """outbox_attempted adds one to attempts per call; an unknown id is a no-op."""
    storage.outbox_add("work", "bob@example.com", "hi", "id-try")
    storage.outbox_attempted("id-try")
    storage.outbox_attempted("id-try")
    storage.outbox_attempted("no-such-id")
    [item] = storage.outbox_pending("work", LONG_AGO)
    assert item.attempts == 2


def test_outbox_bounced_permanent_marks_failed_and_no_late_ack_undoes_it(storage: Storage) -> None:
    """A permanent bounce makes the row failed with its reason, even after an ack; purge drops it."""
    storage.outbox_add("work", "bob@example.com", "hi", "id-bad")
    storage.outbox_acked(["id-bad"])
    item = storage.outbox_bounced("id-bad", permanent=True, reason="cancel/service-unavailable: gone")
    assert item.state is OutboxState.FAILED and item.acked_at is None
    assert item.last_error == "cancel/service-unavailable: gone"
    assert storage.outbox_acked(["id-bad"]) == 0
    assert storage.outbox_get("id-bad").state is OutboxState.FAILED
    assert storage.outbox_pending("work", LONG_AGO) == []
    assert storage.outbox_bounced("no-such-id", permanent=True, reason="x") is None
    assert storage.outbox_purge(_now() + timedelta(seconds=1)) == 1


def test_outbox_bounced_wait_makes_the_row_pending_again(storage: Storage) -> None:
    """A 'wait' bounce turns an acked row back to pending (to be retried), keeping the reason."""
    storage.outbox_add("work", "bob@example.com", "hi", "id-wait")
    storage.outbox_acked(["id-wait"])
    item = storage.outbox_bounced("id-wait", permanent=False, reason="wait/resource-constraint")
    assert item.state is OutboxState.PENDING
    [pending] = storage.outbox_pending("work", LONG_AGO)
    assert pending.stanza_id == "id-wait" and pending.last_error == "wait/resource-constraint"


def test_outbox_in_states_lists_rows_of_those_states_oldest_first(storage: Storage) -> None:
    """outbox_in_states returns every account's rows in the given states, oldest first, only those."""
    for n, account in enumerate(["work", "home", "work"]):
        storage.outbox_add(account, "bob@example.com", f"body-{n}", f"id-{n}")
    storage.outbox_bounced("id-2", permanent=True, reason="cancel/gone")
    storage.outbox_bounced("id-0", permanent=True, reason="cancel/gone too")
    storage.outbox_acked(["id-1"])
    failed = storage.outbox_in_states(["failed"])
    assert [(i.stanza_id, i.body, i.last_error) for i in failed] == [
        ("id-0", "body-0", "cancel/gone too"),
        ("id-2", "body-2", "cancel/gone"),
    ]
    assert [i.stanza_id for i in storage.outbox_in_states(["acked", "failed"])] == ["id-0", "id-1", "id-2"]
    assert storage.outbox_in_states(["expired"]) == [] and storage.outbox_in_states([]) == []
    with pytest.raises(ValueError):
        storage.outbox_in_states(["lost"])


def test_outbox_table_from_before_the_failed_state_is_upgraded(tmp_path: Path) -> None:
    """create_all() upgrades an old SQLite outbox (no failed state, no last_error), rows kept."""
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE outbox (id INTEGER NOT NULL, account VARCHAR(255) NOT NULL,"
            " to_jid VARCHAR(3071) NOT NULL, body TEXT NOT NULL, kind VARCHAR(16) NOT NULL,"
            " stanza_id VARCHAR(255) NOT NULL, state VARCHAR(16) NOT NULL, attempts INTEGER NOT NULL,"
            " created_at DATETIME NOT NULL, acked_at DATETIME,"
            " CONSTRAINT pk_outbox PRIMARY KEY (id), CONSTRAINT uq_outbox_stanza_id UNIQUE (stanza_id),"
            " CONSTRAINT ck_outbox_kind CHECK (kind IN ('chat', 'groupchat')),"
            " CONSTRAINT ck_outbox_state CHECK (state IN ('pending', 'acked', 'expired')));"
            "CREATE INDEX ix_outbox_account_state_id ON outbox (account, state, id);"
            "CREATE INDEX ix_outbox_state_created_at ON outbox (state, created_at);"
            "INSERT INTO outbox VALUES (1, 'work', 'bob@example.com', 'kept', 'chat', 'id-old',"
            " 'pending', 0, '2030-01-01 00:00:00.000000', NULL);"
            "CREATE TABLE message_archive (id INTEGER NOT NULL, direction VARCHAR(3) NOT NULL,"
            " account VARCHAR(255) NOT NULL, peer VARCHAR(3071) NOT NULL, body TEXT NOT NULL,"
            " stanza_id VARCHAR(255), created_at DATETIME NOT NULL, CONSTRAINT pk_message_archive"
            " PRIMARY KEY (id));"
            "INSERT INTO message_archive VALUES (1, 'out', 'work', 'bob@example.com', 'kept',"
            " 'id-old', '2030-01-01 00:00:00.000000');"
        )
    store = Storage(f"sqlite:///{path}")
    try:
        store.create_all()
        assert store.outbox_get("id-old").body == "kept"
        assert store.outbox_bounced("id-old", permanent=True, reason="gone").state is OutboxState.FAILED
        assert store.archive_delivered("id-old") == 1
        store.create_all()  # idempotent
    finally:
        store.close()


def test_outbox_expire(storage: Storage) -> None:
    """outbox_expire turns only old pending rows into expired; a late ack still wins."""
    storage.outbox_add("work", "bob@example.com", "old", "id-old")
    storage.outbox_add("work", "bob@example.com", "acked", "id-acked")
    storage.outbox_acked(["id-acked"])
    assert storage.outbox_expire(_now() - timedelta(hours=1)) == 0
    assert storage.outbox_expire(_now() + timedelta(seconds=1)) == 1
    assert storage.outbox_expire(_now() + timedelta(seconds=1)) == 0
    assert storage.outbox_pending("work", LONG_AGO) == []
    assert storage.outbox_counts() == {("work", "expired"): 1, ("work", "acked"): 1}
    assert storage.outbox_acked(["id-old"]) == 1  # the server confirmed it after all
    assert storage.outbox_counts() == {("work", "acked"): 2}
    with pytest.raises(ValueError):
        storage.outbox_expire(datetime.now())


def test_outbox_purge(storage: Storage) -> None:
    """outbox_purge deletes finished rows older than the cutoff and never a pending one."""
    for n in range(3):
        storage.outbox_add("work", "bob@example.com", "m", f"id-{n}")
    storage.outbox_acked(["id-0"])
    storage.outbox_expire(_now() - timedelta(hours=1))  # nothing that old
    assert storage.outbox_purge(_now() - timedelta(hours=1)) == 0
    assert storage.outbox_purge(_now() + timedelta(seconds=1)) == 1
    assert storage.outbox_counts() == {("work", "pending"): 2}


def test_outbox_counts_per_account_and_state(storage: Storage) -> None:
    """outbox_counts groups rows by (account, state)."""
    assert storage.outbox_counts() == {}
    storage.outbox_add("a", "x@example.com", "m", "a1")
    storage.outbox_add("a", "x@example.com", "m", "a2")
    storage.outbox_add("b", "x@example.com", "m", "b1")
    storage.outbox_acked(["a2"])
    assert storage.outbox_counts() == {("a", "pending"): 1, ("a", "acked"): 1, ("b", "pending"): 1}


def test_outbox_duplicate_stanza_id_is_refused(storage: Storage) -> None:
    """A stanza id is in the outbox at most once: a second add is a StorageError."""
    storage.outbox_add("work", "bob@example.com", "first", "dup")
    with pytest.raises(StorageError, match="'dup' is already in the outbox"):
        storage.outbox_add("work", "bob@example.com", "second", "dup")
    assert [i.body for i in storage.outbox_pending("work", LONG_AGO)] == ["first"]


def test_outbox_kind(storage: Storage) -> None:
    """kind is chat or groupchat; anything else is a programming error (ValueError)."""
    storage.outbox_add("work", "room@conference.example.com", "hello room", "g1", kind="groupchat")
    [item] = storage.outbox_pending("work", LONG_AGO)
    assert item.kind is MessageKind.GROUPCHAT
    with pytest.raises(ValueError, match="kind"):
        storage.outbox_add("work", "bob@example.com", "x", "g2", kind="headline")


# -- text fidelity ---------------------------------------------------------------------------------

BODIES = {
    "emoji": "call me 📞😀🇫🇷 👩‍👩‍👧",
    "newlines": "line one\nline two\r\nline three\rend\n",
    "controls": "".join(chr(c) for c in range(1, 32)) + "\x7f tab\tend",
    "quotes": 'it\'s "quoted" \\ back\\slash; DROP TABLE outbox; -- %s %(x)s ?',
    "unnormalised": "e\u0301 vs \u00e9, \ufb01 ligature, \u212b angstrom",  # must NOT be normalised
    "rtl_and_cjk": "שלום עולם — 你好\uff0c世界 — ﷽",
    "spaces": "  leading and trailing  ",
    "empty": "",
    "ascii_65536_bytes": "x" * 65536,
    "emoji_65540_bytes": "😀" * 16385,
    "mixed_200k_bytes": ("ab😀\n" * 30000),
}


@pytest.mark.parametrize("body", list(BODIES.values()), ids=list(BODIES))
def test_text_round_trips_exactly(storage: Storage, body: str) -> None:
    """Bodies come back byte-for-byte: emoji, newlines, controls, 64 KiB and beyond."""
    storage.outbox_add("work", "bob@example.com", body, "rt")
    storage.archive_add("out", "work", "bob@example.com", body, "rt")
    storage.presence_log_add("work", "bob@example.com/phone", "away", 0, body)
    [item] = storage.outbox_pending("work", LONG_AGO)
    [archived] = storage.archive_recent("work", "bob@example.com")
    [presence] = storage.presence_log_recent("work", "bob@example.com")
    assert item.body == body
    assert archived.body == body
    assert presence.status == body


def test_jids_and_accounts_round_trip_unicode(storage: Storage) -> None:
    """Non-ASCII JIDs and resources are kept exactly (resources are case-sensitive)."""
    to = "jürgen@bücher.example/Ünïcödé Desk 😀"
    storage.outbox_add("wörk", to, "hallo", "u1")
    [item] = storage.outbox_pending("WÖRK", LONG_AGO)
    assert (item.account, item.to_jid) == ("wörk", to)


def test_nul_is_refused_everywhere(storage: Storage) -> None:
    """A NUL character is refused with StorageError on every backend (PostgreSQL cannot hold it)."""
    with pytest.raises(StorageError, match="NUL"):
        storage.outbox_add("work", "bob@example.com", "a\x00b", "nul")
    with pytest.raises(StorageError, match="NUL"):
        storage.archive_add("in", "work", "bob@example.com", "a\x00b", None)
    assert storage.outbox_counts() == {}


def test_over_long_values_are_refused(storage: Storage) -> None:
    """A value longer than its column is refused the same way on every backend, never truncated."""
    with pytest.raises(StorageError, match="stanza_id is longer"):
        storage.outbox_add("work", "bob@example.com", "x", "s" * 256)
    with pytest.raises(StorageError, match="account is longer"):
        storage.outbox_add("w" * 256, "bob@example.com", "x", "ok")


def test_timestamps_are_aware_utc(storage: Storage) -> None:
    """Every timestamp comes back timezone-aware UTC, close to now, with sub-second precision."""
    before = _now()
    storage.outbox_add("work", "bob@example.com", "x", "t1")
    storage.archive_add("in", "work", "bob@example.com", "x", "t1")
    at = datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=UTC)
    storage.presence_log_add("work", "bob@example.com/r", "dnd", 5, "busy", at=at)
    after = _now()
    [item] = storage.outbox_pending("work", LONG_AGO)
    [archived] = storage.archive_recent("work", "bob@example.com")
    [presence] = storage.presence_log_recent("work", "bob@example.com")
    for stamp in (item.created_at, archived.created_at):
        assert stamp.tzinfo is not None and stamp.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=1) <= stamp <= after + timedelta(seconds=1)
    assert presence.at == at and presence.at.utcoffset() == timedelta(0)


# -- archive ---------------------------------------------------------------------------------------


def test_archive_delivered_records_the_receipt_once(storage: Storage) -> None:
    """A XEP-0184 receipt sets delivered_at on the outgoing message with that id, once."""
    storage.archive_add("out", "work", "bob@example.com", "hi", "id-r")
    assert storage.archive_delivered("id-r") == 1
    assert storage.archive_delivered("id-r") == 0
    assert storage.archive_delivered("unknown") == 0
    [archived] = storage.archive_recent("work", "bob@example.com")
    assert archived.delivered_at is not None


def test_archive_recent_returns_last_n_oldest_first(storage: Storage) -> None:
    """archive_recent gives the last `limit` messages with that peer, oldest first."""
    for n in range(6):
        direction = "in" if n % 2 else "out"
        storage.archive_add(direction, "work", "bob@example.com", f"m{n}", f"s{n}")
    recent = storage.archive_recent("work", "bob@example.com")
    assert [m.body for m in recent] == ["m3", "m4", "m5"]
    assert [m.direction for m in recent] == [Direction.IN, Direction.OUT, Direction.IN]
    assert all(isinstance(m, ArchivedMessage) for m in recent)
    assert [m.body for m in storage.archive_recent("work", "bob@example.com", limit=10)] == [
        f"m{n}" for n in range(6)
    ]
    assert [m.body for m in storage.archive_recent("work", "bob@example.com", limit=1)] == ["m5"]
    assert storage.archive_recent("work", "bob@example.com", limit=0) == []


def test_archive_purge_keeps_what_is_within_retention(storage: Storage) -> None:
    """archive_purge (archive_retention) deletes messages older than the cutoff, keeps newer."""
    storage.archive_add("in", "work", "bob@example.com", "old", "s1")
    assert storage.archive_purge(_now() - timedelta(days=1)) == 0
    assert [m.body for m in storage.archive_recent("work", "bob@example.com")] == ["old"]
    assert storage.archive_purge(_now() + timedelta(seconds=1)) == 1
    storage.archive_add("in", "work", "bob@example.com", "new", "s2")
    assert [m.body for m in storage.archive_recent("work", "bob@example.com")] == ["new"]


def test_archive_peer_is_normalised(storage: Storage) -> None:
    """The peer is stored as its normalised bare JID: case and resource do not split history."""
    storage.archive_add("in", "work", "Bob@EXAMPLE.com/phone", "from phone", "a")
    storage.archive_add("out", "Work", "bob@example.com.", "to bare", "b")
    storage.archive_add("in", "work", "BOB@example.com/Desk", "from desk", "c")
    storage.archive_add("in", "work", "carol@example.com", "someone else", "d")
    storage.archive_add("in", "home", "bob@example.com", "other account", "e")
    for query in ("bob@example.com", "BOB@Example.COM", "bob@example.com/anything"):
        recent = storage.archive_recent("work", query, limit=10)
        assert [m.body for m in recent] == ["from phone", "to bare", "from desk"], query
    assert {m.peer for m in storage.archive_recent("work", "bob@example.com")} == {
        "bob@example.com"
    }


def test_archive_stanza_id_optional_and_direction_checked(storage: Storage) -> None:
    """An incoming message may have no id; a direction other than in/out is a ValueError."""
    storage.archive_add("in", "work", "bob@example.com", "no id", None)
    [m] = storage.archive_recent("work", "bob@example.com")
    assert m.stanza_id is None
    with pytest.raises(ValueError, match="direction"):
        storage.archive_add("sideways", "work", "bob@example.com", "x", None)


# -- directory -------------------------------------------------------------------------------------


def test_directory_put_get_list(storage: Storage) -> None:
    """directory_put stores an entry that directory_get and directory_list return as put."""
    storage.directory_put(DirectoryEntry("101", "bob@example.com", "PJSIP/bob", "101@default"))
    storage.directory_put(DirectoryEntry("100", "alice@example.com"))
    assert storage.directory_get("100") == DirectoryEntry(
        "100", "alice@example.com", "PJSIP/100", None
    )
    assert storage.directory_get("101") == DirectoryEntry(
        "101", "bob@example.com", "PJSIP/bob", "101@default"
    )
    assert storage.directory_get("999") is None
    assert [e.extension for e in storage.directory_list()] == ["100", "101"]
    assert all(type(e) is DirectoryEntry for e in storage.directory_list())


def test_directory_jid_is_normalised(storage: Storage) -> None:
    """A directory JID is stored normalised (case-folded bare part, resource kept exactly)."""
    storage.directory_put(DirectoryEntry("100", "Alice@Example.COM/Desk"))
    assert storage.directory_get("100").jid == "alice@example.com/Desk"


def test_directory_duplicate_is_refused(storage: Storage) -> None:
    """Putting an existing extension without replace is a DirectoryError that names it."""
    storage.directory_put(DirectoryEntry("100", "alice@example.com"))
    with pytest.raises(DirectoryError, match=r"extension '100' already exists"):
        storage.directory_put(DirectoryEntry("100", "mallory@example.com"))
    assert storage.directory_get("100").jid == "alice@example.com"


def test_directory_replace(storage: Storage) -> None:
    """replace=True overwrites an existing entry, including clearing optional fields."""
    storage.directory_put(DirectoryEntry("100", "alice@example.com", "PJSIP/a", "100@default"))
    storage.directory_put(DirectoryEntry("100", "alice@example.org"), replace=True)
    assert storage.directory_get("100") == DirectoryEntry("100", "alice@example.org")
    storage.directory_put(DirectoryEntry("102", "c@example.com"), replace=True)  # new is fine too
    assert storage.directory_get("102") is not None


def test_directory_remove(storage: Storage) -> None:
    """directory_remove deletes and says whether there was something to delete."""
    storage.directory_put(DirectoryEntry("100", "alice@example.com"))
    assert storage.directory_remove("100") is True
    assert storage.directory_remove("100") is False
    assert storage.directory_get("100") is None


def test_directory_find_jid(storage: Storage) -> None:
    """directory_find_jid matches the normalised bare JID, any resource; lowest extension wins."""
    storage.directory_put(DirectoryEntry("200", "alice@example.com/desk"))
    storage.directory_put(DirectoryEntry("105", "Alice@Example.com"))
    storage.directory_put(DirectoryEntry("300", "bob@example.com"))
    assert storage.directory_find_jid("ALICE@example.COM").extension == "105"
    assert storage.directory_find_jid("alice@example.com/phone").extension == "105"
    assert storage.directory_find_jid("bob@example.com").extension == "300"
    assert storage.directory_find_jid("carol@example.com") is None
    assert storage.directory_find_jid("not a jid") is None


def test_directory_find_mailbox(storage: Storage) -> None:
    """directory_find_mailbox returns the owner of a voicemail box, exactly matched."""
    storage.directory_put(DirectoryEntry("100", "alice@example.com", mailbox="100@default"))
    storage.directory_put(DirectoryEntry("101", "bob@example.com"))
    assert storage.directory_find_mailbox("100@default").jid == "alice@example.com"
    assert storage.directory_find_mailbox("100@other") is None
    assert storage.directory_find_mailbox("100@DEFAULT") is None  # exact on every backend


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (DirectoryEntry("", "alice@example.com"), "empty extension"),
        (DirectoryEntry("1 00", "alice@example.com"), "may not contain"),
        (DirectoryEntry("100&101", "alice@example.com"), "may not contain"),
        (DirectoryEntry("9" * 81, "alice@example.com"), "longer than 80"),
        (DirectoryEntry("100", ""), "empty JID"),
        (DirectoryEntry("100", "alice@"), "invalid JID"),
        (DirectoryEntry("100", "alice@example.com", device="PJSIP/1\n00"), "device"),
        (DirectoryEntry("100", "alice@example.com", mailbox="m" * 256), "mailbox"),
    ],
)
def test_directory_refuses_malformed_entries(
    storage: Storage, entry: DirectoryEntry, reason: str
) -> None:
    """A malformed entry is a DirectoryError saying what is wrong, and nothing is stored."""
    with pytest.raises(DirectoryError, match=reason):
        storage.directory_put(entry)
    assert storage.directory_list() == []


def test_directory_load_config(storage: Storage) -> None:
    """Config entries are upserted as 'config'; 'db' entries win and are reported; stale ones go."""
    storage.directory_put(DirectoryEntry("101", "bob-db@example.com"))  # made with the CLI
    shadowed = storage.directory_load_config(
        [
            DirectoryEntry("100", "alice@example.com", "PJSIP/100", "100@default"),
            DirectoryEntry("101", "bob-config@example.com"),
            DirectoryEntry("102", "carol@example.com"),
        ]
    )
    assert shadowed == ("101",)
    assert storage.directory_get("101").jid == "bob-db@example.com"
    assert [e.extension for e in storage.directory_list()] == ["100", "101", "102"]

    # Next start: 100 changed, 102 left the config file, 103 is new.
    shadowed = storage.directory_load_config(
        [
            DirectoryEntry("100", "alice@example.org"),
            DirectoryEntry("101", "bob-config@example.com"),
            DirectoryEntry("103", "dave@example.com"),
        ]
    )
    assert shadowed == ("101",)
    assert storage.directory_get("100") == DirectoryEntry("100", "alice@example.org")
    assert storage.directory_get("102") is None
    assert [e.extension for e in storage.directory_list()] == ["100", "101", "103"]
    assert storage.directory_get("101").jid == "bob-db@example.com"

    # The CLI removes its override: the config entry comes back at the next load.
    assert storage.directory_remove("101")
    assert storage.directory_load_config([DirectoryEntry("101", "bob-config@example.com")]) == ()
    assert [e.jid for e in storage.directory_list()] == ["bob-config@example.com"]


def test_directory_load_config_refuses_duplicates(storage: Storage) -> None:
    """The same extension twice in the config is a DirectoryError and changes nothing."""
    storage.directory_load_config([DirectoryEntry("100", "alice@example.com")])
    with pytest.raises(DirectoryError, match="configured twice"):
        storage.directory_load_config(
            [DirectoryEntry("200", "a@example.com"), DirectoryEntry("200", "b@example.com")]
        )
    assert [e.extension for e in storage.directory_list()] == ["100"]


def test_directory_put_over_config_entry_makes_it_db(storage: Storage) -> None:
    """A config entry replaced through the API becomes a 'db' entry the config no longer touches."""
    storage.directory_load_config([DirectoryEntry("100", "alice@example.com")])
    storage.directory_put(DirectoryEntry("100", "alice@example.org"), replace=True)
    assert storage.directory_load_config([DirectoryEntry("100", "alice@example.com")]) == ("100",)
    assert storage.directory_get("100").jid == "alice@example.org"


# -- presence log ----------------------------------------------------------------------------------


def test_presence_log(storage: Storage) -> None:
    """presence_log_recent returns the last changes of any resource of a bare JID, oldest first."""
    for n, show in enumerate(["available", "away", "xa", "dnd"]):
        storage.presence_log_add("Work", f"Bob@Example.com/r{n % 2}", show, n, f"status {n}")
    storage.presence_log_add("work", "carol@example.com/r", "chat", 0, "")
    records = storage.presence_log_recent("work", "bob@example.com", limit=3)
    assert [r.show for r in records] == ["away", "xa", "dnd"]
    assert records[0] == PresenceRecord(
        account="work",
        jid="bob@example.com/r1",
        show="away",
        priority=1,
        status="status 1",
        at=records[0].at,
    )
    assert storage.presence_log_recent("work", "nobody@example.com") == []


# -- values handed out -----------------------------------------------------------------------------


def test_results_are_frozen_plain_dataclasses(storage: Storage) -> None:
    """Callers get frozen dataclasses the storage package exports, never ORM rows."""
    storage.outbox_add("work", "bob@example.com", "x", "f1")
    storage.archive_add("in", "work", "bob@example.com", "x", "f1")
    storage.directory_put(DirectoryEntry("100", "alice@example.com"))
    values = [
        storage.outbox_pending("work", LONG_AGO)[0],
        storage.archive_recent("work", "bob@example.com")[0],
        storage.directory_get("100"),
    ]
    for value in values:
        assert dataclasses.is_dataclass(value)
        assert getattr(agi_xmpp.storage, type(value).__name__) is type(value)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, dataclasses.fields(value)[0].name, "changed")


def test_only_storage_imports_sqlalchemy() -> None:
    """SQLAlchemy is imported by the agi_xmpp/storage/ package and by no other module."""
    pattern = re.compile(r"^\s*(from|import)\s+sqlalchemy\b", re.MULTILINE)
    package = ROOT / "agi_xmpp"
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.relative_to(package).parts[0] != "storage"
        and pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


# -- URLs and errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://u@db.example/agi", "mysql+pymysql://u@db.example/agi?charset=utf8mb4"),
        ("mariadb://u@db.example/agi", "mariadb+pymysql://u@db.example/agi?charset=utf8mb4"),
        ("mariadb+pymysql://u@h/agi?charset=utf8mb4", "mariadb+pymysql://u@h/agi?charset=utf8mb4"),
        ("postgresql://u:secret@db.example/agi", "postgresql+psycopg2://u:***@db.example/agi"),
        ("postgres://u@db.example/agi", "postgresql+psycopg2://u@db.example/agi"),
        ("sqlite://", "sqlite://"),
    ],
)
def test_urls_get_default_drivers(url: str, expected: str) -> None:
    """Driverless URLs get PyMySQL (utf8mb4) or psycopg2, and str() never shows the password."""
    store = Storage(url)  # no connection is made until first use
    try:
        assert str(store) == expected
    finally:
        store.close()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql://u@h/agi?charset=utf8", "utf8mb4"),
        ("oracle://u@h/agi", "unsupported database"),
        ("not a url", "invalid database URL"),
    ],
)
def test_bad_urls_are_storage_errors(url: str, reason: str) -> None:
    """A URL we cannot use faithfully is refused at construction with StorageError."""
    with pytest.raises(StorageError, match=reason):
        Storage(url)


@pytest.mark.parametrize(
    "url", ["postgresql://postgres@127.0.0.1:1/nothing", "mariadb://root@127.0.0.1:1/nothing"]
)
def test_unreachable_server_is_storage_error(url: str) -> None:
    """A database that cannot be reached raises StorageError, not a SQLAlchemy exception."""
    store = Storage(url)
    try:
        with pytest.raises(StorageError) as caught:
            store.create_all()
        assert "create_all" in str(caught.value) and "[SQL" not in str(caught.value)
    finally:
        store.close()


def test_sqlite_file_setup(tmp_path: Path) -> None:
    """A SQLite file gets its parent directories created and runs in WAL mode."""
    path = tmp_path / "a" / "b" / "agi_xmpp.sqlite3"
    store = Storage(f"sqlite:///{path}")
    store.create_all()
    store.close()
    assert path.exists()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_concurrent_writers_wait_instead_of_failing(tmp_path: Path) -> None:
    """Two Storage objects (service and CLI) writing one SQLite file never hit "locked"."""
    url = f"sqlite:///{tmp_path}/shared.sqlite3"
    Storage(url).create_all()
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        store = Storage(url)
        try:
            for n in range(150):  # read-then-write transactions: the lock-upgrade case
                store.directory_put(DirectoryEntry("100", f"{name}{n}@example.com"), replace=True)
                store.outbox_add("work", "bob@example.com", "x", f"{name}-{n}")
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("cli", "service")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    check = Storage(url)
    try:
        assert check.outbox_counts() == {("work", "pending"): 300}
    finally:
        check.close()


def test_sqlite_in_memory_works_across_threads() -> None:
    """sqlite:// (in memory) keeps one database for the worker thread and the caller alike."""
    store = Storage("sqlite://")
    store.create_all()
    store.outbox_add("work", "bob@example.com", "x", "mem")

    async def from_worker() -> list[OutboxItem]:
        return await AsyncStorage(store).outbox_pending("work", LONG_AGO)

    assert [i.stanza_id for i in asyncio.run(from_worker())] == ["mem"]


# -- AsyncStorage ----------------------------------------------------------------------------------


def test_async_storage_mirrors_every_storage_method() -> None:
    """Every public Storage method has a same-named coroutine on AsyncStorage (close → aclose)."""
    public = {
        name
        for name, member in inspect.getmembers(Storage, inspect.isfunction)
        if not name.startswith("_")
    }
    missing = [
        name
        for name in sorted(public - {"close"})
        if not inspect.iscoroutinefunction(getattr(AsyncStorage, name, None))
    ]
    assert missing == []
    assert inspect.iscoroutinefunction(AsyncStorage.aclose)
    for name in public - {"close"}:
        sync_params = list(inspect.signature(getattr(Storage, name)).parameters)
        async_params = list(inspect.signature(getattr(AsyncStorage, name)).parameters)
        assert sync_params == async_params, name


async def test_async_storage_round_trip(db_url: str) -> None:
    """Every kind of call works from the event loop and returns the same values as Storage."""
    async with AsyncStorage(Storage(db_url)) as store:
        await store.create_all()
        await store.outbox_add("work", "bob@example.com", "hi 😀", "a1")
        await store.outbox_add("work", "bob@example.com", "again", "a2", kind="chat")
        await store.outbox_attempted("a1")
        assert [
            (i.stanza_id, i.attempts) for i in await store.outbox_pending("work", LONG_AGO)
        ] == [
            ("a1", 1),
            ("a2", 0),
        ]
        assert await store.outbox_acked(s for s in ["a1"]) == 1
        assert await store.outbox_expire(_now() + timedelta(seconds=1)) == 1
        assert await store.outbox_counts() == {("work", "acked"): 1, ("work", "expired"): 1}
        assert await store.outbox_purge(_now() + timedelta(seconds=1)) == 2
        await store.archive_add("in", "work", "Bob@example.com/x", "hello", None)
        assert [m.body for m in await store.archive_recent("work", "bob@example.com")] == ["hello"]
        await store.directory_put(DirectoryEntry("100", "alice@example.com", mailbox="100@default"))
        with pytest.raises(DirectoryError):
            await store.directory_put(DirectoryEntry("100", "alice@example.com"))
        assert (await store.directory_get("100")).jid == "alice@example.com"
        assert (await store.directory_find_jid("alice@example.com")).extension == "100"
        assert (await store.directory_find_mailbox("100@default")).extension == "100"
        assert [e.extension for e in await store.directory_list()] == ["100"]
        assert await store.directory_load_config(
            iter([DirectoryEntry("100", "x@example.com")])
        ) == ("100",)
        assert await store.directory_remove("100") is True
        await store.presence_log_add("work", "bob@example.com/x", "away", 0, "lunch")
        assert [r.status for r in await store.presence_log_recent("work", "bob@example.com")] == [
            "lunch"
        ]


async def test_async_storage_uses_one_worker_thread(db_url: str) -> None:
    """All calls run on one thread that is not the event loop's."""
    seen: set[int] = set()

    class Recording(Storage):
        def directory_list(self) -> list[DirectoryEntry]:
            seen.add(threading.get_ident())
            return super().directory_list()

        def _insert_many(self, items):  # type: ignore[no-untyped-def]
            seen.add(threading.get_ident())
            return super()._insert_many(items)

    async with AsyncStorage(Recording(db_url)) as store:
        await store.create_all()
        await asyncio.gather(
            *(store.directory_list() for _ in range(20)),
            *(store.outbox_add("work", "b@example.com", "x", f"t{n}") for n in range(20)),
        )
    assert len(seen) == 1
    assert threading.get_ident() not in seen


async def test_group_commit_batches_concurrent_adds(db_url: str) -> None:
    """Concurrent outbox_add calls share transactions; each returns once its row is committed."""
    other = Storage(db_url)  # a second connection: sees only committed rows
    async with AsyncStorage(Storage(db_url)) as store:
        await store.create_all()

        async def add(n: int) -> None:
            await store.outbox_add("work", "bob@example.com", f"m{n}", f"g{n}")
            # Committed before we were told: another connection can read it right now.
            assert other.outbox_get(f"g{n}") is not None

        async with asyncio.TaskGroup() as tasks:
            for n in range(300):
                tasks.create_task(add(n))
        assert store.group_commit_rows == 300
        assert store.group_commits < 100, repr(store)
    try:
        pending = other.outbox_pending("work", LONG_AGO)
    finally:
        other.close()
    assert sorted(i.stanza_id for i in pending) == sorted(f"g{n}" for n in range(300))


async def test_group_commit_isolates_a_bad_row(db_url: str) -> None:
    """One refused row in a batch fails only its own caller; the others are committed."""
    async with AsyncStorage(Storage(db_url)) as store:
        await store.create_all()
        await store.outbox_add("work", "bob@example.com", "original", "taken")
        results = await asyncio.gather(
            *(store.outbox_add("work", "bob@example.com", f"m{n}", f"ok{n}") for n in range(10)),
            store.outbox_add("work", "bob@example.com", "duplicate", "taken"),
            *(store.archive_add("out", "work", "bob@example.com", f"a{n}", None) for n in range(5)),
            return_exceptions=True,
        )
        errors = [r for r in results if r is not None]
        assert len(errors) == 1 and isinstance(errors[0], StorageError)
        assert "'taken' is already in the outbox" in str(errors[0])
        pending = await store.outbox_pending("work", LONG_AGO)
        assert len(pending) == 11 and pending[0].body == "original"
        assert len(await store.archive_recent("work", "bob@example.com", limit=10)) == 5


async def test_aclose_commits_queued_rows_then_refuses_calls(db_url: str) -> None:
    """aclose() commits every row already accepted and closes; later calls raise StorageError."""
    store = AsyncStorage(Storage(db_url))
    await store.create_all()
    adds = [
        asyncio.ensure_future(store.outbox_add("work", "b@example.com", "x", f"c{n}"))
        for n in range(50)
    ]
    await asyncio.sleep(0)  # let every add enqueue its row
    await store.aclose()
    await asyncio.gather(*adds)
    await store.aclose()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        await store.outbox_counts()
    with pytest.raises(StorageError, match="closed"):
        await store.outbox_add("work", "b@example.com", "x", "late")
    check = Storage(db_url)
    try:
        assert check.outbox_counts() == {("work", "pending"): 50}
    finally:
        check.close()


async def test_async_database_errors_are_storage_errors() -> None:
    """A failing database reaches every awaiting caller as StorageError, batched or not."""
    async with AsyncStorage(Storage("postgresql://postgres@127.0.0.1:1/nothing")) as store:
        with pytest.raises(StorageError):
            await store.outbox_counts()
        results = await asyncio.gather(
            *(store.outbox_add("work", "b@example.com", "x", f"e{n}") for n in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(r, StorageError) for r in results)


async def test_a_cancelled_storage_call_stays_cancelled(tmp_path):
    """A task cancelled while its database call completes gets CancelledError, not the result
    (Python 3.11's wait_for() returns the result and drops the cancellation: the retention task
    then slept an hour and the service's stop waited for it)."""
    async with AsyncStorage(Storage(f"sqlite:///{tmp_path / 'c.sqlite3'}")) as store:
        work = asyncio.get_running_loop().create_future()
        call = asyncio.create_task(store._within_deadline(work, "probe"))
        await asyncio.sleep(0)  # the call is waiting for the work
        call.cancel()
        if not work.done():  # (awaited directly, the work itself was cancelled)
            work.set_result(1)  # the work completes in the same loop pass
        with pytest.raises(asyncio.CancelledError):
            await call
