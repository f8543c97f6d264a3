"""RFC 7622 parsing and normalisation of JIDs (agi_xmpp.jid)."""

from __future__ import annotations

import dataclasses
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agi_xmpp.errors import InvalidJid, ScriptError
from agi_xmpp.jid import MAX_PART_BYTES, Jid, parse_jid

VALID = [
    # text, local, domain, resource
    ("alice@example.com", "alice", "example.com", ""),
    ("Alice@Example.COM", "alice", "example.com", ""),
    ("alice@example.com/Phone", "alice", "example.com", "Phone"),
    ("alice@example.com/a/b@c", "alice", "example.com", "a/b@c"),  # resource keeps / and @
    ("alice@example.com/ x y ", "alice", "example.com", " x y "),
    ("example.com", "", "example.com", ""),
    ("example.com/res", "", "example.com", "res"),
    ("conference.example.com/nick@x", "", "conference.example.com", "nick@x"),
    ("alice@example.com.", "alice", "example.com", ""),  # trailing dot removed
    ("alice@localhost", "alice", "localhost", ""),
    ("alice@b_c.example", "alice", "b_c.example", ""),
    ("ÅSA@EXAMPLE.com", "åsa", "example.com", ""),
    ("ＡＬＩＣＥ@ｅｘａｍｐｌｅ．ｃｏｍ", "alice", "example.com", ""),  # width mapping
    ("alice@example。com", "alice", "example.com", ""),  # IDNA ideographic full stop
    ("Straße@example.com", "strasse", "example.com", ""),  # casefold (documented approximation)
    ("ΣΑΣ@example.com", "σασ", "example.com", ""),
    ("bob@BÜCHER.example", "bob", "bücher.example", ""),
    ("bob@xn--bcher-kva.example", "bob", "bücher.example", ""),  # A-label → U-label
    ("bob@XN--BCHER-KVA.example", "bob", "bücher.example", ""),
    ("bob@1.2.3.4", "bob", "1.2.3.4", ""),
    ("bob@[::1]/r", "bob", "[::1]", "r"),
    ("bob@[2001:DB8:0:0:0:0:0:1]", "bob", "[2001:db8::1]", ""),
    ("alice@example.com/Résumé", "alice", "example.com", "Résumé"),
    ("alice@example.com/Re\u0301sume\u0301", "alice", "example.com", "Résumé"),  # NFC
    ("alice@example.com/a\u00a0b", "alice", "example.com", "a b"),  # OpaqueString space mapping
    ("alice@example.com/CASE", "alice", "example.com", "CASE"),  # resource is case-sensitive
    ("a!#$%*+-=?^_`{|}~@example.com", "a!#$%*+-=?^_`{|}~", "example.com", ""),
    ("x" * MAX_PART_BYTES + "@example.com", "x" * MAX_PART_BYTES, "example.com", ""),
    ("a@example.com/" + "r" * MAX_PART_BYTES, "a", "example.com", "r" * MAX_PART_BYTES),
]

