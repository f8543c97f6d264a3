"""RFC 7622 JID parsing and normalisation: ``parse_jid(text) -> Jid`` or ``InvalidJid``.

Pure: no I/O, no slixmpp. Two JIDs that RFC 7622 considers the same address parse to equal
``Jid`` values, so callers compare with ``==`` (or on ``.bare`` strings) and never by prefix.

Theory of operation (RFC 7622 §3.1): the resource is everything after the *first* ``/`` (so it
may itself contain ``/`` and ``@``); what is left is split at its *first* ``@`` into local part
and domain. Each part is then prepared and checked on its own:

- local part: PRECIS UsernameCaseMapped (RFC 8265 §3.3), **approximated** by NFKC + casefold
  (repeated until stable). Differences from the real profile, all deliberate: casefold is a
  little stronger than Unicode toLower (``ß`` → ``ss``, final sigma → sigma), so a few addresses
  that PRECIS keeps apart compare equal here; symbols (e.g. emoji), which PRECIS IdentifierClass
  refuses, are accepted. Refused: RFC 7622 §3.3.1's ``" & ' / : < > @``, whitespace, control,
  format, surrogate, private-use and unassigned code points.
- domain: NFKC, the IDNA label separators (``。．｡``) read as ``.``, one trailing dot removed,
  ASCII labels lower-cased, non-ASCII labels (and ``xn--`` A-labels) brought to their nameprep'd
  Unicode form through Python's ``encodings.idna`` (IDNA 2003), so ``xn--bcher-kva.example`` and
  ``BÜCHER.example`` are the same domain. Every label must be IDNA-encodable and its ASCII form
  made of letters, digits, ``-`` and ``_`` (underscore tolerated: internal hostnames use it), not
  starting or ending with ``-``. IP literals: dotted-quad IPv4 and ``[IPv6]`` (no zone id),
  written in their canonical form.
- resource: PRECIS OpaqueString (RFC 7613 §4.2) — non-ASCII spaces become U+0020, then NFC; case
  and everything else is kept exactly. Refused: control, surrogate, unassigned code points and the
  line/paragraph separators.

Each part is 1..1023 octets of UTF-8 after preparation; a separator with nothing after (or
before) it is an error (``@example.com``, ``user@``, ``user@example.com/``). Every failure is an
``InvalidJid`` whose text is one short printable line; no other exception escapes, whatever the
input (very long strings, NUL, newlines, lone surrogates, non-``str``).
"""

from __future__ import annotations

import encodings.idna
import functools
import ipaddress
import re
import unicodedata
from dataclasses import dataclass

from .errors import InvalidJid

__all__ = ["Jid", "parse_jid", "MAX_PART_BYTES"]

#: RFC 7622 §3.2–3.4: each part is at most 1023 octets.
MAX_PART_BYTES = 1023
# local@domain/resource: no valid JID is longer than this many characters (a character is at
# least one octet), so longer input is refused before any Unicode work is spent on it.
_MAX_TEXT_CHARS = 3 * MAX_PART_BYTES + 2

_LOCAL_FORBIDDEN_ASCII = frozenset("\"&'/:<>@")  # RFC 7622 §3.3.1
_LOCAL_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
_DOMAIN_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
_RESOURCE_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Cn", "Zl", "Zp"})

_ASCII_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
_IDNA_DOTS = re.compile("[\u3002\uff0e\uff61]")
_DOTTED_NUMBERS = re.compile(r"[0-9]+(?:\.[0-9]+){3}\Z")
_SHOWN_CHARS = 48


@dataclass(frozen=True, slots=True)
class Jid:
    """A parsed, normalised JID. ``local`` and ``resource`` are ``""`` when absent.

    Build one with :func:`parse_jid`; the constructor does not normalise.
    """

    local: str
    domain: str
    resource: str = ""

    @property
    def bare(self) -> str:
        """``local@domain`` (or just ``domain``), the form compared for "same contact"."""
        return f"{self.local}@{self.domain}" if self.local else self.domain

    @property
    def full(self) -> str:
        """``local@domain/resource``, or the bare form when there is no resource."""
        return f"{self.bare}/{self.resource}" if self.resource else self.bare

    @property
    def is_bare(self) -> bool:
        """True when there is no resource part."""
        return not self.resource

    def bare_jid(self) -> Jid:
        """This JID without its resource (``self`` when it is already bare)."""
        return self if not self.resource else Jid(self.local, self.domain)

    def __str__(self) -> str:
        return self.full


def parse_jid(text: str) -> Jid:
    """Parse and normalise ``text`` (RFC 7622); raise ``InvalidJid`` with a one-line reason."""
    if not isinstance(text, str):
        raise InvalidJid(f"invalid JID: expected text, got {type(text).__name__}")
    if len(text) > _MAX_TEXT_CHARS:
        raise _invalid(text, "too long")
    try:
        return _parse(text)
    except ValueError as exc:  # includes UnicodeError from the idna/ipaddress helpers
        # The helpers below translate what they expect; this is the last line of defence so
        # that hostile input can only ever produce InvalidJid.
        raise _invalid(text, "not a valid address") from exc


# Successful parses only are cached (exceptions are not), and input is at most ~3 KB, so the
# cache is bounded at roughly 1024 * 3 KB * a few even when the network sends junk.
@functools.lru_cache(maxsize=1024)
def _parse(text: str) -> Jid:
    head, slash, resource = text.partition("/")
    if slash and not resource:
        raise _invalid(text, "empty resource")
    local, at, domain = head.partition("@")
    if not at:
        local, domain = "", head
    elif not local:
        raise _invalid(text, "empty local part")
    if not domain:
        raise _invalid(text, "empty domain")
    return Jid(
        _prep_local(text, local) if at else "",
        _prep_domain(text, domain),
        _prep_resource(text, resource) if slash else "",
    )


