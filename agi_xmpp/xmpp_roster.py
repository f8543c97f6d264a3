"""An XMPP session's roster, presence and subscriptions (part of ``XmppSession``).

Roster membership is an entry with a subscription in either direction or our own request
pending (slixmpp's roster also lists strangers who merely sent presence). res_xmpp's account
keys apply: ``buddy`` entries are subscribed to with ``autoregister``, others pruned with
``autoprune``, subscription requests answered per ``auth_policy``. Presence of contacts goes to
``listener.presence_received`` (a room's presence to the rooms part); after a late resumption
our contacts are probed, since the server does not resend presence on resume. A roster push not
from our own account is dropped before slixmpp sees it (RFC 6121 §2.1.6).

A mixin of ``XmppSession`` (xmpp_session.py), which sets the attributes declared below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import slixmpp
from slixmpp.stanza import Iq

from .config import AccountConfig
from .errors import InvalidJid
from .jid import Jid, parse_jid

if TYPE_CHECKING:
    from .xmpp_rooms import _Room
    from .xmpp_session import SessionListener


class SessionRoster:
    """Roster, presence and subscriptions (module docstring)."""

    # Set by XmppSession.__init__ (and kept current by it).
    name: str
    account: AccountConfig
    _jid: Jid
    _client: slixmpp.ClientXMPP | None
    _listener: SessionListener
    _rooms: dict[str, _Room]
    forged_roster_pushes: int
    log: Any

    _on_room_presence: Callable[..., None]  # SessionRooms': a room's presence is the room's

    def _drop_forged_roster_push(self, stanza: object) -> object | None:
        """RFC 6121 §2.1.6: a roster push not from our own account (no ``from``, or our bare
        JID) MUST be ignored. It is dropped here, answered ``service-unavailable`` (RFC 6120
        §8.2.3: an iq set gets a reply; the answer tells nothing), counted and logged (the
        warning is rate limited, logs.py)."""
        if not isinstance(stanza, Iq) or stanza.xml.get("type") != "set":
            return stanza
        if stanza.xml.find("{jabber:iq:roster}query") is None:
            return stanza
        sender = stanza.xml.get("from", "")
        try:
            if not sender or parse_jid(sender).bare == self._jid.bare:
                return stanza
            reply_to: str | None = parse_jid(sender).full
        except InvalidJid:
            reply_to = None  # nobody to answer
        self.forged_roster_pushes += 1
        self.log.warning("xmpp_roster_push_refused", sender=sender[:200], count=self.forged_roster_pushes)
        client = self._client
        if reply_to is not None and client is not None and client.transport is not None:
            try:  # an exception here would escape slixmpp's read loop: never let one
                reply = client.Iq()
                reply["type"] = "error"
                reply["to"] = reply_to
                reply["id"] = stanza.xml.get("id", "")
                reply["error"]["type"] = "cancel"
                reply["error"]["condition"] = "service-unavailable"
                reply.send()
            except Exception as exc:  # noqa: BLE001 - slixmpp refuses what we accepted: no answer
                self.log.debug("xmpp_roster_push_unanswered", error=str(exc))
        return None

    def _announce_presence(self) -> None:
        account = self.account
        show = None if account.status == "available" else account.status
        self._client.send_presence(  # type: ignore[union-attr]
            pshow=show, pstatus=account.statusmessage, ppriority=account.priority
        )

    def _apply_buddy_policy(self) -> None:
        """res_xmpp semantics: ``buddy`` entries are subscribed to when ``autoregister`` is on,
        and roster items not listed as buddies are removed when ``autoprune`` is on."""
        client = self._client
        assert client is not None
        roster = client.client_roster
        wanted = {b.lower() for b in self.account.buddies}
        if self.account.autoregister:
            for buddy in wanted:
                item = roster[buddy]
                if item["subscription"] not in ("to", "both") and not item["pending_out"]:
                    client.send_presence(pto=buddy, ptype="subscribe")
                    client.update_roster(buddy, subscription=item["subscription"] or "none")
        if self.account.autoprune:
            for jid in list(roster.keys()):
                if jid != self._jid.bare and jid.lower() not in wanted and roster[jid]["subscription"] != "none":
                    client.del_roster_item(jid)

    def _on_subscription_request(self, presence: object) -> None:
        """res_xmpp's auth_policy=accept: subscribe back, unless we follow or asked already.
        (slixmpp's own handler, registered first, has approved the request.)"""
        if self.account.auth_policy != "accept" or self._client is None:
            return
        item = self._client.client_roster[presence["from"].bare]  # type: ignore[index]
        if not item["to"] and not item["pending_out"]:
            item.subscribe()

    def _on_roster_update(self, _iq: object) -> None:
        """Report roster membership after every roster result or push.

        slixmpp's own handler (registered first) has already applied the stanza to its roster,
        including roster versioning (an unchanged roster comes back as an empty result). That
        roster also lists strangers who merely sent presence, so membership is an entry with a
        subscription in either direction or our own request pending."""
        roster = self._client.client_roster  # type: ignore[union-attr]
        members = {
            jid.lower()
            for jid in roster.keys()
            if jid != self._jid.bare and (roster[jid]["to"] or roster[jid]["from"] or roster[jid]["pending_out"])
        }
        self._listener.roster_replaced(self.name, members)

    def _on_presence(self, presence: object) -> None:
        kind = presence.xml.get("type")  # type: ignore[attr-defined]
        if kind not in (None, "unavailable", "error"):
            return  # subscription traffic is handled by slixmpp's roster
        try:
            # The raw attribute: slixmpp's own JID parsing raises its InvalidJID, which escaped
            # this check and was logged at error level with a traceback for each stanza.
            sender = parse_jid(presence.xml.get("from", ""))  # type: ignore[attr-defined]
        except InvalidJid:
            self.log.info("xmpp_presence_bad_from")
            return
        room = self._rooms.get(sender.bare)
        if room is not None:
            self._on_room_presence(room, sender, presence, kind)
            return
        if kind == "error":
            return
        try:
            priority = int(presence["priority"] or 0)  # type: ignore[index]
        except (TypeError, ValueError):
            priority = 0
        self._listener.presence_received(
            self.name,
            sender,
            available=kind is None,
            show=presence.xml.findtext("{jabber:client}show"),  # type: ignore[attr-defined]
            priority=max(-128, min(127, priority)),
            status=presence.xml.findtext("{jabber:client}status") or "",  # type: ignore[attr-defined]
        )

    def _probe_contacts(self) -> None:
        """After a late resumption: the server does not resend presence on resume (XEP-0198 §5),
        so ask it for our contacts' current presence (RFC 6121 §4.3 probes, answered by the
        server for subscriptions we hold)."""
        client = self._client
        if client is None:
            return
        roster = client.client_roster
        for jid in list(roster.keys()):
            if jid != self._jid.bare and roster[jid]["to"]:
                client.send_presence(pto=jid, ptype="probe")
