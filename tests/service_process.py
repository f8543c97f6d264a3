"""Run the real ``agi-xmpp serve`` as a subprocess, kill it, and start it again on the same state.

``ServiceProcess`` writes an ``agi_xmpp.conf`` (one account on a ``LocalProsody``, verified with
its certificate; SQLite in the work directory; free FastAGI and HTTP ports picked once, so a
restart listens where the old process did), starts the service, and waits for ``/health``::

    service = ServiceProcess(tmp_path, prosody, jid, password, keepalive_interval=2)
    await service.start()                 # waits for /health 200 (every account online)
    result = await service.call("jabber_send", "asterisk", bob, "hi")
    service.kill()                        # SIGKILL: no shutdown code runs
    await service.start(wait_online=False)  # same config, same database

Everything the service logs (stderr and stdout) is appended to ``service.log`` in the work
directory, across restarts; ``log_text()`` reads it.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
from fake_asterisk import CallResult, agi_call

from agi_xmpp.state_files import TOKEN_FILE, read_token
from tools.local_prosody import LocalProsody

SERVICE_BIN = Path(sys.executable).with_name("agi-xmpp")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServiceProcessError(RuntimeError):
    """The service exited, or did not answer in time; the message carries its log tail."""


class ServiceProcess:
    """One ``agi-xmpp serve`` process (and its later incarnations) on a fixed config and state."""

    def __init__(
        self,
        workdir: Path,
        server: LocalProsody,
        jid: str,
        password: str,
        *,
        account: str = "asterisk",
        log_level: str = "info",
        keepalive_interval: int | None = None,
        reconnect_max_delay: int | None = None,
        tls_verify: bool = True,
        cafile: bool = True,
        host: str = "127.0.0.1",
        http_token: str | None = None,
        extra_general: str = "",
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.server = server
        self.jid = jid
        self.password = password
        self.account = account
        self.host = host
        self.http_token = http_token
        self.agi_port = free_port(host)
        self.http_port = free_port(host)
        self.config_path = self.workdir / "agi_xmpp.conf"
        self.log_path = self.workdir / "service.log"
        self.db_path = self.workdir / "state" / "agi-xmpp.sqlite3"
        general = [
            "[general]",
            f"agi_bind = {host}:{self.agi_port}",
            f"http_bind = {host}:{self.http_port}",
            f"state_dir = {self.workdir / 'state'}",
            f"log_level = {log_level}",
            "log_format = json",
            f"default_account = {account}",
        ]
        if keepalive_interval is not None:
            general.append(f"keepalive_interval = {keepalive_interval}")
        if reconnect_max_delay is not None:
            general.append(f"reconnect_max_delay = {reconnect_max_delay}")
        if http_token is not None:
            general.append(f"http_token = {http_token}")
        if extra_general:
            general.append(extra_general)
        section = [
            f"[{account}]",
            f"username = {jid}",
            f"secret = {password.replace(';', chr(92) + ';')}",
            f"serverhost = {server.host}",
            f"port = {server.c2s_port}",
            f"tls_verify = {'yes' if tls_verify else 'no'}",
        ]
        if cafile:
            section.append(f"cafile = {server.cert_path}")
        (self.workdir / "state").mkdir(exist_ok=True)
        self.config_path.write_text("\n".join(general) + "\n\n" + "\n".join(section) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = f"pid {self.proc.pid}" if self.running else "not running"
        return f"<ServiceProcess agi={self.agi_port} http={self.http_port} {state}>"

    # -- process control ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self, *, wait_online: bool = True, timeout: float = 60.0) -> None:
        """Start the service; wait for ``/health`` to answer 200 (or any answer, without
        ``wait_online``: the XMPP server may be down on purpose)."""
        if self.running:
            raise ServiceProcessError("already running")
        self._spawn()
        await self.wait_health(200 if wait_online else None, timeout)

    def _spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(SERVICE_BIN), "--config", str(self.config_path), "serve"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL, as in a crash or the OOM killer: no shutdown code runs."""
        self._signal_and_reap(signal.SIGKILL, 10.0)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (what systemd sends) and wait for a clean exit; returns the exit status."""
        return self._signal_and_reap(signal.SIGTERM, timeout)

    def _signal_and_reap(self, sig: int, timeout: float) -> int:
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise ServiceProcessError(f"no exit within {timeout:g} s of signal {sig}\n" + self.log_tail()) from None
        self.proc = None
        return proc.returncode

    async def close(self) -> None:
        """Test teardown: stop whatever still runs."""
        if self.running:
            self.kill()

    # -- talking to it ------------------------------------------------------------------------

    async def health(self) -> tuple[int, dict] | None:
        """``(status, json)`` of ``GET /health`` (with the token if one is configured), or
        None when nothing answers."""
        return await self.http("GET", "/health", token=self.http_token)

    @property
    def api_token(self) -> str:
        """The token the service wrote in its state directory (what the CLI reads)."""
        return read_token(self.workdir / "state")

    async def http(self, method: str, path: str, *, token: str | None | object = "auto",
                   json: object = None) -> tuple[int, dict] | None:
        """One request to the HTTP API: ``(status, json)``, or None when nothing answers.

        ``token="auto"`` sends the service's own token (once it has written it); None sends none."""
        if token == "auto":
            token = self.http_token or (self.api_token if (self.workdir / "state" / TOKEN_FILE).exists() else None)
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        url = f"http://{self.host}:{self.http_port}{path}"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
                http.request(method, url, headers=headers, json=json) as response,
            ):
                return response.status, await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ConnectionError):
            return None

    async def wait_health(self, status: int | None = 200, timeout: float = 60.0) -> float:
        """Poll ``/health`` until it answers (with ``status`` if given); returns seconds waited."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServiceProcessError(
                    f"the service exited with status {self.proc.returncode}\n" + self.log_tail()
                )
            answer = await self.health()
            if answer is not None and (status is None or answer[0] == status):
                return loop.time() - started
            if loop.time() - started > timeout:
                raise ServiceProcessError(
                    f"/health did not answer {status or 'at all'} within {timeout:g} s "
                    f"(last: {answer})\n" + self.log_tail()
                )
            await asyncio.sleep(0.05)

    async def call(self, script: str, *args: str, **kwargs: object) -> CallResult:
        """One FastAGI call, as Asterisk makes it."""
        kwargs.setdefault("host", self.host)
        return await agi_call(self.agi_port, script, *args, **kwargs)  # type: ignore[arg-type]

    def outbox_states(self) -> dict[str, int]:
        """Rows per outbox state, read straight from the database file (the service may be dead)."""
        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5) as db:
            return dict(db.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())

    # -- its log ------------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

