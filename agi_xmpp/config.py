"""Read ``agi_xmpp.conf`` (and res_xmpp's ``xmpp.conf``) into frozen dataclasses.

The files are in Asterisk's own ``.conf`` dialect, read by ``conf_dialect`` (pyst2 plus what it
lacks); this module checks and converts each section's entries, with errors that name the file
and line. See docs/configuration.md for every key.

Longer than ~600 lines on purpose: it is the one place that knows every key of every section
(``[general]``, accounts, ``[ami]``, ``[directory]``, and res_xmpp's ``xmpp.conf`` for import),
its default, check and conversion, in the order docs/configuration.md lists them; split by
section, each part would need the shared converter (``_Values``) and the cross-section checks of
the others. What ``check-config`` checks on the machine beyond syntax is in ``config_checks.py``.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple, TypeVar

from .conf_dialect import ConfigErrors as ConfigErrors  # re-exported: load_config raises it
from .conf_dialect import Entry, Section, Source, raise_collected, read_sections
from .errors import ConfigError, DirectoryError, InvalidJid, UnknownAccount
from .jid import parse_jid

DEFAULT_CONFIG_PATH = "/etc/asterisk/agi_xmpp.conf"
DEFAULT_STATE_DIR = "/var/lib/agi-xmpp"
RESERVED_SECTIONS = frozenset({"general", "ami", "directory"})

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_T = TypeVar("_T")
_D = TypeVar("_D")


class BindAddress(NamedTuple):
    """A listening address: ``host, port = bind`` works, and ``str()`` gives ``[::1]:4573``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name other than localhost may resolve anywhere


DEFAULT_AGI_BIND = BindAddress("127.0.0.1", 4573)
DEFAULT_HTTP_BIND = BindAddress("127.0.0.1", 4580)
DEFAULT_AGI_ALLOW: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class GeneralConfig:
    """The ``[general]`` section."""

    agi_bind: BindAddress = DEFAULT_AGI_BIND
    agi_allow: tuple[IPNetwork, ...] = DEFAULT_AGI_ALLOW
    http_bind: BindAddress = DEFAULT_HTTP_BIND
    http_token: str | None = field(default=None, repr=False)
    state_dir: str = DEFAULT_STATE_DIR
    database: str = field(default="", repr=False)  # "" → SQLite file in state_dir
    log_format: str = "console"
    log_level: str = "info"
    default_account: str | None = None
    max_receive_timeout: int = 3600
    outbox_ttl: int = 3600
    max_message_bytes: int = 65536
    xmpp_conf: str | None = None
    keepalive_interval: int = 60  # seconds between pings to each account's server
    reconnect_max_delay: int = 60  # cap of the reconnect back-off, seconds
    http_hosts: tuple[str, ...] = ()  # extra names accepted in the HTTP Host header
    agi_max_connections: int = 4096  # FastAGI connection budget (conn_limits)
    http_max_connections: int = 256  # HTTP connection budget
    archive_retention: int = 90  # days the message archive keeps a message; 0 = forever

    def __post_init__(self) -> None:
        if not self.database:
            url = f"sqlite:///{os.path.join(self.state_dir, 'agi-xmpp.sqlite3')}"
            object.__setattr__(self, "database", url)


