"""``Services``: the bundle of running parts that scripts and the HTTP API read.

Its own small module so that ``services.py`` (which builds it and starts the listeners) and
``http_api.py`` (which serves it) both import it and not each other the other way round. The part
types are imported for annotations only: importing this module loads neither slixmpp nor
SQLAlchemy (tests/test_purity.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .xmpp_facade import XmppFacade  # pure: loads neither slixmpp nor SQLAlchemy

if TYPE_CHECKING:
    from .ami_bridge import AmiBridge
    from .config import Config
    from .presence import PresenceCache
    from .storage import AsyncStorage
    from .xmpp_pool import XmppPool


@dataclass(slots=True)
class Services:
    """What scripts and the HTTP API may use."""

    config: Config
    storage: AsyncStorage
    presence: PresenceCache
    pool: XmppPool
    ami: AmiBridge | None = None  # with an [ami] section
    # The scripts' one entry to the XMPP side (xmpp_facade.py); built from pool and presence.
    xmpp: XmppFacade = field(init=False)

    def __post_init__(self) -> None:
        self.xmpp = XmppFacade(self.pool, self.presence)
