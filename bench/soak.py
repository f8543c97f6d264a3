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
not reported ``failed``), of which ``after ack`` (the outbox row says ``acked``: the server had
confirmed the stanza, by XEP-0198 ``h`` or a ping barrier written after it, and lost it later, as
ejabberd's offline store does on a SIGKILL; a loss *before* the server's ack would be ours),
failed (rows the server refused, with reasons), duplicate copies (same id twice), maximum delay
from the answer to the arrival (reset only).

The kill runs come first (both servers), then the bursts alternate between the servers, so a
run stopped early (``--until``, Ctrl-C, SIGTERM) still has figures for each: it ends after the
run in progress and prints the table of the runs that finished, with their counts. Each run
prints a progress line. The table is also written to ``bench/results/soak.json`` (read by
``python -m bench``).

    python -m bench.soak [--runs 50] [--kills 5] [--servers prosody-stock,ejabberd-stock]
                         [--until HH:MM (UTC)] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import json
import platform
import secrets
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fault_proxy import FaultProxy  # noqa: E402
from service_harness import running_harness, service_config  # noqa: E402
from xmpp_client import XmppTestClient  # noqa: E402
from xmpp_servers import Ejabberd, StockProsody, ejabberd_available  # noqa: E402

from fake_asterisk import agi_call  # noqa: E402

from agi_xmpp.storage import OutboxState  # noqa: E402

SETTLE = 180.0  # seconds to wait for the outbox to drain after a run
DEFAULT_JSON = ROOT / "bench" / "results" / "soak.json"
HEADER = (f"{'server':<16} {'case':<6} {'runs':>4} {'answered':>8} {'lost':>5} {'after ack':>9} "
          f"{'failed':>6} {'dup':>5} {'':>9} {'max delay s':>11}")


@dataclass
class Tally:
    runs: int = 0
    answered: int = 0
    lost: int = 0  # answered SUCCESS/QUEUED, never arrived, not reported failed
    lost_after_ack: int = 0  # of those, rows the server had acknowledged (state 'acked')
    failed: int = 0
    duplicates: int = 0
    max_delay: float = 0.0
    reasons: collections.Counter = field(default_factory=collections.Counter)

    def line(self, server: str, scenario: str) -> str:
        dup = 100.0 * self.duplicates / self.answered if self.answered else 0.0
        delay = f"{self.max_delay:11.1f}" if scenario == "reset" and self.runs else f"{'-':>11}"
        return (f"{server:<16} {scenario:<6} {self.runs:>4} {self.answered:>8} {self.lost:>5} "
                f"{self.lost_after_ack:>9} {self.failed:>6} {self.duplicates:>5} ({dup:4.2f} %) {delay}")


class Stop:
    """Ends the soak after the run in progress: a deadline, or SIGINT/SIGTERM."""

    def __init__(self, until: float | None) -> None:
        self.until = until  # time.time()
        self.why = ""

    def __call__(self) -> bool:
        if not self.why and self.until is not None and time.time() >= self.until:
            self.why = "deadline reached"
        return bool(self.why)

    def signal(self, name: str) -> None:
        if self.why:
            raise KeyboardInterrupt  # a second signal: stop now
        self.why = f"{name} received"
        print(f"  {name}: stopping after the run in progress", file=sys.stderr, flush=True)


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


async def row_states(harness, bodies: set[str]) -> dict[str, tuple[str, str | None]]:
    """body -> (outbox state, last error) for this run's rows (the storage's read-only view)."""
    rows = await harness.services.storage.outbox_in_states([s.value for s in OutboxState])
    return {row.body: (row.state.value, row.last_error) for row in rows if row.body in bodies}


