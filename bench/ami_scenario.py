"""(6) The AMI side against the real Asterisk 22 lab: two latencies (docs/ami.md, issue 13).

- **MessageWaiting → chat**: real voicemails are left (a ``Local/`` channel plays a prompt into
  ``VoiceMail()``, one started every ``vm_interval`` s); the time runs from the moment the
  benchmark's own AMI connection sees ``MessageWaiting`` to the moment the mailbox owner's XMPP
  client has the notification (matched by the caller's number, unique per voicemail). Upload
  off. Target: p99 under 1 s.
- **presence → hint**: a chat user alternates dnd / available; the time runs from sending the
  presence to the ``ExtensionStatus`` event of hint ``2001@agi-xmpp-hints`` with the new state.
  Target: p99 under 200 ms.

agi-xmpp runs in its own process with an ``[ami]`` section (the lab's AMI), like ``World``'s
service; the benchmark's AMI client and XMPP peers share one event loop; times are
``time.monotonic()`` (uvloop's ``loop.time()`` moves in
1 ms steps).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from bench.lab_scenario import REPO, load_lab_module
from bench.peer import Peer
from bench.procs import Server, free_port, http_ok
from bench.results import Row, verdict
from bench.scenarios import Options
from bench.world import World, agi_xmpp_argv

SERVICE = "amisvc"
VM_CONTEXT = "bench"
MWI_TARGET_MS = 1000.0
HINT_TARGET_MS = 200.0

VOICEMAIL_CONF = f"""\
[general]
format = wav
maxsecs = 2
minsecs = 0
attach = no

[{VM_CONTEXT}]
2001 => 1234,Owner
"""

DIALPLAN = """\
[general]
static = yes
writeprotect = yes

[bench-vm]
exten => leave,1,Set(CALLERID(all)=Bench <${CIDNUM}>)
 same => n,VoiceMail(2001@bench,s)
 same => n,Hangup()
exten => speak,1,Answer()
 same => n,Playback(demo-congrats)
 same => n,Hangup()

"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


