"""A real Asterisk 22 for end-to-end tests, running in a Debian sid chroot.

The chroot is built once by ``tests/e2e/build_lab.sh`` into ``~/.cache/agi-xmpp/asterisk-sid``
(``AGI_XMPP_LAB_DIR`` overrides it). :class:`AsteriskLab` writes minimal configs into the chroot's
``/etc/asterisk``, bind-mounts ``/proc`` and ``/dev``, starts ``asterisk -f -U root -G root`` in
it, and gives tests:

* ``rx(cmd)`` / ``await arx(cmd)``: CLI commands (``asterisk -rx`` / AMI ``Command``);
* ``originate(exten, context, timeout)``: a ``Local/EXTEN@CONTEXT`` call driven by AMI;
* ``await wait_user_event(name)``: the headers of a dialplan ``UserEvent(NAME,Key: value,...)``,
  which is how a test reads what the dialplan saw (``wait_event`` for any other AMI event);
* ``hangup(pattern)``, ``channels()``, ``set_dialplan(text)``, ``write_config(name, text)``,
  ``stop()``.

AMI events are collected from the moment Asterisk has booted by a small asyncio AMI client
(:class:`AmiClient`) running on the lab's own event-loop thread, so nothing is missed whichever
event loop (or none) a test runs on, and every ``await`` works from any loop.

Only one lab runs per chroot at a time (a file lock); a leftover Asterisk from a crashed run is
found by its process root (``/proc/PID/root`` is the chroot) and killed. ``/proc`` and ``/dev`` are
unmounted on stop; nothing inside the chroot is ever deleted while they are mounted, except the
lab's own config files in ``/etc/asterisk`` and run files in ``/var/run/asterisk``.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import fnmatch
import itertools
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BUILD_SCRIPT = Path(__file__).resolve().with_name("build_lab.sh")
ASTERISK = "/usr/sbin/asterisk"

#: Modules that decline or complain when they have no config, or that the lab never needs.
DEFAULT_NOLOAD = (
    "res_odbc.so", "res_odbc_transaction.so", "res_config_odbc.so", "res_config_pgsql.so",
    "res_config_sqlite3.so", "res_config_ldap.so", "func_odbc.so", "cdr_odbc.so",
    "cdr_adaptive_odbc.so", "cel_odbc.so", "cdr_pgsql.so", "cel_pgsql.so", "cdr_radius.so",
    "cel_radius.so", "cdr_tds.so", "cel_tds.so", "cdr_manager.so", "cel_manager.so",
    "cdr_sqlite3_custom.so", "cel_sqlite3_custom.so", "res_snmp.so", "res_statsd.so",
    "res_resolver_unbound.so", "res_stun_monitor.so", "res_phoneprov.so",
    "res_pjsip_phoneprov_provider.so", "res_pjsip_notify.so", "res_hep.so", "res_hep_rtcp.so",
    "res_hep_pjsip.so", "res_calendar.so", "res_calendar_caldav.so", "res_calendar_ews.so",
    "res_calendar_exchange.so", "res_calendar_icalendar.so", "app_agent_pool.so",
    "app_confbridge.so", "app_page.so", "app_voicemail_odbc.so", "app_voicemail_imap.so",
    "chan_iax2.so", "chan_console.so", "chan_alsa.so", "chan_oss.so", "chan_mobile.so",
    "chan_dahdi.so", "chan_unistim.so", "chan_mgcp.so", "chan_skinny.so", "chan_ooh323.so",
    "chan_motif.so", "res_mwi_external.so", "res_mwi_external_ami.so",
    "res_ari.so", "res_ari_applications.so", "res_ari_asterisk.so", "res_ari_bridges.so",
    "res_ari_channels.so", "res_ari_device_states.so", "res_ari_endpoints.so",
    "res_ari_events.so", "res_ari_mailboxes.so", "res_ari_model.so", "res_ari_playbacks.so",
    "res_ari_recordings.so", "res_ari_sounds.so", "res_stasis_answer.so",
    "res_stasis_device_state.so", "res_stasis_mailbox.so", "res_stasis_playback.so",
    "res_stasis_recording.so", "res_stasis_snoop.so", "app_stasis.so", "chan_websocket.so",
    "res_prometheus.so",
)

DEFAULT_DIALPLAN = """\
[general]
static = yes
writeprotect = yes

[default]
exten => echo,1,Answer()
 same => n,UserEvent(LabEcho,Chan: ${CHANNEL})
 same => n,Hangup()