def count(tally: Tally, answers: dict[str, tuple[str, float]], received: list,
          states: dict[str, tuple[str, str | None]]) -> dict[str, int]:
    """Add one run to ``tally``; returns the run's own figures."""
    accepted = {b for b, (status, _) in answers.items() if status in ("SUCCESS", "QUEUED")}
    failed = {b for b, (state, _) in states.items() if state in ("failed", "expired")}
    for b in accepted & failed:
        tally.reasons[states[b][1] or states[b][0]] += 1
    seen = collections.Counter(m.body for m in received if m.body in answers)
    lost = {b for b in accepted if not seen[b]} - failed
    after_ack = {b for b in lost if states.get(b, ("",))[0] == "acked"}
    run = {"answered": len(accepted), "lost": len(lost), "lost_after_ack": len(after_ack),
           "failed": len(accepted & failed),
           "duplicates": sum(n - 1 for n in seen.values() if n > 1)}
    tally.answered += run["answered"]
    tally.lost += run["lost"]
    tally.lost_after_ack += run["lost_after_ack"]
    tally.failed += run["failed"]
    tally.duplicates += run["duplicates"]
    if lost:
        numbers = sorted(int(b.split("-")[1]) for b in lost)
        print(f"  lost (send order): {numbers}; statuses {collections.Counter(answers[b][0] for b in lost)};"
              f" rows {collections.Counter(states.get(b, ('none',))[0] for b in lost)}",
              file=sys.stderr, flush=True)
    return run


def progress(kind: str, case: str, n: int, total: int, run: dict, started: float, extra: str = "") -> None:
    print(f"  {kind} {case} run {n}/{total}: answered {run['answered']} lost {run['lost']} "
          f"(after ack {run['lost_after_ack']}) failed {run['failed']} dup {run['duplicates']}"
          f"{extra}; {time.monotonic() - started:.0f} s  [{dt.datetime.now(dt.UTC):%H:%M:%S} UTC]",
          file=sys.stderr, flush=True)


class ResetRuns:
    """The ``reset`` case on one server: a recipient, a proxy and the service stay up between
    runs; ``run()`` does one burst."""

    def __init__(self, kind: str, server, tally: Tally, workdir: Path, total: int) -> None:
        self.kind, self.server, self.tally, self.workdir, self.total = kind, server, tally, workdir, total
        self.arrivals: dict[str, float] = {}

    async def __aenter__(self) -> "ResetRuns":
        self.stack = contextlib.AsyncExitStack()
        await self.stack.__aenter__()
        jid, password = register(self.server, "soak")
        self.bob_jid, bob_pw = register(self.server, "bob")
        self.bob = XmppTestClient.for_prosody(self.server, self.bob_jid, bob_pw)
        await self.bob.connect(60)
        self.stack.push_async_callback(self.bob.disconnect)
        original = self.bob._on_message

        def stamp(msg) -> None:
            original(msg)
            self.arrivals.setdefault(msg["body"], time.monotonic())

        self.bob.xmpp.del_event_handler("message", original)
        self.bob.xmpp.add_event_handler("message", stamp)
        self.proxy = FaultProxy(self.server.host, self.server.c2s_port)
        await self.proxy.start()
        self.stack.push_async_callback(self.proxy.close)
        self.harness = await self.stack.enter_async_context(
            service(self.server, self.proxy.port, jid, password, self.workdir))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stack.__aexit__(*exc)

    async def run(self) -> None:
        started = time.monotonic()
        n = self.tally.runs
        bodies = [f"r{n}-{i}-{secrets.token_hex(3)}" for i in range(300)]

        def on_answer(count_: int) -> None:
            if count_ == 150:
                self.proxy.reset()

        answers = await send_burst(self.harness.port, self.bob_jid, bodies, 100, on_answer)
        await settle(self.harness)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not set(bodies) <= set(self.arrivals):
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # late duplicates
        states = await row_states(self.harness, set(bodies))
        run = count(self.tally, answers, self.bob.messages, states)
        delay = max((self.arrivals[b] - at for b, (status, at) in answers.items()
                     if b in self.arrivals and status in ("SUCCESS", "QUEUED")), default=0.0)
        self.tally.max_delay = max(self.tally.max_delay, delay)
        self.bob.messages.clear()
        self.tally.runs += 1
        progress(self.kind, "reset", self.tally.runs, self.total, run, started,
                 f" max delay {delay:.1f} s")


