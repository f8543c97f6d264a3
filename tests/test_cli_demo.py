"""`make run`'s demo server tool (tools/demo.py): explicit, and one line when it cannot run."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def demo(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.demo", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_a_configuration_with_its_own_account_starts_no_demo_server(tmp_path):
    """prepare on a configuration that names an account starts nothing and writes nothing."""
    conf = tmp_path / "agi_xmpp.conf"
    conf.write_text(f"[general]\nstate_dir = {tmp_path / 'state'}\n[acme]\nusername = pbx@example.com\nsecret = x\n")
    proc = demo("prepare", str(conf))
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == f"{conf} has its own account(s) (acme): no demo XMPP server needed\n"
    assert not (tmp_path / "state").exists()


def test_a_taken_demo_port_is_one_line(tmp_path):
    """prepare with its c2s port held by another program: one line naming the ports, exit 1."""
    conf = tmp_path / "quick.conf"
    conf.write_text(f"[general]\nstate_dir = {tmp_path / 'state'}\n")
    with socket.socket() as taken, socket.socket() as spare:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        spare.bind(("127.0.0.1", 0))
        c2s, http = taken.getsockname()[1], spare.getsockname()[1]
        spare.close()  # free again: only the c2s port is taken
        proc = demo("prepare", str(conf), "--c2s-port", str(c2s), "--http-port", str(http))
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == (f"tools.demo: port {c2s} or {http} is in use by another program: the demo "
                           "XMPP server needs both (stop that program, or pass --c2s-port/--http-port)\n")
    assert not (tmp_path / "state" / "demo-account.conf").exists()