"""


class LabError(RuntimeError):
    """The lab could not be built, started or driven."""


# --------------------------------------------------------------------------------------------
# Small helpers


def default_lab_dir() -> Path:
    """Where the chroot lives: ``$AGI_XMPP_LAB_DIR`` or ``~/.cache/agi-xmpp/asterisk-sid``."""
    env = os.environ.get("AGI_XMPP_LAB_DIR")
    return Path(env) if env else Path.home() / ".cache" / "agi-xmpp" / "asterisk-sid"


def lab_is_built(root: Path | str | None = None) -> bool:
    """True when the chroot holds an Asterisk (build_lab.sh renames it into place when done)."""
    root = Path(root) if root else default_lab_dir()
    return os.access(root / "usr/sbin/asterisk", os.X_OK) and (root / "bin/sh").exists()


def build_lab(root: Path | str | None = None, timeout: float = 3600.0) -> Path:
    """Run build_lab.sh (a no-op when already built). Raises LabError with its output on failure."""
    root = Path(root) if root else default_lab_dir()
    env = dict(os.environ, AGI_XMPP_LAB_DIR=str(root))
    try:
        proc = subprocess.run(["bash", str(BUILD_SCRIPT)], env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"build_lab.sh did not finish within {timeout:.0f} s") from exc
    if proc.returncode != 0 or not lab_is_built(root):
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise LabError(f"build_lab.sh failed (exit {proc.returncode}):\n{tail}")
    return root


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def chroot_path(root: Path | str, path: str) -> Path:
    """The host path of ``path`` as seen inside the chroot at ``root``.

    Symlinks are followed *relative to the chroot* (the chroot's ``/var/run`` is a symlink to
    ``/run``: followed naively from the host it would land in the host's own ``/run``).
    """
    root = Path(root)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise LabError(f"too many symlinks resolving {path} in {root}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def _is_mountpoint(path: Path) -> bool:
    return subprocess.run(["mountpoint", "-q", str(path)]).returncode == 0


def _processes_rooted_at(root: Path) -> list[int]:
    """PIDs of processes whose root directory is the chroot (Asterisk, stray ``asterisk -r``)."""
    real = os.path.realpath(root)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.readlink(f"/proc/{entry}/root") == real:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


# --------------------------------------------------------------------------------------------
# A tiny asyncio AMI client


class AmiError(LabError):
    """An AMI action failed or the connection broke."""


class AmiClient:
    """Minimal AMI client: log in, send actions, collect every event.

    Header names repeated in one message (``Output``, ``ChanVariable``...) are joined with
    ``"\\n"``. Events are kept (up to ``max_events``) so a waiter finds events that arrived before
    it started waiting.
    """

    def __init__(self, max_events: int = 20000) -> None:
        self.banner = ""
        self.max_events = max_events
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self._pending: dict[str, asyncio.Future] = {}
        self._events: list[tuple[int, dict[str, str]]] = []
        self._seq = 0
        self._changed: asyncio.Condition | None = None
        self._ids = itertools.count(1)
        self._closed_reason: str | None = None
        self._lost = False

    @property
    def connected(self) -> bool:
        return self._task is not None and not self._task.done() and not self._lost

    async def connect(self, host: str, port: int, username: str, secret: str,
                      timeout: float = 10.0) -> None:
        self._changed = asyncio.Condition()
        async with asyncio.timeout(timeout):
            self._reader, self._writer = await asyncio.open_connection(host, port)
            self.banner = (await self._reader.readline()).decode(errors="replace").strip()
            if not self.banner.startswith("Asterisk Call Manager"):
                raise AmiError(f"unexpected AMI banner {self.banner!r}")
            self._task = asyncio.create_task(self._read_loop(), name="ami-reader")
            resp = await self.action("Login", Username=username, Secret=secret, Events="on")
        if resp.get("Response") != "Success":
            raise AmiError(f"AMI login failed: {resp}")

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._write({"Action": "Logoff", "ActionID": "logoff"})
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self._fail_pending("AMI client closed")

    def _write(self, headers: Mapping[str, Any]) -> None:
        lines = []
        for key, value in headers.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                text = f"{key}: {v}"
                if "\r" in text or "\n" in text:
                    raise AmiError(f"CR/LF in AMI header {key}")
                lines.append(text)
        assert self._writer is not None
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def action(self, action: str, *, timeout: float = 15.0, **headers: Any) -> dict[str, str]:
        """Send an action and return its response message. List values repeat the header."""
        if not self.connected:
            raise AmiError(f"AMI not connected ({self._closed_reason or 'never connected'})")
        action_id = str(headers.pop("ActionID", f"lab-{next(self._ids)}"))
        fut = asyncio.get_running_loop().create_future()
        self._pending[action_id] = fut
        try:
            self._write({"Action": action, "ActionID": action_id, **headers})
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise AmiError(f"no AMI response to {action} within {timeout} s") from None
        finally:
            self._pending.pop(action_id, None)

    async def _read_loop(self) -> None:
        assert self._reader is not None
        msg: dict[str, str] = {}
        try:
            while True:
                raw = await self._reader.readline()
                if not raw:
                    raise ConnectionError("AMI connection closed by Asterisk")
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if line:
                    key, sep, value = line.partition(":")
                    if not sep:
                        continue
                    value = value[1:] if value.startswith(" ") else value
                    msg[key] = f"{msg[key]}\n{value}" if key in msg else value
                    continue
                if msg:
                    await self._dispatch(msg)
                msg = {}
        except asyncio.CancelledError:
            self._closed_reason = "closed"
            self._lost = True
            raise
        except Exception as exc:  # noqa: BLE001 - reported to waiters
            self._closed_reason = str(exc)
            self._lost = True
            self._fail_pending(str(exc))
            if self._changed is not None:
                async with self._changed:
                    self._changed.notify_all()

    async def _dispatch(self, msg: dict[str, str]) -> None:
        if "Response" in msg and msg.get("ActionID") in self._pending and "Event" not in msg:
            fut = self._pending.pop(msg["ActionID"])
            if not fut.done():
                fut.set_result(msg)
            return
        if "Event" in msg:
            self._seq += 1
            self._events.append((self._seq, msg))
            if len(self._events) > self.max_events:
                del self._events[: len(self._events) - self.max_events]
            assert self._changed is not None
            async with self._changed:
                self._changed.notify_all()

    def _fail_pending(self, reason: str) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(AmiError(reason))
        self._pending.clear()

    # events --------------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._seq

    def events(self, since: int = 0) -> list[dict[str, str]]:
        return [dict(m) for s, m in self._events if s > since]

    def clear_events(self) -> None:
        self._events.clear()

    async def wait_event(self, predicate: Callable[[dict[str, str]], bool], timeout: float,
                         consume: bool = True, since: int = 0) -> dict[str, str]:
        """The oldest stored event (newer than ``since``) matching ``predicate``, else wait."""
        assert self._changed is not None
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    while True:
                        for i, (seq, m) in enumerate(self._events):
                            if seq > since and predicate(m):
                                if consume:
                                    del self._events[i]
                                return dict(m)
                        if not self.connected:
                            raise AmiError(f"AMI connection lost: {self._closed_reason}")
                        await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"no matching AMI event within {timeout} s") from None


class _LoopThread:
    """An event loop on a daemon thread; coroutines are submitted from any thread or loop."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro, timeout: float | None = None):
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"lab operation did not finish within {timeout} s") from None

    async def arun(self, coro, timeout: float = 120.0):
        """Run ``coro`` on the lab's loop. Bounded: a loop that stopped under it (an Asterisk
        restart replaces the AMI client and its loop) must fail the caller, never hang it."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            future.cancel()
            raise LabError(f"the lab's event loop did not answer within {timeout:g} s") from None

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


# --------------------------------------------------------------------------------------------
# The lab


@dataclasses.dataclass(frozen=True)
class Call:
    """An originated ``Local/EXTEN@CONTEXT`` call.

    ``uniqueid`` is the dialplan side (``Local/...;2``: the channel that runs EXTEN@CONTEXT, the
    one a FastAGI server sees as ``agi_uniqueid``); ``outbound_uniqueid`` is ``;1``, which runs the
    originate application (``Wait``).
    """

    uniqueid: str
    outbound_uniqueid: str
    action_id: str
    channel_prefix: str  # "Local/EXTEN@CONTEXT-": channel names start with it


class AsteriskLab:
    """A running Asterisk 22 in the lab chroot (context manager; ``stop()`` is idempotent).

    >>> with AsteriskLab(extensions_conf=DIALPLAN) as lab:
    ...     call = lab.originate("hello", "test", timeout=10)
    ...     event = lab.wait_user_event_sync("Result", timeout=10)
    """

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        extensions_conf: str = DEFAULT_DIALPLAN,
        pjsip_conf: str | None = "",
        extra_configs: Mapping[str, str] | None = None,
        extra_ami_users: Mapping[str, str] | None = None,
        noload: Iterable[str] = (),
        verbose: int = 3,
        startup_timeout: float = 120.0,
        lock_timeout: float = 900.0,
        build: bool = False,
    ) -> None:
        self.root = Path(root) if root else default_lab_dir()
        self.extensions_conf = extensions_conf
        self.pjsip_conf = pjsip_conf
        self.extra_configs = dict(extra_configs or {})
        self.extra_ami_users = dict(extra_ami_users or {})
        #: name -> {"secret", "read", "write"}: AMI users with exactly these privileges
        self.restricted_ami_users: dict[str, dict[str, str]] = {}
        self.noload = tuple(noload)
        self.verbose = verbose
        self.startup_timeout = startup_timeout
        self.lock_timeout = lock_timeout
        self.build = build

        self.ami_host = "127.0.0.1"
        self.ami_port = 0
        self.ami_username = "lab"
        self.ami_secret = secrets.token_hex(12)
        self.version = ""
        self.start_seconds = 0.0

        self._proc: subprocess.Popen | None = None
        self._lock_fd: int | None = None
        self._loop: _LoopThread | None = None
        self._ami: AmiClient | None = None
        self._console: Any = None
        self._call_ids = itertools.count(1)
        self._started = False

    # paths ---------------------------------------------------------------------------------

    def path(self, chroot_abs_path: str) -> Path:
        """Host path of a path inside the chroot (symlinks resolved inside the chroot)."""
        return chroot_path(self.root, chroot_abs_path)

    @property
    def etc_dir(self) -> Path:
        return self.path("/etc/asterisk")

    @property
    def log_dir(self) -> Path:
        return self.path("/var/log/asterisk")

    @property
    def run_dir(self) -> Path:
        return self.path("/var/run/asterisk")

    @property
    def messages_log(self) -> Path:
        return self.log_dir / "messages.log"

    @property
    def console_log(self) -> Path:
        return self.log_dir / "console.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def log_text(self) -> str:
        """Everything Asterisk logged (notices, warnings, errors, verbose) since this start."""
        try:
            return self.messages_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> AsteriskLab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> AsteriskLab:
        if self._started:
            return self
        t0 = time.monotonic()
        if not lab_is_built(self.root):
            if not self.build:
                raise LabError(f"no lab chroot at {self.root}: run {BUILD_SCRIPT}")
            build_lab(self.root)
        if os.geteuid() != 0:
            raise LabError("the Asterisk lab needs root (chroot, mount)")
        self._started = True
        atexit.register(self.stop)
        try:
            self._acquire_lock()
            self._kill_leftovers()
            self._mount()
            self._prepare_dirs()
            self._write_configs()
            self._launch()
            self._wait_booted()
            self._loop = _LoopThread("asterisk-lab-ami")
            self._connect_ami()
            self.version = self.rx("core show version").strip()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        log.info("Asterisk lab up in %.2f s: %s", self.start_seconds, self.version)
        return self

    def stop(self) -> None:
        """Stop Asterisk, unmount /proc and /dev from the chroot, release the lock. Idempotent."""
        if not self._started:
            return
        self._started = False
        errors: list[str] = []
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self._loop is not None:
            if self._ami is not None:
                with contextlib.suppress(Exception):
                    self._loop.run(self._ami.close(), timeout=5)
            self._loop.stop()
            self._loop = None
            self._ami = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._shutdown_asterisk()
            self._proc = None
        if self._console is not None:
            self._console.close()
            self._console = None
        try:
            self._kill_leftovers()
        except Exception as exc:  # noqa: BLE001
            errors.append(str(exc))
        try:
            self._unmount()
        except Exception as exc:  # noqa: BLE001
            errors.append(str(exc))
        self.ami_port = 0
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if errors:
            raise LabError("; ".join(errors))

    def _shutdown_asterisk(self) -> None:
        assert self._proc is not None
        # A channel stuck in dead-mode AGI (a FastAGI server that ignores HANGUP and keeps its
        # socket open) makes "core stop now" and even SIGTERM hang: then go straight to SIGKILL.
        try:
            if self.channels():
                self.hangup_all(timeout=2.0)
            graceful = True
        except Exception:  # noqa: BLE001 - stuck channels or a broken CLI: no graceful stop
            graceful = False
        if graceful:
            with contextlib.suppress(Exception):
                self.rx("core stop now", timeout=3)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(3)
        if self._proc.poll() is None:
            log.warning("Asterisk did not stop cleanly; killing it")
            self._proc.kill()
            self._proc.wait(10)

    def _acquire_lock(self) -> None:
        lock_path = Path(f"{self.root}.run.lock")
        self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.lock_timeout
        announced = False
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    log.warning("another Asterisk lab holds %s; waiting", lock_path)
                    announced = True
                if time.monotonic() > deadline:
                    raise LabError(f"another Asterisk lab held {lock_path} for "
                                   f"{self.lock_timeout:.0f} s") from None
                time.sleep(0.5)
        os.ftruncate(self._lock_fd, 0)
        os.write(self._lock_fd, f"{os.getpid()}\n".encode())

    def _kill_leftovers(self) -> None:
        """Kill every process running inside the chroot (a crashed run's Asterisk, stuck -rx)."""
        pids = _processes_rooted_at(self.root)
        if not pids:
            return
        log.warning("killing leftover processes in %s: %s", self.root, pids)
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                pids = [p for p in pids if _pid_alive(p)]
                if not pids:
                    return
                time.sleep(0.05)
        raise LabError(f"could not kill leftover processes {pids} in {self.root}")

    def _mount(self) -> None:
        for name, source in (("proc", "/proc"), ("dev", "/dev")):
            target = self.root / name
            target.mkdir(exist_ok=True)
            if not _is_mountpoint(target):
                subprocess.run(["mount", "--bind", source, str(target)], check=True)

    def _unmount(self) -> None:
        still = []
        for name in ("dev/pts", "dev", "proc"):
            target = self.root / name
            if _is_mountpoint(target):
                if subprocess.run(["umount", str(target)]).returncode != 0:
                    subprocess.run(["umount", "-l", str(target)])
                if _is_mountpoint(target):
                    still.append(str(target))
        if still:
            raise LabError(f"still mounted (do NOT delete the chroot): {', '.join(still)}")

    def _prepare_dirs(self) -> None:
        etc = self.root / "etc/asterisk"
        dist = self.root / "etc/asterisk.dist"
        marker = ".agi-xmpp-lab"
        if etc.is_symlink():
            raise LabError(f"{etc} is a symlink; refusing to write configs through it")
        if etc.is_dir() and not (etc / marker).exists() and not dist.exists():
            etc.rename(dist)  # keep the package's sample configs for reference
        etc.mkdir(exist_ok=True)
        (etc / marker).write_text("configs written by tests/e2e/lab.py; the package's are in "
                                  "/etc/asterisk.dist\n")
        for child in etc.iterdir():  # the lab's own files only: flat, no symlinks followed
            if child.name != marker and (child.is_file() or child.is_symlink()):
                child.unlink()
        run_dir, log_dir = self.run_dir, self.log_dir
        for d in (run_dir, log_dir):
            if not str(d).startswith(str(self.root) + "/"):
                raise LabError(f"{d} resolves outside the chroot")
            d.mkdir(parents=True, exist_ok=True)
        for name in ("asterisk.ctl", "asterisk.pid"):
            with contextlib.suppress(FileNotFoundError):
                (run_dir / name).unlink()
        for name in ("messages.log", "console.log"):
            with contextlib.suppress(FileNotFoundError):
                (log_dir / name).unlink()
        # Asterisk -U root keeps only CAP_NET_ADMIN, so root cannot write into directories the
        # package gave to its asterisk user: hand them to root (build_lab.sh does it too).
        for rel in ("etc/asterisk", "var/lib/asterisk", "var/spool/asterisk", "var/log/asterisk",
                    "var/cache/asterisk"):
            d = self.root / rel
            if d.is_dir() and not d.is_symlink() and d.stat().st_uid != 0:
                subprocess.run(["chown", "-R", "root:root", str(d)], check=True)

    def _moh_directory(self) -> str:
        for candidate in ("/usr/share/asterisk/moh", "/var/lib/asterisk/moh"):
            d = self.path(candidate)
            if d.is_dir() and any(p.suffix in (".gsm", ".wav", ".ulaw", ".alaw", ".g722")
                                  for p in d.iterdir()):
                return candidate
        # No asterisk-moh-opsound: loop a few core prompts instead.
        fallback = "/var/lib/asterisk/lab-moh"
        d = self.path(fallback)
        d.mkdir(parents=True, exist_ok=True)
        sounds = self.path("/usr/share/asterisk/sounds/en")
        for name in ("tt-monkeys.gsm", "demo-congrats.gsm", "beep.gsm"):
            if (sounds / name).exists() and not (d / name).exists():
                shutil.copyfile(sounds / name, d / name)
        return fallback

    def _write_configs(self) -> None:
        if not self.ami_port:  # kept while running: add_ami_user() rewrites manager.conf
            self.ami_port = free_port(self.ami_host)
        noload = list(DEFAULT_NOLOAD) + list(self.noload)
        if "xmpp.conf" not in self.extra_configs:
            noload.append("res_xmpp.so")
        configs = {
            "asterisk.conf": f"""\
[directories](!)
astcachedir => /var/cache/asterisk
astetcdir => /etc/asterisk
astmoddir => /usr/lib/x86_64-linux-gnu/asterisk/modules
astvarlibdir => /var/lib/asterisk
astdbdir => /var/lib/asterisk
astkeydir => /var/lib/asterisk
astdatadir => /usr/share/asterisk
astagidir => /usr/share/asterisk/agi-bin
astspooldir => /var/spool/asterisk
astrundir => /var/run/asterisk
astlogdir => /var/log/asterisk
astsbindir => /usr/sbin

[options]
runuser = root
rungroup = root
verbose = {self.verbose}
nocolor = yes
""",
            "modules.conf": "[modules]\nautoload = yes\n"
            + "".join(f"noload => {m}\n" for m in dict.fromkeys(noload)),
            "logger.conf": f"""\
[general]
dateformat = %F %T.%3q

[logfiles]
messages.log => notice,warning,error,verbose({self.verbose})
""",
            "manager.conf": f"""\
[general]
enabled = yes
port = {self.ami_port}
bindaddr = {self.ami_host}
displayconnects = no

""" + "".join(f"""\
[{user}]
secret = {secret}
deny = 0.0.0.0/0.0.0.0
permit = 127.0.0.1/255.255.255.255
read = all
write = all
writetimeout = 5000

""" for user, secret in {self.ami_username: self.ami_secret, **self.extra_ami_users}.items())
            + "".join(f"""\
[{user}]
secret = {spec['secret']}
deny = 0.0.0.0/0.0.0.0
permit = 127.0.0.1/255.255.255.255
read = {spec.get('read', '')}
write = {spec.get('write', '')}

""" for user, spec in self.restricted_ami_users.items()),
            "musiconhold.conf": f"""\
[general]

[default]
mode = files
directory = {self._moh_directory()}
sort = alpha
""",
            "extensions.conf": self.extensions_conf,
        }
        if self.pjsip_conf is not None:
            configs["pjsip.conf"] = self.pjsip_conf
        configs.update(self.extra_configs)
        for name, text in configs.items():
            self.write_config(name, text)

    def _launch(self) -> None:
        self._console = open(self.console_log, "ab")
        self._proc = subprocess.Popen(
            ["chroot", str(self.root), ASTERISK, "-f", "-n", "-U", "root", "-G", "root",
             "-C", "/etc/asterisk/asterisk.conf"],
            stdin=subprocess.DEVNULL, stdout=self._console, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _died(self) -> LabError:
        tail = ""
        with contextlib.suppress(OSError):
            tail = "\n".join(self.console_log.read_text(errors="replace").splitlines()[-30:])
        return LabError(f"Asterisk exited with {self._proc.returncode if self._proc else '?'}"
                        f" during startup; console:\n{tail}")

    def _wait_booted(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        ctl = self.run_dir / "asterisk.ctl"
        delay = 0.01
        while not ctl.exists():
            if self._proc.poll() is not None:
                raise self._died()
            if time.monotonic() > deadline:
                raise LabError(f"Asterisk did not open {ctl} within {self.startup_timeout} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LabError(f"Asterisk did not fully boot within {self.startup_timeout} s")
            try:
                out = self.rx("core waitfullybooted", timeout=remaining)
            except LabError:
                out = ""
            if "fully booted" in out:
                return
            if self._proc.poll() is not None:
                raise self._died()
            time.sleep(0.1)

    def _connect_ami(self) -> None:
        assert self._loop is not None
        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            client = AmiClient()

            async def connect() -> None:
                await client.connect(self.ami_host, self.ami_port, self.ami_username,
                                     self.ami_secret)

            try:
                self._loop.run(connect(), timeout=15)
                self._ami = client
                return
            except (OSError, AmiError, TimeoutError) as exc:
                last = exc
                with contextlib.suppress(Exception):
                    self._loop.run(client.close(), timeout=5)
                time.sleep(0.1)
        raise LabError(f"could not log in to AMI on port {self.ami_port}: {last}")

    # driving Asterisk ----------------------------------------------------------------------

    def _check_running(self) -> None:
        if not self._started or self._proc is None:
            raise LabError("the Asterisk lab is not running")
        if self._proc.poll() is not None:
            raise LabError(f"Asterisk died (exit {self._proc.returncode}); see {self.console_log}")

    def rx(self, command: str, timeout: float = 30.0) -> str:
        """Run a CLI command with ``asterisk -rx`` in the chroot and return its output."""
        try:
            proc = subprocess.run(["chroot", str(self.root), ASTERISK, "-rx", command],
                                  capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"asterisk -rx {command!r} took over {timeout} s") from exc
        if proc.returncode != 0 or "Unable to connect to remote asterisk" in proc.stdout:
            raise LabError(f"asterisk -rx {command!r} failed: {proc.stdout}{proc.stderr}")
        return proc.stdout

    async def arx(self, command: str, timeout: float = 30.0) -> str:
        """Run a CLI command over AMI (``Action: Command``) without blocking the caller's loop."""
        resp = await self.ami_action("Command", Command=command, timeout=timeout)
        if resp.get("Response") != "Success":
            raise AmiError(f"AMI Command {command!r} failed: {resp}")
        return resp.get("Output", "") + ("\n" if resp.get("Output") else "")

    def _ami_client(self) -> AmiClient:
        self._check_running()
        if self._ami is None or self._loop is None:
            raise LabError("AMI is not connected")
        return self._ami

    async def ami_action(self, action: str, *, timeout: float = 15.0, **headers: Any) -> dict:
        """Send any AMI action from any event loop; returns the response headers."""
        client = self._ami_client()
        assert self._loop is not None
        return await self._loop.arun(client.action(action, timeout=timeout, **headers))

    def ami_action_sync(self, action: str, *, timeout: float = 15.0, **headers: Any) -> dict:
        client = self._ami_client()
        assert self._loop is not None
        return self._loop.run(client.action(action, timeout=timeout, **headers), timeout + 5)

    def originate(
        self,
        exten: str,
        context: str = "default",
        timeout: float = 30.0,
        *,
        variables: Mapping[str, str] | None = None,
        callerid: str | None = None,
        application: str = "Wait",
        data: str | None = None,
    ) -> Call:
        """Originate ``Local/EXTEN@CONTEXT`` (AMI Originate, async) and return at once.

        The dialplan side (``;2``) runs EXTEN@CONTEXT; the other side (``;1``) runs
        ``application`` (default ``Wait``, for ``timeout`` seconds) once the dialplan answers.
        ``timeout`` is also how long Asterisk waits for that answer: a dialplan that never
        answers is hung up after ``timeout`` seconds. ``variables`` are set on the channel
        (inherited by the dialplan side).
        """
        n = next(self._call_ids)
        base = f"lab{os.getpid()}x{n}x{secrets.token_hex(3)}"
        headers: dict[str, Any] = {
            "Channel": f"Local/{exten}@{context}",
            "Application": application,
            "Data": data if data is not None else str(max(1, int(timeout))),
            "Timeout": str(int(timeout * 1000)),
            "Async": "true",
            "ChannelId": f"{base}.1",
            "OtherChannelId": f"{base}.2",
            "ActionID": f"orig-{base}",
        }
        if callerid:
            headers["CallerID"] = callerid
        if variables:
            headers["Variable"] = [f"{k}={v}" for k, v in variables.items()]
        resp = self.ami_action_sync("Originate", **headers)
        if resp.get("Response") != "Success":
            raise AmiError(f"Originate failed: {resp}")
        return Call(uniqueid=f"{base}.2", outbound_uniqueid=f"{base}.1",
                    action_id=f"orig-{base}", channel_prefix=f"Local/{exten}@{context}-")

    def channels(self) -> list[dict[str, str]]:
        """Active channels, parsed from ``core show channels concise``."""
        rows = []
        for line in self.rx("core show channels concise").splitlines():
            fields = line.split("!")
            if len(fields) < 14:
                continue
            head, tail = fields[:6], fields[-7:]
            rows.append({
                "channel": head[0], "context": head[1], "exten": head[2], "priority": head[3],
                "state": head[4], "application": head[5], "data": "!".join(fields[6:-7]),
                "callerid": tail[0], "accountcode": tail[1], "peeraccount": tail[2],
                "amaflags": tail[3], "duration": tail[4], "bridgeid": tail[5],
                "uniqueid": tail[6],
            })
        return rows

    def hangup(self, pattern: str) -> list[str]:
        """Hang up every channel whose name matches the glob ``pattern`` (or whose uniqueid is
        ``pattern``). Returns the channel names asked to hang up."""
        names = [c["channel"] for c in self.channels()
                 if fnmatch.fnmatchcase(c["channel"], pattern) or c["uniqueid"] == pattern]
        for name in names:
            self.rx(f"channel request hangup {name}")
        return names

    def hangup_all(self, timeout: float = 15.0) -> list[str]:
        """Hang up every channel and poll until none is left (raises TimeoutError otherwise)."""
        names = self.hangup("*")
        deadline = time.monotonic() + timeout
        delay = 0.02
        while (left := self.channels()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"channels still up {timeout} s after hangup: "
                                   f"{[c['channel'] for c in left]}")
            self.hangup("*")
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
        return names

    async def wait_channels_gone(self, pattern: str = "*", timeout: float = 30.0) -> None:
        """Poll until no channel name (or uniqueid) matches ``pattern``."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            out = await self.arx("core show channels concise")
            left = [line for line in out.splitlines() if "!" in line and (
                fnmatch.fnmatchcase(line.split("!")[0], pattern)
                or line.split("!")[-1] == pattern)]
            if not left:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"channels still up after {timeout} s: {left}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)

    # events --------------------------------------------------------------------------------

    @staticmethod
    def _matcher(event: str | None, match: Mapping[str, str],
                 predicate: Callable[[dict], bool] | None) -> Callable[[dict], bool]:
        def ok(m: dict[str, str]) -> bool:
            if event is not None and m.get("Event", "").lower() != event.lower():
                return False
            if any(m.get(k) != str(v) for k, v in match.items()):
                return False
            return predicate(m) if predicate else True
        return ok

    async def wait_event(
        self,
        event: str | None = None,
        timeout: float = 10.0,
        *,
        predicate: Callable[[dict[str, str]], bool] | None = None,
        consume: bool = True,
        since: int = 0,
        headers: Mapping[str, str] | None = None,
        **match: str,
    ) -> dict[str, str]:
        """The oldest AMI event named ``event`` whose headers equal ``match``/``headers`` and pass
        ``predicate``; events that arrived before the call count. ``consume`` removes it."""
        client = self._ami_client()
        assert self._loop is not None
        ok = self._matcher(event, {**(headers or {}), **match}, predicate)
        return await self._loop.arun(client.wait_event(ok, timeout, consume, since))

    async def wait_user_event(self, name: str, timeout: float = 10.0, *,
                              headers: Mapping[str, str] | None = None,
                              **match: str) -> dict[str, str]:
        """Headers of the oldest unconsumed ``UserEvent(name,...)`` (consumed), else wait.

        ``UserEvent(Result,VAL: x,AGISTATUS: SUCCESS)`` gives
        ``{"Event": "UserEvent", "UserEvent": "Result", "VAL": "x", "AGISTATUS": "SUCCESS",
        "Channel": ..., "Uniqueid": ..., ...}``.
        """
        return await self.wait_event("UserEvent", timeout, headers=headers, UserEvent=name,
                                     **match)

    def wait_user_event_sync(self, name: str, timeout: float = 10.0, **match: str) -> dict:
        """Blocking twin of :meth:`wait_user_event` (never call it from a running event loop
        that must serve the dialplan, e.g. the test's own FastAGI server)."""
        client = self._ami_client()
        assert self._loop is not None
        ok = self._matcher("UserEvent", {"UserEvent": name, **match}, None)
        return self._loop.run(client.wait_event(ok, timeout, True, 0), timeout + 5)

    def events(self, since: int = 0) -> list[dict[str, str]]:
        """A copy of the stored (unconsumed) AMI events newer than ``since``."""
        return self._ami_client().events(since)

    def mark(self) -> int:
        """Sequence number of the newest event so far: pass it as ``since=`` to ignore older."""
        return self._ami_client().last_seq

    def clear_events(self) -> None:
        """Forget every stored AMI event (the conftest does it between tests)."""
        client = self._ami_client()
        assert self._loop is not None
        self._loop.loop.call_soon_threadsafe(client.clear_events)
        self._loop.run(asyncio.sleep(0), timeout=5)  # barrier: the clear has run

    # configuration -------------------------------------------------------------------------

    def write_config(self, name: str, text: str) -> Path:
        """Write ``/etc/asterisk/NAME`` in the chroot (a plain file name, no directories)."""
        if "/" in name or name in ("", ".", ".."):
            raise LabError(f"bad config file name {name!r}")
        target = self.root / "etc/asterisk" / name
        tmp = target.with_name(f".{name}.tmp")
        tmp.write_text(text)
        tmp.replace(target)
        return target

    def set_dialplan(self, extensions_conf: str, *, clear_events: bool = True) -> None:
        """Replace extensions.conf, ``dialplan reload``, and check every context loaded."""
        self.extensions_conf = extensions_conf
        self.write_config("extensions.conf", extensions_conf)
        out = self.rx("dialplan reload")
        if "Dialplan reloaded" not in out:
            raise LabError(f"dialplan reload failed: {out}")
        contexts = re.findall(r"^\s*\[([^\]\s]+)\](?!\s*\(!)", extensions_conf, re.MULTILINE)
        for ctx in contexts:
            if ctx.lower() in ("general", "globals"):
                continue
            shown = self.rx(f"dialplan show {ctx}")
            if "There is no existence of" in shown:
                raise LabError(f"context [{ctx}] did not load; check {self.messages_log}:\n"
                               + "\n".join(self.log_text().splitlines()[-20:]))
        if clear_events:
            self.clear_events()

    def add_ami_user(self, name: str, secret: str, *, read: str, write: str) -> None:
        """Add an AMI user with exactly the ``read``/``write`` classes given; ``manager reload``."""
        self.restricted_ami_users[name] = {"secret": secret, "read": read, "write": write}
        self._write_configs()
        self.rx("manager reload")

    def ensure_module(self, module: str) -> None:
        """Load ``module`` (e.g. after writing its config), or reload it when already loaded."""
        shown = self.rx(f"module show like {module}")
        if f"{module} " in shown and " Running " in shown.replace("Not Running", ""):
            self.rx(f"module reload {module}")
        else:
            out = self.rx(f"module load {module}")
            if "Loaded" not in out and "already" not in out:
                raise LabError(f"module load {module}: {out}")

    def restart(self) -> None:
        """Stop Asterisk and start it again, same configs and AMI port (a restart under us)."""
        self._check_running()
        assert self._loop is not None
        if self._ami is not None:
            with contextlib.suppress(Exception):
                self._loop.run(self._ami.close(), timeout=5)
            self._ami = None
        self._shutdown_asterisk()
        self._proc = None
        if self._console is not None:
            self._console.close()
            self._console = None
        for name in ("asterisk.ctl", "asterisk.pid"):
            with contextlib.suppress(FileNotFoundError):
                (self.run_dir / name).unlink()
        self._launch()
        self._wait_booted()
        self._connect_ami()

    def reload(self, module: str | None = None) -> str:
        """``module reload [MODULE]`` (``reload`` of everything when None)."""
        return self.rx(f"module reload {module}" if module else "core reload")
