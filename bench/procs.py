"""Server processes for the benchmark: start, wait ready, read their CPU time and memory, stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


class Server:
    """One server subprocess; ``pid`` is what /proc is read for."""

    def __init__(self, name: str, argv: Sequence[str], *, port: int, log_path: Path,
                 cpus: set[int] | None = None, env: dict[str, str] | None = None,
                 ready: Callable[[], bool] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.log_path = log_path
        self.cpus = cpus
        self.env = env
        self._ready = ready
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> Server:
        cpus = self.cpus

        def preexec() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)  # before exec: every thread inherits it

        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=preexec, env={**os.environ, **(self.env or {})},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            if self._is_ready():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} not ready within {timeout:g} s:\n"
                                   + self.log_tail())
            time.sleep(0.05)

    def _is_ready(self) -> bool:
        if self._ready is not None:
            return self._ready()
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return resp.status == 200
    except (OSError, ValueError):
        return False


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5.0) as resp:
        return resp.read().decode()


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Run this process (the load generator) on ``cpus`` for the duration of the block."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def listen_backlog(port: int) -> int | None:
    """The listen backlog of the socket listening on ``port`` (``ss`` shows it as Send-Q)."""
    try:
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                             text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2].isdigit():
            return int(fields[2])
    return None


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