INVALID = [
    # text, part of the reason
    ("", "empty domain"),
    ("@example.com", "empty local part"),
    ("alice@", "empty domain"),
    ("alice@/res", "empty domain"),
    ("alice@example.com/", "empty resource"),
    ("/res", "empty domain"),
    ("alice@.", "empty domain"),
    ("alice@example..com", "empty label"),
    ("alice@example.com..", "empty label"),
    ("a b@example.com", "not allowed in local part"),
    ("a\tb@example.com", "not allowed in local part"),
    ('a"b@example.com', "not allowed in local part"),
    ("a&b@example.com", "not allowed in local part"),
    ("a'b@example.com", "not allowed in local part"),
    ("a:b@example.com", "not allowed in local part"),
    ("a<b@example.com", "not allowed in local part"),
    ("a>b@example.com", "not allowed in local part"),
    ("a＠b@example.com", "not allowed in local part"),  # fullwidth @ maps to @
    ("a\u200bb@example.com", "not allowed in local part"),  # zero-width space (Cf)
    ("a\x00b@example.com", "not allowed in local part"),
    ("alice@exa mple.com", "bad domain label"),
    ("alice@-example.com", "bad domain label"),
    ("alice@example-.com", "bad domain label"),
    ("alice@b@c", "bad domain label"),
    ("alice@" + "a" * 64 + ".com", "bad domain label"),
    ("alice@xn--abc-", "bad IDNA label"),
    ("alice@xn--a.com", "bad IDNA label"),
    ("alice@ex\u0000ample.com", "bad domain label"),
    ("alice@1.2.3.999", "bad IPv4 address"),
    ("alice@01.2.3.4", "bad IPv4 address"),
    ("alice@[::1%eth0]", "bad IPv6 address"),
    ("alice@[1.2.3.4]", "bad IPv6 address"),
    ("alice@[]", "bad IPv6 address"),
    ("alice@[::1", "bad domain label"),
    ("alice@example.com/a\nb", "not allowed in resource"),
    ("alice@example.com/a\rb", "not allowed in resource"),
    ("alice@example.com/a\x00b", "not allowed in resource"),
    ("alice@example.com/a\u2028b", "not allowed in resource"),
    ("alice@example.com/\udc80", "not allowed in resource"),
    ("\ud800@example.com", "not allowed in local part"),
    ("x" * (MAX_PART_BYTES + 1) + "@example.com", "local part longer than 1023 bytes"),
    ("é" * 600 + "@example.com", "local part longer than 1023 bytes"),
    ("a@example.com/" + "r" * (MAX_PART_BYTES + 1), "resource longer than 1023 bytes"),
    ("a@" + ".".join(["abcdefgh"] * 120), "domain longer than 1023 bytes"),
    ("x" * 100_000, "too long"),
    ("a@b/" + "\n" * 100_000, "too long"),
]


@pytest.mark.parametrize(("text", "local", "domain", "resource"), VALID)
def test_valid_jids_normalise(text: str, local: str, domain: str, resource: str) -> None:
    """Each valid JID parses to the RFC 7622 normalised local part, domain and exact resource."""
    jid = parse_jid(text)
    assert (jid.local, jid.domain, jid.resource) == (local, domain, resource)


@pytest.mark.parametrize(("text", "reason"), INVALID)
def test_invalid_jids_raise_one_line_reason(text: str, reason: str) -> None:
    """Each invalid JID raises InvalidJid whose message is one short printable line naming the cause."""
    with pytest.raises(InvalidJid) as info:
        parse_jid(text)
    message = str(info.value)
    assert reason in message
    assert message.startswith("invalid JID ")
    assert message.isprintable()
    assert len(message) < 160


def test_invalid_jid_is_a_script_error() -> None:
    """InvalidJid is a ScriptError, so scripts turn it into *_STATUS=FAILURE."""
    with pytest.raises(ScriptError):
        parse_jid("@")


@pytest.mark.parametrize("value", [None, 42, b"alice@example.com", ["a@b"]])
def test_non_text_raises_invalid_jid(value: object) -> None:
    """Anything that is not a str is refused with InvalidJid, not TypeError."""
    with pytest.raises(InvalidJid):
        parse_jid(value)  # type: ignore[arg-type]


def test_jid_properties() -> None:
    """bare, full, is_bare, bare_jid() and str() agree for a full JID."""
    jid = parse_jid("Alice@Example.com/Desk")
    assert jid.bare == "alice@example.com"
    assert jid.full == "alice@example.com/Desk"
    assert str(jid) == jid.full
    assert not jid.is_bare
    assert jid.bare_jid() == Jid("alice", "example.com", "")
    assert jid.bare_jid().is_bare
    assert jid.bare_jid().full == "alice@example.com"


