"""What the server has of our outgoing messages: a pure state machine, fed events, no I/O.

One ``DeliveryTracker`` per account. ``xmpp_session.py`` feeds it what happened on the wire;
the tracker answers which messages are *proven* to be on the server (so their outbox rows may
be marked ``acked``) and which must be written again. It never guesses: a message is confirmed
only by evidence that covers that very stanza.

Events (all from the session, in wire order)
--------------------------------------------
``handed(id)``
    the pool gave the message to the stream (slixmpp's send queue). Nothing is proven yet.
``written(id, seq)``
    our last outgoing filter saw it go to a live transport. ``seq`` is its XEP-0198 sequence
    number (the value the server's ``h`` will reach when it has handled it) or ``None`` when
    stream management is off.
``not_written(id)``
    it reached the transport after the link had gone (slixmpp would have raised
    ``NotConnectedError`` and forgotten it): it must be written again, resumed stream or not.
``barrier_written(token)`` / ``barrier_answered(token)``
    a XEP-0199 ping to our server, observed as written, then answered. A c2s stream is handled
    in order (RFC 6120 §10.1), so the answer proves the server read every message *written
    before the ping on the same link*. A ping on a new link proves nothing about messages
    that were never written.
``sm_acked(h)``
    ``<a h='…'/>`` or ``<resumed h='…'/>``: every message written with ``seq <= h`` (mod 2^32,
    XEP-0198 §4) is on the server.
``bounced(id)``
    a ``<message type='error'>`` with our id: the server (or the recipient's) refused it. It is
    never reported as confirmed afterwards on this stream, even if ``h`` covers it.
``link_lost()``
    the TCP connection is gone; barriers in flight can no longer be answered.
``resumed(h)``
    XEP-0198 resumption succeeded: ``h`` confirms what it covers; slixmpp re-sends the
    stanzas it still holds (those written with a higher ``seq``); the ones the dead link
    dropped (``not_written``) are returned for the pool to write; those still in slixmpp's
    send queue go out on the resumed stream in turn.
``session_ended()``
    the stream is gone for good (resumption failed, was abandoned, or never existed): nothing
    unconfirmed is in flight any more, so every pending row is the pool's to resend.

Each event that confirms something returns the confirmed ids (each id once).

What each kind of reconnection resends
--------------------------------------
- resumed stream: slixmpp replays what it wrote and the server's ``h`` does not cover; the pool
  writes what was never written (``resumed()``'s answer) and rows queued while offline.
- fresh session: every pending outbox row except those confirmed (``confirmed`` keeps ids
  proven in memory until the pool's storage update has committed them: ``forget()``).

Flow control: ``can_write()`` is False while ``window`` messages or ``window_bytes`` bytes are
handed or written but unconfirmed (one message always may go), so the outbox never pushes more
than the server has acknowledged plus a bounded window into a slow link: Debian's stock Prosody
reads 10 kB/s per client, and 4 messages of 60 KB queued ahead of a keepalive ping made it time
out and abort the link, again and again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

MAX_SEQ = 2**32


class Stage(StrEnum):
    """Where one of our messages is, as far as the wire shows."""

    HANDED = "handed"  # in slixmpp's send queue
    WRITTEN = "written"  # on a live transport, unconfirmed
    UNWRITTEN = "unwritten"  # dropped by a dead link: must be written again
    CONFIRMED = "confirmed"  # the server has it (h or barrier)
    BOUNCED = "bounced"  # an error stanza came back for it


@dataclass(slots=True)
class _Message:
    stage: Stage
    seq: int | None = None
    link: int = 0
    size: int = 0


@dataclass(slots=True)
class DeliveryTracker:
    """The per-account state machine described in the module docstring."""

    window: int = 200
    window_bytes: int = 64 * 1024
    link: int = 0
    _messages: dict[str, _Message] = field(default_factory=dict)
    _barriers: dict[str, tuple[int, list[str]]] = field(default_factory=dict)
    _written_since_barrier: list[str] = field(default_factory=list)
    confirmed: set[str] = field(default_factory=set)

    # -- events ----------------------------------------------------------------------------------

    def handed(self, stanza_id: str, size: int = 0) -> None:
        self._messages[stanza_id] = _Message(Stage.HANDED, link=self.link, size=size)

    def written(self, stanza_id: str, seq: int | None) -> None:
        message = self._messages.get(stanza_id)
        if message is None or message.stage in (Stage.CONFIRMED, Stage.BOUNCED):
            return
        message.stage, message.seq, message.link = Stage.WRITTEN, seq, self.link
        self._written_since_barrier.append(stanza_id)

    def not_written(self, stanza_id: str) -> None:
        message = self._messages.get(stanza_id)
        if message is not None and message.stage in (Stage.HANDED, Stage.WRITTEN):
            message.stage, message.seq = Stage.UNWRITTEN, None

    def barrier_written(self, token: str) -> None:
        covered = [
            i for i in self._written_since_barrier
            if (m := self._messages.get(i)) is not None and m.stage is Stage.WRITTEN and m.link == self.link
        ]
        self._written_since_barrier = []
        self._barriers[token] = (self.link, covered)

    def barrier_answered(self, token: str) -> list[str]:
        link, covered = self._barriers.pop(token, (None, []))
        if link != self.link:
            return []  # an answer can only come on the link the ping went out on
        return self._confirm(i for i in covered)

    def barrier_lost(self, token: str) -> None:
        """The ping was not written or timed out: its coverage goes back to the next barrier."""
        link, covered = self._barriers.pop(token, (None, []))
        if link == self.link:
            self._written_since_barrier[:0] = covered

    def sm_acked(self, h: int) -> list[str]:
        return self._confirm(
            i for i, m in self._messages.items()
            if m.stage is Stage.WRITTEN and m.seq is not None and _seq_covered(m.seq, h)
        )

    def bounced(self, stanza_id: str) -> None:
        message = self._messages.get(stanza_id)
        if message is None:
            self._messages[stanza_id] = _Message(Stage.BOUNCED)
        else:
            message.stage = Stage.BOUNCED
        self.confirmed.discard(stanza_id)

    def link_lost(self) -> None:
        self.link += 1
        self._barriers.clear()
        for stanza_id in self._written_since_barrier:
            message = self._messages.get(stanza_id)
            if message is not None and message.stage is Stage.WRITTEN and message.seq is None:
                # Without stream management nothing is replayed: it must be written again.
                message.stage = Stage.UNWRITTEN
        self._written_since_barrier = []

    def resumed(self, h: int) -> tuple[list[str], list[str]]:
        """Returns (confirmed by ``h``, to write again: never written on the stream)."""
        confirmed = self.sm_acked(h)
        rewrite = []
        for stanza_id, message in self._messages.items():
            if message.stage is Stage.WRITTEN and message.seq is not None:
                # replayed by slixmpp in seq order on the new link: a later barrier covers it
                message.link = self.link
                self._written_since_barrier.append(stanza_id)
            elif message.stage is Stage.UNWRITTEN or (
                message.stage is Stage.WRITTEN and message.seq is None
            ):
                rewrite.append(stanza_id)
            # HANDED: still in slixmpp's send queue, written on the resumed stream in turn.
        for stanza_id in rewrite:
            del self._messages[stanza_id]
        return confirmed, rewrite

    def session_ended(self) -> None:
        """Nothing of the old stream is in flight any more; confirmations are kept."""
        self._messages = {i: m for i, m in self._messages.items() if m.stage is Stage.BOUNCED}
        self._barriers.clear()
        self._written_since_barrier = []

    def forget(self, stanza_ids: list[str]) -> None:
        """Storage has committed these confirmations: memory need not keep them."""
        for stanza_id in stanza_ids:
            self.confirmed.discard(stanza_id)
            message = self._messages.get(stanza_id)
            if message is not None and message.stage is Stage.CONFIRMED:
                del self._messages[stanza_id]

    # -- questions -------------------------------------------------------------------------------

    def stage(self, stanza_id: str) -> Stage | None:
        message = self._messages.get(stanza_id)
        if message is not None:
            return message.stage
        return Stage.CONFIRMED if stanza_id in self.confirmed else None

    def on_stream(self, stanza_id: str) -> bool:
        """Handed or written on this stream and not lost: writing it again would duplicate it."""
        message = self._messages.get(stanza_id)
        return message is not None and message.stage in (Stage.HANDED, Stage.WRITTEN)

    def in_send_queue(self) -> int:
        """Handed but neither written nor dropped yet."""
        return sum(1 for m in self._messages.values() if m.stage is Stage.HANDED)

    def needs_barrier(self) -> bool:
        return bool(self._written_since_barrier)

    def unconfirmed_bytes(self) -> int:
        """Body bytes handed or written but not confirmed: the backlog a slow server still reads."""
        return sum(m.size for m in self._messages.values() if m.stage in (Stage.HANDED, Stage.WRITTEN))

    def can_write(self) -> bool:
        in_flight = [m for m in self._messages.values() if m.stage in (Stage.HANDED, Stage.WRITTEN)]
        if not in_flight:
            return True
        return len(in_flight) < self.window and sum(m.size for m in in_flight) < self.window_bytes

    # -- internals -------------------------------------------------------------------------------

    def _confirm(self, ids: object) -> list[str]:
        done = []
        for stanza_id in list(ids):  # type: ignore[call-overload]
            message = self._messages.get(stanza_id)
            if message is None or message.stage is not Stage.WRITTEN:
                continue
            message.stage = Stage.CONFIRMED
            self.confirmed.add(stanza_id)
            done.append(stanza_id)
        return done


def _seq_covered(seq: int, h: int) -> bool:
    """True when ``h`` has reached ``seq`` (XEP-0198 counters wrap at 2^32)."""
    return (h - seq) % MAX_SEQ < MAX_SEQ // 2
