"""The one connection to Asterisk's Manager interface (AMI), on panoramisk's protocol.

This is the only module that imports panoramisk. Others get plain data: every AMI event becomes
an :class:`AmiEvent` on one ``asyncio.Queue`` that exactly one task of ours (``ami_bridge``)
consumes, and actions return plain ``dict`` headers.

Theory of operation
-------------------
``run()`` is a supervisor loop::

    connecting ──TCP + Login accepted──> connected ──EOF / Shutdown / ping timeout──> down
        ^   │                                                                        │
        │   └── refused / unreachable / login refused ──────────────────────────────┤
        └────────────────── back-off: 1 s doubling to 60 s, with jitter ────────────┘

- panoramisk's ``Manager`` is not used: it reconnects on a fixed delay from tasks nobody awaits,
  dispatches events to fire-and-forget tasks and never reports a refused login. We drive its
  ``AMIProtocol`` (the parser and action/response matching) ourselves and are its ``factory``.
- Every successful login puts :data:`LINK_UP` on the queue *before* any event of that
  connection, so the consumer resyncs in order (events that arrive meanwhile wait behind it).
- A ``Ping`` every ``keepalive`` seconds; no answer within ``action_timeout`` drops the link
  (a half-open TCP connection after Asterisk's host vanished would otherwise look alive).
- A refused login is an administrator's error, not a network blip: it is logged at ``error``
  once per change of reason and retried at the back-off cap, never faster.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from panoramisk.actions import Action
from panoramisk.ami_protocol import AMIProtocol

from .config import AmiConfig
from .errors import AgiXmppError
from .xmpp_session import Backoff

log = structlog.get_logger(__name__)

#: Name of the synthetic event queued after each successful login (not an Asterisk event name).
LINK_UP = "agi-xmpp:link-up"


class AmiError(AgiXmppError):
    """An AMI action failed, timed out, or there is no connection."""


class AmiNotConnected(AmiError):
    """The link to Asterisk is down right now."""


@dataclass(frozen=True, slots=True)
class AmiEvent:
    """One AMI event: its name and headers (a repeated header's values joined by newlines)."""

    name: str
    headers: Mapping[str, str] = field(default_factory=dict)

    def get(self, key: str, default: str = "") -> str:
        return self.headers.get(key, default)


def plain_headers(message: Mapping[str, Any]) -> dict[str, str]:
    """panoramisk's case-insensitive ``Message`` → a plain dict (header case as Asterisk sent it)."""
    out: dict[str, str] = {}
    for key, value in message.items():
        if key == "content":
            continue
        out[key] = "\n".join(value) if isinstance(value, list) else str(value)
    return out


class _Factory:
    """What ``AMIProtocol`` calls back (its ``factory``): hands events to the link's queue."""

    save_stream = None
    forgetable_actions: tuple[str, ...] = ()

    def __init__(self, link: AmiLink) -> None:
        self._link = link
        self.awaiting_actions: collections.deque[Action] = collections.deque()

    def dispatch(self, message: Mapping[str, Any]) -> None:
        headers = plain_headers(message)
        self._link._deliver(AmiEvent(headers.get("Event", ""), headers))

    def connection_lost(self, exc: object) -> None:
        # Actions the protocol parked for a resend (panoramisk's Manager resends them after a
        # reconnect) are failed instead: a stale Originate must not ring a phone minutes later.
        while self.awaiting_actions:
            action = self.awaiting_actions.popleft()
            if not action.future.done():
                action.future.set_exception(AmiNotConnected("the AMI connection was lost"))
                action.future.exception()  # retrieved: a caller that gave up does not log it
        self._link._lost(exc)


class AmiLink:
    """Supervises one AMI connection; see the module docstring for the states."""

    def __init__(
        self,
        config: AmiConfig,
        events: asyncio.Queue[AmiEvent],
        *,
        backoff: Backoff | None = None,
        connect_timeout: float = 10.0,
        action_timeout: float = 10.0,
        keepalive: float = 20.0,
    ) -> None:
        self.config = config
        self.events = events
        self._backoff = backoff or Backoff()
        self._connect_timeout = connect_timeout
        self.action_timeout = action_timeout
        self._keepalive = keepalive
        self._protocol: AMIProtocol | None = None
        self._held: list[AmiEvent] = []
        self._down = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self.state = "stopped"
        self.last_error = ""
        self.connects = 0
        self.connected_since: float | None = None
        self.version = ""
        self.log = log.bind(ami=f"{config.host}:{config.port}")

    def __repr__(self) -> str:
        return f"<AmiLink {self.config.host}:{self.config.port} {self.state}>"

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    # -- supervisor ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, stay connected, reconnect with back-off, until ``stop()``."""
        reported = ""
        try:
            while not self._stopping:
                try:
                    await self._connect_once()
                except (OSError, TimeoutError, AmiError) as exc:
                    self.state = "login_refused" if isinstance(exc, _LoginRefused) else "down"
                    self.last_error = str(exc) or type(exc).__name__
                    # One clear error per new reason; repeats of the same failure stay quiet.
                    if self.last_error != reported:
                        self.log.error("ami_connect_failed", error=self.last_error, state=self.state)
                        reported = self.last_error
                    self._close_transport()
                else:
                    reported = ""
                    self._backoff.reset()
                    await self._stay_up()
                if self._stopping:
                    break
                delay = self._backoff.next_delay()
                if self.state == "login_refused":
                    delay = max(delay, self._backoff.cap)  # a wrong secret: never hammer
                self.log.info("ami_reconnect_scheduled", delay=round(delay, 2))
                await self._sleep_unless_stopped(delay)
        finally:
            self._close_transport()
            self.state = "stopped"

    async def stop(self) -> None:
        self._stopping = True
        self._down.set()
        self._stop_requested.set()
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            with contextlib.suppress(Exception):
                protocol.send(Action({"Action": "Logoff"}), as_list=False)
        self._close_transport()

    async def _sleep_unless_stopped(self, delay: float) -> None:
        if self._stopping:
            return
        with contextlib.suppress(TimeoutError):  # asyncio.timeout(): see storage/async_storage.py
            async with asyncio.timeout(delay):
                await self._stop_requested.wait()

    async def _connect_once(self) -> None:
        loop = asyncio.get_running_loop()
        self.state = "connecting"
        self._down.clear()
        self._held = []
        host, port = self.config.host, self.config.port
        async with asyncio.timeout(self._connect_timeout):
            _transport, protocol = await loop.create_connection(AMIProtocol, host, port)
            protocol.factory = _Factory(self)
            protocol.encoding = "utf-8"
            protocol.log = _QuietLog()
            self._protocol = protocol
            response = await self._send(
                {
                    "Action": "Login",
                    "Username": self.config.username,
                    "Secret": self.config.secret,
                    "Events": "on",
                }
            )
        if response.get("Response") != "Success":
            raise _LoginRefused(
                f"AMI login refused for user '{self.config.username}': "
                f"{response.get('Message') or 'no reason given'} (check manager.conf)"
            )
        self.version = protocol.version or ""
        self.state = "connected"
        self.last_error = ""
        self.connects += 1
        self.connected_since = loop.time()
        self.log.info("ami_connected", version=self.version, connects=self.connects)
        # Before any event of this connection: the consumer resyncs first.
        self.events.put_nowait(AmiEvent(LINK_UP, {}))
        held, self._held = self._held, []
        for event in held:
            self.events.put_nowait(event)

    async def _stay_up(self) -> None:
        """Until the link drops: a Ping every ``keepalive`` seconds proves it is alive."""
        while not self._stopping:
            try:
                async with asyncio.timeout(self._keepalive):
                    await self._down.wait()
            except TimeoutError:
                try:
                    await self.action("Ping")
                except AmiError as exc:
                    self.last_error = f"keepalive: {exc}"
                    self.log.warning("ami_keepalive_failed", error=str(exc))
                    self._close_transport()
                    self._lost(None)
                continue
            break
        if self.state == "connected":
            self.state = "down"
        self.connected_since = None

    def _lost(self, exc: object) -> None:
        if self.state == "connected" and not self._stopping:
            reason = exc.get("Event", "") if isinstance(exc, Mapping) else (str(exc) if exc else "")
            self.last_error = f"connection lost{': ' + reason if reason else ''}"
            self.log.warning("ami_connection_lost", reason=reason or "EOF")
        self._down.set()

    def _close_transport(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and getattr(protocol, "transport", None) is not None:
            with contextlib.suppress(Exception):
                protocol.transport.abort()
        if self.state == "connected":
            self.state = "down"

    def _deliver(self, event: AmiEvent) -> None:
        if self.state != "connected":
            # Asterisk sends FullyBooted right after the Login response, before we have seen
            # that response: hold such events until LINK_UP is queued (which resyncs anyway).
            if event.name != "FullyBooted":
                self._held.append(event)
            return
        self.events.put_nowait(event)

    # -- actions ------------------------------------------------------------------------------

    async def action(self, name: str, **headers: str | Sequence[str]) -> dict[str, str]:
        """Send one action and return its response headers; raises AmiError unless Success.

        A list value repeats the header (``Variable: a=1`` / ``Variable: b=2``)."""
        response = await self._send({"Action": name, **headers})
        if response.get("Response") not in ("Success", "Follows", "Goodbye"):
            raise AmiError(f"{name}: {response.get('Message') or response.get('Response') or 'failed'}")
        return response

    async def action_list(self, name: str, **headers: str | Sequence[str]) -> list[dict[str, str]]:
        """An action answered by a list of events (``...Complete`` ends it): those events."""
        self._require_connected()
        action = Action({"Action": name, **headers})
        assert self._protocol is not None
        future = self._protocol.send(action, as_list=True)
        try:
            async with asyncio.timeout(self.action_timeout):
                messages = await future
        except TimeoutError:
            raise AmiError(f"no complete answer to {name} within {self.action_timeout:g} s") from None
        rows = [plain_headers(m) for m in messages]
        if rows and rows[0].get("Response") == "Error":
            raise AmiError(f"{name}: {rows[0].get('Message') or 'failed'}")
        return [row for row in rows if "Event" in row and not row["Event"].endswith("Complete")]

    async def _send(self, headers: Mapping[str, Any]) -> dict[str, str]:
        if headers.get("Action") != "Login":
            self._require_connected()
        protocol = self._protocol
        if protocol is None or protocol.closed:
            raise AmiNotConnected("not connected to Asterisk's AMI")
        action = Action(dict(headers))
        for value in action.values():
            text = "".join(value) if isinstance(value, list) else str(value)
            if "\r" in text or "\n" in text:
                raise AmiError(f"{headers.get('Action')}: CR/LF in a header value")  # header injection
        future = protocol.send(action, as_list=False)
        try:
            async with asyncio.timeout(self.action_timeout):
                message = await future
        except TimeoutError:
            raise AmiError(f"no answer to {headers.get('Action')} within {self.action_timeout:g} s") from None
        return plain_headers(message)

    def _require_connected(self) -> None:
        if not self.connected or self._protocol is None or self._protocol.closed:
            raise AmiNotConnected(f"not connected to Asterisk's AMI ({self.last_error or self.state})")


class _LoginRefused(AmiError):
    """Asterisk answered the Login with an error (wrong user, secret or permitted network)."""


class _QuietLog:
    """panoramisk logs every parsed message at debug and odd ones at info; ours says enough."""

    def debug(self, *_a: object, **_k: object) -> None: ...
    def info(self, *_a: object, **_k: object) -> None: ...
    def warning(self, *_a: object, **_k: object) -> None: ...

    def exception(self, msg: str, *args: object, **_k: object) -> None:
        log.error("ami_protocol_error", detail=msg % args if args else msg)
