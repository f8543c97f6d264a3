"""``python -m bench`` (``make bench``): agi-xmpp side by side with its baselines, in one run.

Starts a private Prosody, agi-xmpp (``agi-xmpp --config FILE serve``, uvloop) in its own process,
the baseline servers, and (for the ``asterisk`` scenario) the Asterisk 22 lab; runs the
scenarios; prints one table and writes it to ``bench/results/latest.json``. Every ratio is
against a baseline measured in the same run. See docs/performance.md. The ``soak`` scenario
summarises issue 9's soak (docs/reliability.md): a short one run now on stock Prosody and
ejabberd, and the table of the last full ``make soak``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
import traceback
from pathlib import Path

from bench import scenarios
from bench.procs import cpu_count
from bench.results import Row, table, write_json
from bench.world import World

SCENARIOS = ("agi_cost", "instructions", "round_trips", "presence_ingest", "xmpp_send", "waiting",
             "asterisk", "ami", "soak")
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"
_T0 = time.monotonic()


def log(text: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {text}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="shorter runs, one repeat (about a minute; noisier)")
    p.add_argument("--only", default="", help=f"comma-separated scenarios: {','.join(SCENARIOS)}")
    p.add_argument("--skip", default="", help="comma-separated scenarios to leave out")
    p.add_argument("--levels", default="", help="AGI concurrency levels (default 1,10,100,1000)")
    p.add_argument("--duration", type=float, help="seconds per AGI run (default 2, quick 1)")
    p.add_argument("--repeats", type=int, help="AGI runs per server and level (default 3, quick 1)")
    p.add_argument("--extra-baselines", action="store_true",
                   help="also the task-based floor, the Protocol floor on asyncio and "
                        "panoramisk on uvloop")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin the servers and the load generator to separate CPUs")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--compare-src", type=Path,
                   help="also run agi-xmpp from this source tree (e.g. `git archive HEAD`) side "
                        "by side, as 'agi-xmpp before': before/after figures from one run")
    p.add_argument("--server-src", type=Path,
                   help="run agi-xmpp from this source tree (e.g. `git archive` of an older "
                        "commit) instead of the installed one: before/after figures")
    return p.parse_args(argv)


def options(args: argparse.Namespace) -> scenarios.Options:
    o = scenarios.Options()
    if args.quick:
        o.duration, o.repeats = 1.0, 1
        o.send_duration, o.presence_updates, o.lab_calls, o.lab_repeats = 2.0, 2000, 500, 1
    if args.levels:
        o.levels = tuple(int(x) for x in args.levels.split(","))
    if args.duration:
        o.duration = args.duration
    if args.repeats:
        o.repeats = args.repeats
    o.extra_baselines = args.extra_baselines
    return o


def raise_fd_limit(need: int = 16384) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(max(soft, need), hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # children inherit it


async def run(args: argparse.Namespace) -> int:
    selected = [s for s in (args.only.split(",") if args.only else SCENARIOS) if s]
    skipped = set(filter(None, args.skip.split(",")))
    unknown = [s for s in [*selected, *skipped] if s not in SCENARIOS]
    if unknown:
        log(f"unknown scenario(s): {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
        return 2
    selected = [s for s in selected if s not in skipped]
    opts = options(args)
    server_cpus = None
    if not args.no_pin and cpu_count() >= 2:
        cpus = sorted(os.sched_getaffinity(0))
        server_cpus, opts.loadgen_cpus = {cpus[-1]}, {cpus[0]}
        log(f"servers pinned to CPU {cpus[-1]}, load generator to CPU {cpus[0]}")
    world = World(server_cpus=server_cpus, keep=args.keep,
                  server_src=args.server_src.resolve() if args.server_src else None)
    if args.server_src:
        log(f"agi-xmpp from {args.server_src}")
    rows: list[Row] = []
    failed = False
    started = time.monotonic()
    try:
        log(f"workdir {world.tmp}")
        world.start_prosody()
        world.start_agi_xmpp()
        if args.compare_src:
            world.start_compare(args.compare_src.resolve())
            log(f"agi-xmpp-before from {args.compare_src}, pid {world.compare.pid}")  # type: ignore[union-attr]
        await world.start_peers()
        log(f"Prosody on :{world.prosody.c2s_port}, agi-xmpp pid {world.agi.pid} "  # type: ignore[union-attr]
            f"on :{world.agi_port}; alice's presence is in the cache")
        floor = None
        for name in selected:
            log(f"== {name}")
            try:
                if name == "asterisk":
                    from bench.lab_scenario import asterisk

                    if floor is None:
                        floor = await _floor_for_lab(world)
                    rows += await asterisk(world, opts, log, floor)
                elif name == "ami":
                    from bench.ami_scenario import ami

                    rows += await ami(world, opts, log)
                elif name == "soak":
                    # issue 9's soak on stock Prosody/ejabberd: a short run now, and the last
                    # full `make soak` (bench/results/soak.json), each labelled with its counts
                    from bench.soak import bench_rows

                    rows += await bench_rows(log)
                else:
                    rows += await getattr(scenarios, name)(world, opts, log)
                    if name == "agi_cost":
                        floor = next(s for s in world.baselines if s.name == scenarios.FLOOR)
            except Exception as exc:  # noqa: BLE001 - report it in the table, go on
                failed = True
                log(f"{name} failed:\n{traceback.format_exc()}")
                rows.append(Row(name, "-", measured=f"error: {type(exc).__name__}: {exc}"[:120],
                                verdict="MISS"))
    finally:
        await world.close()
    elapsed = time.monotonic() - started
    print()
    print(table(rows))
    misses = sum(r.verdict == "MISS" for r in rows)
    passes = sum(r.verdict == "PASS" for r in rows)
    print(f"\n{passes} targets met, {misses} missed; {elapsed:.0f} s. "
          f"Results: {args.json}")
    write_json(args.json, rows, {
        "argv": sys.argv[1:], "seconds": elapsed, "scenarios": selected,
        "server_src": str(args.server_src) if args.server_src else None,
        "compare_src": str(args.compare_src) if args.compare_src else None,
        "options": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(opts).items()},
    })
    if failed:
        return 1
    return 1 if (args.strict and misses) else 0


async def _floor_for_lab(world: World):  # noqa: ANN202
    from bench.world import ACCOUNT

    capture = await world.call("jabber_status", ACCOUNT, world.jid("alice"))
    lines_file = world.lines_file("jabber_status", capture.lines or [])
    return world.start_baseline(scenarios.FLOOR, lines_file, "jabber_status")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency on Linux
        return asyncio.run(run(args))
    return uvloop.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
