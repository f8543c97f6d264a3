"""Making network text safe for channel variables: a sanitised plain value and an exact base64 twin.

``sanitize`` gives a one-line value a dialplan can print or compare; ``b64`` gives the exact text
for ``${BASE64_DECODE()}``; ``decode_b64_value`` reads back a value fetched through
``GET FULL VARIABLE "${BASE64_ENCODE(${NAME})}"``.
"""

from __future__ import annotations

import base64
import binascii
import re

from agi_xmpp.errors import RemoteProtocolError, ScriptError

__all__ = ["b64", "check_message_size", "decode_b64_value", "sanitize"]

# C0 controls (CR, LF, TAB, NUL...), DEL, C1 controls (NEL included), LINE and PARAGRAPH SEPARATOR.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SURROGATES = re.compile("[\ud800-\udfff]")


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates have no UTF-8 form
        return _SURROGATES.sub("\ufffd", text).encode("utf-8")


def sanitize(text: str) -> str:
    """Replace every control character and line/paragraph separator with a space."""
    if text.isascii() and text.isprintable():  # the usual case: nothing to replace
        return text
    text = _CONTROLS.sub(" ", text)
    if not text.isascii() and _SURROGATES.search(text):
        text = _SURROGATES.sub("\ufffd", text)
    return text


def b64(text: str) -> str:
    """Base64 of the exact UTF-8 bytes of ``text`` (lone surrogates become U+FFFD)."""
    return base64.b64encode(_utf8(text)).decode("ascii")


def decode_b64_value(value: str) -> str:
    """Decode a value read back via ``BASE64_ENCODE``; raises ``RemoteProtocolError`` if garbled.

    Asterisk's ast_base64encode() pads and writes no line breaks; bytes that are not UTF-8 (a
    channel variable is a C string, any encoding) are replaced rather than refused.
    """
    value = value.strip()
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        # no excerpt: this is a channel variable's value, and the message may be logged
        raise RemoteProtocolError(
            f"a BASE64_ENCODE value that is not base64 ({len(value)} chars)"
        ) from None
    return raw.decode("utf-8", "replace")


def check_message_size(text: str, limit: int, what: str = "message") -> None:
    """Raise ``ScriptError`` when the UTF-8 form of ``text`` is over ``max_message_bytes``."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise ScriptError(f"{what} is {size} bytes, more than max_message_bytes ({limit})")
