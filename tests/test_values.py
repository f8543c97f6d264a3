"""Network text made safe for channel variables: sanitised plain value and exact base64 twin."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agi_xmpp.agi_protocol import quote
from agi_xmpp.errors import RemoteProtocolError
from agi_xmpp.values import b64, decode_b64_value, sanitize


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("hello world", "hello world"),
        ("line1\r\nline2", "line1  line2"),
        ("a\tb", "a b"),
        ("nul\0bell\x07esc\x1b", "nul bell esc "),
        ("del\x7f", "del "),
        ("c1\x80\x85\x9f", "c1   "),
        ("ls\u2028ps\u2029", "ls ps "),
        ('quotes " and \\ stay', 'quotes " and \\ stay'),
        ("ünïcødé ☎ 😀", "ünïcødé ☎ 😀"),
        ("\xa0nbsp stays", "\xa0nbsp stays"),
        ("lone \udcff surrogate", "lone \ufffd surrogate"),
    ],
)
def test_sanitize(text: str, clean: str) -> None:
    """Controls (C0, DEL, C1) and line/paragraph separators become spaces; the rest stays."""
    assert sanitize(text) == clean


@given(st.text())
def test_sanitize_output_is_one_safe_line(text: str) -> None:
    """Sanitised text keeps its length, has no control characters and can always be quoted."""
    clean = sanitize(text)
    assert len(clean) == len(text)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in clean)
    quote(clean)
    clean.encode("utf-8")


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("", ""),
        ("hi", "aGk="),
        ("a\nb", "YQpi"),
        ("é", "w6k="),
    ],
)
def test_b64_known_values(text: str, encoded: str) -> None:
    """b64 is standard padded base64 of the UTF-8 bytes, as BASE64_DECODE expects."""
    assert b64(text) == encoded


@given(st.text().filter(lambda t: not any(0xD800 <= ord(c) <= 0xDFFF for c in t)))
def test_b64_is_exact(text: str) -> None:
    """b64 round-trips every string exactly, through our decoder and the standard one."""
    encoded = b64(text)
    assert base64.b64decode(encoded).decode("utf-8") == text
    assert decode_b64_value(encoded) == text
    assert "\n" not in encoded


def test_b64_of_lone_surrogate_is_replacement_char() -> None:
    """A lone surrogate (no UTF-8 form) is encoded as U+FFFD instead of failing."""
    assert decode_b64_value(b64("a\ud800b")) == "a\ufffdb"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("", ""),
        ("aGk=", "hi"),
        ("aGk", "hi"),  # missing padding tolerated
        (" aGk= ", "hi"),
        ("/w==", "\ufffd"),  # not UTF-8: replaced, not refused
        ("TGluZSAxCkxpbmUgMiwgImNvbW1hIg==", 'Line 1\nLine 2, "comma"'),
    ],
)
def test_decode_b64_value(value: str, text: str) -> None:
    """Values read back via BASE64_ENCODE decode to the exact text."""
    assert decode_b64_value(value) == text


@pytest.mark.parametrize("value", ["not base64!", "a", "aGk=x", "é"])
def test_decode_b64_value_refuses_garbage(value: str) -> None:
    """Something that is not base64 is Asterisk's fault: RemoteProtocolError."""
    with pytest.raises(RemoteProtocolError):
        decode_b64_value(value)
