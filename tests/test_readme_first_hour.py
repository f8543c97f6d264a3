"""The README's quick start, run as written: the commands come from README.md itself.

The quick start uses fixed ports (4573, 4580, 15222, 15280) and ``./state``. So that it can run
as written on a shared machine, the test copies the working tree (without ``state/``; the
virtualenv is linked) into a temporary directory and runs the commands there inside a private
network namespace (``unshare -n``, loopback only): the fixed ports are its own. What it runs:

1. a program holding port 15222, then ``make run``: one line naming the port, no traceback;
2. ``make run`` (the README's line, comment stripped), until the service answers;
3. every command of the "In another terminal" block, each must exit 0 and say what the README
   implies (Connected, SUCCESS, the directory, a healthy /health);
4. a second ``make run``: one line, ``port 4573 is in use``, no traceback;
5. Ctrl-C (SIGINT to ``make run``'s process group, as a terminal sends it): it stops cleanly;
6. the README's stop command for the demo Prosody.

The steps run in a driver (this file run as a script) inside the namespace; it prints one JSON
report that the test asserts on.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from readme_blocks import fenced_blocks, section  # noqa: E402

START_DEADLINE = 180.0  # make run on a busy machine: bounds a hang, never a speed claim


def quick_start_commands() -> dict[str, list[str]]:
    """The shell lines of README.md's "Quick start": make, another-terminal, stop blocks."""
    blocks = [body for lang, body in fenced_blocks(section("Quick start")) if lang == "sh"]
    lines = [[line for line in body.splitlines() if line.strip()] for body in blocks]
    (make,) = [b for b in lines if any(line.startswith("make run") for line in b)]
    (another,) = [b for b in lines if any("show connections" in line for line in b)]
    (stop,) = [b for b in lines if any("tools.demo stop" in line for line in b)]
    run = [line.split("#", 1)[0].strip() for line in make if line.startswith("make run")]
    return {"make_run": run, "another_terminal": another, "stop": stop}


def test_readme_quick_start_names_the_commands_this_test_runs():
    """The README's quick start has the blocks the first-hour test runs (else it would run nothing)."""
    commands = quick_start_commands()
    assert commands["make_run"] == ["make run"]
    assert any(line.startswith("curl") for line in commands["another_terminal"])
    assert "Ctrl-C stops it" in section("Quick start")


