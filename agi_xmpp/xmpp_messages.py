"""An XMPP session's messages: what we send and what the server proves it has (part of ``XmppSession``).

What the server has of our messages is decided by ``delivery.DeliveryTracker``, a pure state
machine; this module only feeds it what happens on the wire: a last outgoing filter
(``_observe_write``) reports each of our messages as really written (with its XEP-0198 sequence
number) or dropped by a dead link, ``<a h>``/``<resumed h>`` report the server's count, and after
each burst we write a *barrier* (a XEP-0199 ping to our server) whose answer proves the server
read every message written before it on that link. Confirmed ids go to
``listener.stanza_acked``; bounces (``<message type='error'>`` with our id) to
``listener.stanza_bounced``; XEP-0184 receipts to ``listener.receipt_received``; incoming
bodies, as ``InboundMessage``, to ``listener.message_received``.

A mixin of ``XmppSession`` (xmpp_session.py), which sets the attributes declared below.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.stanza import Iq, Message
from slixmpp.xmlstream import ET

from .delivery import DeliveryTracker, Stage
from .errors import InvalidJid, NotOnline
from .inbox import InboundMessage
from .jid import parse_jid
from .supervisor import TaskSet
from .xmpp_liveness import server_ping

if TYPE_CHECKING:
    from .xmpp_session import SessionListener

RECEIPTS_NS = "urn:xmpp:receipts"
OOB_NS = "jabber:x:oob"
_BARE_URL = re.compile(r"https?://[^\s<>\"]+")


class SessionMessages:
    """Sending, incoming messages, and the evidence of delivery (module docstring)."""

    # Set by XmppSession.__init__ (and kept current by it).
    name: str
    _client: slixmpp.ClientXMPP | None
    _listener: SessionListener
    _keepalive_timeout: float
    _barrier_ids: set[str]
    _barrier_count: int
    _barrier_task: asyncio.Task[None] | None
    _server_resume_max: float | None
    _session_acks: int
    _tasks: TaskSet
    delivery: DeliveryTracker
    log: Any
    online: bool

    def _observe_write(self, stanza: object) -> object | None:
        """Tell the tracker what is about to be written; drop what a dead link would drop."""
        client = self._client
        if isinstance(stanza, Message):
            stanza_id = stanza["id"]
            if self.delivery.stage(stanza_id) is Stage.HANDED:
                if client is None or client.transport is None:
                    # slixmpp would raise NotConnectedError and forget it: the pool writes it again
                    self.delivery.not_written(stanza_id)
                    return None
                sm = client.plugin["xep_0198"]
                self.delivery.written(stanza_id, sm.seq if sm.enabled_out else None)
        elif isinstance(stanza, Iq) and stanza["id"] in self._barrier_ids:
            if client is None or client.transport is None:
                return None  # its send() times out; the coverage goes to the next barrier
            self.delivery.barrier_written(stanza["id"])
        return stanza

    def _on_sm_enabled(self, enabled: object) -> None:
        try:
            self._server_resume_max = float(enabled["max"]) if enabled["max"] else None  # type: ignore[index]
        except (TypeError, ValueError):
            self._server_resume_max = None

    def _on_sm_ack(self, ack: object) -> None:
        try:
            h = int(ack["h"])  # type: ignore[index]
        except (TypeError, ValueError):
            return
        self._report_acked(self.delivery.sm_acked(h))

    def _report_acked(self, stanza_ids: list[str]) -> None:
        self._session_acks += len(stanza_ids)  # the session worked (xmpp_session: back-off)
        for stanza_id in stanza_ids:
            self._listener.stanza_acked(self.name, stanza_id)

    def _on_receipt(self, msg: object) -> None:
        """XEP-0184: the recipient's client has our message (a receipt carries no body, so
        slixmpp's 'message' event, which needs one, never sees it)."""
        try:
            received = msg.xml.find(f"{{{RECEIPTS_NS}}}received")  # type: ignore[attr-defined]
            if received is not None and received.get("id"):
                self._listener.receipt_received(self.name, received.get("id"))
        except Exception:  # noqa: BLE001 - never let a handler raise into slixmpp
            self.log.exception("xmpp_handler_failed", handler="receipt")

    def _on_message(self, msg: object) -> None:
        kind = msg["type"] or "normal"  # type: ignore[index]
        if kind not in ("chat", "normal", "groupchat"):
            return
        body = msg.xml.findtext("{jabber:client}body")  # type: ignore[attr-defined]
        if not body:
            return
        try:
            sender = parse_jid(msg.xml.get("from", ""))  # type: ignore[attr-defined] - raw, as above
        except InvalidJid:
            self.log.info("xmpp_message_bad_from")
            return
        if kind == "groupchat" and msg.xml.find("{urn:xmpp:delay}delay") is not None:  # type: ignore[attr-defined]
            return  # room history replayed on join is not a new message
        loop = asyncio.get_running_loop()
        self._listener.message_received(
            self.name,
            InboundMessage(
                sender=sender,
                body=body,
                kind=kind,
                stanza_id=msg["id"] or "",  # type: ignore[index]
                received_at=loop.time(),
            ),
        )

    def send_message(self, to: str, body: str, stanza_id: str, kind: str = "chat", *, receipt: bool = False) -> None:
        """Write one message on the live stream; confirmation arrives via ``stanza_acked``.

        ``receipt`` asks the recipient's client for a XEP-0184 receipt (``receipt_received``)."""
        if not self.online or self._client is None:
            raise NotOnline(self.name)
        message = self._client.make_message(mto=to, mbody=body, mtype=kind)
        message["id"] = stanza_id
        if kind == "chat" and _BARE_URL.fullmatch(body):
            # A body that is one link gets XEP-0066 out-of-band data with the same URL: that is
            # what Conversations, Gajim and Dino need to show a shared file inline.
            oob = ET.SubElement(message.xml, f"{{{OOB_NS}}}x")
            ET.SubElement(oob, f"{{{OOB_NS}}}url").text = body
        if receipt:
            message.append(ET.Element(f"{{{RECEIPTS_NS}}}request"))
        self.delivery.handed(stanza_id, size=len(body.encode()))
        message.send()
        self._schedule_barrier()

    def _on_message_error(self, msg: object) -> None:
        """A bounce of one of our messages: the server (or the recipient's) refused it."""
        stanza_id = msg["id"] or ""  # type: ignore[index]
        if not stanza_id or self.delivery.stage(stanza_id) is None and not stanza_id.startswith("agx-"):
            return
        error = msg["error"]  # type: ignore[index]
        self.delivery.bounced(stanza_id)
        self._listener.stanza_bounced(
            self.name,
            stanza_id,
            error_type=error["type"] or "cancel",
            condition=error["condition"] or "undefined-condition",
            text=error["text"] or "",
        )

    def _schedule_barrier(self) -> None:
        if self._barrier_task is None or self._barrier_task.done():
            self._barrier_task = self._tasks.spawn(self._barrier(), "barrier")

    async def _barrier(self) -> None:
        """Ping our server until every message written so far is covered; one ping in flight.

        The ping is observed by ``_observe_write`` as it is written, so it covers exactly the
        messages written before it on this link (``DeliveryTracker.barrier_written``)."""
        idle_rounds = 0
        while self.online and self._client is not None:
            if not self.delivery.needs_barrier():
                # Nothing written since the last barrier. Messages still in slixmpp's queue are
                # written shortly; wait for them rather than end with them uncovered.
                if not self.delivery.in_send_queue() or idle_rounds >= 500:
                    return
                idle_rounds += 1
                await asyncio.sleep(0.01)
                continue
            idle_rounds = 0
            client = self._client
            self._barrier_count += 1
            token = f"agx-barrier-{self._barrier_count}"
            iq = server_ping(client, token)
            self._barrier_ids.add(token)
            try:
                # Generous: a barrier decides nothing about liveness (the keepalive does), and on
                # a slow link its answer comes late, not never.
                await iq.send(timeout=max(120.0, self._keepalive_timeout))
            except IqError:
                pass  # an error reply is still a reply: the server read everything before it
            except IqTimeout:
                # Ping again while the stream is up; a dead link is the keepalive's to drop.
                self.delivery.barrier_lost(token)
                continue
            finally:
                self._barrier_ids.discard(token)
            self._report_acked(self.delivery.barrier_answered(token))
