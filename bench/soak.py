"""Soak: does a message answered SUCCESS or QUEUED reach the recipient's server, on the servers
people run? (issue 9; figures in docs/reliability.md)

Per server (Debian's stock Prosody 0.12 and stock ejabberd 23.01, tests/xmpp_servers.py):

- ``reset``: a burst of 300 ``jabber_send`` calls (real FastAGI calls, 100 concurrent) to a
  connected recipient, the TCP link between the service and the server reset by a proxy after
  the 150th answer; repeated ``--runs`` times (default 50).
- ``kill``: 100 sends to an *offline* recipient, the server SIGKILLed after the 50th answer and
  restarted a second later; repeated ``--kills`` times (default 5); the recipient then connects
  and collects its offline messages.

Printed per server and scenario: answered (SUCCESS/QUEUED), lost (answered, never arrived and
not reported ``failed``), failed (rows the server refused, with reasons), duplicate copies (same
id twice), maximum delay from the answer to the arrival (reset only).

    python -m bench.soak [--runs 50] [--kills 5] [--servers prosody-stock,ejabberd-stock]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fault_proxy import FaultProxy  # noqa: E402
from service_harness import running_harness, service_config  # noqa: E402
from xmpp_client import XmppTestClient  # noqa: E402
from xmpp_servers import Ejabberd, StockProsody, ejabberd_available  # noqa: E402

from fake_asterisk import agi_call  # noqa: E402

SETTLE = 180.0  # seconds to wait for the outbox to drain after a run


@dataclass
class Tally:
    runs: int = 0
    answered: int = 0
    lost: int = 0
    failed: int = 0
    duplicates: int = 0
    max_delay: float = 0.0
    reasons: collections.Counter = field(default_factory=collections.Counter)

    def line(self, server: str, scenario: str) -> str:
        dup = 100.0 * self.duplicates / self.answered if self.answered else 0.0
        delay = f"{self.max_delay:7.1f}" if scenario == "reset" else "      -"
        return (f"{server:<16} {scenario:<6} {self.runs:>4} {self.answered:>8} {self.lost:>5} "
                f"{self.failed:>6} {self.duplicates:>5} ({dup:4.2f} %) {delay}")


def start_server(kind: str):
    if kind.startswith("ejabberd"):
        reason = ejabberd_available()
        if reason:
            raise SystemExit(f"cannot run ejabberd: {reason}")
        server = Ejabberd(stock=True)
    else:
        server = StockProsody(Path(tempfile.mkdtemp(prefix="agi-xmpp-soak-prosody-")))
    server.start()
    return server


def register(server, prefix: str) -> tuple[str, str]:
    password = secrets.token_urlsafe(12)
    return server.register(f"{prefix}-{secrets.token_hex(4)}", password), password


@contextlib.asynccontextmanager
async def service(server, port: int, jid: str, password: str, workdir: Path):
    config = service_config(server, jid, password, workdir)
    (name, account), = config.accounts.items()
    config = replace(config, accounts={name: replace(account, port=port)})
    async with running_harness(config, wait_online=False) as harness:
        await harness.wait_online(60)
        yield harness


async def send_burst(port: int, bob: str, bodies: list[str], concurrency: int,
                     on_answer) -> dict[str, tuple[str, float]]:
    """jabber_send each body (``concurrency`` at a time): body -> (status, answered at)."""
    answers: dict[str, tuple[str, float]] = {}
    gate = asyncio.Semaphore(concurrency)

    async def one(body: str) -> None:
        async with gate:
            result = await agi_call(port, "jabber_send", "asterisk", bob, body, timeout=120)
            status = result.variables.get("JABBER_SEND_STATUS", "")
            answers[body] = (status, time.monotonic())
            on_answer(len(answers))

    await asyncio.gather(*(one(b) for b in bodies))
    return answers


async def settle(harness) -> None:
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        counts = await harness.services.storage.outbox_counts()
        if not counts.get(("asterisk", "pending"), 0):
            return
        await asyncio.sleep(0.5)


async def failed_reasons(harness, tally: Tally) -> set[str]:
    """Bodies whose rows the server refused for good (reported, so not 'lost')."""
    failed = set()
    for item in await harness.services.storage.outbox_in_states(["failed", "expired"]):
        failed.add(item.body)
        tally.reasons[item.last_error or item.state.value] += 1
    return failed


def count(tally: Tally, answers: dict[str, tuple[str, float]], received: list, failed: set[str]) -> None:
    accepted = {b for b, (status, _) in answers.items() if status in ("SUCCESS", "QUEUED")}
    seen = collections.Counter(m.body for m in received if m.body in answers)
    tally.answered += len(accepted)
    tally.failed += len(accepted & failed)
    lost = {b for b in accepted if not seen[b]} - failed
    tally.lost += len(lost)
    if lost:
        numbers = sorted(int(b.split("-")[1]) for b in lost)
        print(f"  lost (send order): {numbers}; statuses {collections.Counter(answers[b][0] for b in lost)}",
              file=sys.stderr, flush=True)
    tally.duplicates += sum(n - 1 for n in seen.values() if n > 1)


async def reset_scenario(server, runs: int, tally: Tally, workdir: Path) -> None:
    jid, password = register(server, "soak")
    bob_jid, bob_pw = register(server, "bob")
    bob = XmppTestClient.for_prosody(server, bob_jid, bob_pw)
    await bob.connect(60)
    arrivals: dict[str, float] = {}
    original = bob._on_message

    def stamp(msg) -> None:
        original(msg)
        arrivals.setdefault(msg["body"], time.monotonic())

    bob.xmpp.del_event_handler("message", original)
    bob.xmpp.add_event_handler("message", stamp)
    proxy = FaultProxy(server.host, server.c2s_port)
    await proxy.start()
    try:
        async with service(server, proxy.port, jid, password, workdir) as harness:
            for run in range(runs):
                bodies = [f"r{run}-{n}-{secrets.token_hex(3)}" for n in range(300)]

                def on_answer(n: int) -> None:
                    if n == 150:
                        proxy.reset()

                answers = await send_burst(harness.port, bob_jid, bodies, 100, on_answer)
                await settle(harness)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not set(bodies) <= set(arrivals):
                    await asyncio.sleep(0.2)
                await asyncio.sleep(1.0)  # late duplicates
                count(tally, answers, bob.messages, await failed_reasons(harness, tally))
                for body, (status, at) in answers.items():
                    if body in arrivals and status in ("SUCCESS", "QUEUED"):
                        tally.max_delay = max(tally.max_delay, arrivals[body] - at)
                bob.messages.clear()
                tally.runs += 1
                print(f"  reset run {run + 1}/{runs}: lost so far {tally.lost}, dup {tally.duplicates}",
                      file=sys.stderr, flush=True)
    finally:
        await proxy.close()
        await bob.disconnect()


async def kill_scenario(server, kills: int, tally: Tally, workdir: Path) -> None:
    jid, password = register(server, "soak")
    recipients = [register(server, "offline") for _ in range(kills)]
    if hasattr(server, "restart_gracefully"):
        server.restart_gracefully()  # ejabberd: make the new accounts durable before any SIGKILL
    for run, (bob_jid, bob_pw) in enumerate(recipients):
        async with service(server, server.c2s_port, jid, password, workdir / f"kill-{run}") as harness:
            bodies = [f"k{run}-{n}-{secrets.token_hex(3)}" for n in range(100)]

            def on_answer(n: int) -> None:
                if n == 50:
                    server.kill()
                    asyncio.get_running_loop().call_later(1.0, server.start)

            answers = await send_burst(harness.port, bob_jid, bodies, 20, on_answer)
            await harness.wait_online(120)
            await settle(harness)
            failed = await failed_reasons(harness, tally)
        bob = XmppTestClient.for_prosody(server, bob_jid, bob_pw)
        await bob.connect(60)
        await asyncio.sleep(5.0)  # offline messages arrive right after the initial presence
        count(tally, answers, bob.messages, failed)
        await bob.disconnect()
        tally.runs += 1
        print(f"  kill run {run + 1}/{kills}: lost so far {tally.lost}", file=sys.stderr, flush=True)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--servers", default="prosody-stock,ejabberd-stock")
    args = parser.parse_args(argv)
    rows = []
    for kind in args.servers.split(","):
        server = start_server(kind)
        try:
            with tempfile.TemporaryDirectory(prefix="agi-xmpp-soak-") as tmp:
                reset, kill = Tally(), Tally()
                if args.runs:
                    await reset_scenario(server, args.runs, reset, Path(tmp) / "reset")
                    rows.append(reset.line(kind, "reset"))
                if args.kills:
                    await kill_scenario(server, args.kills, kill, Path(tmp) / "kill")
                    rows.append(kill.line(kind, "kill"))
                for tally in (reset, kill):
                    for reason, n in tally.reasons.most_common():
                        rows.append(f"{'':<16} {'':<6} reported: {n} x {reason}")
        finally:
            server.stop()
    print(f"{'server':<16} {'case':<6} {'runs':>4} {'answered':>8} {'lost':>5} {'failed':>6} "
          f"{'dup':>5} {'':>9} {'max delay s':>7}")
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.basicConfig(level=logging.CRITICAL)
    sys.exit(asyncio.run(main()))
