"""The AMI side as an administrator sees it from the CLI: `show connections` and `check-config`.

`show connections` is run as the installed command against a real `agi-xmpp serve` process (its
HTTP API, its token file); Asterisk is a closed port or the scripted AMI server of
test_ami_link.py. `check-config` needs no service.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from service_process import free_port
from test_ami_link import FakeAsterisk

from agi_xmpp import cli

AGI_XMPP = Path(sys.executable).with_name("agi-xmpp")


def write_config(tmp_path: Path, ami: str | None, *, directory: str = "") -> Path:
    """One account on a closed port (never online), free service ports, optional [ami]
    (with an existing, empty voicemail spool unless ``ami`` names one)."""
    path = tmp_path / "agi_xmpp.conf"
    text = f"""\
[general]
agi_bind = 127.0.0.1:{free_port()}
http_bind = 127.0.0.1:{free_port()}
state_dir = {tmp_path / 'state'}
log_format = json
reconnect_max_delay = 2
[asterisk]
username = asterisk@localhost
secret = x
serverhost = 127.0.0.1
port = {free_port()}
tls_verify = no
"""
    if ami is not None:
        spool = tmp_path / "spool"
        spool.mkdir(exist_ok=True)
        if "voicemail_spool" not in ami:
            ami += f"voicemail_spool = {spool}\n"
        text += f"[ami]\n{ami}"
    if directory:
        text += f"[directory]\n{directory}"
    path.write_text(text)
    return path


async def agi_xmpp(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(AGI_XMPP), *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


@asynccontextmanager
async def serving(config: Path) -> AsyncIterator[None]:
    """A real `agi-xmpp serve` on ``config``, stopped with SIGTERM at the end."""
    log = open(config.with_name("service.log"), "ab")
    proc = subprocess.Popen([str(AGI_XMPP), "serve", "-c", str(config)], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        log.close()


async def show_connections_until(config: Path, wanted: str, timeout: float = 60.0) -> str:
    """`agi-xmpp show connections` again until its output contains ``wanted`` (the service
    may still be starting, the link still trying); the last output otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    out = err = ""
    while loop.time() < deadline:
        code, out, err = await agi_xmpp("show", "connections", "-c", str(config))
        if code == 0 and wanted in out:
            return out
        await asyncio.sleep(0.3)
    raise AssertionError(f"{wanted!r} never shown; last output:\n{out}{err}\n"
                         + config.with_name("service.log").read_text()[-3000:])


# -- show connections ---------------------------------------------------------------------------


async def test_show_connections_names_an_ami_link_that_is_down(tmp_path):
    """Asterisk not listening: under the XMPP account, the AMI link's host:port, 'Down' with
    the reason, and its counters, from the running service's API with its token file."""
    port = free_port()
    config = write_config(tmp_path, f"host = 127.0.0.1\nport = {port}\nusername = agi-xmpp\nsecret = s\n")
    async with serving(config):
        out = await show_connections_until(config, "- Down (")
    lines = out.splitlines()
    assert lines[0] == "Jabber Users and their status:"
    assert lines[1].startswith("       [asterisk] asterisk@localhost")
    assert lines[2:5] == ["----", "   Number of clients: 1", "Asterisk Manager (AMI) link:"]
    head, _, reason = lines[5].partition(" - Down (")
    assert head == f"       [ami] {f'127.0.0.1:{port}':<30}"
    assert "Connection refused" in reason and reason.endswith(")")
    assert lines[6] == "             connects: 0, resyncs: 0"
    assert len(lines) == 7


async def test_show_connections_says_login_refused(tmp_path):
    """A wrong AMI secret reads 'Login refused' with the reason naming manager.conf."""
    async with FakeAsterisk(login_ok=False) as pbx:
        config = write_config(tmp_path, f"port = {pbx.port}\nusername = agi-xmpp\nsecret = wrong\n")
        async with serving(config):
            out = await show_connections_until(config, "- Login refused (")
    (line,) = [line for line in out.splitlines() if line.startswith("       [ami] ")]
    assert "manager.conf" in line and "agi-xmpp" in line