def copy_tree(target: Path) -> None:
    """The working tree's files (tracked and new, not ignored), without state/, .venv linked."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    archive = target.with_suffix(".tar")
    with tarfile.open(archive, "w") as tar:
        for name in files:
            if name and not name.startswith(("state/", ".venv/")) and (ROOT / name).exists():
                tar.add(ROOT / name, arcname=name)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="tar")
    archive.unlink()
    (target / ".venv").symlink_to(ROOT / ".venv")
    # The copy's setup files must not look newer than the virtualenv's stamp, or `make run`
    # would reinstall it (and the namespace has no network).
    stamp = (ROOT / ".venv" / ".installed-stamp").stat().st_mtime
    for name in ("setup.cfg", "pyproject.toml"):
        os.utime(target / name, (stamp - 1, stamp - 1))


def test_readme_quick_start_as_written(tmp_path):
    """README's make run + the other-terminal commands work as written; a second make run and
    a taken demo port are one line each; Ctrl-C stops make run; the stop command stops the demo."""
    if not (ROOT / ".venv" / ".installed-stamp").exists():
        pytest.skip("no virtualenv: run `make .venv/.installed-stamp` first")
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -n is not permitted here (needs root): the quick start's fixed ports would clash")
    tree = tmp_path / "clone"
    copy_tree(tree)
    report_path = tmp_path / "report.json"
    proc = subprocess.run(["unshare", "-n", sys.executable, __file__, str(tree), str(report_path)],
                          capture_output=True, text=True, timeout=900)
    assert report_path.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    context = json.dumps(report, indent=1)[-6000:]

    taken = report["port_taken"]
    assert taken["code"] != 0, context
    ours = [line for line in taken["output"].splitlines() if line.startswith("tools.demo:")]
    assert ours == ["tools.demo: port 15222 or 15280 is in use by another program: the demo XMPP "
                    "server needs both (stop that program, or pass --c2s-port/--http-port)"], context
    assert "Traceback" not in taken["output"], context

    assert report["ready"], context
    outputs = {step["command"]: step for step in report["another_terminal"]}
    for step in report["another_terminal"]:
        assert step["code"] == 0, context
    by_word = {word: next(s["output"] for c, s in outputs.items() if word in c)
               for word in ("show connections", "send demo", "directory list", "curl")}
    assert "[demo] asterisk@localhost" in by_word["show connections"] and "- Connected" in by_word["show connections"], context
    sent = by_word["send demo"].splitlines()
    assert sent[0] == "SUCCESS" and sent[1].startswith("message id agx-"), context
    assert [line.split()[:2] for line in by_word["directory list"].splitlines()] == [
        ["101", "alice@localhost"], ["102", "bob@localhost"]], context
    assert json.loads(by_word["curl"]) == {"status": "ok", "accounts": {"demo": "online"}}, context

    second = report["second_make_run"]
    assert second["code"] != 0, context
    ours = [line for line in second["output"].splitlines() if line.startswith("agi-xmpp:")]
    assert ours == ["agi-xmpp: port 4573 is in use (FastAGI, agi_bind = 127.0.0.1:4573): is agi-xmpp "
                    "already running? Stop it, or set agi_bind in etc/quickstart.conf"], context
    assert "Traceback" not in second["output"], context

    assert report["ctrl_c"]["stopped"], context
    assert "Traceback" not in report["ctrl_c"]["output"], context
    assert report["ctrl_c"]["port_free"], context

    assert report["stop"][0]["code"] == 0 and "demo XMPP server stopped" in report["stop"][0]["output"], context


# -- the driver: runs inside the network namespace ---------------------------------------------


def _sh(command: str, cwd: Path, timeout: float = 120) -> dict[str, object]:
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    return {"command": command, "code": proc.returncode, "output": proc.stdout + proc.stderr}


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _loopback_up() -> None:
    """``ip link set lo up`` without needing iproute2: the SIOCSIFFLAGS ioctl (netdevice(7))."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def _drive(tree: Path) -> dict[str, object]:
    _loopback_up()
    commands = quick_start_commands()
    (make_run,) = commands["make_run"]
    report: dict[str, object] = {}

    with socket.socket() as squatter:  # another program on the demo server's port
        squatter.bind(("127.0.0.1", 15222))
        squatter.listen()
        report["port_taken"] = _sh(make_run, tree)

    log = open(tree / "make-run.log", "w+")  # noqa: SIM115 - read back below
    make = subprocess.Popen(["bash", "-c", make_run], cwd=tree, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + START_DEADLINE
        ready = False
        while time.monotonic() < deadline and make.poll() is None:
            probe = _sh(commands["another_terminal"][0], tree, timeout=60)
            if probe["code"] == 0 and "- Connected" in str(probe["output"]):
                ready = True
                break
            time.sleep(0.5)
        report["ready"] = ready
        report["another_terminal"] = [_sh(line, tree) for line in commands["another_terminal"]] if ready else []
        report["second_make_run"] = _sh(make_run, tree, timeout=300)
        os.killpg(make.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            make.wait(timeout=60)
            stopped = True
        except subprocess.TimeoutExpired:
            stopped = False
        log.seek(0)
        report["ctrl_c"] = {"stopped": stopped, "code": make.returncode, "output": log.read()[-4000:],
                            "port_free": _port_free(4573)}
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
        report["stop"] = [_sh(line, tree) for line in commands["stop"]]
        # whatever happened above, leave no Prosody behind in the namespace
        subprocess.run([str(tree / ".venv/bin/python"), "-m", "tools.demo", "stop", "etc/quickstart.conf"],
                       cwd=tree, capture_output=True, timeout=60)
    return report


if __name__ == "__main__":
    tree_arg, report_arg = Path(sys.argv[1]), Path(sys.argv[2])
    result = _drive(tree_arg)
    report_arg.write_text(json.dumps(result))
