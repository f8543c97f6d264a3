"""Run a private Prosody for ``make run`` and the integration tests (a development tool).

It lives in ``tools/``, outside the installed ``agi_xmpp`` package: the service never starts an
XMPP server of its own. The tests import it as ``tools.local_prosody``; ``tools/demo.py``
uses it for ``make run``.

``LocalProsody(workdir)`` writes everything it needs into ``workdir``: the config
(``prosody.cfg.lua``), a self-signed certificate for the domain and its two components
(``certs/``), the data directory, the pidfile and the log. Prosody listens on 127.0.0.1 only,
on ports picked once (at construction) and then kept, so ``restart()`` after ``kill()`` brings the
same server back on the same ports with the same accounts. Nothing here runs at import time.

What the generated server offers (Prosody 0.12):

- c2s with STARTTLS required, SCRAM (``internal_hashed``), no in-band registration, no s2s;
- ``conference.<domain>``: a MUC service where anyone may create a room (rooms are not locked
  until configured, so a second occupant can join at once);
- ``upload.<domain>``: XEP-0363 ``http_file_share`` served over plain HTTP on 127.0.0.1;
- no ``mam`` (it slows throughput a lot) and no ``limits`` (Debian's stock 10 kb/s c2s limit
  throttles tests) unless asked for.

``ensure_demo(state_dir)`` keeps a long-lived instance on fixed ports for ``make run`` and
returns the service account a config needs; ``python -m tools.local_prosody demo STATE_DIR``
does the same from a shell.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import quoteattr

__all__ = [
    "DEMO_C2S_PORT",
    "DEMO_HTTP_PORT",
    "DemoServer",
    "LocalProsody",
    "LocalProsodyError",
    "ensure_demo",
    "stop_demo",
]

DEFAULT_MODULES: tuple[str, ...] = (
    "roster", "saslauth", "tls", "disco", "ping", "register", "smacks", "carbons", "pep",
    "blocklist", "vcard_legacy", "version", "uptime", "time",
)
DEMO_C2S_PORT = 15222
DEMO_HTTP_PORT = 15280
LOOPBACK = "127.0.0.1"

# Prosody's own default for SCRAM; accounts written by the fast path use the same.
_ITERATION_COUNT = 10000
# Names and passwords the fast path can store exactly as Prosody would (nodeprep/SASLprep are
# the identity on these); anything else goes through prosodyctl.
_FAST_USER = re.compile(r"^[a-z0-9._-]{1,1023}$")
_FAST_PASSWORD = re.compile(r"^[\x20-\x7e]{1,1023}$")


class LocalProsodyError(RuntimeError):
    """The private Prosody could not be started, stopped or given an account."""


def _lua_str(value: str | os.PathLike[str]) -> str:
    """A Lua string literal for ``value`` (any bytes, safely escaped)."""
    out = ['"']
    for byte in os.fsencode(value) if isinstance(value, os.PathLike) else str(value).encode():
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= byte < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{byte:03d}")
    out.append('"')
    return "".join(out)


def _datamanager_encode(text: str) -> str:
    """Prosody's ``util.datamanager`` path encoding: every non-alphanumeric byte as ``%xx``."""
    return "".join(
        chr(b) if chr(b).isascii() and chr(b).isalnum() else f"%{b:02x}" for b in text.encode()
    )


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on the loopback (all held open while choosing)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def _tcp_accepts(port: int, timeout: float = 0.25) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def _c2s_answers(port: int, domain: str, timeout: float = 0.5) -> bool:
    """True when the server on ``port`` serves ``domain`` (opens a stream, offers STARTTLS)."""
    header = (
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
        f"xmlns:stream='http://etherx.jabber.org/streams' to={quoteattr(domain)} version='1.0'>"
    )
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
            s.sendall(header.encode())
            buf = b""
            deadline = time.monotonic() + timeout
            while b"</stream:features>" not in buf and b"stream:error" not in buf:
                if time.monotonic() > deadline:
                    return False
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
            ok = b"urn:ietf:params:xml:ns:xmpp-tls" in buf and b"stream:error" not in buf
            # Close the stream and wait until the server has closed its side: a session still
            # open at SIGTERM makes Prosody's shutdown wait for it (about a second).
            try:
                s.sendall(b"</stream:stream>")
                s.shutdown(socket.SHUT_WR)
                while time.monotonic() < deadline + timeout and s.recv(4096):
                    pass
            except OSError:
                pass
            return ok
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rfind(b")") + 2:][:1] != b"Z"
    except OSError:
        return True


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [os.fsdecode(a) for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _pids_running_config(config_path: Path) -> list[int]:
    """Processes whose command line is a Prosody started with ``--config config_path``."""
    wanted = str(config_path)
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        argv = _cmdline(int(entry))
        if wanted in argv and any("prosody" in a for a in argv[:3]):
            found.append(int(entry))
    return found


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.01)
    return not _pid_alive(pid)


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort only
        pass