def test_domain_only_jid_properties() -> None:
    """A domain JID has an empty local part and its bare form is the domain alone."""
    jid = parse_jid("Conference.Example.com/Room Nick")
    assert jid.bare == "conference.example.com"
    assert jid.full == "conference.example.com/Room Nick"
    bare = jid.bare_jid()
    assert bare.bare_jid() is bare
    assert bare.local == ""


def test_jid_is_frozen_slotted_and_hashable() -> None:
    """Jid is immutable, has no __dict__, and works as a dict key."""
    jid = parse_jid("alice@example.com/x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        jid.local = "bob"  # type: ignore[misc]
    assert not hasattr(jid, "__dict__")
    assert {jid: 1}[parse_jid("ALICE@example.com/x")] == 1


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("alice@example.com", "ALICE@EXAMPLE.COM", True),
        ("alice@example.com", "alice@example.com.", True),
        ("alice@bücher.example", "alice@xn--bcher-kva.example", True),
        ("alice@example.com/Phone", "alice@example.com/phone", False),
        ("alice@example.com", "alice@example.com.evil", False),
        ("alice@example.com", "alice@example.comx", False),
        ("alice@example.com", "alicex@example.com", False),
        ("alice@example.com", "example.com", False),
    ],
)
def test_equality_follows_normalisation(a: str, b: str, same: bool) -> None:
    """Bare parts compare case-insensitively after normalisation; resources compare exactly."""
    assert (parse_jid(a) == parse_jid(b)) is same


# -- properties ---------------------------------------------------------------------------------

_TRICKY = (
    "aZ09.-_@/ \t\n\x00\"&'<>:%[]"
    "ßẞİıſΣσςǅＡ＠．。｡\u00a0\u200b\u200d\u0301\u2028"
    "éüÅ日本語ﬁ㎒\ud800\U0001f600"
)
_part = st.text(alphabet=st.sampled_from(_TRICKY) | st.characters(), max_size=20)
_structured = st.builds(
    lambda local, domain, resource, a, s: (local + "@" if a else "") + domain + ("/" + resource if s else ""),
    _part,
    st.text(alphabet=st.sampled_from("abcXYZ019-_.。ÜüßİΣ日[]:"), min_size=0, max_size=20),
    _part,
    st.booleans(),
    st.booleans(),
)


@given(st.one_of(st.text(), _structured))
@settings(max_examples=2000, suppress_health_check=[HealthCheck.too_slow])
def test_parse_raises_only_invalid_jid_and_is_idempotent(text: str) -> None:
    """parse_jid never raises anything but InvalidJid, and parse(parse(x).full) == parse(x)."""
    try:
        jid = parse_jid(text)
    except InvalidJid as exc:
        assert str(exc).isprintable()
        return
    again = parse_jid(jid.full)
    assert again == jid
    assert again.full == jid.full
    assert jid.domain
    for part in (jid.local, jid.domain, jid.resource):
        assert len(part.encode("utf-8")) <= MAX_PART_BYTES


@given(
    st.text(alphabet=st.characters(categories=["Ll", "Lu", "Nd"]), min_size=1, max_size=30),
    st.text(alphabet=st.characters(categories=["L", "N", "P", "S", "Zs", "M"]), min_size=1, max_size=30),
)
@settings(max_examples=500)
def test_resource_is_kept_exactly_apart_from_nfc(local: str, resource: str) -> None:
    """A resource keeps its case and characters; only OpaqueString space mapping and NFC apply."""
    try:
        jid = parse_jid(f"{local}@example.com/{resource}")
    except InvalidJid:
        return
    spaced = "".join(" " if unicodedata.category(ch) == "Zs" else ch for ch in resource)
    assert jid.resource == unicodedata.normalize("NFC", spaced)


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_arbitrary_decoded_bytes_never_crash(data: bytes) -> None:
    """Network bytes decoded with surrogateescape (lone surrogates) still only raise InvalidJid."""
    try:
        parse_jid(data.decode("utf-8", "surrogateescape"))
    except InvalidJid:
        pass
