"""(5) Real Asterisk: a dialplan loop of AGI() calls, in the Asterisk 22 lab, side by side.

One channel runs ``N`` serial ``AGI(agi://127.0.0.1:PORT/jabber_status,ACCOUNT,JID)`` against
agi-xmpp, then against the uvloop floor (the same command lines), then ``N`` native
``${JABBER_STATUS(bench,JID)}`` from res_xmpp (connected to the same Prosody over STARTTLS),
then an empty loop (the dialplan's own cost), interleaved and repeated. The dialplan times each
loop with ``STRFTIME(,,%s.%6q)`` and reports it in a ``UserEvent``; the servers' CPU is read
from /proc before and after each loop.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path
from typing import Any

from bench.results import Row, median, verdict
from bench.scenarios import FLOOR, LABELS, Options
from bench.world import ACCOUNT, World

LAB_TARGET = 1.25  # agi-xmpp ≤ 1.25× the floor, per AGI() call in a real Asterisk
REPO = Path(__file__).resolve().parent.parent


def load_lab_module() -> Any:
    path = str(REPO / "tests" / "e2e")
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module("lab")


def dialplan(loops: dict[str, str], calls: int, probe_jid: str) -> str:
    """One extension per variant: ``loops`` maps its name to the dialplan step it repeats."""
    text = "[general]\nstatic = yes\nwriteprotect = yes\n\n[bench]\n"
    for name, step in loops.items():
        text += (
            f"exten => {name},1,Answer()\n"
            " same => n,Set(I=0)\n"
            " same => n,Set(T0=${STRFTIME(,,%s.%6q)})\n"
            f" same => n(loop),{step}\n"
            " same => n,Set(I=$[${I} + 1])\n"
            f" same => n,GotoIf($[${{I}} < {calls}]?loop)\n"
            " same => n,Set(T1=${STRFTIME(,,%s.%6q)})\n"
            f" same => n,UserEvent(BenchLoop,Which: {name},T0: ${{T0}},T1: ${{T1}},"
            "Status: ${JABBER_STATUS}${S},AgiStatus: ${AGISTATUS})\n"
            " same => n,Hangup()\n\n"
        )
    text += ("exten => probe,1,Answer()\n"
             " same => n,UserEvent(BenchProbe,Status: ${JABBER_STATUS(bench,%s)})\n"
             " same => n,Hangup()\n" % probe_jid)
    return text


def xmpp_conf(world: World, password: str) -> str:
    # res_xmpp: STARTTLS, no certificate verification (it does none).
    return (
        "[general]\n"
        "debug = no\n"
        "autoregister = yes\n"
        "autoprune = no\n"
        "auth_policy = accept\n\n"
        "[bench]\n"
        "type = client\n"
        "serverhost = 127.0.0.1\n"
        f"port = {world.prosody.c2s_port}\n"
        f"username = {world.jid('resxmpp')}/asterisk\n"
        f"secret = {password}\n"
        "usetls = yes\n"
        "usesasl = yes\n"
        "status = available\n"
        "statusmessage = res_xmpp benchmark\n"
        f"buddy = {world.jid('alice')}\n"
        "timeout = 5\n"
    )


async def asterisk(world: World, opts: Options, log: Any, floor_server: Any) -> list[Row]:
    labmod = load_lab_module()
    if not labmod.lab_is_built():
        return [Row("asterisk", "lab", measured="skipped: no lab chroot (make lab)")]
    password = "resxmpp-bench-pw"
    world.prosody.register("resxmpp", password)
    alice = world.jid("alice")
    loops = {
        "agi-xmpp": f"AGI(agi://127.0.0.1:{world.agi_port}/jabber_status,{ACCOUNT},{alice})",
        FLOOR: f"AGI(agi://127.0.0.1:{floor_server.port}/jabber_status,{ACCOUNT},{alice})",
        **({"agi-xmpp-before": f"AGI(agi://127.0.0.1:{world.compare.port}/jabber_status,"
                                f"{ACCOUNT},{alice})"} if world.compare is not None else {}),
        "native": f"Set(S=${{JABBER_STATUS(bench,{alice})}})",
        "empty": "NoOp()",
    }
    lab = labmod.AsteriskLab(extensions_conf=dialplan(loops, opts.lab_calls, alice),
                             extra_configs={"xmpp.conf": xmpp_conf(world, password)},
                             verbose=0, lock_timeout=120)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, lab.start)
    try:
        # res_xmpp subscribes to alice (buddy + autoregister); alice's client approves, and its
        # presence then reaches res_xmpp. Wait until JABBER_STATUS sees it (3 = away).
        deadline = loop.time() + 30
        native_status = ""
        while loop.time() < deadline:
            lab.originate("probe", "bench", timeout=10)
            event = await lab.wait_user_event("BenchProbe", timeout=10)
            native_status = event.get("Status", "")
            if native_status == "3":
                break
            await asyncio.sleep(0.25)
        log(f"  lab up ({lab.version.splitlines()[0] if lab.version else '?'}); "
            f"res_xmpp sees alice as {native_status!r}")
        samples: dict[str, list[float]] = {name: [] for name in loops}
        servers = {"agi-xmpp": world.agi, FLOOR: floor_server}
        if world.compare is not None:
            servers["agi-xmpp-before"] = world.compare
        cpu: dict[str, list[float]] = {name: [] for name in servers}
        statuses: dict[str, str] = {}
        for rep in range(opts.lab_repeats):
            for name in loops:
                server = servers.get(name)
                c0 = server.cpu() if server else 0.0
                lab.originate(name, "bench", timeout=600)
                event = await lab.wait_user_event("BenchLoop", timeout=600, Which=name)
                if server:
                    cpu[name].append((server.cpu() - c0) / opts.lab_calls * 1e6)
                per_call = (float(event["T1"]) - float(event["T0"])) / opts.lab_calls * 1e3
                samples[name].append(per_call)
                statuses[name] = f"{event.get('Status', '')} {event.get('AgiStatus', '')}".strip()
                log(f"  rep {rep + 1} {name:<16} {per_call:.4f} ms/call "
                    f"status {statuses[name]!r}")
    finally:
        await loop.run_in_executor(None, lab.stop)
    per = {name: median(v) for name, v in samples.items()}
    floor_ms = per[FLOOR]
    rows = []
    labels = {"agi-xmpp": LABELS["agi-xmpp"], FLOOR: LABELS[FLOOR],
              "agi-xmpp-before": LABELS["agi-xmpp-before"],
              "native": "res_xmpp JABBER_STATUS", "empty": "empty dialplan loop"}
    for name in loops:
        ratio = per[name] / floor_ms if name in servers else None
        row = Row(f"asterisk {opts.lab_calls}× loop", labels[name],
                  cpu_us=median(cpu[name]) if name in cpu else None,
                  rate=1e3 / per[name] if per[name] else None, p50_ms=per[name], ratio=ratio,
                  measured=f"{per[name]:.4f} ms/call; {statuses.get(name, '')}",
                  extra={"ms_per_call": samples[name], "cpu_us": cpu.get(name)})
        if name == "agi-xmpp":
            row.target = f"≤ {LAB_TARGET}× floor"
            row.verdict = verdict(ratio is not None and ratio <= LAB_TARGET)
        rows.append(row)
    return rows
