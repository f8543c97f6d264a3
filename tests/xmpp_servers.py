"""The XMPP servers people actually run, for the delivery tests: Debian's ejabberd and Prosody.

- ``Ejabberd(workdir, stock=True)``: a private ejabberd 23.01 (Debian package) on loopback ports
  of its own, never the system service. ``stock=True`` runs Debian's own
  ``/etc/ejabberd/ejabberd.yml`` with only the listeners, hosts, certificate and paths changed
  (c2s shaper 3000 B/s, 100 offline messages per user, ``mod_fail2ban``, ``mod_pres_counter``
  left on); ``stock=False`` is a permissive variant (no shaper, large offline queue, no fail2ban,
  no presence counter).
- ``StockProsody(workdir)``: Debian's ``/etc/prosody/prosody.cfg.lua`` with only ports and paths
  changed (so ``mod_limits`` at 10 kb/s stays on).

Both offer what ``LocalProsody`` offers the tests: ``host``, ``c2s_port``, ``domain``,
``cert_path``, ``start() / stop() / kill() / restart()`` and ``register(user, password)``.

How ejabberd is isolated (other Erlang nodes, such as RabbitMQ, may share the machine's epmd):
its own node name, a fixed distribution port (``ERL_DIST_PORT``, so epmd is neither used nor
started) bound to 127.0.0.1, its own ``HOME`` (so its own Erlang cookie), spool and log
directories. It runs as the ``ejabberd`` system user (``setpriv``), in its own process group, so
``kill()`` is a real SIGKILL of the whole node.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tools.local_prosody import LocalProsody, _free_ports, _lua_str

LOOPBACK = "127.0.0.1"
DEBIAN_EJABBERD_YML = Path("/etc/ejabberd/ejabberd.yml")
DEBIAN_PROSODY_CFG = Path("/etc/prosody/prosody.cfg.lua")


class XmppServerError(RuntimeError):
    """A test server could not be started, stopped or given an account."""


def ejabberd_available() -> str | None:
    """None when an ejabberd can be run here, else the reason (for ``pytest.skip``)."""
    if not shutil.which("ejabberdctl") or not DEBIAN_EJABBERD_YML.exists():
        return "ejabberd is not installed (tools/install-system-deps.sh installs it)"
    if os.geteuid() != 0:
        return "running ejabberd as its system user needs root"
    try:
        pwd.getpwnam("ejabberd")
    except KeyError:
        return "the ejabberd system user is missing"
    return None


def _top_level_sections(text: str) -> list[tuple[str, str]]:
    """Split a YAML document into (top-level key, its text) pairs, comments kept in place."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    for line in text.splitlines(keepends=True):
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*):", line)
        if match:
            sections.append((match.group(1), [line]))
        else:
            sections[-1][1].append(line)
    return [(key, "".join(lines)) for key, lines in sections]


def _ping_tcp(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.25):
            return True
    except OSError:
        return False


