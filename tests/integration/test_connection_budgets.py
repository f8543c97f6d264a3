"""Idle connections on one listener never starve the other, nor the calls (issue 10, item 3).

The real service runs with an open-files limit of 1,024 (soft and hard: the old systemd
default, so the service cannot raise it) and its default budgets, which it shrinks to fit. The
attack that took every FastAGI call down before: 1,100 silent FastAGI connections plus 1,100
idle HTTP keep-alive connections, held open. Calls made meanwhile must all succeed, the process
must stay inside its limit, and the budget warnings must be rate limited.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import urllib.request

import pytest
from service_process import SERVICE_BIN, ServiceProcess

pytestmark = pytest.mark.integration

NOFILE = 1024
ATTACKERS = 1100
CALLS = 40


class LimitedService(ServiceProcess):
    """The service started with RLIMIT_NOFILE = (1024, 1024)."""

    def _spawn(self) -> None:
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(SERVICE_BIN), "--config", str(self.config_path), "serve"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=limit,
            )


def _get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _hold(host: str, port: int, count: int, first_bytes: bytes = b"") -> list[asyncio.StreamWriter]:
    writers = []
    for _ in range(count):
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            continue  # the kernel's backlog was full: counted as an attacker that failed
        if first_bytes:
            writer.write(first_bytes)
        writers.append(writer)
    return writers


async def test_idle_fastagi_and_http_connections_leave_calls_working(prosody, xmpp_accounts, tmp_path):
    """With 1,100 silent FastAGI and 1,100 idle HTTP connections held against a 1,024-descriptor
    limit, 40 FastAGI calls and the HTTP API still succeed, the process stays within its
    limit, and the budget warnings are few."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 3 * ATTACKERS:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * ATTACKERS), hard))
    jid, password = xmpp_accounts("asterisk")
    bob_jid, _ = xmpp_accounts("bob")
    service = LimitedService(tmp_path, prosody, jid, password)
    held: list[asyncio.StreamWriter] = []
    try:
        await service.start()
        pid = service.proc.pid
        budgets = next(json.loads(line) for line in service.log_text().splitlines()
                       if '"file_descriptors"' in line)
        assert budgets["nofile_soft"] == NOFILE
        assert budgets["agi_budget"] + budgets["http_budget"] < NOFILE
        held += await _hold("127.0.0.1", service.agi_port, ATTACKERS)
        held += await _hold("127.0.0.1", service.http_port, ATTACKERS,
                            f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{service.http_port}\r\n\r\n".encode())
        await asyncio.sleep(0.5)  # let the service accept what the kernel queued
        peak = _open_fds(pid)
        statuses = []
        for n in range(CALLS):
            script = ("jabber_status", "asterisk", bob_jid) if n % 2 else ("jabber_send", "asterisk", bob_jid, f"m{n}")
            result = await service.call(*script)
            statuses.append(result.variables.get("JABBER_STATUS_ERROR" if n % 2 else "JABBER_SEND_STATUS"))
        peak = max(peak, _open_fds(pid))
        health = await service.http("GET", "/health")
        sent = await service.http("POST", "/api/messages", json={"account": "asterisk", "to": bob_jid, "body": "via http"})
        metrics = await asyncio.to_thread(_get_text, f"http://127.0.0.1:{service.http_port}/metrics")
    finally:
        for writer in held:
            writer.close()
        await service.close()
    log = service.log_text()
    budget_lines = log.count('"connection_budget_full"')
    print("FIGURE connection_budgets", json.dumps({
        "nofile": NOFILE, "agi_budget": budgets["agi_budget"], "http_budget": budgets["http_budget"],
        "idle_agi_held": ATTACKERS, "idle_http_held": ATTACKERS, "connections_opened": len(held),
        "calls": CALLS, "calls_ok": sum(1 for s in statuses if s in ("SUCCESS", "")),
        "peak_fds": peak, "budget_log_lines": budget_lines,
        "budget_actions": [line.rsplit(" ", 1)[1] for line in metrics.splitlines() if line.startswith("agi_xmpp_connection_budget_actions_total")]}))
    assert statuses == ["" if n % 2 else "SUCCESS" for n in range(CALLS)]
    assert health is not None and health[0] == 200
    assert (sent[0], sent[1]["status"]) == (200, "SUCCESS")
    assert 'agi_xmpp_connection_budget_actions_total{listener="http",action="evicted"}' in metrics
    assert 'agi_xmpp_connection_budget_actions_total{listener="agi",action="evicted"}' in metrics
    assert peak < NOFILE
    assert "Too many open files" not in log
    assert 1 <= budget_lines <= 12  # rate limited: 5 a minute (logs.RateLimiter), not one per connection
