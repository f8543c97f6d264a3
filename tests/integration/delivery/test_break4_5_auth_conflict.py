"""Breaks 4 and 5: a wrong password and a resource conflict are not retried at the normal pace.

Debian's stock ejabberd bans an address after 20 failed logins (mod_fail2ban) for an hour, for
every client on that host; two sessions on one full JID replace each other forever.
"""

from __future__ import annotations

import pytest

from service_harness import eventually

pytestmark = pytest.mark.integration


async def test_wrong_password_fails_once_without_mechanism_fallback_and_waits_long(
    stock_server, accounts, service_via
):
    """A credential failure: one SASL exchange (no PLAIN after SCRAM), state auth_failed, long wait."""
    jid, _password = accounts(stock_server)("svc")
    async with service_via(stock_server, stock_server.c2s_port, jid, "wrong password",
                           wait_online=False) as svc:
        session = svc.pool.session("asterisk")
        await eventually(lambda: session.state == "auth_failed", 30, "the auth failure to be named")
        assert session.auth_attempts == 1  # SCRAM refused; PLAIN with the same password not tried
        assert session.failure == "auth" and "not-authorized" in session.last_error
        assert session.next_retry_delay >= 150  # 300 s with jitter on the upper half
        [row] = svc.pool.connections()
        assert row["state"] == "auth_failed" and row["failure"] == "auth"


async def test_resource_conflict_is_named_and_backs_off(stock_server, accounts, service_via):
    """Two instances on one full JID: <conflict/> is recognised, state conflict, long back-off."""
    jid, password = accounts(stock_server)("svc")
    async with service_via(stock_server, stock_server.c2s_port, jid, password, resource="pbx") as first:
        first_session = first.pool.session("asterisk")
        async with service_via(stock_server, stock_server.c2s_port, jid, password, resource="pbx",
                               wait_online=False) as second:
            second_session = second.pool.session("asterisk")
            sessions = (first_session, second_session)
            await eventually(lambda: any(s.state == "conflict" for s in sessions), 60,
                             "one instance to see <conflict/>")
            loser = next(s for s in sessions if s.state == "conflict")
            assert loser.failure == "conflict" and "conflict" in loser.last_error
            assert loser.next_retry_delay >= 150
            winner = next(s for s in sessions if s is not loser)
            await eventually(lambda: winner.online, 60, "the other instance to stay online")
