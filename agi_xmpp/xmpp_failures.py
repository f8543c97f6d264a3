"""Why an XMPP connection attempt failed, named (part of ``XmppSession``).

Failures are named (``failure``): ``dns``, ``tcp``, ``tls`` (with the verification reason),
``auth``, ``conflict``, ``policy-violation``, ``timeout``, ``stream``; xmpp_session.py's
supervisor loop decides from the name how long to wait (``SLOW_RETRY``). After a credential
failure (RFC 6120 §6.5 ``not-authorized``) no other SASL mechanism is tried: slixmpp would send
the same wrong password again, in PLAIN.

A mixin of ``XmppSession`` (xmpp_session.py), which sets the attributes declared below.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Any

import slixmpp

from .config import AccountConfig
from .jid import Jid

# SASL failure conditions that mean "these credentials are wrong" (RFC 6120 §6.5).
CREDENTIAL_FAILURES = {"not-authorized", "credentials-expired", "account-disabled"}


class SessionFailures:
    """slixmpp's failure events, each turned into a failure class and a reason (module docstring)."""

    # Set by XmppSession.__init__ (and kept current by it).
    account: AccountConfig
    _jid: Jid
    _client: slixmpp.ClientXMPP | None
    auth_attempts: int
    failure: str
    last_error: str
    log: Any
    encrypted: bool
    _fail: Callable[..., None]  # XmppSession._fail: name a failure class and its reason
    _attempt_failed: Callable[[str], None]  # XmppSession's: end the connection attempt

    def _on_connection_failed(self, error: object) -> None:
        text = str(error)
        if isinstance(error, socket.gaierror) or text.startswith("No DNS record"):
            self._fail("dns", f"DNS: {text}")
        elif isinstance(error, ssl.SSLError):
            self._fail("tls", f"TLS: {tls_reason(error)}")
        else:
            self._fail("tcp", f"TCP connection failed: {text}")
        self._attempt_failed(self.last_error)

    def _on_tls_failed(self, error: object) -> None:
        self._fail("tls", f"TLS: {tls_reason(error)}")
        self._attempt_failed(self.last_error)

    def _on_auth_attempt_failed(self, failure: object) -> None:
        """One SASL exchange failed. A credential failure ends the attempt: no other mechanism."""
        self.auth_attempts += 1
        condition = failure["condition"] if failure is not None else ""  # type: ignore[index]
        text = failure["text"] if failure is not None else ""  # type: ignore[index]
        if condition in CREDENTIAL_FAILURES and self._client is not None:
            mechanisms = self._client.plugin["feature_mechanisms"]
            # slixmpp's _handle_fail calls _send_auth() right after this event; with every
            # offered mechanism marked as tried it gives up (failed_all_auth) and disconnects.
            mechanisms.attempted_mechs.update(mechanisms.mech_list)
        self._fail("auth", f"authentication failed: {condition or 'refused'}" + (f" ({text})" if text else ""))

    def _on_auth_failed(self, _event: object) -> None:
        if self.failure != "auth" and not self.encrypted and self.account.usetls:
            # No mechanism was allowed because the stream is not encrypted: the server offered
            # no STARTTLS. That is a TLS problem, not a wrong password.
            self._fail("tls", "TLS: the server offered no STARTTLS (set usetls = no to allow plaintext)")
        elif self.failure != "auth":
            self._fail("auth", "authentication failed: no usable SASL mechanism")
        self._attempt_failed(self.last_error)

    def _on_stream_error(self, error: object) -> None:
        condition = error["condition"] if error is not None else ""  # type: ignore[index]
        text = error["text"] if error is not None else ""  # type: ignore[index]
        detail = f"stream error: {condition or 'undefined'}" + (f" ({text})" if text else "")
        if condition == "conflict":
            # RFC 6120 §4.9.3.3: another session bound our full JID and replaced this one.
            self._fail("conflict", f"{detail}: another client uses {self._jid.bare}/{self.account.resource}")
        elif condition == "policy-violation":
            self._fail("policy-violation", detail)
        else:
            self._fail("stream", detail)
        self.log.warning("xmpp_stream_error", failure=self.failure, error=self.last_error)


def tls_reason(error: object) -> str:
    """The verification reason of a TLS failure (e.g. 'self-signed certificate'), else its text."""
    reason = getattr(error, "reason", None)  # e.g. CERTIFICATE_VERIFY_FAILED
    detail = getattr(error, "verify_message", None)  # e.g. self-signed certificate
    if reason and detail:
        return f"{reason}: {detail}"
    return str(reason or detail or error)