async def kill_runs(kind: str, server, kills: int, tally: Tally, workdir: Path, stop: Stop) -> None:
    jid, password = register(server, "soak")
    recipients = [register(server, "offline") for _ in range(kills)]
    if hasattr(server, "restart_gracefully"):
        server.restart_gracefully()  # ejabberd: make the new accounts durable before any SIGKILL
    loop = asyncio.get_running_loop()
    for run_no, (bob_jid, bob_pw) in enumerate(recipients):
        if stop():
            return
        started = time.monotonic()
        restarted: list[asyncio.Future] = []
        async with service(server, server.c2s_port, jid, password, workdir / f"kill-{run_no}") as harness:
            bodies = [f"k{run_no}-{n}-{secrets.token_hex(3)}" for n in range(100)]

            def on_answer(n: int) -> None:
                if n == 50:
                    server.kill()
                    # started in a thread: the service's event loop keeps running meanwhile
                    loop.call_later(1.0, lambda: restarted.append(loop.run_in_executor(None, server.start)))

            answers = await send_burst(harness.port, bob_jid, bodies, 20, on_answer)
            while not restarted:
                await asyncio.sleep(0.1)
            await restarted[0]
            await harness.wait_online(120)
            await settle(harness)
            states = await row_states(harness, set(bodies))
        bob = XmppTestClient.for_prosody(server, bob_jid, bob_pw)
        await bob.connect(60)
        await asyncio.sleep(5.0)  # offline messages arrive right after the initial presence
        run = count(tally, answers, bob.messages, states)
        await bob.disconnect()
        tally.runs += 1
        progress(kind, "kill", tally.runs, kills, run, started)


def table(tallies: dict[tuple[str, str], Tally]) -> list[str]:
    rows = [HEADER]
    for (kind, case), tally in tallies.items():
        rows.append(tally.line(kind, case))
    for (kind, case), tally in tallies.items():
        for reason, n in tally.reasons.most_common():
            rows.append(f"{kind:<16} {case:<6} reported failed: {n} x {reason}")
    return rows


def write_json(path: Path, args: argparse.Namespace, tallies: dict[tuple[str, str], Tally],
               started: float, why: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started),
        "requested": {"runs": args.runs, "kills": args.kills, "servers": args.servers},
        "stopped_early": why,
        "host": platform.node(),
        "rows": [{"server": k, "case": c, **{f: v for f, v in asdict(t).items() if f != "reasons"},
                  "reasons": dict(t.reasons)} for (k, c), t in tallies.items()],
        "table": table(tallies),
    }, indent=2) + "\n")


# -- the summary in ``python -m bench`` ---------------------------------------------------------

SHORT_RUNS, SHORT_KILLS = 3, 1  # the short soak run by ``make bench`` (about 2 minutes)


def _bench_row(label: str, row: dict, *, verdict: bool):
    from bench.results import Row, verdict as pass_miss

    ours = row["lost"] - row["lost_after_ack"]  # lost before the server acknowledged: ours
    dup = 100.0 * row["duplicates"] / row["answered"] if row["answered"] else 0.0
    delay = f", max delay {row['max_delay']:.1f} s" if row["case"] == "reset" and row["runs"] else ""
    measured = (f"{row['case']} x{row['runs']}: {row['answered']} answered, lost {row['lost']} "
                f"(after the server's ack {row['lost_after_ack']}), failed {row['failed']}, "
                f"dup {row['duplicates']} ({dup:.2f} %){delay}")
    return Row(label, row["server"], measured=measured, target="lost before ack 0",
               verdict=pass_miss(ours == 0 and row["runs"] > 0) if verdict else "",
               extra={"soak": row})


