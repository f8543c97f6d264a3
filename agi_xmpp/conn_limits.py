"""File descriptors: the open-files limit, per-listener connection budgets, dual-stack sockets.

Every connection costs a descriptor, and a process that runs out cannot accept a FastAGI call,
open the database or reconnect to XMPP. So (docs/reliability.md, "Connection budgets"):

- at start the soft ``RLIMIT_NOFILE`` is raised to the hard limit (systemd's ``LimitNOFILE``);
- FastAGI and HTTP each get a budget of connections (``agi_max_connections``,
  ``http_max_connections``), shrunk to fit the limit with a reserve for everything else, so
  idle connections on one listener can never starve the other;
- a listener whose budget is full makes room (FastAGI: closes the oldest connection that has
  not sent its environment block; HTTP: asks the oldest connection to close after its current
  request) or refuses the newcomer, and says so in a rate-limited warning.

``listen_socket`` makes ``[::]`` (and ``::``) listen on IPv4 too: Python's asyncio sets
``IPV6_V6ONLY`` on every IPv6 listener, so ``agi_bind = [::]:4573`` would otherwise refuse
``agi://127.0.0.1/``.
"""

from __future__ import annotations

import ipaddress
import resource
import socket
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

__all__ = ["Budgets", "plan_budgets", "raise_nofile_limit", "listen_socket", "ConnectionBudget", "peer_ip"]

# Descriptors kept out of the budgets: database pool (and SQLite's -wal/-shm), XMPP and AMI
# sockets, the event loop's own, log files, the voicemail spool, Prosody upload requests.
RESERVED_FDS = 128
MIN_BUDGET = 8


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard one; returns (soft, hard) afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        target = max(soft, 1 << 20) if soft != resource.RLIM_INFINITY else soft
    else:
        target = hard
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # pragma: no cover - a hard limit we misread
            log.warning("nofile_limit_not_raised", soft=soft, hard=hard, error=str(exc))
    return soft, hard


@dataclass(frozen=True, slots=True)
class Budgets:
    agi: int
    http: int
    reduced: bool  # the configured budgets did not fit the limit


def plan_budgets(nofile: int, agi: int, http: int, accounts: int = 0) -> Budgets:
    """Budgets that fit ``nofile`` descriptors, keeping a reserve for everything else.

    When the configured ones do not fit, HTTP gets at most a fifth of what is available and
    FastAGI the rest: calls matter more than the board."""
    available = nofile - RESERVED_FDS - 4 * accounts
    if agi + http <= available:
        return Budgets(agi, http, False)
    new_http = max(MIN_BUDGET, min(http, available // 5))
    new_agi = max(MIN_BUDGET, min(agi, available - new_http))
    return Budgets(new_agi, new_http, True)


class ConnectionBudget:
    """The budget of one listener; ``full(count)`` decides, ``refused()`` logs (rate limited)."""

    def __init__(self, listener: str, limit: int) -> None:
        self.listener = listener
        self.limit = limit
        self.evicted = 0  # connections closed to make room
        self.refused_count = 0  # newcomers turned away

    def __repr__(self) -> str:
        return f"<ConnectionBudget {self.listener} {self.limit} [{self.evicted} evicted, {self.refused_count} refused]>"

    def full(self, open_connections: int) -> bool:
        return open_connections >= self.limit

    def made_room(self) -> None:
        self.evicted += 1
        log.warning("connection_budget_full", listener=self.listener, limit=self.limit,
                    action="closed the oldest idle connection")

    def refused(self) -> None:
        self.refused_count += 1
        log.warning("connection_budget_full", listener=self.listener, limit=self.limit,
                    action="refused a new connection")


def listen_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket; the IPv6 wildcard (``::``) is dual-stack (IPv4 too)."""
    family = socket.AF_INET
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            family = socket.AF_INET6
    except ValueError:  # a host name (localhost): its IPv4 address if it has one
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        infos.sort(key=lambda info: info[0] != socket.AF_INET)
        family, _, _, _, address = infos[0]
        host = address[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # Only the wildcard is dual-stack; ::1 and other addresses stay IPv6-only.
            wildcard = ipaddress.ip_address(host) == ipaddress.IPv6Address("::")
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if wildcard else 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def peer_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A socket's address text → its IP (scope id dropped), None if it is not one. An
    IPv4-mapped IPv6 address (``::ffff:127.0.0.1``, how a dual-stack ``[::]`` listener sees an
    IPv4 peer) is returned as the IPv4 address, so loopback and allowlist checks see 127.0.0.1."""
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