class Ejabberd:
    """A private ejabberd node (see the module docstring)."""

    domain = "localhost"
    host = LOOPBACK

    def __init__(self, workdir: Path | str | None = None, *, stock: bool = True,
                 start_timeout: float = 60.0) -> None:
        # The node runs as the ejabberd user, who cannot enter pytest's 0700 temp directories:
        # the instance lives in a directory of its own under the system temp dir.
        base = Path(tempfile.mkdtemp(prefix="agi-xmpp-ejabberd-"))
        self.workdir = base
        self.requested_workdir = Path(workdir) if workdir else None
        self.stock = stock
        self.start_timeout = start_timeout
        self.c2s_port, self.dist_port = _free_ports(2)
        self.node = f"agixmpp{secrets.token_hex(4)}@localhost"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- paths ---------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.workdir / "ejabberd.yml"

    @property
    def ctl_config_path(self) -> Path:
        return self.workdir / "ejabberdctl.cfg"

    @property
    def spool(self) -> Path:
        return self.workdir / "spool"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def cert_path(self) -> Path:
        return self.workdir / "cert.pem"

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        kind = "stock" if self.stock else "permissive"
        return f"<Ejabberd {kind} {self.node} c2s={self.c2s_port} running={self.is_running}>"

    # -- configuration -------------------------------------------------------------------------

    def render_config(self) -> str:
        """Debian's ejabberd.yml with only hosts, certificate, listeners (and, for the permissive
        variant, the limits) replaced."""
        replaced = {
            "hosts": f"hosts:\n  - {self.domain}\n\n",
            "certfiles": f'certfiles:\n  - "{self.cert_path}"\n\n',
            # One c2s listener, as Debian's first one (STARTTLS required, the c2s shaper), on
            # loopback; the s2s, HTTP, STUN and MQTT listeners are not needed by the tests.
            "listen": (
                "listen:\n  -\n"
                f"    port: {self.c2s_port}\n"
                f'    ip: "{LOOPBACK}"\n'
                "    module: ejabberd_c2s\n"
                "    max_stanza_size: 262144\n"
                "    shaper: c2s_shaper\n"
                "    access: c2s\n"
                "    starttls_required: true\n"
                "    protocol_options: 'TLS_OPTIONS'\n\n"
            ),
        }
        out = []
        for key, text in _top_level_sections(DEBIAN_EJABBERD_YML.read_text()):
            out.append(replaced.get(key, text))
        config = "".join(out)
        if not self.stock:
            config = config.replace("    normal: all\n", "    none: all\n")  # c2s_shaper
            config = config.replace("    100: all\n", "    1000000: all\n")  # offline queue
            config = config.replace("  mod_fail2ban: {}\n", "")
            config = re.sub(r"  mod_pres_counter:\n(    .*\n)+", "", config)
        for key in replaced:
            if f"\n{key}:" not in "\n" + config:
                raise XmppServerError(f"Debian's ejabberd.yml has no top-level {key!r} any more")
        return config

    def write_config(self) -> None:
        self.spool.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        if not self.cert_path.exists():
            key, crt = self.workdir / "key.pem", self.workdir / "crt.pem"
            res = subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-days", "3650", "-subj", f"/CN={self.domain}",
                 "-addext", f"subjectAltName=DNS:{self.domain},IP:{LOOPBACK}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-keyout", str(key), "-out", str(crt)],
                capture_output=True, text=True, check=False,
            )
            if res.returncode != 0:
                raise XmppServerError(f"openssl failed: {res.stderr.strip()}")
            # ejabberd wants key and certificate in one PEM; clients verify against the same file.
            self.cert_path.write_text(crt.read_text() + key.read_text())
        self.config_path.write_text(self.render_config())
        self.ctl_config_path.write_text(
            f"ERL_DIST_PORT={self.dist_port}\n"
            f"INET_DIST_INTERFACE={LOOPBACK}\n"
            f"EJABBERD_PID_PATH={self.workdir / 'ejabberd.pid'}\n"
            'ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0"\n'
            "EJABBERD_BYPASS_WARNINGS=true\n"
        )
        user = pwd.getpwnam("ejabberd")
        for path in [self.workdir, *self.workdir.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)

    def _ctl_command(self, *args: str) -> list[str]:
        return [
            "setpriv", "--reuid=ejabberd", "--regid=ejabberd", "--init-groups",
            "env", f"HOME={self.workdir}",
            "ejabberdctl", "--node", self.node, "--config", str(self.config_path),
            "--ctl-config", str(self.ctl_config_path), "--spool", str(self.spool),
            "--logs", str(self.logs), *args,
        ]

    # -- process control -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the node in the foreground (its own process group) and wait for c2s."""
        if self.is_running:
            return
        reason = ejabberd_available()
        if reason:
            raise XmppServerError(reason)
        self.write_config()
        console = open(self.workdir / "console.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen(
                self._ctl_command("foreground"), cwd=self.workdir, stdin=subprocess.DEVNULL,
                stdout=console, stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            console.close()
        deadline = time.monotonic() + self.start_timeout
        while not _ping_tcp(self.c2s_port):
            if self._proc.poll() is not None:
                raise XmppServerError(f"ejabberd exited ({self._proc.returncode})\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise XmppServerError(f"ejabberd did not listen within {self.start_timeout} s\n{self.log_tail()}")
            time.sleep(0.1)
        # c2s listens a moment before the node has loaded its data and commands
        while subprocess.run(self._ctl_command("status"), capture_output=True, check=False,
                             stdin=subprocess.DEVNULL, cwd=self.workdir).returncode != 0:
            if time.monotonic() > deadline:
                self.kill()
                raise XmppServerError(f"ejabberd did not report started\n{self.log_tail()}")
            time.sleep(0.3)

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for path in (self.workdir / "console.log", self.logs / "ejabberd.log", self.logs / "error.log"):
            try:
                parts.append(f"--- {path} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
            except OSError:
                continue
        return "\n".join(parts)

    def kill(self) -> None:
        """SIGKILL the whole node (no shutdown code runs)."""
        proc = self._proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        self._proc = None

    def stop(self) -> None:
        """Stop the node (SIGTERM to its group, SIGKILL after 10 s) and forget its directory."""
        proc = self._proc
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                pass
            self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self) -> None:
        """Start again on the same ports and spool (after ``kill()``)."""
        self.kill()
        self.start()

    def restart_gracefully(self) -> None:
        """SIGTERM (the node shuts down cleanly, Mnesia written out), then start again: accounts
        registered just before survive a later ``kill()``."""
        proc = self._proc
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            # the shell wrapper exits at once; the Erlang node takes a moment to close its tables
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            self.kill()
        self.start()

    def register(self, user: str, password: str) -> str:
        """Create ``user@localhost`` through ``ejabberdctl register``; returns the bare JID."""
        local = user.partition("@")[0].lower()
        deadline = time.monotonic() + self.start_timeout
        while True:
            res = subprocess.run(
                self._ctl_command("register", local, self.domain, password),
                capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )
            if res.returncode == 0:
                return f"{local}@{self.domain}"
            # The node listens on c2s a moment before its command interface is ready.
            if time.monotonic() > deadline:
                raise XmppServerError(f"ejabberdctl register failed: {(res.stdout + res.stderr).strip()}")
            time.sleep(0.5)


class StockProsody(LocalProsody):
    """Debian's ``/etc/prosody/prosody.cfg.lua``, with only ports and paths changed.

    The overrides go after Debian's globals and before its ``VirtualHost`` (later global
    assignments win in Prosody's config); Debian's ``Include "conf.d/*.cfg.lua"`` only names the
    same host with certificate paths under /etc/prosody, so it is replaced by our certificate.
    """

    def render_config(self) -> str:
        text = DEBIAN_PROSODY_CFG.read_text()
        overrides = "\n".join([
            "-- agi-xmpp tests: only ports and paths below differ from Debian's file.",
            *self.ports_and_paths(),
            'plugin_paths = { }',
            f"certificates = {_lua_str(self.cert_path.parent)}",
            f"ssl = {{ certificate = {_lua_str(self.cert_path)}; key = {_lua_str(self.key_path)}; }}",
            f'log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = {_lua_str(self.log_path)} }}; }}',
            "",
        ])
        marker = 'VirtualHost "localhost"'
        if marker not in text:
            raise XmppServerError(f"Debian's prosody.cfg.lua has no {marker} any more")
        text = text.replace(marker, overrides + marker, 1)
        text = text.replace('Include "conf.d/*.cfg.lua"', "-- (Debian's conf.d include: same host)")
        # mod_http is pulled in by invites/register modules: keep it on our own port only.
        return text

    def _wait_ready(self) -> None:
        # The stock config has no HTTP component on http_port to wait for: c2s is enough.
        deadline = time.monotonic() + self.start_timeout
        while not _ping_tcp(self.c2s_port):
            if self._proc is not None and self._proc.poll() is not None:
                raise XmppServerError(f"prosody exited\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise XmppServerError(f"stock prosody did not listen\n{self.log_tail()}")
            time.sleep(0.05)
