"""The measured scenarios. Each returns ``Row``s; every ratio is against a baseline of the same run.

* ``agi_cost``: jabber_status at 1/10/100/1000 concurrent calls against agi-xmpp and the
  baselines (floors, panoramisk) that send exactly the lines agi-xmpp sent; headline: the
  server's CPU per session, with sessions/s and p50/p99 beside it.
* ``instructions``: instructions per call under callgrind, agi-xmpp against the floor (in
  ``bench.instructions``): the precise figure for before/after.
* ``round_trips``: AGI commands each script sends.
* ``presence_ingest``: presence updates/s the cache absorbs while lookups continue.
* ``xmpp_send``: jabber_send through the real Prosody, sustained messages/s and p99.
* ``waiting``: 5,000 jabber_receive waits held open (RSS growth), then all released.
* ``asterisk``: the Asterisk 22 lab: a dialplan loop of AGI() calls (agi-xmpp, floor) and native
  JABBER_STATUS, in the same run (in ``bench.lab_scenario``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any

from bench import loadgen
from bench.instructions import instructions  # noqa: F401 - a scenario, found by name
from bench.procs import listen_backlog, open_fds, pinned
from bench.results import Row, median, verdict
from bench.world import ACCOUNT, ALICE_STATUS, SENDERS, World

HOST = "127.0.0.1"
FLOOR = "floor-protocol"  # the uvloop asyncio.Protocol floor: every ratio's denominator
BASELINES = ("floor-protocol", "floor-streams", "panoramisk")
LABELS = {
    "agi-xmpp": "agi-xmpp (uvloop)",
    "floor-protocol": "floor Protocol (uvloop)",
    "floor-streams": "floor streams (asyncio)",
    "panoramisk": "panoramisk (asyncio)",
    "floor-task": "floor Protocol+task (uvloop)",
    "floor-protocol-asyncio": "floor Protocol (asyncio)",
    "panoramisk-uvloop": "panoramisk (uvloop)",
    "agi-xmpp-before": "agi-xmpp before (uvloop)",
}
CPU_TARGET = 1.5  # agi-xmpp CPU/session ≤ 1.5× the uvloop floor
P99_TARGET = 2.0  # p99 at 100 concurrent ≤ 2× the uvloop floor
PANORAMISK_TARGET = 2.5  # ≥ 2.5× cheaper than panoramisk
MAX_STATUS_COMMANDS = 4


@dataclass
class Options:
    levels: tuple[int, ...] = (1, 10, 100, 1000)
    duration: float = 2.0
    repeats: int = 3
    extra_baselines: bool = False
    hangup: bool = True
    loadgen_cpus: set[int] | None = None
    send_concurrency: int = 50
    send_duration: float = 5.0
    presence_updates: int = 5000
    waiters: int = 5000
    lab_calls: int = 1000
    lab_repeats: int = 5


@dataclass
class Measure:
    cpu_us: float
    rate: float
    p50_ms: float
    p99_ms: float
    sessions: int
    errors: dict[str, int]
    same_lines: bool


async def measure(server: Any, script: str, args: tuple[str, ...], expected: list[bytes],
                  concurrency: int, duration: float, hangup_after: int = 0) -> Measure:
    cpu0 = server.cpu()
    result = await loadgen.run_closed_loop(HOST, server.port, script, args,
                                           concurrency=concurrency, duration=duration,
                                           record=5, hangup_after=hangup_after)
    cpu1 = server.cpu()
    sessions = result.sessions
    same = all(s.lines == expected for s in result.recorded) and set(result.commands) <= {
        len(expected)}
    return Measure(
        cpu_us=(cpu1 - cpu0) / sessions * 1e6 if sessions else float("nan"),
        rate=result.rate,
        p50_ms=result.percentile(50) * 1e3,
        p99_ms=result.percentile(99) * 1e3,
        sessions=sessions,
        errors=result.errors,
        same_lines=same,
    )


def _summary(runs: list[Measure]) -> dict[str, Any]:
    return {
        "cpu_us": median([m.cpu_us for m in runs]),
        "rate": median([m.rate for m in runs]),
        "p50_ms": median([m.p50_ms for m in runs]),
        "p99_ms": median([m.p99_ms for m in runs]),
        "sessions": sum(m.sessions for m in runs),
        "errors": sum(sum(m.errors.values()) for m in runs),
        "same_lines": all(m.same_lines for m in runs),
        "runs": [vars(m) for m in runs],
    }


# -- (1) AGI cost -------------------------------------------------------------------------------


async def agi_cost(world: World, opts: Options, log: Any) -> list[Row]:
    script = "jabber_status"
    args = (ACCOUNT, world.jid("alice"))
    capture = await world.call(script, *args)
    expected = capture.lines or []
    if capture.variables.get("JABBER_STATUS") != "3":  # type: ignore[union-attr]
        raise RuntimeError(f"jabber_status did not see alice's presence: {capture.variables}")
    lines_file = world.lines_file(script, expected)
    backlog = listen_backlog(world.agi_port) or 100  # the baselines listen like agi-xmpp does
    kinds = list(BASELINES) + (["floor-task", "floor-protocol-asyncio", "panoramisk-uvloop"]
                               if opts.extra_baselines else [])
    servers: dict[str, Any] = {"agi-xmpp": world.agi}
    if world.compare is not None:
        servers["agi-xmpp-before"] = world.compare
    for kind in kinds:
        servers[kind] = world.start_baseline(kind, lines_file, script, backlog)
    for name, server in servers.items():  # same lines from every server, or the run is void
        got = await loadgen.run_once(HOST, server.port, script, args)
        if got.lines != expected:
            raise RuntimeError(f"{name} sent {got.lines}, agi-xmpp sent {expected}")
    log(f"agi_cost: {len(expected)} command lines per session, listen backlog {backlog}; "
        f"servers: {', '.join(servers)}")

    results: dict[tuple[int, str], list[Measure]] = {}
    with pinned(opts.loadgen_cpus):
        for level in opts.levels:
            for server in servers.values():  # warm-up, not measured
                await loadgen.run_closed_loop(HOST, server.port, script, args,
                                              concurrency=min(level, 50), duration=0.2)
            for rep in range(opts.repeats):
                names = list(servers)
                names = names[rep % len(names):] + names[: rep % len(names)]  # rotate order
                for name in names:
                    m = await measure(servers[name], script, args, expected, level,
                                      opts.duration)
                    results.setdefault((level, name), []).append(m)
                    log(f"  c={level:<5} {name:<24} {m.cpu_us:7.1f} µs/session "
                        f"{m.rate:8.0f}/s p50 {m.p50_ms:7.2f} ms p99 {m.p99_ms:8.2f} ms"
                        + (f" errors {m.errors}" if m.errors else "")
                        + ("" if m.same_lines else " LINES DIFFER"))
        hangup_rows = []
        if opts.hangup and 100 in opts.levels:
            # HANGUP after the first command, before its reply (panoramisk cannot take it).
            for name in ("agi-xmpp", "floor-protocol", "floor-streams"):
                runs = []
                for _ in range(opts.repeats):
                    runs.append(await measure(servers[name], script, args, expected, 100,
                                              opts.duration, hangup_after=1))
                hangup_rows.append((name, _summary(runs)))

    rows: list[Row] = []
    for level in opts.levels:
        summary = {name: _summary(results[(level, name)]) for name in servers}
        floor = summary[FLOOR]
        for name in servers:
            s = summary[name]
            ratio = s["cpu_us"] / floor["cpu_us"]
            row = Row(f"agi_cost c={level}", LABELS[name], s["cpu_us"], s["rate"], s["p50_ms"],
                      s["p99_ms"], ratio, extra=s)
            if s["errors"] or not s["same_lines"]:
                row.measured = f"{s['errors']} errors" + ("" if s["same_lines"] else ", lines differ")
            if name == "agi-xmpp":
                row.target = f"CPU ≤ {CPU_TARGET}× floor"
                row.verdict = verdict(ratio <= CPU_TARGET and not s["errors"] and s["same_lines"])
            rows.append(row)
        if "agi-xmpp-before" in summary:
            before = summary["agi-xmpp-before"]
            rows.append(Row(f"agi_cost c={level}", "agi-xmpp vs before", ratio=None,
                            measured=f"CPU {agi_cpu_change(summary['agi-xmpp'], before)}, "
                                     f"p99 {summary['agi-xmpp']['p99_ms']:.2f} vs "
                                     f"{before['p99_ms']:.2f} ms"))
        agi, pan = summary["agi-xmpp"], summary["panoramisk"]
        cheaper = pan["cpu_us"] / agi["cpu_us"]
        rows.append(Row(f"agi_cost c={level}", "agi-xmpp vs panoramisk", measured=f"{cheaper:.2f}× cheaper",
                        target=f"≥ {PANORAMISK_TARGET}× cheaper", verdict=verdict(cheaper >= PANORAMISK_TARGET)))
        if level == 100:
            p99_ratio = agi["p99_ms"] / floor["p99_ms"]
            rows.append(Row("agi_cost c=100", "agi-xmpp p99 vs floor", p99_ms=agi["p99_ms"],
                            ratio=p99_ratio, measured=f"p99 {p99_ratio:.2f}× floor's "
                            f"{floor['p99_ms']:.2f} ms", target=f"p99 ≤ {P99_TARGET}× floor",
                            verdict=verdict(p99_ratio <= P99_TARGET)))
    if hangup_rows:
        floor_cpu = dict(hangup_rows)["floor-protocol"]["cpu_us"]
        for name, s in hangup_rows:
            rows.append(Row("agi_cost c=100 +HANGUP", LABELS[name], s["cpu_us"], s["rate"],
                            s["p50_ms"], s["p99_ms"], s["cpu_us"] / floor_cpu,
                            measured="" if s["same_lines"] and not s["errors"] else
                            f"{s['errors']} errors, same lines: {s['same_lines']}", extra=s))
    return rows


def agi_cpu_change(now: dict[str, Any], before: dict[str, Any]) -> str:
    change = now["cpu_us"] / before["cpu_us"] - 1
    return f"{change * 100:+.0f}% ({before['cpu_us']:.1f} → {now['cpu_us']:.1f} µs)"


# -- (2) round trips ----------------------------------------------------------------------------


async def round_trips(world: World, opts: Options, log: Any) -> list[Row]:
    alice, bob = world.jid("alice"), world.jid("bob")
    room = f"bench@{world.prosody.muc_domain}"
    cases: list[tuple[str, tuple[str, ...], dict[str, str]]] = [
        ("jabber_status", (ACCOUNT, alice), {}),
        ("jabber_status", (ACCOUNT, alice, "ALICE_STATE"), {}),
        ("jabber_send", (ACCOUNT, bob, "hello from the dialplan"), {}),
        ("jabber_send?var=NOTE", (ACCOUNT, bob), {"NOTE": "multi\nline, \"quoted\""}),
        ("jabber_receive", (ACCOUNT, bob, "0.2"), {}),
        ("jabber_join", (ACCOUNT, room), {}),
        ("jabber_send_group", (ACCOUNT, room, "hello room"), {}),
        ("jabber_leave", (ACCOUNT, room), {}),
        ("presence_route", (ACCOUNT, f"{alice}&{bob}", "present"), {}),
        ("call_notify", (ACCOUNT, bob), {}),
        ("chat_menu?timeout=0.5&hold=none", (ACCOUNT, bob, "Where to?", "desk", "cell"), {}),
    ]
    rows = []
    for script, args, chan_vars in cases:
        t0 = time.perf_counter()
        session = await world.call(script, *args, channel_vars=chan_vars, timeout=30)
        ms = (time.perf_counter() - t0) * 1e3
        verbs: dict[str, int] = {}
        for line in session.lines or []:
            words = loadgen._parse_args(line.decode())
            verb = " ".join(words[:2]) if words[:1] in (["SET"], ["GET"]) else (words or ["?"])[0]
            verbs[verb] = verbs.get(verb, 0) + 1
        label = script + ("" if len(args) < 3 or script != "jabber_status" else " (VARNAME)")
        status = {k: v for k, v in (session.variables or {}).items()
                  if k.endswith("_STATUS") or k == "JABBER_STATUS"}
        row = Row("round_trips", label, p50_ms=ms, measured=f"{session.commands} commands",
                  extra={"verbs": verbs, "status": status, "lines": [l.decode() for l in session.lines or []]})
        if script == "jabber_status" and len(args) == 2:
            row.target = f"≤ {MAX_STATUS_COMMANDS} commands"
            row.verdict = verdict(session.commands <= MAX_STATUS_COMMANDS)
        rows.append(row)
        log(f"  {label:<32} {session.commands} commands {verbs} {status}")
    return rows


# -- (4b) presence ingest -----------------------------------------------------------------------


async def presence_ingest(world: World, opts: Options, log: Any) -> list[Row]:
    """alice floods presence from a second resource (priority 10, in its own process) while
    jabber_status lookups of alice go on at 10 concurrent; absorbed = the lookup sees the last."""
    updates = opts.presence_updates
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.peer", "flood", f"{world.jid('alice')}/flood",
        world.passwords["alice"], str(world.prosody.c2s_port), str(world.prosody.cert_path),
        str(updates), "10", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if line.strip() != b"ready":
            raise RuntimeError(f"presence flood peer did not start: {line!r}")
        stop = asyncio.Event()
        args = (ACCOUNT, world.jid("alice"))
        lookups = asyncio.ensure_future(loadgen.run_closed_loop(
            HOST, world.agi_port, "jabber_status", args, concurrency=10, duration=120, until=stop))
        await asyncio.sleep(0.3)  # lookups under way
        cpu0 = world.agi.cpu()  # type: ignore[union-attr]
        t0 = time.perf_counter()
        proc.stdin.write(b"go\n")
        final = f"final-{updates}"
        await world.wait_status("alice", "5", timeout=120, message=final, interval=0.005)
        t1 = time.perf_counter()
        cpu1 = world.agi.cpu()  # type: ignore[union-attr]
        stop.set()
        result = await lookups
        sent = (await asyncio.wait_for(proc.stdout.readline(), 30)).split()
        send_s = float(sent[1]) if len(sent) == 2 else float("nan")
        proc.stdin.write(b"quit\n")
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    rate = updates / (t1 - t0)
    log(f"  {updates} updates sent in {send_s:.2f} s, absorbed in {t1 - t0:.2f} s "
        f"({rate:,.0f}/s, server CPU {(cpu1 - cpu0) * 1e3:.0f} ms); lookups meanwhile "
        f"{result.rate:,.0f}/s p50 {result.percentile(50) * 1e3:.1f} ms "
        f"p99 {result.percentile(99) * 1e3:.1f} ms")
    await world.wait_status("alice", "3", message=ALICE_STATUS)  # the flood resource left
    return [Row("presence_ingest", "agi-xmpp", rate=result.rate,
                p50_ms=result.percentile(50) * 1e3, p99_ms=result.percentile(99) * 1e3,
                measured=f"{rate:,.0f} updates/s absorbed (sent at {updates / send_s:,.0f}/s); "
                         f"lookups meanwhile: sess/s, p50, p99",
                extra={"updates": updates, "seconds": t1 - t0, "send_seconds": send_s,
                       "server_cpu_s": cpu1 - cpu0, "lookups": result.sessions,
                       "lookup_errors": result.errors})]


# -- (4) XMPP throughput ------------------------------------------------------------------------


async def xmpp_send(world: World, opts: Options, log: Any) -> list[Row]:
    bob = world.peers["bob"]
    args = (ACCOUNT, world.jid("bob"), "Incoming call from 100 to 200")
    await loadgen.run_closed_loop(HOST, world.agi_port, "jabber_send", args,
                                  concurrency=10, duration=0.3)  # warm-up
    await bob.wait_received(bob.received, 1)
    await asyncio.sleep(0.5)
    base = bob.received
    loop = asyncio.get_running_loop()
    cpu0 = world.agi.cpu()  # type: ignore[union-attr]
    t0 = loop.time()
    result = await loadgen.run_closed_loop(HOST, world.agi_port, "jabber_send", args,
                                           concurrency=opts.send_concurrency,
                                           duration=opts.send_duration, record=20)
    cpu1 = world.agi.cpu()  # type: ignore[union-attr]
    statuses = {s.variables.get("JABBER_SEND_STATUS") for s in result.recorded}  # type: ignore[union-attr]
    delivered_all = await bob.wait_received(base + result.sessions, timeout=60)
    delivered = bob.received - base
    deliver_s = bob.last_received_at - t0
    rate = result.rate
    ok = statuses == {"SUCCESS"} and delivered_all and not result.errors
    log(f"  jabber_send c={opts.send_concurrency}: {result.sessions} in {result.seconds:.2f} s "
        f"= {rate:,.0f}/s, p99 {result.percentile(99) * 1e3:.1f} ms; bob got {delivered} "
        f"by {deliver_s:.2f} s; statuses {statuses}; errors {result.errors}")
    return [Row(f"xmpp_send c={opts.send_concurrency}", "agi-xmpp",
                (cpu1 - cpu0) / result.sessions * 1e6 if result.sessions else None,
                rate, result.percentile(50) * 1e3, result.percentile(99) * 1e3,
                measured=f"{rate:,.0f} msg/s; {delivered:,} delivered at "
                         f"{delivered / deliver_s if deliver_s > 0 else 0:,.0f}/s",
                target="≥ 1,000 msg/s", verdict=verdict(rate >= 1000 and ok),
                extra={"sessions": result.sessions, "seconds": result.seconds,
                       "delivered": delivered, "deliver_seconds": deliver_s,
                       "statuses": sorted(map(str, statuses)), "errors": result.errors})]


# -- (3) waiting at scale -----------------------------------------------------------------------


async def waiting(world: World, opts: Options, log: Any) -> list[Row]:
    agi = world.agi
    assert agi is not None
    total = opts.waiters
    senders = [world.peers[f"sender{i}"] for i in range(SENDERS)]
    per_sender = total // len(senders)
    total = per_sender * len(senders)
    rss0, fds0 = agi.rss(), open_fds(agi.pid)
    runs = []
    for peer in senders:
        runs.append(await loadgen.open_sessions(
            HOST, world.agi_port, "jabber_receive", (ACCOUNT, peer.bare, "600"), per_sender))
    # Wait until the server holds every connection and has gone quiet (all waiters registered).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        c0 = agi.cpu()
        await asyncio.sleep(0.3)
        quiet = agi.cpu() - c0 < 0.02
        if open_fds(agi.pid) - fds0 >= total and quiet:
            break
        if loop.time() > deadline:
            raise RuntimeError(f"only {open_fds(agi.pid) - fds0} of {total} waits open")
    rss1 = agi.rss()
    c0 = agi.cpu()
    await asyncio.sleep(1.0)
    idle_cpu = agi.cpu() - c0
    early = sum(r.started - r.in_flight for r in runs)
    growth_mb = (rss1 - rss0) / 2**20
    log(f"  {total} waits open: RSS {rss0 / 2**20:.0f} → {rss1 / 2**20:.0f} MB "
        f"(+{growth_mb:.0f} MB, {(rss1 - rss0) / total / 1024:.1f} KiB each); "
        f"idle CPU {idle_cpu * 1e3:.0f} ms/s; ended early: {early}")
    cpu0 = agi.cpu()
    with pinned(opts.loadgen_cpus):  # the senders and the load generator, off the server's CPU
        t0 = time.perf_counter()
        for k in range(per_sender):
            for i, peer in enumerate(senders):
                peer.send(world.jid(ACCOUNT), f"message {k} from sender {i}")
            if k % 50 == 49:
                await asyncio.sleep(0)
        for peer in senders:
            await peer.flushed()
        t_sent = time.perf_counter()
        try:
            async with asyncio.timeout(60):
                for r in runs:
                    await r.idle.wait()
        except TimeoutError:
            pass
        t1 = time.perf_counter()
    release_cpu = agi.cpu() - cpu0
    sessions = [s for r in runs for s in r.recorded]
    statuses: dict[str, int] = {}
    for s in sessions:
        st = (s.variables or {}).get("JABBER_RECEIVE_STATUS", "none")
        statuses[st] = statuses.get(st, 0) + 1
    released = statuses.get("SUCCESS", 0)
    from_first, from_last = t1 - t0, t1 - t_sent
    rss2 = agi.rss()
    log(f"  messages sent in {t_sent - t0:.2f} s; all released {from_first:.2f} s after the "
        f"first ({from_last:.2f} s after the last left the senders); statuses {statuses}; "
        f"server CPU {release_cpu:.2f} s ({release_cpu / total * 1e6:.0f} µs per release); "
        f"RSS after {rss2 / 2**20:.0f} MB")
    return [
        Row(f"waiting {total}", "agi-xmpp RSS growth", measured=f"+{growth_mb:.0f} MB "
            f"({(rss1 - rss0) / total / 1024:.1f} KiB/wait)", target="≤ 150 MB",
            verdict=verdict(growth_mb <= 150),
            extra={"rss_before": rss0, "rss_waiting": rss1, "rss_after": rss2,
                   "idle_cpu_s_per_s": idle_cpu}),
        Row(f"waiting {total}", "agi-xmpp release", cpu_us=release_cpu / total * 1e6,
            p99_ms=from_first * 1e3,
            measured=f"{released:,}/{total:,} released in {from_first:.2f} s "
                     f"({from_last:.2f} s after the last message left)",
            target="all within 2 s", verdict=verdict(released == total and from_first <= 2.0),
            extra={"statuses": statuses, "send_seconds": t_sent - t0,
                   "from_first": from_first, "from_last": from_last}),
    ]
