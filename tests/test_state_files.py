"""State files are private whatever the umask: directories 0700, files 0600 (docs/security.md)."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agi_xmpp.errors import AgiXmppError
from tools.local_prosody import ensure_demo, stop_demo
from agi_xmpp.state_files import ensure_private_dir, ensure_token, read_token
from agi_xmpp.storage import Storage
from service_process import free_port


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def test_state_dir_is_created_0700_and_an_open_one_tightened(tmp_path):
    """A new state directory is 0700 under umask 000; an existing 0755 one becomes 0700."""
    with umask(0):
        created = ensure_private_dir(tmp_path / "a" / "state")
        existing = tmp_path / "b"
        existing.mkdir(mode=0o755)
        ensure_private_dir(existing)
    assert mode(created) == 0o700 and mode(existing) == 0o700


def test_a_shared_sticky_directory_is_never_taken_over(tmp_path):
    """state_dir = /tmp (sticky, world-writable) is refused rather than chmod-ed to 0700."""
    shared = tmp_path / "tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    with pytest.raises(AgiXmppError, match="shared directory"):
        ensure_private_dir(shared)
    assert mode(shared) == 0o1777


def test_sqlite_database_and_its_wal_files_are_0600(tmp_path):
    """Under umask 000 the SQLite database, its -wal and -shm files are 0600 after writes; an
    existing 0644 database is tightened at open."""
    with umask(0):
        storage = Storage(f"sqlite:///{tmp_path / 'state' / 'db.sqlite3'}")
        storage.create_all()
        storage.archive_add("in", "a", "bob@example.com", "secret body", "id1")
        files = sorted(p.name for p in (tmp_path / "state").iterdir())
        modes = {p.name: mode(p) for p in (tmp_path / "state").iterdir()}
        storage.close()
        old = tmp_path / "old.sqlite3"
        old.touch()
        os.chmod(old, 0o644)
        Storage(f"sqlite:///{old}").close()
    assert "db.sqlite3-wal" in files and "db.sqlite3-shm" in files
    assert modes == {name: 0o600 for name in files}
    assert mode(tmp_path / "state") == 0o700
    assert mode(old) == 0o600


def test_token_is_created_once_0600_and_read_back(tmp_path):
    """ensure_token makes a 0600 file of at least 256 bits once; read_token returns it."""
    with umask(0):
        token = ensure_token(tmp_path / "state")
    assert ensure_token(tmp_path / "state") == token == read_token(tmp_path / "state")
    assert mode(tmp_path / "state" / "http-token") == 0o600 and len(token) >= 43


def test_unreadable_token_says_what_to_do(tmp_path):
    """A token file the CLI cannot read names the file and suggests the service's user."""
    ensure_token(tmp_path)
    os.chmod(tmp_path / "http-token", 0o000)
    try:
        if os.geteuid() == 0:
            pytest.skip("root reads any file")
        with pytest.raises(AgiXmppError, match="permission denied"):
            read_token(tmp_path)
    finally:
        os.chmod(tmp_path / "http-token", 0o600)


@pytest.mark.integration
def test_demo_account_files_are_private(tmp_path):
    """The demo (make run) keeps its passwords file 0600 and its Prosody tree (accounts,
    certificates) 0700 under umask 000, even when the passwords file already existed 0644."""
    state = tmp_path / "state"
    ports = {"c2s_port": free_port(), "http_port": free_port()}
    try:
        with umask(0):
            ensure_demo(state, **ports)
            accounts = state / "prosody" / "demo-accounts.json"
            os.chmod(accounts, 0o644)
            ensure_demo(state, **ports)
    finally:
        stop_demo(state, **ports)
    assert mode(state / "prosody") == 0o700
    assert mode(accounts) == 0o600