class TimedPeer(Peer):
    """A peer that keeps (arrival time, body) of each message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: list[tuple[float, str]] = []

    def _on_message(self, msg: Any) -> None:
        if msg["type"] != "error" and msg["body"]:
            self.arrivals.append((time.monotonic(), msg["body"]))
        super()._on_message(msg)


def timed_ami_client(labmod: Any) -> Any:
    class TimedAmi(labmod.AmiClient):
        """The lab's AMI client, stamping each event with the loop's clock on arrival."""

        async def _dispatch(self, msg: dict[str, str]) -> None:
            msg["_t"] = str(time.monotonic())  # uvloop's loop.time() has 1 ms steps
            await super()._dispatch(msg)

    return TimedAmi()


def service_config(world: World, lab: Any, owner: str, lamp: str) -> Any:
    agi_port, http_port = free_port(), free_port()
    path = world.write_config("agi-xmpp-ami", SERVICE, agi_port, http_port)
    spool = lab.path("/var/spool/asterisk/voicemail")
    with open(path, "a") as f:
        f.write(
            "\n[ami]\n"
            f"host = {lab.ami_host}\nport = {lab.ami_port}\n"
            f"username = {lab.ami_username}\nsecret = {lab.ami_secret}\n"
            f"voicemail_spool = {spool}\n"
            "presence_to_hints = yes\n"
            "\n[directory]\n"
            f"2001 = {owner}, mailbox=2001@{VM_CONTEXT}\n"
            f"2002 = {lamp}\n"
        )
    return path, agi_port, http_port


async def ami(world: World, opts: Options, log: Any) -> list[Row]:
    labmod = load_lab_module()
    if not labmod.lab_is_built():
        return [Row("ami", "lab", measured="skipped: no lab chroot (make lab)")]
    voicemails = 10 if opts.repeats == 1 else 50
    presence_changes = 40 if opts.repeats == 1 else 200
    hints = (REPO / "dialplan" / "agi-xmpp-hints.conf").read_text()
    lab = labmod.AsteriskLab(extensions_conf=DIALPLAN + hints,
                             extra_configs={"voicemail.conf": VOICEMAIL_CONF},
                             verbose=0, lock_timeout=300)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, lab.start)
    service: Server | None = None
    peers: list[Peer] = []
    ami_client = timed_ami_client(labmod)
    try:
        spool = lab.path(f"/var/spool/asterisk/voicemail/{VM_CONTEXT}")
        if spool.exists():
            import shutil
            shutil.rmtree(spool)
        for user in (SERVICE, "vmowner", "lamp"):
            world.passwords.setdefault(user, f"{user}-bench-pw")
            world.prosody.register(user, world.passwords[user])
        config, agi_port, http_port = service_config(world, lab, world.jid("vmowner"), world.jid("lamp"))
        service = Server("agi-xmpp-ami", agi_xmpp_argv(config), port=agi_port,
                         log_path=world.tmp / "agi-xmpp-ami.log", cpus=world.server_cpus,
                         ready=lambda: http_ok(f"http://127.0.0.1:{http_port}/health"))
        await loop.run_in_executor(None, lambda: service.start(timeout=60))  # type: ignore[union-attr]
        cafile, port = str(world.prosody.cert_path), world.prosody.c2s_port
        owner = TimedPeer(f"{world.jid('vmowner')}/bench", world.passwords["vmowner"], port=port, cafile=cafile)
        lamp = Peer(f"{world.jid('lamp')}/bench", world.passwords["lamp"], port=port, cafile=cafile)
        peers = [owner, lamp]
        await asyncio.gather(owner.connect(), lamp.connect())
        lamp.subscribe(world.jid(SERVICE))
        await ami_client.connect(lab.ami_host, lab.ami_port, lab.ami_username, lab.ami_secret)

        log(f"  {voicemails} voicemails, one every 1 s")
        mwi_ms = await _voicemail_latency(lab, ami_client, owner, voicemails, log)
        log(f"  {presence_changes} presence changes")
        hint_ms = await _hint_latency(ami_client, lamp, presence_changes)
    finally:
        for peer in peers:
            await peer.disconnect()
        await ami_client.close()
        if service is not None:
            service.stop()
        await loop.run_in_executor(None, lab.stop)
    rows = []
    for name, values, target in (("MessageWaiting → chat", mwi_ms, MWI_TARGET_MS),
                                 ("presence → hint state", hint_ms, HINT_TARGET_MS)):
        p50, p99 = percentile(values, 50), percentile(values, 99)
        rows.append(Row(f"ami {name}", "agi-xmpp", p50_ms=p50, p99_ms=p99,
                        measured=f"n={len(values)}, mean {statistics.fmean(values):.1f} ms" if values else "no samples",
                        target=f"p99 < {target:.0f} ms", verdict=verdict(bool(values) and p99 < target),
                        extra={"ms": values}))
    return rows


async def _voicemail_latency(lab: Any, ami_client: Any, owner: TimedPeer, count: int, log: Any) -> list[float]:
    loop = asyncio.get_running_loop()
    numbers = [f"55501{i:03d}" for i in range(count)]
    for number in numbers:
        await ami_client.action(
            "Originate", Channel="Local/leave@bench-vm", Context="bench-vm", Exten="speak",
            Priority="1", Async="true", Timeout="30000", Variable=f"CIDNUM={number}")
        await asyncio.sleep(1.0)
    latencies: list[float] = []
    deadline = loop.time() + 120
    for number in numbers:
        event = await ami_client.wait_event(
            lambda m, n=number: m.get("Event") == "MessageWaiting" and m.get("CallerIDNum") == n,
            max(1.0, deadline - loop.time()))
        while loop.time() < deadline:
            arrived = next((t for t, body in owner.arrivals if f"<{number}>" in body), None)
            if arrived is not None:
                latencies.append((arrived - float(event["_t"])) * 1e3)
                break
            await asyncio.sleep(0.05)
        else:
            log(f"  no chat for voicemail from {number}")
    return latencies


async def _hint_latency(ami_client: Any, lamp: Peer, count: int) -> list[float]:
    latencies: list[float] = []
    # settle: the service must see the subscription before presence counts
    for attempt in range(200):
        lamp.presence("dnd", "settling")
        try:
            await ami_client.wait_event(_hint_is("Busy"), 0.5)
            break
        except TimeoutError:
            continue
    for i in range(count):
        show, status = ("dnd", "Busy") if i % 2 else (None, "Idle")
        ami_client.clear_events()
        t0 = time.monotonic()
        lamp.presence(show, f"bench {i}")
        event = await ami_client.wait_event(_hint_is(status), 30)
        latencies.append((float(event["_t"]) - t0) * 1e3)
    return latencies


def _hint_is(status: str) -> Any:
    return lambda m: (m.get("Event") == "ExtensionStatus" and m.get("Exten") == "2002"
                      and m.get("Context") == "agi-xmpp-hints" and m.get("StatusText") == status)
