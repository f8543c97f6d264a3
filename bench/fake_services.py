"""What ``jabber_status`` reads, in memory: the config and a presence cache with alice ``away``.

Shared by ``bench.inproc`` and ``bench.instr_server``; it uses only names every agi_xmpp tree
since round 1 has (plus the scripts' XMPP facade where the tree has one), so ``--compare-src``
can measure an older tree with this bench.
"""

from __future__ import annotations

from agi_xmpp.config import AccountConfig, BindAddress, Config, GeneralConfig
from agi_xmpp.jid import parse_jid
from agi_xmpp.presence import PresenceCache


class _OnlineSession:
    online = True
    state = "online"  # jabber_status asks whether its answer is live (newer trees only)


class _FakePool:
    def __init__(self) -> None:
        self.sessions = {"asterisk": _OnlineSession()}


class FakeServices:
    """What jabber_status reads: the config, the presence cache and whether the account's
    session is online (no XMPP, no database)."""

    def __init__(self) -> None:
        account = AccountConfig(name="asterisk", username="asterisk@localhost", secret="x")
        general = GeneralConfig(default_account="asterisk",
                                agi_bind=BindAddress("127.0.0.1", 0))
        self.config = Config(path=None, general=general, accounts={"asterisk": account},
                             directory=())
        self.presence = PresenceCache()
        self.pool = _FakePool()
        self.presence.set_roster("asterisk", ["alice@localhost"])
        self.presence.update("asterisk", parse_jid("alice@localhost/desk"), available=True,
                             show="away", priority=0, status="In a meeting until 3")
        try:  # trees since issue 12: scripts reach XMPP through services.xmpp
            from agi_xmpp.xmpp_facade import XmppFacade
        except ImportError:
            return
        self.xmpp = XmppFacade(self.pool, self.presence)  # type: ignore[arg-type]
