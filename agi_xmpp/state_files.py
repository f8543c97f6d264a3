"""The service's own files are private: the state directory 0700, every file in it 0600.

Modes are set with ``chmod`` after creation, so they hold whatever the umask (a umask of 022
would otherwise leave the database and the API token readable by every local user). The HTTP
API token lives here too: created at first start, read by the CLI (docs/security.md).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from .errors import AgiXmppError

__all__ = ["TOKEN_FILE", "ensure_private_dir", "make_private", "read_token", "ensure_token"]

TOKEN_FILE = "http-token"
DIR_MODE = 0o700
FILE_MODE = 0o600


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and missing parents) and make it 0700; an existing one is tightened."""
    directory = Path(path)
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    mode = directory.stat().st_mode
    if mode & stat.S_ISVTX:  # /tmp and the like: never take them away from everyone else
        raise AgiXmppError(f"{directory} is a shared directory (sticky bit): give the service a directory of its own")
    if stat.S_IMODE(mode) != DIR_MODE:
        os.chmod(directory, DIR_MODE)
    return directory


def make_private(path: str | os.PathLike[str]) -> None:
    """Make an existing regular file 0600 (a missing one is fine: nothing to protect)."""
    try:
        if stat.S_IMODE(os.stat(path).st_mode) != FILE_MODE:
            os.chmod(path, FILE_MODE)
    except FileNotFoundError:
        pass


def create_private_file(path: str | os.PathLike[str]) -> None:
    """Create ``path`` empty with mode 0600 unless it exists, then make sure it is 0600.

    For files another library opens later (SQLite keeps the mode of an existing file and gives
    its journal and WAL files the same mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    os.close(fd)
    make_private(path)


def read_token(state_dir: str | os.PathLike[str]) -> str:
    """The API token the running service wrote; ``AgiXmppError`` saying why it cannot be read."""
    path = Path(state_dir) / TOKEN_FILE
    try:
        token = path.read_text(encoding="ascii").strip()
    except PermissionError:
        raise AgiXmppError(
            f"cannot read the HTTP API token {path}: permission denied "
            "(run the command as the service's user, e.g. sudo -u asterisk agi-xmpp ...)"
        ) from None
    except FileNotFoundError:
        raise AgiXmppError(
            f"no HTTP API token at {path}: is the service running with this state_dir?"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AgiXmppError(f"cannot read the HTTP API token {path}: {exc}") from None
    if not token:
        raise AgiXmppError(f"the HTTP API token file {path} is empty")
    return token


def ensure_token(state_dir: str | os.PathLike[str]) -> str:
    """The token in ``state_dir/http-token``, created (256 random bits, mode 0600) if missing."""
    directory = ensure_private_dir(state_dir)
    path = directory / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        make_private(path)
        try:
            existing = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            existing = ""
        if existing:
            return existing
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC, FILE_MODE)  # empty or garbled: replace
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
    make_private(path)
    return token
