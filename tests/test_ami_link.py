"""The AMI link when Asterisk is not there (agi_xmpp.ami_link); the real thing is in tests/e2e."""

from __future__ import annotations

import asyncio
import socket

import pytest

from agi_xmpp.ami_link import AmiLink, AmiNotConnected
from agi_xmpp.config import AmiConfig
from agi_xmpp.xmpp_session import Backoff


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_asterisk_down_is_a_clear_state_and_actions_fail_fast():
    """Nothing listening: the link says 'down' with the reason, keeps retrying, and an action
    raises AmiNotConnected instead of hanging."""
    link = AmiLink(AmiConfig(username="u", secret="s", port=closed_port()), asyncio.Queue(),
                   backoff=Backoff(initial=0.05, cap=0.1))
    task = asyncio.create_task(link.run())
    try:
        for _ in range(600):
            if link.state == "down" and link.last_error:
                break
            await asyncio.sleep(0.05)
        assert link.state == "down"
        assert "refused" in link.last_error.lower() or "connect" in link.last_error.lower()
        with pytest.raises(AmiNotConnected):
            await link.action("Ping")
    finally:
        await link.stop()
        await asyncio.wait_for(task, 30)
    assert link.state == "stopped"