def _reap(proc: subprocess.Popen[bytes] | None) -> None:
    """Finaliser: never leave a test Prosody behind when its owner is collected or exits."""
    if proc is not None and proc.poll() is None:
        try:
            proc.kill()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass


class LocalProsody:
    """A private Prosody 0.12 in ``workdir`` on loopback ports of its own.

    >>> with LocalProsody(tmp_path) as server:           # doctest: +SKIP
    ...     jid = server.register("alice", "secret")       # 'alice@localhost'
    ...     # connect to 127.0.0.1:server.c2s_port, verify TLS with cafile=server.cert_path
    """

    def __init__(
        self,
        workdir: Path | str,
        domain: str = "localhost",
        *,
        c2s_port: int | None = None,
        http_port: int | None = None,
        limits: bool = False,
        mam: bool = False,
        log_level: str = "info",
        extra_config: str = "",
        start_timeout: float = 10.0,
        detach: bool = False,
    ) -> None:
        """Prepare (but do not start) a server.

        ``extra_config`` is Lua appended to the global section (e.g.
        ``"smacks_hibernation_time = 30"``). ``detach=True`` starts Prosody in its own session
        so it outlives this Python process (for ``make run``); otherwise it is killed when the
        owner goes away.
        """
        self.workdir = Path(workdir).resolve()
        self.domain = domain.lower().rstrip(".")
        if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", self.domain):
            raise ValueError(f"unsupported domain for a local Prosody: {domain!r}")
        if c2s_port is None or http_port is None:
            picked = iter(_free_ports(2))
            c2s_port = c2s_port or next(picked)
            http_port = http_port or next(picked)
        if c2s_port == http_port:
            raise ValueError("c2s_port and http_port must differ")
        self._c2s_port = int(c2s_port)
        self._http_port = int(http_port)
        self.limits = limits
        self.mam = mam
        self.log_level = log_level
        self.extra_config = extra_config
        self.start_timeout = start_timeout
        self.detach = detach
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None  # set for an adopted (not spawned by us) process too
        self._paused = False
        self._finalizer: weakref.finalize | None = None

    # -- paths and addresses ------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.workdir / "prosody.cfg.lua"

    @property
    def data_path(self) -> Path:
        return self.workdir / "data"

    @property
    def pidfile(self) -> Path:
        return self.workdir / "prosody.pid"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prosody.log"

    @property
    def console_log_path(self) -> Path:
        """Prosody's stdout/stderr (errors from before its log is set up land here)."""
        return self.workdir / "prosody.console.log"

    @property
    def cert_path(self) -> Path:
        """The self-signed certificate (PEM); clients verify the server with it as ``cafile``."""
        return self.workdir / "certs" / f"{self.domain}.crt"

    @property
    def key_path(self) -> Path:
        return self.workdir / "certs" / f"{self.domain}.key"

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def c2s_port(self) -> int:
        return self._c2s_port

    @property
    def http_port(self) -> int:
        return self._http_port

    @property
    def muc_domain(self) -> str:
        return f"conference.{self.domain}"

    @property
    def upload_domain(self) -> str:
        return f"upload.{self.domain}"

    @property
    def pid(self) -> int | None:
        return self._pid if self.is_running else None

    @property
    def is_running(self) -> bool:
        """True while the Prosody process lives (also while paused)."""
        if self._proc is not None:
            return self._proc.poll() is None
        return self._pid is not None and _pid_alive(self._pid)

    @property
    def is_paused(self) -> bool:
        return self._paused and self.is_running

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return (
            f"<LocalProsody {self.domain} c2s={LOOPBACK}:{self.c2s_port} "
            f"http={self.http_port} {state} in {self.workdir}>"
        )

    # -- files --------------------------------------------------------------------------------

    def ports_and_paths(self) -> list[str]:
        """The global settings that make a Prosody ours: root allowed, foreground, our files,
        and only our loopback ports (every other listener off). Shared with the stock-config
        runner in the tests, which changes nothing else of Debian's file."""
        return [
            "run_as_root = true",
            "daemonize = false",
            f"pidfile = {_lua_str(self.pidfile)}",
            f"data_path = {_lua_str(self.data_path)}",
            f'interfaces = {{ "{LOOPBACK}" }}',
            f'local_interfaces = {{ "{LOOPBACK}" }}',
            f"c2s_ports = {{ {self.c2s_port} }}",
            "c2s_direct_tls_ports = { }",
            "legacy_ssl_ports = { }",
            "s2s_ports = { }",
            "component_ports = { }",
            f"http_ports = {{ {self.http_port} }}",
            f'http_interfaces = {{ "{LOOPBACK}" }}',
            "https_ports = { }",
            "https_interfaces = { }",
        ]

    def render_config(self) -> str:
        """The Prosody config this instance runs with (pure: no files touched)."""
        modules = list(DEFAULT_MODULES)
        if self.mam:
            modules.append("mam")
        if self.limits:
            modules.append("limits")
        mods = ", ".join(_lua_str(m) for m in modules)
        lines = [
            "-- Generated by tools/local_prosody.py; rewritten on every start.",
            *self.ports_and_paths(),
            "admins = { }",
            f"http_default_host = {_lua_str(self.upload_domain)}",
            f"modules_enabled = {{ {mods} }}",
            'modules_disabled = { "s2s" }',
            "c2s_require_encryption = true",
            "s2s_require_encryption = true",
            "allow_registration = false",
            'authentication = "internal_hashed"',
            'storage = "internal"',
            f"certificates = {_lua_str(self.cert_path.parent)}",
            f"ssl = {{ certificate = {_lua_str(self.cert_path)}; key = {_lua_str(self.key_path)}; }}",
            "log = {",
            f"  {{ levels = {{ min = {_lua_str(self.log_level)} }}, to = \"file\", "
            f"filename = {_lua_str(self.log_path)} }};",
            "}",
        ]
        if self.limits:  # Debian's stock values
            lines.append('limits = { c2s = { rate = "10kb/s"; }; s2sin = { rate = "30kb/s"; }; }')
        if self.extra_config:
            lines.append(self.extra_config)
        lines += [
            "",
            f"VirtualHost {_lua_str(self.domain)}",
            "",
            f"Component {_lua_str(self.muc_domain)} \"muc\"",
            "  restrict_room_creation = false",
            "  muc_room_locking = false",
            "",
            f"Component {_lua_str(self.upload_domain)} \"http_file_share\"",
            f"  http_external_url = {_lua_str(f'http://{LOOPBACK}:{self.http_port}/')}",
            "",
        ]
        return "\n".join(lines)

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_path.mkdir(exist_ok=True)
        self._ensure_certificate()
        _atomic_write(self.config_path, self.render_config().encode())
        return self.config_path

    def _ensure_certificate(self) -> None:
        if self.cert_path.is_file() and self.key_path.is_file():
            return
        openssl = shutil.which("openssl")
        if not openssl:
            raise LocalProsodyError("openssl is not installed (apt-get install -y openssl)")
        certs = self.cert_path.parent
        certs.mkdir(parents=True, exist_ok=True)
        names = [self.domain, self.muc_domain, self.upload_domain]
        san = ", ".join(f"DNS:{n}" for n in names) + f", IP:{LOOPBACK}"
        cnf = certs / "openssl.cnf"
        cnf.write_text(
            "[req]\ndistinguished_name = dn\nx509_extensions = v3\nprompt = no\n"
            f"[dn]\nCN = {self.domain}\nO = agi-xmpp local test server\n"
            "[v3]\nbasicConstraints = critical, CA:TRUE\n"
            "keyUsage = critical, digitalSignature, keyEncipherment, keyCertSign\n"
            "extendedKeyUsage = serverAuth\nsubjectKeyIdentifier = hash\n"
            "authorityKeyIdentifier = keyid:always\n"
            f"subjectAltName = {san}\n"
        )
        tmp_crt, tmp_key = certs / "new.crt", certs / "new.key"
        cmd = [
            openssl, "req", "-x509", "-config", str(cnf), "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650",
            "-keyout", str(tmp_key), "-out", str(tmp_crt),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise LocalProsodyError(f"openssl failed: {res.stderr.strip()}")
        os.chmod(tmp_key, 0o600)
        os.replace(tmp_key, self.key_path)
        os.replace(tmp_crt, self.cert_path)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the log and of Prosody's console output, for error messages."""
        parts = []
        for path in (self.console_log_path, self.log_path):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            if text:
                parts.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(parts) or "(no log output)"

    # -- process control ----------------------------------------------------------------------

    def start(self) -> None:
        """Launch Prosody in the foreground and wait until it serves c2s (and HTTP).

        A Prosody left over from a crashed run on this workdir is killed first. Raises
        ``LocalProsodyError`` with the tail of the log if it exits or is not ready within
        ``start_timeout`` seconds.
        """
        if self.is_running:
            if self._paused:
                self.resume()
            return
        prosody = shutil.which("prosody")
        if not prosody:
            raise LocalProsodyError("prosody is not installed (apt-get install -y prosody)")
        self.kill_leftovers()
        for port in (self.c2s_port, self.http_port):
            if not _port_is_free(port):
                raise LocalProsodyError(
                    f"port {LOOPBACK}:{port} is already in use by another program; "
                    "choose other ports for this LocalProsody"
                )
        self.write_config()
        self._truncate_logs()
        console = open(self.console_log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen(
                [prosody, "-F", "--config", str(self.config_path)],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=None if self.detach or not _in_main_thread() else _set_pdeathsig,
            )
        finally:
            console.close()
        self._pid = self._proc.pid
        self._paused = False
        if not self.detach:
            if self._finalizer is not None:
                self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _reap, self._proc)
        try:
            self._wait_ready()
        except BaseException:
            self._force_kill()
            raise

    def _truncate_logs(self) -> None:
        """Keep one generation of logs: the previous run's moves to ``*.1``."""
        for path in (self.log_path, self.console_log_path):
            if path.exists() and path.stat().st_size > 0:
                os.replace(path, path.with_name(path.name + ".1"))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        delay = 0.005
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise LocalProsodyError(
                    f"prosody exited with status {self._proc.returncode} during start-up\n"
                    + self.log_tail()
                )
            if self._bind_failed():
                raise LocalProsodyError(
                    "prosody could not open its ports\n" + self.log_tail()
                )
            if _c2s_answers(self.c2s_port, self.domain) and _tcp_accepts(self.http_port):
                return
            if time.monotonic() > deadline:
                raise LocalProsodyError(
                    f"prosody did not serve c2s on {LOOPBACK}:{self.c2s_port} within "
                    f"{self.start_timeout:g} s\n" + self.log_tail()
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _bind_failed(self) -> bool:
        try:
            return "Failed to open server port" in self.log_path.read_text(errors="replace")
        except OSError:
            return False

    def kill_leftovers(self) -> list[int]:
        """SIGKILL any Prosody still running on this workdir's config (pidfile and /proc scan)."""
        pids: set[int] = set(_pids_running_config(self.config_path))
        try:
            pid = int(self.pidfile.read_text().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        if pid and pid != os.getpid() and str(self.config_path) in _cmdline(pid):
            pids.add(pid)
        if self._proc is not None and self._proc.poll() is None:
            pids.discard(self._proc.pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            _wait_dead(pid, 5.0)
        return sorted(pids)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM and wait for a clean shutdown (SIGKILL after ``timeout`` seconds)."""
        if not self.is_running:
            self._forget()
            return
        pid = self._pid
        assert pid is not None
        try:
            has_pidfile = int(self.pidfile.read_text().strip() or 0) == pid
        except (OSError, ValueError):
            has_pidfile = False
        try:
            os.kill(pid, signal.SIGTERM)
            if self._paused:
                os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        if not self._wait_after_term(timeout, shortcut=has_pidfile):
            self._force_kill()
        self._forget()

    def _wait_after_term(self, timeout: float, *, shortcut: bool) -> bool:
        """Wait for exit after SIGTERM.

        Prosody removes its pidfile once shutdown clean-up is done (data saved), but if a
        connection was still closing it then idles up to a second in its event loop before
        exiting. Once the pidfile is gone, SIGKILL loses nothing and saves that second.
        """
        deadline = time.monotonic() + timeout
        cleaned_since: float | None = None
        while time.monotonic() < deadline:
            if self._wait(0.02):
                return True
            if shortcut and not self.pidfile.exists():
                now = time.monotonic()
                cleaned_since = cleaned_since or now
                if now - cleaned_since > 0.05:
                    self._force_kill()
                    return True
        return False

    def kill(self) -> None:
        """SIGKILL, as in a crash: no clean shutdown, the pidfile stays behind."""
        self._force_kill()
        self._forget()

    def restart(self) -> None:
        """Start again on the same ports and data (stopping first if still running)."""
        if self.is_running:
            self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the server hangs (TCP still accepts, nothing answers)."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        self._signal(signal.SIGCONT)
        self._paused = False

    def _signal(self, sig: int) -> None:
        if not self.is_running or self._pid is None:
            raise LocalProsodyError("prosody is not running")
        os.kill(self._pid, sig)

    def _wait(self, timeout: float) -> bool:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        return self._pid is None or _wait_dead(self._pid, timeout)

    def _force_kill(self) -> None:
        if self._pid is not None and self.is_running:
            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._wait(5.0)

    def _forget(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._proc = None
        self._pid = None
        self._paused = False

    def adopt_running(self) -> bool:
        """Take over a Prosody already running this workdir's config and serving our ports.

        Used by ``ensure_demo`` so repeated ``make run`` reuse one server. True when adopted.
        """
        if self.is_running:
            return True
        try:
            pid = int(self.pidfile.read_text().strip() or 0)
        except (OSError, ValueError):
            return False
        if not pid or not _pid_alive(pid) or str(self.config_path) not in _cmdline(pid):
            return False
        if not _c2s_answers(self.c2s_port, self.domain):
            return False
        self._pid, self._proc, self._paused = pid, None, False
        return True

    def __enter__(self) -> LocalProsody:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- accounts -----------------------------------------------------------------------------

    def register(self, user: str, password: str) -> str:
        """Create (or reset the password of) ``user@domain``; returns the bare JID.

        Works whether or not the server runs. Plain ASCII names and passwords are written
        straight into Prosody's account store (SCRAM-SHA-1, exactly what ``prosodyctl`` would
        store, in microseconds); anything else goes through ``prosodyctl register``.
        """
        local, _, dom = user.partition("@")
        if dom and dom.lower() != self.domain:
            raise ValueError(f"{user!r} is not on {self.domain}")
        if not local or not password:
            raise ValueError("user and password must not be empty")
        if _FAST_USER.match(local.lower()) and _FAST_PASSWORD.match(password):
            local = local.lower()
            self._write_account(local, password)
        else:
            self._prosodyctl("register", local, self.domain, password)
            local = local.lower()
        return f"{local}@{self.domain}"

    def _write_account(self, local: str, password: str) -> None:
        salt = str(uuid.uuid4())
        salted = hashlib.pbkdf2_hmac("sha1", password.encode(), salt.encode(), _ITERATION_COUNT)
        stored_key = hashlib.sha1(hmac.digest(salted, b"Client Key", "sha1")).hexdigest()
        server_key = hmac.digest(salted, b"Server Key", "sha1").hex()
        record = (
            "return {\n"
            f'\t["iteration_count"] = {_ITERATION_COUNT};\n'
            f'\t["salt"] = {_lua_str(salt)};\n'
            f'\t["server_key"] = {_lua_str(server_key)};\n'
            f'\t["stored_key"] = {_lua_str(stored_key)};\n'
            "};\n"
        )
        folder = self.data_path / _datamanager_encode(self.domain) / "accounts"
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / f"{_datamanager_encode(local)}.dat", record.encode())

    def _prosodyctl(self, *args: str) -> str:
        prosodyctl = shutil.which("prosodyctl")
        if not prosodyctl:
            raise LocalProsodyError("prosodyctl is not installed (apt-get install -y prosody)")
        if not self.config_path.exists():
            self.write_config()
        res = subprocess.run(
            [prosodyctl, "--config", str(self.config_path), *args],
            capture_output=True, text=True, check=False, cwd=self.workdir,
            stdin=subprocess.DEVNULL,
        )
        if res.returncode != 0:
            out = (res.stdout + res.stderr).strip()
            raise LocalProsodyError(f"prosodyctl {args[0]} failed ({res.returncode}): {out}")
        return res.stdout


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# -- the demo server for `make run` ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DemoServer:
    """What a config needs to use the demo server, for its service account."""

    jid: str
    password: str
    host: str
    port: int
    cafile: Path
    domain: str
    muc_domain: str
    upload_domain: str
    http_port: int
    users: dict[str, tuple[str, str]]  # "alice" -> ("alice@localhost", password)
    accounts_file: Path
    prosody: LocalProsody = dataclasses.field(repr=False, compare=False)

    def account_conf(self, section: str = "demo") -> str:
        """An ``agi_xmpp.conf`` account section (res_xmpp keys) for the service account."""
        return (
            f"[{section}]\n"
            "type = client\n"
            f"serverhost = {self.host}\n"
            f"port = {self.port}\n"
            f"username = {self.jid}\n"
            f"secret = {self.password}\n"
            "usetls = yes\n"
            "usesasl = yes\n"
            "tls_verify = yes\n"
            f"cafile = {self.cafile}\n"
            "status = available\n"
            "statusmessage = agi-xmpp demo\n"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "jid": self.jid, "password": self.password, "host": self.host, "port": self.port,
            "cafile": str(self.cafile), "domain": self.domain, "muc_domain": self.muc_domain,
            "upload_domain": self.upload_domain, "http_port": self.http_port,
            "users": {k: {"jid": j, "password": p} for k, (j, p) in self.users.items()},
            "accounts_file": str(self.accounts_file),
        }


_DEMO_SERVICE = "asterisk"
_DEMO_USERS = ("alice", "bob")


def _demo_prosody(state_dir: Path | str, c2s_port: int, http_port: int,
                  domain: str) -> LocalProsody:
    return LocalProsody(
        Path(state_dir) / "prosody", domain, c2s_port=c2s_port, http_port=http_port,
        detach=True,
    )


def ensure_demo(
    state_dir: Path | str,
    *,
    c2s_port: int = DEMO_C2S_PORT,
    http_port: int = DEMO_HTTP_PORT,
    domain: str = "localhost",
) -> DemoServer:
    """Make sure the demo Prosody under ``state_dir/prosody`` runs; return its service account.

    The server is started detached (it outlives this process, so repeated ``make run`` reuse
    it; ``stop_demo`` ends it) on fixed non-standard ports so a generated config stays valid.
    Accounts ``asterisk``, ``alice`` and ``bob`` get passwords generated once and kept in
    ``state_dir/prosody/demo-accounts.json`` (mode 0600).
    """
    server = _demo_prosody(state_dir, c2s_port, http_port, domain)
    server.workdir.mkdir(parents=True, exist_ok=True)
    # Private whatever the umask: the demo's passwords and Prosody's account files live here
    # (the state directory itself is made 0700 by the service, state_files.ensure_private_dir).
    os.chmod(server.workdir, 0o700)
    if server.adopt_running():
        current = server.config_path.read_bytes() if server.config_path.exists() else b""
        if current != server.render_config().encode():
            server.stop()  # the generated config changed: restart on the new one
    if not server.is_running:
        server.start()
    accounts_file = server.workdir / "demo-accounts.json"
    try:
        saved = json.loads(accounts_file.read_text())
    except (OSError, ValueError):
        saved = {}
    passwords: dict[str, str] = saved.get("passwords", {}) if isinstance(saved, dict) else {}
    changed = False
    for name in (_DEMO_SERVICE, *_DEMO_USERS):
        if not isinstance(passwords.get(name), str) or not passwords[name]:
            passwords[name] = secrets.token_urlsafe(12)
            changed = True
    for name in (_DEMO_SERVICE, *_DEMO_USERS):  # idempotent: rewrites the same account
        server.register(name, passwords[name])
    if changed or saved.get("domain") != server.domain:
        payload = {
            "domain": server.domain,
            "passwords": passwords,
            "jids": {n: f"{n}@{server.domain}" for n in passwords},
        }
        fd = os.open(accounts_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
            f.write("\n")
    os.chmod(accounts_file, 0o600)  # O_CREAT's mode does not apply to an existing file
    return DemoServer(
        jid=f"{_DEMO_SERVICE}@{server.domain}",
        password=passwords[_DEMO_SERVICE],
        host=server.host,
        port=server.c2s_port,
        cafile=server.cert_path,
        domain=server.domain,
        muc_domain=server.muc_domain,
        upload_domain=server.upload_domain,
        http_port=server.http_port,
        users={n: (f"{n}@{server.domain}", passwords[n]) for n in _DEMO_USERS},
        accounts_file=accounts_file,
        prosody=server,
    )


def stop_demo(
    state_dir: Path | str,
    *,
    c2s_port: int = DEMO_C2S_PORT,
    http_port: int = DEMO_HTTP_PORT,
    domain: str = "localhost",
) -> bool:
    """Stop the demo Prosody if it runs; True when one was stopped. Data and accounts stay."""
    server = _demo_prosody(state_dir, c2s_port, http_port, domain)
    if server.adopt_running():
        server.stop()
        return True
    return bool(server.kill_leftovers())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tools.local_prosody demo|stop-demo STATE_DIR``."""
    parser = argparse.ArgumentParser(prog="python -m tools.local_prosody")
    parser.add_argument("command", choices=["demo", "stop-demo"])
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("--c2s-port", type=int, default=DEMO_C2S_PORT)
    parser.add_argument("--http-port", type=int, default=DEMO_HTTP_PORT)
    parser.add_argument("--format", choices=["json", "conf"], default="json",
                        help="demo: print the service account as JSON or as a config section")
    args = parser.parse_args(argv)
    try:
        if args.command == "stop-demo":
            stopped = stop_demo(args.state_dir, c2s_port=args.c2s_port, http_port=args.http_port)
            print("stopped" if stopped else "not running")
            return 0
        demo = ensure_demo(args.state_dir, c2s_port=args.c2s_port, http_port=args.http_port)
    except LocalProsodyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.format == "conf":
        print(demo.account_conf(), end="")
    else:
        print(json.dumps(demo.as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