async def bench_rows(log, json_path: Path = DEFAULT_JSON) -> list:
    """Rows for ``python -m bench``: a short soak run now (``SHORT_RUNS`` bursts and
    ``SHORT_KILLS`` kill per stock server, in a child process), then the table of the last full
    ``make soak`` (``json_path``), each labelled with its run counts."""
    rows = []
    servers = ["prosody-stock"] + ([] if ejabberd_available() else ["ejabberd-stock"])
    with tempfile.TemporaryDirectory(prefix="agi-xmpp-bench-soak-") as tmp:
        short = Path(tmp) / "soak.json"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.soak", "--runs", str(SHORT_RUNS), "--kills", str(SHORT_KILLS),
            "--servers", ",".join(servers), "--json", str(short), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await proc.communicate()
        if proc.returncode or not short.exists():
            raise RuntimeError(f"short soak failed ({proc.returncode}): {output.decode()[-500:]}")
        result = json.loads(short.read_text())
    for line in result["table"]:
        log(f"soak: {line}")
    for row in result["rows"]:
        rows.append(_bench_row("soak (short, now)", row, verdict=True))
    if json_path.exists():
        last = json.loads(json_path.read_text())
        label = f"soak (last make soak, {last['finished_at'][:16]})"
        if last.get("stopped_early"):
            label += f" stopped early: {last['stopped_early']}"
        for row in last["rows"]:
            rows.append(_bench_row(label, row, verdict=False))
    else:
        log(f"soak: no full soak results at {json_path} (run make soak)")
    return rows


def parse_until(text: str | None) -> float | None:
    if not text:
        return None
    hour, minute = (int(x) for x in text.split(":"))
    now = dt.datetime.now(dt.UTC)
    at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if at <= now:
        at += dt.timedelta(days=1)
    return at.timestamp()


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="reset bursts per server")
    parser.add_argument("--kills", type=int, default=5, help="server SIGKILLs per server")
    parser.add_argument("--servers", default="prosody-stock,ejabberd-stock")
    parser.add_argument("--until", help="UTC HH:MM: start no run after it; print what finished")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the table")
    args = parser.parse_args(argv)
    stop = Stop(parse_until(args.until))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.signal, sig.name)
    kinds = args.servers.split(",")
    tallies: dict[tuple[str, str], Tally] = {}
    for kind in kinds:
        if args.runs:
            tallies[(kind, "reset")] = Tally()
        if args.kills:
            tallies[(kind, "kill")] = Tally()
    started = time.monotonic()
    servers = {}
    try:
        with tempfile.TemporaryDirectory(prefix="agi-xmpp-soak-") as tmp:
            for kind in kinds:
                servers[kind] = start_server(kind)
            for kind in kinds:
                if args.kills and not stop():
                    await kill_runs(kind, servers[kind], args.kills, tallies[(kind, "kill")],
                                    Path(tmp) / kind / "kill", stop)
            if args.runs and not stop():
                async with contextlib.AsyncExitStack() as stack:
                    resets = [await stack.enter_async_context(
                        ResetRuns(kind, servers[kind], tallies[(kind, "reset")],
                                  Path(tmp) / kind / "reset", args.runs)) for kind in kinds]
                    for _ in range(args.runs):
                        for r in resets:
                            if stop():
                                break
                            await r.run()
    except (KeyboardInterrupt, asyncio.CancelledError):
        stop.why = stop.why or "interrupted"
    finally:
        for server in servers.values():
            with contextlib.suppress(Exception):
                server.stop()
        if stop.why:
            print(f"\nstopped early ({stop.why}): figures of the runs that finished, counted in 'runs'",
                  flush=True)
        print("\n".join(table(tallies)), flush=True)
        write_json(args.json, args, tallies, started, stop.why)
        print(f"({time.monotonic() - started:.0f} s; written to {args.json})", flush=True)
    return 0


if __name__ == "__main__":
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.basicConfig(level=logging.CRITICAL)
    sys.exit(asyncio.run(main()))
