"""``instructions``: machine instructions per ``jabber_status`` call, counted by callgrind.

CPU time per session is the headline, but on a shared 2-core VM it moves by ±10 % between runs
(cache and scheduler effects), which hides any change of a few per cent. The instructions a
server executes per call do not move: the same code and input give the same count, whatever
else the machine does. So this scenario runs each server under ``valgrind --tool=callgrind``
with instrumentation off, warms it up, switches counting on for a few seconds of serial calls
from the load generator (``callgrind_control -i on``), dumps, and divides the total by the
calls. Servers: agi-xmpp's FastAGI server with the real scripts (``bench.instr_server``: the
presence and config it reads are in memory, so no XMPP session has to run under valgrind; the
count matched the full service's within 0.2 %), the one from ``--compare-src`` when given, and
the uvloop Protocol floor sending the same lines. User-space instructions only: the kernel's
share is the same for all of them (the same system calls; docs/performance.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.procs import free_port
from bench.results import Row

HOST = "127.0.0.1"
SCRIPT, ARGS = "jabber_status", ("asterisk", "alice@localhost")  # what bench.inproc serves
REPO = Path(__file__).resolve().parent.parent


async def instructions(world: Any, opts: Any, log: Any) -> list[Row]:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        return [Row("instructions c=1", "-", measured="skipped: valgrind is not installed")]
    py = sys.executable
    servers: list[tuple[str, list[str], dict[str, str]]] = [
        ("agi-xmpp (uvloop)", [py, "-P", "-m", "bench.instr_server"],
         {"PYTHONPATH": f"{world.server_src}:{REPO}" if world.server_src else str(REPO)}),
    ]
    if world.compare_src is not None:
        servers.append(("agi-xmpp before (uvloop)", [py, "-P", "-m", "bench.instr_server"],
                        {"PYTHONPATH": f"{world.compare_src}:{REPO}"}))
    lines_file = world.tmp / "lines-instructions.json"
    servers.append(("floor Protocol (uvloop)",
                    [py, "-P", "-m", "bench.floors", "protocol", "--loop", "uvloop",
                     "--lines", str(lines_file)], {"PYTHONPATH": str(REPO)}))
    counts: dict[str, tuple[float, int]] = {}
    for label, argv, env in servers:
        if label.startswith("floor") and not lines_file.exists():
            raise RuntimeError("no command lines captured for the floor")
        per_call, calls, lines, variables = await _count(world.tmp, label, argv, env, opts.duration * 2)
        if label.startswith("agi-xmpp") and variables.get("JABBER_STATUS") != "3":
            # a script that failed (and logged a traceback) would be counted as if it worked
            raise RuntimeError(f"{label}: jabber_status did not answer alice's presence: {variables}")
        if label == "agi-xmpp (uvloop)":
            lines_file.write_text(json.dumps([line.decode() for line in lines]))
        counts[label] = (per_call, calls)
        log(f"  {label:<26} {per_call:>10,.0f} instructions/call ({calls} calls)")
    floor = counts["floor Protocol (uvloop)"][0]
    rows = []
    for label, (per_call, calls) in counts.items():
        rows.append(Row("instructions c=1", label, ratio=per_call / floor,
                        measured=f"{per_call:,.0f} instructions/call ({calls} calls)"))
    if "agi-xmpp before (uvloop)" in counts:
        now, before = counts["agi-xmpp (uvloop)"][0], counts["agi-xmpp before (uvloop)"][0]
        rows.append(Row("instructions c=1", "agi-xmpp vs before",
                        measured=f"{now / before - 1:+.1%} ({before:,.0f} → {now:,.0f})"))
    return rows


async def _count(tmp: Path, label: str, argv: list[str], env: dict[str, str],
                 seconds: float) -> tuple[float, int, list[bytes], dict[str, str]]:
    """Instructions per call of one server; also the lines it sent and the variables they set
    (to check or to copy)."""
    port = free_port()
    name = label.split(" (")[0].replace(" ", "-")
    out = tmp / f"callgrind-{name}.out"
    log_path = tmp / f"callgrind-{name}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={out}", *argv, "--port", str(port)],
            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=tmp)
    try:
        for _ in range(1200):  # a Python start under valgrind takes tens of seconds
            if b"ready" in log_path.read_bytes():
                break
            if proc.poll() is not None:
                raise RuntimeError(f"{label} exited under valgrind; see {log_path}")
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"{label} not ready under valgrind after 120 s")
        sample = await loadgen.run_once(HOST, port, SCRIPT, ARGS)
        await loadgen.run_closed_loop(HOST, port, SCRIPT, ARGS, concurrency=1, duration=1.0)
        _control("-i", "on", proc.pid)
        result = await loadgen.run_closed_loop(HOST, port, SCRIPT, ARGS, concurrency=1,
                                               duration=seconds)
        _control("-d", None, proc.pid)
        _control("-i", "off", proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    dump = out.with_name(out.name + ".1")  # the -d dump (the one at exit holds what came after)
    total = _totals(dump) if dump.exists() else 0
    if not result.sessions or not total:
        raise RuntimeError(f"{label}: {result.sessions} calls, {total} instructions counted")
    return total / result.sessions, result.sessions, sample.lines or [], sample.variables or {}


def _control(option: str, value: str | None, pid: int) -> None:
    args = ["callgrind_control", option, *([value] if value else []), str(pid)]
    subprocess.run(args, check=True, capture_output=True, timeout=60)


def _totals(path: Path) -> int:
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("totals:"):
                return int(line.split()[1])
    return 0