def default_resource() -> str:
    """``asterisk-<host name>``: two hosts on one account (a second instance, or res_xmpp still
    loaded during a migration) must not bind the same full JID, or the server replaces one
    session with the other in a loop (RFC 6120 §7.7.2.2, ``<conflict/>``)."""
    host = re.sub(r"[^a-z0-9.-]", "-", os.uname().nodename.lower()).strip("-.")
    return f"asterisk-{host}" if host else "asterisk"


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountConfig:
    """One XMPP account: a client section of our file or of res_xmpp's xmpp.conf."""

    name: str  # the section name, lower-cased
    username: str  # JID as written, may carry /resource
    secret: str = field(repr=False)
    serverhost: str | None = None  # None: DNS SRV from the JID's domain
    port: int = 5222
    priority: int = 1
    status: str = "available"  # chat, available, away, xa, dnd
    statusmessage: str = "Online and Available"
    usetls: bool = True
    usesasl: bool = True
    forceoldssl: bool = False  # direct TLS from the first byte (port 5223 style)
    buddies: tuple[str, ...] = ()
    autoregister: bool = True
    autoprune: bool = False
    auth_policy: str = "accept"  # accept / deny subscription requests
    timeout: int = 5  # seconds an incoming message stays buffered for jabber_receive
    keepalive: bool = True
    tls_verify: bool = True
    cafile: str | None = None
    resource: str = ""  # "" → resource of username, else default_resource()

    def __post_init__(self) -> None:
        if not self.resource:
            _, _, resource = self.username.partition("/")
            object.__setattr__(self, "resource", resource or default_resource())

    @property
    def bare_jid(self) -> str:
        return self.username.partition("/")[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class AmiConfig:
    """The ``[ami]`` section: how to reach Asterisk's manager interface."""

    username: str
    secret: str = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 5038
    originate_context: str = "from-internal"
    presence_to_hints: bool = False
    voicemail_spool: str = "/var/spool/asterisk/voicemail"
    voicemail_upload: bool = False
    voicemail_delete: bool = False  # voicemail.conf has delete=yes: notify from the event alone
    queue_pause: bool = False
    queue_pause_shows: tuple[str, ...] = ("dnd",)  # chat shows that pause a queue member
    call_limit: int = 5  # click-to-call attempts per user per minute


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """An extension and the chat user behind it."""

    extension: str
    jid: str
    device: str = ""  # "" → PJSIP/<extension>
    mailbox: str | None = None  # EXT@CONTEXT

    def __post_init__(self) -> None:
        if not self.device:
            object.__setattr__(self, "device", f"PJSIP/{self.extension}")


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the service was configured with; each component takes its own part."""

    path: str | None
    general: GeneralConfig
    accounts: Mapping[str, AccountConfig]
    ami: AmiConfig | None = None
    directory: tuple[DirectoryEntry, ...] = ()
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        accounts = MappingProxyType({k.lower(): v for k, v in self.accounts.items()})
        object.__setattr__(self, "accounts", accounts)
        object.__setattr__(self, "directory", tuple(self.directory))
        object.__setattr__(self, "warnings", tuple(self.warnings))

    def account(self, name: str) -> AccountConfig:
        """The account named ``name`` (any case); empty means ``default_account``."""
        key = (name or "").strip().lower()
        if not key:
            if self.general.default_account:
                key = self.general.default_account
            elif len(self.accounts) == 1:
                return next(iter(self.accounts.values()))
            else:
                raise UnknownAccount("no account given and no default_account is configured")
        try:
            return self.accounts[key]
        except KeyError:
            raise UnknownAccount(f"unknown account '{name.strip() or key}'") from None


# --------------------------------------------------------------------------------------------
# Values: one section's entries checked against the keys it may hold, converted with file:line.

_TRUE = frozenset({"yes", "true", "y", "t", "1", "on"})  # ast_true()
_FALSE = frozenset({"no", "false", "n", "f", "0", "off"})  # ast_false()


class _Values:
    """One section's entries, checked against the keys it may hold; typed getters with file:line.

    Keys in ``multi`` (``buddy``) add up; any other key may be set once in the section's own
    lines, and overrides what a template gave it. ``fallback`` supplies defaults from elsewhere
    (xmpp.conf's [general]), keeping their own file:line for errors.

    A problem is appended to ``errors`` and the getter returns its default, so one run reports
    every problem of a file (``check-config``), not only the first.
    """

    def __init__(
        self,
        section: Section,
        allowed: Iterable[str],
        errors: list[ConfigError],
        *,
        multi: frozenset[str] = frozenset(),
        fallback: Mapping[str, Entry] | None = None,
    ) -> None:
        self.section = section
        self.errors = errors
        self.single: dict[str, Entry] = dict(fallback or {})
        self.multi: dict[str, list[Entry]] = {}
        allowed = sorted(allowed)
        own: dict[str, Entry] = {}
        for entry in section.entries:
            if entry.key not in allowed:
                hint = difflib.get_close_matches(entry.key, allowed, n=1)
                suffix = f" (did you mean '{hint[0]}'?)" if hint else ""
                self.fail(entry.src, f"unknown key '{entry.name}' in [{section.name}]{suffix}")
            elif entry.key in multi:
                self.multi.setdefault(entry.key, []).append(entry)
            elif entry.inherited:
                if entry.key not in own:
                    self.single[entry.key] = entry
            elif entry.key in own:
                first = own[entry.key].src
                self.fail(
                    entry.src, f"'{entry.name}' is set twice in [{section.name}] (first at {first})"
                )
            else:
                own[entry.key] = self.single[entry.key] = entry

    def fail(self, src: Source, reason: str) -> None:
        self.errors.append(src.error(reason))

    def text(self, key: str, default: str | None = None) -> str | None:
        entry = self.single.get(key)
        return entry.value if entry is not None and entry.value else default

    def required(self, key: str) -> str:
        """The value of ``key``; "" (and an error) when it is missing or empty."""
        entry = self.single.get(key)
        if entry is None or not entry.value:
            where = entry.src if entry is not None else self.section.src
            self.fail(where, f"[{self.section.name}] needs '{key}'")
            return ""
        return entry.value

    def _get(self, key: str) -> Entry | None:
        entry = self.single.get(key)
        if entry is not None and not entry.value:
            self.fail(entry.src, f"'{entry.name}' needs a value")
            return None
        return entry

    def boolean(self, key: str, default: bool) -> bool:
        entry = self._get(key)
        if entry is None:
            return default
        word = entry.value.lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        self.fail(entry.src, f"'{entry.name}' must be yes or no, not {entry.value!r}")
        return default

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        entry = self._get(key)
        if entry is None:
            return default
        number = int(entry.value) if re.fullmatch(r"[+-]?[0-9]+", entry.value) else None
        if number is None or not low <= number <= high:
            self.fail(
                entry.src,
                f"'{entry.name}' must be a whole number from {low} to {high}, not {entry.value!r}",
            )
            return default
        return number

    def choice(self, key: str, default: str, choices: Mapping[str, str]) -> str:
        entry = self._get(key)
        if entry is None:
            return default
        word = entry.value.lower()
        if word not in choices:
            allowed = ", ".join(dict.fromkeys(choices.values()))
            self.fail(entry.src, f"'{entry.name}' must be one of {allowed}, not {entry.value!r}")
            return default
        return choices[word]

    def converted(
        self, key: str, default: _D, convert: Callable[[str], _T], *, optional: bool = False
    ) -> _T | _D:
        """``convert(value)`` raising ValueError(reason) becomes an error at the key's line.

        ``optional``: an empty value means the default instead of an error.
        """
        entry = self.single.get(key)
        if entry is None or (optional and not entry.value):
            return default
        entry = self._get(key)  # an empty value is an error from here on
        if entry is None:
            return default
        try:
            return convert(entry.value)
        except ValueError as exc:
            self.fail(entry.src, f"'{entry.name}': {exc}")
            return default

    def path(self, key: str, default: _D, base_dir: str) -> str | _D:
        value = self.text(key)
        return os.path.normpath(os.path.join(base_dir, value)) if value else default


def _no_space(what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if re.search(r"[\s,]", value):
            raise ValueError(f"{what} may not contain spaces or commas: {value!r}")
        return value

    return check


# --------------------------------------------------------------------------------------------
# Checks shared with the CLI and the HTTP API.


def check_jid(text: str, *, bare: bool = False, need_local: bool = True) -> str:
    """``text`` checked as a JID (RFC 7622, via ``jid.parse_jid``); ValueError says why not.

    With ``bare``, a resource is refused and the normalised bare JID comes back (bare JIDs are
    compared case-insensitively); otherwise ``text`` comes back as written. ``need_local``
    refuses a domain-only JID.
    """
    try:
        jid = parse_jid(text.strip())
    except InvalidJid as exc:
        raise ValueError(str(exc)) from None
    if need_local and not jid.local:
        raise ValueError(f"expected user@domain, not {text.strip()!r}")
    if bare:
        if not jid.is_bare:
            raise ValueError(f"expected a bare JID (user@domain), not {text.strip()!r}")
        return jid.bare
    return text.strip()


_EXTENSION = re.compile(r"[0-9A-Za-z*#+_.\-]+")
_DEVICE = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*/[^\s&,]+")
_MAILBOX = re.compile(r"[0-9A-Za-z*#+_.\-]+(@[0-9A-Za-z_.\-]+)?")


def make_directory_entry(
    extension: str, jid: str, device: str | None = None, mailbox: str | None = None
) -> DirectoryEntry:
    """A checked DirectoryEntry; raises DirectoryError naming what is wrong."""
    extension = extension.strip()
    if not _EXTENSION.fullmatch(extension):
        raise DirectoryError(f"bad extension {extension!r}: use digits, letters and * # + - _ .")
    try:
        bare = check_jid(jid, bare=True)
    except ValueError as exc:
        raise DirectoryError(str(exc)) from None
    device = (device or "").strip() or f"PJSIP/{extension}"
    if not _DEVICE.fullmatch(device):
        raise DirectoryError(
            f"bad device {device!r}: expected TECH/resource, e.g. PJSIP/{extension}"
        )
    mailbox = (mailbox or "").strip() or None
    if mailbox is not None:
        if not _MAILBOX.fullmatch(mailbox):
            raise DirectoryError(f"bad mailbox {mailbox!r}: expected EXT@CONTEXT")
        if "@" not in mailbox:
            mailbox += "@default"  # voicemail.conf's default context, as AMI reports it
    return DirectoryEntry(extension, bare, device, mailbox)


def parse_directory_value(extension: str, value: str) -> DirectoryEntry:
    """``JID[, device=TECH/EXT][, mailbox=EXT@CONTEXT]`` → DirectoryEntry (DirectoryError)."""
    jid, *options = (part.strip() for part in value.split(","))
    fields: dict[str, str] = {}
    for option in options:
        name, eq, setting = (s.strip() for s in option.partition("="))
        name = name.lower()
        if name not in ("device", "mailbox") or not eq:
            raise DirectoryError(f"unknown directory option {option!r} (use device= or mailbox=)")
        if name in fields:
            raise DirectoryError(f"'{name}=' given twice")
        fields[name] = setting
    return make_directory_entry(extension, jid, fields.get("device"), fields.get("mailbox"))


def parse_bind(text: str, default_port: int) -> BindAddress:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address; else ValueError."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"expected [address]:port, not {text!r}")
        has_port, port_text = bool(rest), rest[1:]
        ipaddress.IPv6Address(host)  # raises ValueError with its own reason
    elif text.count(":") > 1:
        host, has_port, port_text = text, False, ""
        ipaddress.IPv6Address(host)
    else:
        host, colon, port_text = text.partition(":")
        has_port = bool(colon)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.\-]*", host):
            raise ValueError(f"expected host:port, not {text!r}")
    port = default_port
    if has_port:
        if not re.fullmatch(r"[0-9]{1,5}", port_text) or int(port_text) > 65535:
            raise ValueError(f"port must be a number from 0 to 65535, not {port_text!r}")
        port = int(port_text)
    return BindAddress(host, port)


def _parse_networks(text: str) -> tuple[IPNetwork, ...]:
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"not an address or network: {item!r}") from None
    if not networks:
        raise ValueError("lists no address or network")
    return tuple(networks)


def _parse_database(text: str) -> str:
    if not re.match(r"[A-Za-z][A-Za-z0-9+.\-]*://", text):
        raise ValueError("must be an SQLAlchemy URL such as sqlite:////var/lib/agi-xmpp/db.sqlite3")
    return text


# --------------------------------------------------------------------------------------------
# Sections → dataclasses.

_GENERAL_KEYS = frozenset(
    "agi_bind agi_allow http_bind http_token database state_dir log_format log_level "
    "default_account max_receive_timeout outbox_ttl max_message_bytes xmpp_conf "
    "keepalive_interval reconnect_max_delay http_hosts agi_max_connections http_max_connections "
    "archive_retention".split()
)
_AMI_KEYS = frozenset(
    "host port username secret originate_context presence_to_hints voicemail_spool "
    "voicemail_upload voicemail_delete queue_pause queue_pause_shows call_limit".split()
)
# res_xmpp client keys we act on, and those we accept from an xmpp.conf but ignore, with the
# res_xmpp default that makes them harmless (no warning then).
_CLIENT_KEYS = frozenset(
    "type serverhost username secret priority port usetls usesasl buddy status statusmessage "
    "timeout keepalive autoprune autoregister auth_policy forceoldssl".split()
)
_CLIENT_IGNORED = {
    "pubsub_node": "", "refresh_token": "", "oauth_clientid": "", "oauth_secret": "",
    "debug": "no", "sendtodialplan": "no", "context": "default", "distribute_events": "no",
}  # fmt: skip
_OUR_ACCOUNT_KEYS = frozenset({"tls_verify", "cafile", "resource"})
# res_xmpp's [general] in xmpp.conf: the first three are defaults for every client.
_XMPP_GENERAL_KEYS = frozenset(
    "autoprune autoregister auth_policy debug collection_nodes pubsub_autocreate".split()
)
_STATUS = {  # res_xmpp's client_status_handler accepts these spellings
    "available": "available", "online": "available", "chat": "chat", "chatty": "chat",
    "away": "away", "xa": "xa", "xaway": "xa", "dnd": "dnd", "invisible": "dnd",
}  # fmt: skip
_POLICY = {"accept": "accept", "deny": "deny"}
_ACCOUNT_NAME = re.compile(r"[a-z0-9_][a-z0-9_.+\-]*")


# The defaults are the dataclasses' own: one place (docs/configuration.md lists them).
_GENERAL = GeneralConfig()
_AMI = AmiConfig(username="", secret="")


def _build_general(
    section: Section, base_dir: str, errors: list[ConfigError]
) -> tuple[GeneralConfig, _Values]:
    v = _Values(section, _GENERAL_KEYS, errors)
    state_dir = v.path("state_dir", DEFAULT_STATE_DIR, base_dir)
    general = GeneralConfig(
        agi_bind=v.converted("agi_bind", _GENERAL.agi_bind, lambda s: parse_bind(s, _GENERAL.agi_bind.port)),
        agi_allow=v.converted("agi_allow", _GENERAL.agi_allow, _parse_networks),
        http_bind=v.converted("http_bind", _GENERAL.http_bind, lambda s: parse_bind(s, _GENERAL.http_bind.port)),
        http_token=v.text("http_token"),
        state_dir=state_dir,
        database=v.converted("database", "", _parse_database),
        log_format=v.choice("log_format", _GENERAL.log_format, {"console": "console", "json": "json"}),
        log_level=v.choice(
            "log_level", _GENERAL.log_level, {w: w for w in ("debug", "info", "warning", "error")}
        ),
        default_account=(v.text("default_account") or "").lower() or None,
        max_receive_timeout=v.integer("max_receive_timeout", _GENERAL.max_receive_timeout, 1, 86400),
        outbox_ttl=v.integer("outbox_ttl", _GENERAL.outbox_ttl, 1, 30 * 86400),
        max_message_bytes=v.integer("max_message_bytes", _GENERAL.max_message_bytes, 1, 16 * 1024 * 1024),
        xmpp_conf=v.path("xmpp_conf", None, base_dir),
        keepalive_interval=v.integer("keepalive_interval", _GENERAL.keepalive_interval, 1, 3600),
        reconnect_max_delay=v.integer("reconnect_max_delay", _GENERAL.reconnect_max_delay, 1, 3600),
        http_hosts=v.converted("http_hosts", (), _parse_hosts, optional=True),
        agi_max_connections=v.integer("agi_max_connections", _GENERAL.agi_max_connections, 8, 1_000_000),
        http_max_connections=v.integer("http_max_connections", _GENERAL.http_max_connections, 8, 100_000),
        archive_retention=v.integer("archive_retention", _GENERAL.archive_retention, 0, 36500),
    )
    return general, v


def _parse_hosts(text: str) -> tuple[str, ...]:
    """``http_hosts``: host names, optionally ``name:port``, comma-separated."""
    hosts = []
    for item in (part.strip().lower() for part in text.split(",")):
        if not item:
            continue
        parsed = split_host(item)
        if parsed is None or not re.fullmatch(r"[0-9a-f:.]+|[a-z0-9_.\-]+", parsed[0]):
            raise ValueError(f"not a host name or host:port (port 1-65535): {item!r}")
        hosts.append(item)
    return tuple(hosts)


def split_host(value: str) -> tuple[str, int | None] | None:
    """A ``Host`` header or an ``http_hosts`` entry → (lower-case host without brackets, port or
    None); None if malformed. The HTTP API and the configuration read hosts with this one function."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = value.partition(":")
        if ":" in port_text:
            return None
    if not host:
        return None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
        return host.rstrip("."), int(port_text)
    return host.rstrip("."), None


def _build_ami(section: Section, base_dir: str, errors: list[ConfigError]) -> AmiConfig:
    v = _Values(section, _AMI_KEYS, errors)
    return AmiConfig(
        host=v.converted("host", _AMI.host, _no_space("host")),
        port=v.integer("port", _AMI.port, 1, 65535),
        username=v.required("username"),
        secret=v.required("secret"),
        originate_context=v.converted("originate_context", _AMI.originate_context, _no_space("a context")),
        presence_to_hints=v.boolean("presence_to_hints", _AMI.presence_to_hints),
        voicemail_spool=v.path("voicemail_spool", _AMI.voicemail_spool, base_dir),
        voicemail_upload=v.boolean("voicemail_upload", _AMI.voicemail_upload),
        voicemail_delete=v.boolean("voicemail_delete", _AMI.voicemail_delete),
        queue_pause=v.boolean("queue_pause", _AMI.queue_pause),
        queue_pause_shows=v.converted("queue_pause_shows", _AMI.queue_pause_shows, _pause_shows),
        call_limit=v.integer("call_limit", _AMI.call_limit, 1, 1000),
    )


def _pause_shows(value: str) -> tuple[str, ...]:
    shows = tuple(dict.fromkeys(w.strip().lower() for w in value.split(",") if w.strip()))
    unknown = [w for w in shows if w not in ("away", "xa", "dnd", "offline")]
    if not shows or unknown:
        raise ValueError("queue_pause_shows: a comma-separated list of away, xa, dnd, offline")
    return shows


def _build_directory(section: Section, errors: list[ConfigError]) -> tuple[DirectoryEntry, ...]:
    entries: dict[str, DirectoryEntry] = {}
    own: dict[str, Source] = {}
    for entry in section.entries:  # inherited entries come first; the section's own win
        try:
            parsed = parse_directory_value(entry.name, entry.value)
        except DirectoryError as exc:
            errors.append(entry.src.error(f"directory entry '{entry.name}': {exc}"))
            continue
        if not entry.inherited:
            if parsed.extension in own:
                first = own[parsed.extension]
                errors.append(entry.src.error(
                    f"extension {parsed.extension} is listed twice in [directory] "
                    f"(first at {first})"
                ))  # fmt: skip
                continue
            own[parsed.extension] = entry.src
        elif parsed.extension in own:
            continue
        entries[parsed.extension] = parsed
    return tuple(entries.values())


def _unquote(text: str) -> str:
    # xmpp.conf.sample shows statusmessage="..."; res_xmpp would send the quotes, nobody wants them.
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def _account_warnings(v: _Values) -> list[str]:
    """What res_xmpp would do with this section that agi-xmpp won't, in line order."""
    notes: list[tuple[Source, str]] = []
    for key, harmless in _CLIENT_IGNORED.items():
        entry = v.single.get(key)
        if entry is not None:
            value = entry.value.lower()
            if value != harmless and not (harmless == "no" and value in _FALSE):
                notes.append((entry.src, f"'{entry.name}' is a res_xmpp option agi-xmpp ignores"))
    status = v.single.get("status")
    if status is not None and status.value.lower() == "invisible":
        notes.append((status.src, "status=invisible is sent as dnd"))
    usesasl = v.single.get("usesasl")
    if usesasl is not None and usesasl.value.lower() in _FALSE:
        notes.append(
            (usesasl.src, "usesasl=no is ignored: agi-xmpp always authenticates with SASL")
        )
    notes.sort(key=lambda note: (note[0].path, note[0].line))
    return [f"{src}: [{v.section.name}] {text}" for src, text in notes]


def _username_problem(username: str, serverhost: str | None) -> str | None:
    """Why ``username`` cannot be an account's JID, with the likely fix; None when it can."""
    try:
        check_jid(username)
    except ValueError as exc:
        if username and "@" not in username and "/" not in username:
            # Vendor xmpp.conf files often hold the bare user name; the JID needs the domain.
            domain = serverhost or "example.com"
            return (
                f"'username': {exc}: a JID needs its domain, e.g. username = "
                f"{username}@{domain}"
                + ("" if serverhost else " (the XMPP domain of the account)")
            )
        return f"'username': {exc}"
    return None


def _build_account(
    section: Section,
    *,
    base_dir: str,
    ours: bool,
    defaults: Mapping[str, Entry],
    warnings: list[str],
    errors: list[ConfigError],
) -> AccountConfig | None:
    """An account from a client section; None for a component (with a warning) or on errors."""
    allowed = _CLIENT_KEYS | _CLIENT_IGNORED.keys() | (_OUR_ACCOUNT_KEYS if ours else frozenset())
    before = len(errors)
    v = _Values(section, allowed, errors, multi=frozenset({"buddy"}), fallback=defaults)
    kind = v.choice("type", "client", {"client": "client", "component": "component"})
    if kind == "component":
        warnings.append(f"{section.src}: [{section.name}] is an XMPP component (type=component), "
                        "which agi-xmpp does not support: skipped")  # fmt: skip
        return None
    name = section.name.lower()
    if name in RESERVED_SECTIONS:
        v.fail(section.src, f"[{section.name}] is reserved and cannot be an account name")
    elif not _ACCOUNT_NAME.fullmatch(name):
        v.fail(section.src, f"account name [{section.name}] cannot be used as an ACCOUNT "
                            "argument: use letters, digits and _ . + -")  # fmt: skip
    if v.text("refresh_token") and not v.text("secret"):
        v.fail(section.src, f"[{section.name}] uses OAuth (refresh_token), which agi-xmpp "
                            "does not support: set 'secret'")  # fmt: skip
    serverhost = v.converted("serverhost", None, _no_space("serverhost"), optional=True)
    username = v.required("username")
    if username:
        problem = _username_problem(username, serverhost)
        if problem:
            v.fail(v.single["username"].src, problem)
    warnings.extend(_account_warnings(v))
    buddies: dict[str, str] = {}
    for entry in v.multi.get("buddy", []):
        for item in (part.strip() for part in entry.value.split(",")):
            if item:
                try:
                    buddies.setdefault(check_jid(item, bare=True), item)
                except ValueError as exc:
                    v.fail(entry.src, f"'buddy': {exc}")
    user_resource = username.partition("/")[2]
    resource = v.text("resource") if ours else None
    if resource and user_resource and resource != user_resource:
        v.fail(
            v.single["resource"].src,
            f"resource {resource!r} contradicts the resource in username {username!r}",
        )
    cafile = v.path("cafile", None, base_dir) if ours else None
    if cafile is not None and not os.path.isfile(cafile):
        v.fail(v.single["cafile"].src, f"cafile not found: {cafile}")
    account = AccountConfig(
        name=name,
        username=username,
        secret=v.required("secret"),
        serverhost=serverhost,
        port=v.integer("port", 5222, 1, 65535),
        priority=v.integer("priority", 1, -128, 127),
        status=v.choice("status", "available", _STATUS),
        statusmessage=_unquote(v.text("statusmessage", "Online and Available") or ""),
        usetls=v.boolean("usetls", True),
        usesasl=v.boolean("usesasl", True),
        forceoldssl=v.boolean("forceoldssl", False),
        buddies=tuple(buddies),
        autoregister=v.boolean("autoregister", True),
        autoprune=v.boolean("autoprune", False),
        auth_policy=v.choice("auth_policy", "accept", _POLICY),
        timeout=v.integer("timeout", 5, 0, 86400),
        keepalive=v.boolean("keepalive", True),
        tls_verify=v.boolean("tls_verify", True) if ours else True,
        cafile=cafile,
        resource=resource or "",
    )
    return account if len(errors) == before else None


def parse_xmpp_conf(
    path: str | os.PathLike[str],
    warnings: list[str] | None = None,
    errors: list[ConfigError] | None = None,
) -> dict[str, AccountConfig]:
    """The client accounts of a res_xmpp ``xmpp.conf``; its [general] gives their defaults.

    Things res_xmpp accepts that agi-xmpp ignores are appended to ``warnings`` when given.
    Problems are appended to ``errors`` when given, else raised (all of them) at the end.
    """
    path = os.fspath(path)
    sink: list[str] = [] if warnings is None else warnings
    problems: list[ConfigError] = [] if errors is None else errors
    base_dir = os.path.dirname(os.path.abspath(path))
    sections = [s for s in read_sections(path, problems) if not s.template]
    defaults: dict[str, Entry] = {}
    for section in sections:
        if section.name.lower() == "general":
            general = _Values(section, _XMPP_GENERAL_KEYS, problems)
            general.boolean("autoprune", False)  # checked here so errors point at [general]
            general.boolean("autoregister", True)
            general.choice("auth_policy", "accept", _POLICY)
            for key in ("debug", "collection_nodes", "pubsub_autocreate"):
                if general.boolean(key, False):
                    sink.append(f"{general.single[key].src}: [general] '{key}' is a res_xmpp "
                                "option agi-xmpp ignores")  # fmt: skip
            defaults = {
                k: e
                for k, e in general.single.items()
                if k in ("autoprune", "autoregister", "auth_policy")
            }
    accounts: dict[str, AccountConfig] = {}
    for section in sections:
        if section.name.lower() != "general":
            account = _build_account(
                section, base_dir=base_dir, ours=False, defaults=defaults, warnings=sink,
                errors=problems,
            )  # fmt: skip
            if account is not None:
                accounts[account.name] = account
    if errors is None:
        raise_collected(problems)
    return accounts


def load_config(path: str | os.PathLike[str] = DEFAULT_CONFIG_PATH) -> Config:
    """Read and check ``path``; raises ConfigError naming file, line and reason.

    Every problem of the file is found before raising: one problem is raised as itself, more
    as one ``ConfigErrors`` listing them all (what ``check-config`` prints).
    """
    path = os.fspath(path)
    base_dir = os.path.dirname(os.path.abspath(path))
    warnings: list[str] = []
    errors: list[ConfigError] = []
    general, general_values = GeneralConfig(), None
    ami: AmiConfig | None = None
    directory: tuple[DirectoryEntry, ...] = ()
    accounts: dict[str, AccountConfig] = {}
    origin: dict[str, Source] = {}
    for section in read_sections(path, errors):
        kind = section.name.lower()
        if section.template:
            continue
        if kind == "general":
            general, general_values = _build_general(section, base_dir, errors)
        elif kind == "ami":
            ami = _build_ami(section, base_dir, errors)
        elif kind == "directory":
            directory = _build_directory(section, errors)
        else:
            account = _build_account(
                section, base_dir=base_dir, ours=True, defaults={}, warnings=warnings,
                errors=errors,
            )  # fmt: skip
            if account is not None:
                accounts[account.name] = account
                origin[account.name] = section.src
            elif section.name.lower() not in RESERVED_SECTIONS:
                origin[section.name.lower()] = section.src  # named, even if broken

    if general.xmpp_conf is not None:
        assert general_values is not None
        src = general_values.single["xmpp_conf"].src
        if not os.path.isfile(general.xmpp_conf):
            errors.append(src.error(f"xmpp_conf: file not found: {general.xmpp_conf}"))
        else:
            imported = parse_xmpp_conf(general.xmpp_conf, warnings, errors)
            for name, account in imported.items():
                if name in origin:
                    errors.append(src.error(
                        f"account [{name}] in {general.xmpp_conf} is also defined at "
                        f"{origin[name]}"
                    ))  # fmt: skip
                else:
                    accounts[name] = account

    if general.default_account is not None and general.default_account not in accounts:
        assert general_values is not None
        if general.default_account not in origin:  # a broken account section is reported already
            errors.append(general_values.single["default_account"].src.error(
                f"default_account '{general.default_account}' names no configured account"
            ))  # fmt: skip
    if not general.http_bind.is_loopback and not general.http_token:
        assert general_values is not None
        errors.append(general_values.single["http_bind"].src.error(
            f"http_bind {general.http_bind} is not a loopback address: set http_token too"
        ))  # fmt: skip
    raise_collected(errors)
    return Config(path, general, accounts, ami, directory, tuple(warnings))


def _escape(value: str) -> str:
    return value.replace(";", "\\;")


def render_accounts(accounts: Mapping[str, AccountConfig] | Iterable[AccountConfig]) -> str:
    """Account sections in agi_xmpp.conf's dialect (for ``import-xmpp-conf``); secrets included."""
    items = accounts.values() if isinstance(accounts, Mapping) else accounts
    blocks = []
    for a in items:
        message = a.statusmessage
        if len(message) >= 2 and message[0] == message[-1] == '"':
            message = f'"{message}"'  # survive _unquote on the way back in
        lines = [
            f"[{a.name}]",
            f"username = {_escape(a.username)}",
            f"secret = {_escape(a.secret)}",
        ]
        if a.serverhost:
            lines.append(f"serverhost = {a.serverhost}")
        lines += [
            f"port = {a.port}",
            f"priority = {a.priority}",
            f"status = {a.status}",
            f"statusmessage = {_escape(message)}",
            f"usetls = {_yes(a.usetls)}",
            f"usesasl = {_yes(a.usesasl)}",
            f"forceoldssl = {_yes(a.forceoldssl)}",
            *(f"buddy = {b}" for b in a.buddies),
            f"autoregister = {_yes(a.autoregister)}",
            f"autoprune = {_yes(a.autoprune)}",
            f"auth_policy = {a.auth_policy}",
            f"timeout = {a.timeout}",
            f"keepalive = {_yes(a.keepalive)}",
            f"tls_verify = {_yes(a.tls_verify)}",
        ]
        if a.cafile:
            lines.append(f"cafile = {_escape(a.cafile)}")
        if a.resource != (a.username.partition("/")[2] or "asterisk"):
            lines.append(f"resource = {_escape(a.resource)}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