async def test_show_connections_counts_the_resync_of_a_connected_link(tmp_path):
    """A logged-in link reads 'Connected' with the Asterisk version, one connect and its resync;
    a spool the service cannot read is shown under it."""
    async with FakeAsterisk(login_ok=True) as pbx:
        config = write_config(tmp_path, f"port = {pbx.port}\nusername = agi-xmpp\nsecret = s\n"
                                        f"voicemail_spool = {tmp_path / 'no-spool'}\n")
        async with serving(config):
            out = await show_connections_until(config, "resyncs: 1")
    lines = out.splitlines()
    assert lines[5].startswith(f"       [ami] 127.0.0.1:{pbx.port}")
    assert lines[5].endswith(" - Connected (AMI 11.0.0)")
    assert lines[6] == "             connects: 1, resyncs: 1"
    assert lines[7] == f"             voicemail: voicemail_spool {tmp_path / 'no-spool'} does not exist"


async def test_show_connections_without_ami_shows_only_the_accounts(tmp_path):
    """Without [ami] the output is the XMPP accounts only, as before."""
    config = write_config(tmp_path, None)
    async with serving(config):
        out = await show_connections_until(config, "Number of clients: 1")
    assert out.splitlines()[2:] == ["----", "   Number of clients: 1"]


# -- check-config -------------------------------------------------------------------------------


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ami_config(tmp_path: Path, ami: str, directory: str) -> str:
    """A file whose lines are known: [general] 1-2, account 3-5, [ami] from 6, then [directory]."""
    path = tmp_path / "agi_xmpp.conf"
    path.write_text(f"[general]\nstate_dir = {tmp_path / 'state'}\n"
                    "[asterisk]\nusername = asterisk@example.com\nsecret = x\n"
                    f"[ami]\nusername = agi-xmpp\nsecret = s\n{ami}[directory]\n{directory}")
    return str(path)


def test_check_config_reports_every_ami_problem_as_a_warning(capsys, tmp_path):
    """Each [ami] problem the service would start with is one warning naming file:line: a
    mailbox without @CONTEXT, one that is no mailbox, one named twice, a missing spool, no
    originate_context; the file is still OK (exit 0)."""
    spool = tmp_path / "missing-spool"
    path = ami_config(tmp_path, f"voicemail_spool = {spool}\n",
                      "2001 = alice@example.com, mailbox=2001\n"
                      "2002 = bob@example.com, mailbox=2001@default\n"
                      "2003 = carol@example.com, mailbox=..@default\n")
    code, out, err = run(capsys, "check-config", "-c", path)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"warning: {path}:11: directory entry '2001': mailbox=2001 has no @CONTEXT, taken as "
        "2001@default: write EXT@CONTEXT as the mailbox is in voicemail.conf",
        f"warning: {path}:13: directory entry '2003': mailbox=..@default is not EXT@CONTEXT of a "
        "mailbox: never notified",
        f"warning: {path}:12: directory entry '2002': mailbox=2001@default is also directory entry "
        "'2001's: only '2001' (the lowest extension) is notified",
        f"warning: {path}:9: voicemail_spool {spool} does not exist: voicemail is not notified "
        "(docs/ami.md: who can read the spool)",
        f"warning: {path}:6: [ami] has no originate_context: click-to-call dials numbers in "
        "'from-internal' (FreePBX's context); set it to the context your users' phones dial from "
        "(dialplan/agi-xmpp-click-to-call.conf)",
        f"{path}: OK, 1 account(s), 3 directory entr(y/ies)",
    ]


VOICEMAIL_CONF = """\
[general]
format = wav
[zonemessages]
eastern = America/New_York|'vm-received' Q 'digits/at' IMp
[default]
2001 => 1234,Alice
2004 => 1234,Dave,,,attach=yes|delete=yes
[office]
3001 => 1234,Oscar
"""


def test_check_config_compares_mailboxes_with_voicemail_conf(capsys, tmp_path):
    """With voicemail.conf next to the file (as in /etc/asterisk), a mailbox= whose context or
    mailbox it lacks, and one it deletes (delete=yes) while voicemail_delete is off, are named;
    a mailbox that exists but has no spool directory yet (no message left) is not."""
    spool = tmp_path / "spool"
    spool.mkdir()
    (tmp_path / "voicemail.conf").write_text(VOICEMAIL_CONF)
    vm = tmp_path / "voicemail.conf"
    path = ami_config(tmp_path, f"voicemail_spool = {spool}\noriginate_context = phones\n",
                      "2001 = alice@example.com, mailbox=2001@default\n"
                      "2002 = bob@example.com, mailbox=2002@default\n"
                      "2003 = carol@example.com, mailbox=2003@users\n"
                      "2004 = dave@example.com, mailbox=2004@default\n")
    code, out, _ = run(capsys, "check-config", "-c", path)
    assert code == 0
    assert out.splitlines() == [
        f"warning: {path}:13: directory entry '2002': mailbox=2002@default: {vm} has no mailbox 2002 in [default]",
        f"warning: {path}:14: directory entry '2003': mailbox=2003@users: {vm} has no context [users] "
        "(contexts: default, office)",
        f"warning: {path}:15: directory entry '2004': mailbox=2004@default: {vm} deletes its messages "
        "(delete=yes) before the event: set voicemail_delete = yes in [ami], or its voicemail is not notified",
        f"{path}: OK, 1 account(s), 4 directory entr(y/ies)",
    ]


