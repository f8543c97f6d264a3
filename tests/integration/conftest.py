"""Fixtures for tests of the whole service against the shared real Prosody."""

from __future__ import annotations

import pytest

from service_harness import running_harness, service_config


@pytest.fixture
async def svc(prosody, xmpp_accounts, tmp_path):
    """The service in-process with one account ('asterisk') on the shared Prosody."""
    jid, password = xmpp_accounts("asterisk")
    async with running_harness(service_config(prosody, jid, password, tmp_path)) as harness:
        harness.jid = jid
        yield harness