def _prep_local(text: str, local: str) -> str:
    folded = _fold(local)
    if folded is None:
        raise _invalid(text, "local part does not normalise")
    for ch in folded:
        if ch in _LOCAL_FORBIDDEN_ASCII:
            raise _invalid(text, f"character {_char(ch)} not allowed in local part")
        if unicodedata.category(ch) in _LOCAL_FORBIDDEN_CATEGORIES:
            raise _invalid(text, f"character {_char(ch)} not allowed in local part")
    _check_length(text, folded, "local part")
    return folded


def _fold(value: str) -> str | None:
    """NFKC + casefold, repeated until stable (one pass is not always idempotent)."""
    for _ in range(4):
        folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold())
        if folded == value:
            return value
        value = folded
    return None


def _prep_domain(text: str, domain: str) -> str:
    prepared = _domain_once(text, domain)
    # The idna codec works with Unicode 3.2 tables, unicodedata with a newer version: make sure
    # the result is a fixed point, so that parse(parse(x).full) == parse(x) always holds.
    if prepared != domain and _domain_once(text, prepared) != prepared:
        raise _invalid(text, "domain does not normalise")
    return prepared


def _domain_once(text: str, domain: str) -> str:
    domain = _IDNA_DOTS.sub(".", unicodedata.normalize("NFKC", domain))
    if domain.endswith("."):
        domain = domain[:-1]  # RFC 7622 §3.2: a final dot is not part of the domain
    if not domain:
        raise _invalid(text, "empty domain")
    if domain.startswith("[") and domain.endswith("]"):
        return _ip6_literal(text, domain[1:-1])
    if _DOTTED_NUMBERS.match(domain):
        try:
            return str(ipaddress.IPv4Address(domain))
        except ValueError:
            raise _invalid(text, "bad IPv4 address") from None
    labels = [_prep_label(text, label) for label in domain.split(".")]
    prepared = ".".join(labels)
    _check_length(text, prepared, "domain")
    return prepared


def _ip6_literal(text: str, inner: str) -> str:
    if not inner.isascii() or "%" in inner:  # zone ids are not part of a JID (RFC 3986 IP-literal)
        raise _invalid(text, "bad IPv6 address")
    try:
        return f"[{ipaddress.IPv6Address(inner).compressed}]"
    except ValueError:
        raise _invalid(text, "bad IPv6 address") from None


def _prep_label(text: str, label: str) -> str:
    if not label:
        raise _invalid(text, "empty label in domain")
    if label.isascii():
        label = label.lower()
        if not label.startswith("xn--"):
            if not _ASCII_LABEL.match(label):
                raise _invalid(text, f"bad domain label {_shown(label)!r}")
            return label
        try:  # an A-label: compare it in its Unicode form
            label = encodings.idna.ToUnicode(label)
        except (UnicodeError, ValueError):
            raise _invalid(text, f"bad IDNA label {_shown(label)!r}") from None
        if label.isascii() or _IDNA_DOTS.search(label) or "." in label:
            raise _invalid(text, f"bad IDNA label {_shown(label)!r}")
    for ch in label:
        if unicodedata.category(ch) in _DOMAIN_FORBIDDEN_CATEGORIES:
            raise _invalid(text, f"character {_char(ch)} not allowed in domain")
    try:
        ace = encodings.idna.ToASCII(label)
        unicode_form = encodings.idna.ToUnicode(ace)
    except (UnicodeError, ValueError):
        raise _invalid(text, f"bad IDNA label {_shown(label)!r}") from None
    if not _ASCII_LABEL.match(ace.decode("ascii")):
        raise _invalid(text, f"bad IDNA label {_shown(label)!r}")
    if _IDNA_DOTS.search(unicode_form) or "." in unicode_form:
        raise _invalid(text, f"bad IDNA label {_shown(label)!r}")
    return unicode_form


def _prep_resource(text: str, resource: str) -> str:
    # OpaqueString: non-ASCII spaces map to U+0020, then NFC.
    mapped = "".join(
        " " if ch != " " and not ch.isascii() and unicodedata.category(ch) == "Zs" else ch
        for ch in resource
    )
    prepared = unicodedata.normalize("NFC", mapped)
    for ch in prepared:
        if unicodedata.category(ch) in _RESOURCE_FORBIDDEN_CATEGORIES:
            raise _invalid(text, f"character {_char(ch)} not allowed in resource")
    _check_length(text, prepared, "resource")
    return prepared


def _check_length(text: str, part: str, name: str) -> None:
    if not part:
        raise _invalid(text, f"empty {name}")
    if len(part.encode("utf-8")) > MAX_PART_BYTES:
        raise _invalid(text, f"{name} longer than {MAX_PART_BYTES} bytes")


def _invalid(text: str, reason: str) -> InvalidJid:
    return InvalidJid(f"invalid JID {_shown(text)!r}: {reason}")


def _shown(text: str) -> str:
    """A short, printable, single-line rendering of untrusted text for an error message."""
    shown = "".join(ch if ch.isprintable() else "?" for ch in text[:_SHOWN_CHARS])
    return shown + "..." if len(text) > _SHOWN_CHARS else shown


def _char(ch: str) -> str:
    return repr(ch) if ch.isprintable() and ch != "\\" else f"U+{ord(ch):04X}"