def test_check_config_of_a_right_ami_section_says_only_ok(capsys, tmp_path):
    """A readable spool, full mailboxes and an originate_context: no warning at all."""
    spool = tmp_path / "spool"
    (spool / "default").mkdir(parents=True)
    path = ami_config(tmp_path, f"voicemail_spool = {spool}\noriginate_context = phones\n",
                      "2001 = alice@example.com, mailbox=2001@default\n")
    assert run(capsys, "check-config", "-c", path) == (0, f"{path}: OK, 1 account(s), 1 directory entr(y/ies)\n", "")


def test_check_config_skips_the_spool_when_voicemail_is_event_only(capsys, tmp_path):
    """With voicemail_delete = yes the notification comes from the event alone: no spool needed."""
    path = ami_config(tmp_path, f"voicemail_spool = {tmp_path / 'none'}\nvoicemail_delete = yes\n"
                                "originate_context = phones\n",
                      "2001 = alice@example.com, mailbox=2001@default\n")
    assert run(capsys, "check-config", "-c", path)[:2] == (0, f"{path}: OK, 1 account(s), 1 directory entr(y/ies)\n")


def test_check_config_warns_of_ami_features_with_nobody_to_serve(capsys, tmp_path):
    """[ami] with an empty directory, and voicemail_upload with no mailbox, are warned of (the
    spool and originate_context are not: nothing uses them)."""
    path = ami_config(tmp_path, f"voicemail_spool = {tmp_path / 'none'}\nvoicemail_upload = yes\n", "")
    code, out, _ = run(capsys, "check-config", "-c", path)
    assert code == 0
    assert out.splitlines() == [
        f"warning: {path}:6: [ami]: the directory is empty: voicemail, click-to-call, busy lamps "
        "and queue pause serve directory users only",
        f"warning: {path}:10: voicemail_upload = yes but no directory entry has a mailbox=: there "
        "is nothing to upload",
        f"{path}: OK, 1 account(s), 0 directory entr(y/ies)",
    ]


def test_check_config_warns_of_a_mailbox_without_ami(capsys, tmp_path):
    """A mailbox= with no [ami] section is a warning: no voicemail can be notified."""
    path = tmp_path / "agi_xmpp.conf"
    path.write_text(f"[general]\nstate_dir = {tmp_path / 'state'}\n[asterisk]\n"
                    "username = asterisk@example.com\nsecret = x\n"
                    "[directory]\n2001 = alice@example.com, mailbox=2001@default\n")
    code, out, _ = run(capsys, "check-config", "-c", str(path))
    assert code == 0
    assert out.splitlines()[0] == (f"warning: {path}:7: directory entry '2001': mailbox= is set but "
                                   "there is no [ami] section: no voicemail is notified without it (docs/ami.md)")


def test_check_config_reads_mailboxes_added_to_the_database(capsys, tmp_path):
    """An entry added with `directory add --mailbox` is checked too, named as from the database."""
    spool = tmp_path / "spool"
    (spool / "default").mkdir(parents=True)
    path = ami_config(tmp_path, f"voicemail_spool = {spool}\noriginate_context = phones\n",
                      "2001 = alice@example.com, mailbox=2001@default\n")
    (tmp_path / "voicemail.conf").write_text("[default]\n2001 => 1234,Alice\n")
    assert run(capsys, "directory", "add", "2002", "bob@example.com", "--mailbox", "2002@office", "-c", path)[0] == 0
    code, out, _ = run(capsys, "check-config", "-c", path)
    assert code == 0
    assert out.splitlines() == [
        f"warning: directory entry '2002' (database): mailbox=2002@office: {tmp_path / 'voicemail.conf'} "
        "has no context [office] (contexts: default)",
        f"{path}: OK, 1 account(s), 1 directory entr(y/ies)",
    ]
