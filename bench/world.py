"""What every scenario runs against: a private Prosody, agi-xmpp in its own process, peers.

``World`` starts a ``LocalProsody`` in a temporary directory, registers the service account
(``asterisk``) and the people (``alice``: presence target; ``bob``: message peer; ``carol...``:
extra senders), writes an ``agi_xmpp.conf`` pointing at it and runs ``agi-xmpp --config FILE
serve`` (uvloop) as a subprocess, so ``/proc/PID/stat`` is the server's alone. Baseline servers
(floors, panoramisk) are started on demand with the command lines agi-xmpp itself sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.local_prosody import LocalProsody

from bench import loadgen
from bench.peer import Peer
from bench.procs import Server, free_port, http_get, http_ok

ACCOUNT = "asterisk"
COMPARE_ACCOUNT = "asterisk2"  # the XMPP user of the second agi-xmpp (--compare-src)
ALICE_SHOW, ALICE_STATUS = "away", "In a meeting until 3"
SENDERS = 10  # peers that send messages to jabber_receive waiters


def agi_xmpp_argv(config: Path, src: Path | None = None) -> list[str]:
    """The command that serves ``config``; with ``src``, from that tree's ``agi_xmpp``.

    ``src`` reaches the child through ``PYTHONPATH``. ``-P`` matters: ``python -m`` otherwise
    puts the working directory first on ``sys.path``, and from the repository root that is
    the working tree's ``agi_xmpp``, whatever ``PYTHONPATH`` says (which, until this was
    found, made every ``--compare-src`` run compare the working tree with itself).
    """
    exe = Path(sys.executable).with_name("agi-xmpp")
    if src is None and exe.exists():
        return [str(exe), "--config", str(config), "serve"]
    return [sys.executable, "-P", "-m", "agi_xmpp", "--config", str(config), "serve"]


def check_src(argv: list[str], src: Path, env: dict[str, str]) -> None:
    """Fail unless ``argv`` really imports ``agi_xmpp`` from ``src``."""
    probe = [argv[0], "-P", "-c", "import agi_xmpp; print(agi_xmpp.__file__)"]
    where = subprocess.run(probe, env={**os.environ, **env}, capture_output=True, text=True,
                           check=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(src.resolve()):
        raise RuntimeError(f"agi_xmpp from {src} was asked for, {where} would run")


class World:
    def __init__(self, workdir: Path | None = None, *, server_cpus: set[int] | None = None,
                 keep: bool = False, server_src: Path | None = None) -> None:
        self.tmp = Path(workdir or tempfile.mkdtemp(prefix="agi-xmpp-bench-"))
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.server_src = server_src  # another checkout's agi_xmpp (before/after comparisons)
        self.server_cpus = server_cpus
        self.prosody = LocalProsody(self.tmp / "prosody")
        self.passwords: dict[str, str] = {}
        self.agi: Server | None = None
        self.compare: Server | None = None
        self.compare_src: Path | None = None
        self.agi_port = free_port()
        self.http_port = free_port()
        self.peers: dict[str, Peer] = {}
        self.baselines: list[Server] = []
        self.lines_files: dict[str, Path] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    def start_prosody(self) -> None:
        self.prosody.start()
        for user in (ACCOUNT, COMPARE_ACCOUNT, "alice", "bob",
                     *(f"sender{i}" for i in range(SENDERS))):
            self.passwords[user] = secrets.token_hex(8)
            self.prosody.register(user, self.passwords[user])

    def jid(self, user: str) -> str:
        return f"{user}@{self.prosody.domain}"

    def write_config(self, name: str, user: str, agi_port: int, http_port: int) -> Path:
        state = self.tmp / f"state-{name}"
        state.mkdir(exist_ok=True)
        path = self.tmp / f"{name}.conf"
        path.write_text(
            "[general]\n"
            f"agi_bind = 127.0.0.1:{agi_port}\n"
            f"http_bind = 127.0.0.1:{http_port}\n"
            f"state_dir = {state}\n"
            f"database = sqlite:///{state}/agi-xmpp.sqlite3\n"
            f"default_account = {ACCOUNT}\n"
            "max_receive_timeout = 3600\n"
            "\n"
            f"[{ACCOUNT}]\n"  # the same section name, so every AGI() line works unchanged
            "type = client\n"
            "serverhost = 127.0.0.1\n"
            f"port = {self.prosody.c2s_port}\n"
            f"username = {self.jid(user)}\n"
            f"secret = {self.passwords[user]}\n"
            "usetls = yes\n"
            f"cafile = {self.prosody.cert_path}\n"
            "status = available\n"
            "statusmessage = agi-xmpp benchmark\n"
        )
        return path

    def _start_service(self, name: str, user: str, src: Path | None) -> Server:
        agi_port, http_port = free_port(), free_port()
        if name == "agi-xmpp":
            agi_port, http_port = self.agi_port, self.http_port
        config = self.write_config(name, user, agi_port, http_port)
        health = f"http://127.0.0.1:{http_port}/health"
        env = {"PYTHONPATH": str(src)} if src else None
        if src is not None:
            check_src(agi_xmpp_argv(config, src), src, env)  # type: ignore[arg-type]
        server = Server(name, agi_xmpp_argv(config, src), port=agi_port,
                        log_path=self.tmp / f"{name}.log", cpus=self.server_cpus,
                        ready=lambda: http_ok(health), env=env)
        return server.start(timeout=60)

    def start_agi_xmpp(self) -> Server:
        """The agi-xmpp under test (``server_src``, else the installed one)."""
        self.agi = self._start_service("agi-xmpp", ACCOUNT, self.server_src)
        return self.agi

    def start_compare(self, src: Path) -> Server:
        """A second agi-xmpp from another source tree (its own XMPP account, same section
        name), measured side by side with the first: before/after in one run."""
        self.compare_src = src
        self.compare = self._start_service("agi-xmpp-before", COMPARE_ACCOUNT, src)
        return self.compare

    async def start_peers(self) -> None:
        cafile = str(self.prosody.cert_path)
        port = self.prosody.c2s_port
        users = ["alice", "bob", *(f"sender{i}" for i in range(SENDERS))]
        for user in users:
            self.peers[user] = Peer(f"{self.jid(user)}/bench", self.passwords[user], port=port,
                                    cafile=cafile)
        await asyncio.gather(*(p.connect() for p in self.peers.values()))
        alice = self.peers["alice"]
        alice.subscribe(self.jid(ACCOUNT))  # the service approves and subscribes back
        if self.compare is not None:
            alice.subscribe(self.jid(COMPARE_ACCOUNT))
        alice.presence(ALICE_SHOW, ALICE_STATUS)
        await self.wait_status("alice", "3")
        if self.compare is not None:
            await self.wait_status("alice", "3", port=self.compare.port)

    async def wait_status(self, user: str, code: str, timeout: float = 15.0,
                          message: str | None = None, interval: float = 0.05,
                          port: int | None = None) -> loadgen.Session:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            session = await loadgen.run_once("127.0.0.1", port or self.agi_port, "jabber_status",
                                             (ACCOUNT, self.jid(user)))
            got = session.variables or {}
            if got.get("JABBER_STATUS") == code and (
                    message is None or got.get("JABBER_STATUS_MESSAGE") == message):
                return session
            if loop.time() > deadline:
                raise RuntimeError(f"{user} never reached status {code}: {got}")
            await asyncio.sleep(interval)

    async def call(self, script: str, *args: str, **kwargs: object) -> loadgen.Session:
        return await loadgen.run_once("127.0.0.1", self.agi_port, script, args, **kwargs)  # type: ignore[arg-type]

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for line in http_get(f"http://127.0.0.1:{self.http_port}/metrics").splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                try:
                    out[key] = float(value)
                except ValueError:
                    pass
        return out

    # -- baselines ------------------------------------------------------------------------------

    def lines_file(self, name: str, lines: list[bytes]) -> Path:
        path = self.tmp / f"lines-{name}.json"
        path.write_text(json.dumps([line.decode() for line in lines]))
        self.lines_files[name] = path
        return path

    def start_baseline(self, kind: str, lines_file: Path, script: str,
                       backlog: int = 100) -> Server:
        """``kind``: floor-streams, floor-protocol, floor-protocol-asyncio, panoramisk, ..."""
        port = free_port()
        py = sys.executable
        if kind == "floor-streams":
            argv = [py, "-m", "bench.floors", "streams", "--loop", "asyncio"]
        elif kind == "floor-protocol":
            argv = [py, "-m", "bench.floors", "protocol", "--loop", "uvloop"]
        elif kind == "floor-task":
            argv = [py, "-m", "bench.floors", "task", "--loop", "uvloop"]
        elif kind == "floor-protocol-asyncio":
            argv = [py, "-m", "bench.floors", "protocol", "--loop", "asyncio"]
        elif kind == "panoramisk":
            argv = [py, "-m", "bench.panoramisk_baseline", "--loop", "asyncio", "--script", script]
        elif kind == "panoramisk-uvloop":
            argv = [py, "-m", "bench.panoramisk_baseline", "--loop", "uvloop", "--script", script]
        else:
            raise ValueError(kind)
        argv += ["--port", str(port), "--lines", str(lines_file), "--backlog", str(backlog)]
        log_path = self.tmp / f"{kind}.log"
        # Ready when it says so: panoramisk's read loop spins forever on a peer that connects
        # and closes without an environment block, so no probing connection may touch it.
        server = Server(kind, argv, port=port, log_path=log_path, cpus=self.server_cpus,
                        ready=lambda: log_path.exists() and b"ready" in log_path.read_bytes(),
                        env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        server.start()
        self.baselines.append(server)
        return server

    async def close(self) -> None:
        for peer in self.peers.values():
            await peer.disconnect()
        for server in self.baselines:
            server.stop()
        for service in (self.agi, self.compare):
            if service is not None:
                service.stop()
        self.prosody.stop()
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
