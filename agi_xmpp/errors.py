"""Every exception agi-xmpp raises on purpose, in one tree.

    AgiXmppError
    ├── ConfigError                 bad configuration: carries file, line and reason
    ├── ProtocolError               the FastAGI wire went wrong
    │   ├── LocalProtocolError      we were about to break the rules (refused before the wire)
    │   └── RemoteProtocolError     the Asterisk side broke them
    ├── ChannelGone                 the AGI connection closed or the channel hung up
    ├── ScriptError                 a script's argument or request is wrong
    │   ├── InvalidJid              a JID that does not parse
    │   └── UnknownAccount          an account name that is not configured
    ├── XmppError                   the XMPP side cannot do it right now
    │   ├── NotOnline               the account's session has no live stream (the pool queues)
    │   └── RoomJoinFailed          a room refused the join, or did not confirm it in time
    ├── DirectoryError              a directory entry that is malformed or duplicated
    └── StorageError                the database refused, is unreachable, or missed its deadline

One place turns these into dialplan variables: ``scripts/base.py``'s wrapper sets the script's
``*_STATUS=FAILURE`` and ``*_ERROR`` to the error's one plain line (``ScriptError``,
``XmppError``), to ``database unavailable: <reason>`` (``StorageError``, however deep it was
raised), or to ``internal error (...)`` for anything outside this tree (a bug: logged with its
traceback). Scripts and the XMPP facade (``xmpp_facade.py``) raise; they do not translate.
"""

from __future__ import annotations


class AgiXmppError(Exception):
    """Base of every error agi-xmpp raises deliberately."""


class ConfigError(AgiXmppError):
    """Configuration that cannot be used; names the file and line when known."""

    def __init__(self, reason: str, *, path: str | None = None, line: int | None = None) -> None:
        self.reason = reason
        self.path = path
        self.line = line
        where = path or "<config>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {reason}")


class ProtocolError(AgiXmppError):
    """Something is wrong on the FastAGI wire."""


class LocalProtocolError(ProtocolError):
    """We were about to send something Asterisk would misread; nothing was sent."""


class RemoteProtocolError(ProtocolError):
    """The FastAGI peer sent something that breaks the protocol."""


class ChannelGone(AgiXmppError):
    """The channel hung up or the FastAGI connection is closed."""


class ScriptError(AgiXmppError):
    """A script cannot do what it was asked; the text goes to ``*_ERROR``."""


class InvalidJid(ScriptError):
    """A JID that does not parse (RFC 7622)."""


class UnknownAccount(ScriptError):
    """An ACCOUNT argument that names no configured account."""


class XmppError(AgiXmppError):
    """The XMPP side cannot do this right now."""


class NotOnline(XmppError):
    """The session has no live stream right now."""


class RoomJoinFailed(XmppError):
    """The room refused the join, or did not confirm it in time."""


class DirectoryError(AgiXmppError):
    """A directory entry that is malformed, missing or duplicated."""


class StorageError(AgiXmppError):
    """The database failed; the caller decides whether that loses anything (it must not)."""
