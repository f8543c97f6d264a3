"""Descriptor limits, connection budgets, dual-stack listeners and IPv4-mapped peers."""

from __future__ import annotations

import asyncio
import resource
import socket

import pytest

from agi_xmpp.agi_server import AgiServer, ScriptRegistry
from agi_xmpp.conn_limits import RESERVED_FDS, listen_socket, peer_ip, plan_budgets, raise_nofile_limit
from fake_asterisk import agi_call

HAS_IPV6 = socket.has_ipv6


def _registry(started: asyncio.Event | None = None, release: asyncio.Event | None = None) -> ScriptRegistry:
    registry = ScriptRegistry()

    @registry.script("hello")
    async def hello(channel, services) -> None:
        await channel.set_variable("HELLO", "yes")

    @registry.script("hold")
    async def hold(channel, services) -> None:
        assert started is not None and release is not None
        started.set()
        await release.wait()

    return registry


def test_soft_limit_is_raised_to_the_hard_limit():
    """raise_nofile_limit lifts the soft RLIMIT_NOFILE to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
    try:
        new_soft, new_hard = raise_nofile_limit()
        assert new_hard == hard and new_soft == (hard if hard != resource.RLIM_INFINITY else new_soft)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == new_soft
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("nofile,agi,http,expected", [
    (65536, 4096, 256, (4096, 256, False)),
    (1024, 4096, 256, (714, 178, True)),
    (200, 4096, 256, (55, 13, True)),
    (100, 4096, 256, (8, 8, True)),
])
def test_budgets_fit_the_limit_with_a_reserve(nofile, agi, http, expected):
    """Budgets that do not fit the limit (minus the reserve) are shrunk, HTTP to at most a fifth."""
    budgets = plan_budgets(nofile, agi, http, accounts=1)
    assert (budgets.agi, budgets.http, budgets.reduced) == expected
    if budgets.reduced and nofile > RESERVED_FDS + 20:
        assert budgets.agi + budgets.http <= nofile - RESERVED_FDS


async def test_silent_connections_are_evicted_for_a_call():
    """With the FastAGI budget full of connections that sent nothing, a call is still served:
    the oldest silent connection is closed to make room."""
    server = AgiServer(_registry(), None, bind=("127.0.0.1", 0), max_connections=8)
    await server.start()
    port = server.address[1]
    silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
    try:
        call = await asyncio.wait_for(agi_call(port, "hello"), 30)
        assert call.status == "SUCCESS" and call.variables == {"HELLO": "yes"}
        assert len(server.sessions) <= 8
        assert server.budget.evicted >= 12
    finally:
        for _, writer in silent:
            writer.close()
        await server.close()


async def test_calls_in_progress_are_never_evicted():
    """With the budget full of calls whose scripts run, a new connection is refused (FAILURE)
    and the running calls are untouched."""
    started, release = asyncio.Event(), asyncio.Event()
    server = AgiServer(_registry(started, release), None, bind=("127.0.0.1", 0), max_connections=8)
    await server.start()
    port = server.address[1]
    running = []
    try:
        for _ in range(8):
            started.clear()
            running.append(asyncio.create_task(agi_call(port, "hold")))
            await asyncio.wait_for(started.wait(), 30)
        refused = await asyncio.wait_for(agi_call(port, "hello"), 30)
        assert refused.status == "FAILURE" and refused.variables == {}
        assert server.budget.refused_count == 1
        release.set()
        calls = await asyncio.wait_for(asyncio.gather(*running), 30)
        assert [c.status for c in calls] == ["SUCCESS"] * 8
    finally:
        release.set()
        await server.close()


@pytest.mark.skipif(not HAS_IPV6, reason="no IPv6")
async def test_ipv6_wildcard_agi_bind_is_dual_stack_and_mapped_peers_are_ipv4():
    """agi_bind = [::] also accepts agi://127.0.0.1/, and the allowlist reads the IPv4-mapped
    peer (::ffff:127.0.0.1) as 127.0.0.1: allowed by 127.0.0.0/8 and refused by 10.0.0.0/8."""
    allowed = AgiServer(_registry(), None, bind=("::", 0), allow=["127.0.0.0/8"])
    await allowed.start()
    refusing = AgiServer(_registry(), None, bind=("::", 0), allow=["10.0.0.0/8", "::1/128"])
    await refusing.start()
    try:
        call = await asyncio.wait_for(agi_call(allowed.address[1], "hello"), 30)
        assert call.status == "SUCCESS" and call.variables == {"HELLO": "yes"}
        refused = await asyncio.wait_for(agi_call(refusing.address[1], "hello"), 30)
        assert refused.status == "FAILURE"
        assert refusing.stats["peer_refused"] == 1
    finally:
        await allowed.close()
        await refusing.close()


@pytest.mark.parametrize("peer,allow,ok", [
    ("::ffff:127.0.0.1", ["127.0.0.0/8"], True),
    ("::ffff:10.1.2.3", ["10.0.0.0/8"], True),
    ("::ffff:192.0.2.1", ["127.0.0.0/8", "::1/128"], False),
    ("::ffff:192.0.2.1", ["::/0"], False),  # an IPv6 "everything" does not cover IPv4 peers
    ("::1", ["127.0.0.0/8"], False),
])
def test_allowlist_treats_ipv4_mapped_peers_as_ipv4(peer, allow, ok):
    """The allowlist decides on the IPv4 address inside an IPv4-mapped IPv6 peer."""
    server = AgiServer(_registry(), None, allow=allow)
    assert server.allowed((peer, 4573, 0, 0)) is ok


@pytest.mark.parametrize("text,ip", [
    ("::ffff:127.0.0.1", "127.0.0.1"),
    ("127.0.0.1", "127.0.0.1"),
    ("::1", "::1"),
    ("fe80::1%eth0", "fe80::1"),
    ("localhost", None),
    ("", None),
])
def test_peer_ip_reads_mapped_addresses_as_ipv4(text, ip):
    """peer_ip gives the IPv4 address inside an IPv4-mapped one, drops a scope id, and None
    for anything that is not an IP (a host name)."""
    result = peer_ip(text)
    assert (None if result is None else str(result)) == ip


def test_only_the_ipv6_wildcard_is_dual_stack():
    """[::] listens on IPv4 too; [::1] stays IPv6-only; 127.0.0.1 is plain IPv4."""
    if not HAS_IPV6:
        pytest.skip("no IPv6")
    wildcard = listen_socket("::", 0, 8)
    loopback6 = listen_socket("::1", 0, 8)
    loopback4 = listen_socket("127.0.0.1", 0, 8)
    try:
        assert not wildcard.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        assert loopback6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        assert loopback4.family == socket.AF_INET
        with socket.create_connection(("127.0.0.1", wildcard.getsockname()[1]), timeout=30):
            pass
    finally:
        for sock in (wildcard, loopback6, loopback4):
            sock.close()


def test_localhost_listens_where_agi_127_0_0_1_connects():
    """agi_bind = localhost listens on 127.0.0.1 (not only ::1), so agi://127.0.0.1/ works."""
    sock = listen_socket("localhost", 0, 8)
    try:
        with socket.create_connection(("127.0.0.1", sock.getsockname()[1]), timeout=30):
            pass
    finally:
        sock.close()
