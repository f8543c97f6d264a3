"""DNS on the XMPP side without destroying pycares channels while the service runs.

pycares (under aiodns, which slixmpp requires and aiohttp uses when it is installed) destroys each
DNS channel on a thread of its own, and that destruction can freeze the whole process: a test run
here stopped for good with every Python thread waiting for the GIL and pycares' shutdown thread
inside c-ares (the deadlock saghul/pycares#325 describes; docs/dependencies.md). slixmpp makes a
channel for every connection attempt and aiohttp one per client session (slixmpp's XEP-0363
uploads of voicemail recordings), so a service that reconnects or uploads often would meet it.
We make none that is destroyed while we run: aiohttp resolves with the loop's thread pool, and
each XMPP client keeps one resolver for its life. Importing this module sets the aiohttp default.
"""

from __future__ import annotations

import aiohttp
import slixmpp
import slixmpp.xmlstream.xmlstream as slixmpp_stream
from slixmpp.xmlstream.resolver import resolve

aiohttp.connector.DefaultResolver = aiohttp.ThreadedResolver  # type: ignore[attr-defined,misc]


class DnsSafeClient(slixmpp.ClientXMPP):
    """slixmpp's client with one DNS resolver for its whole life (module docstring).

    With a ``serverhost`` slixmpp connects to that address and needs no resolver at all (the
    event loop resolves the name). Without one, the SRV lookup uses a resolver made at the first
    lookup and closed, once, with the session (``close_resolver``)."""

    _lifetime_resolver = None

    async def get_dns_records(self, domain: str, port: int | None = None) -> list[tuple[str, str, str, int]]:
        # As XMLStream.get_dns_records, but not a new resolver on every call.
        if self._lifetime_resolver is None:
            self._lifetime_resolver = slixmpp_stream.default_resolver(loop=self.loop)
        services = [*(self.tls_services if self.enable_direct_tls else ()),
                    *(self.starttls_services if self.enable_starttls else ())]
        return await resolve(domain, self.default_port if port is None else port, services=services,
                             resolver=self._lifetime_resolver, use_ipv6=self.use_ipv6,
                             use_aiodns=self.use_aiodns, loop=self.loop)

    async def close_resolver(self) -> None:
        resolver, self._lifetime_resolver = self._lifetime_resolver, None
        close = getattr(resolver, "close", None)
        if close is not None:
            await close()
