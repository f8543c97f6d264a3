"""The `agi-xmpp` command as an administrator meets it in the first hour (issue 11).

Options after the command work, read commands never write, and every mistake gets one plain
line and a non-zero exit. Nothing here needs a running service, except where a test starts the
one thing it needs (a listening socket, a fake non-XMPP server).
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agi_xmpp import cli
from agi_xmpp.config import AccountConfig, BindAddress, Config, DirectoryEntry, GeneralConfig
from agi_xmpp.services import running_services
from agi_xmpp.storage import Storage

# Every leaf command with the arguments it needs, for the option-order tests.
COMMANDS = [
    ["serve"],
    ["check-config"],
    ["show", "connections"],
    ["show", "buddies"],
    ["show", "buddies", "demo"],
    ["send", "demo", "alice@localhost", "hi"],
    ["directory", "list"],
    ["directory", "add", "100", "alice@localhost"],
    ["directory", "remove", "100"],
    ["import-xmpp-conf", "/etc/asterisk/xmpp.conf"],
]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def conf(tmp_path: Path) -> str:
    """A configuration with one account (never contacted) and one [directory] entry."""
    return write(tmp_path / "agi_xmpp.conf", f"""\
[general]
state_dir = {tmp_path / 'state'}
[demo]
username = asterisk@localhost
secret = x
[directory]
101 = alice@localhost
""")


# -- 1. options before and after the command ---------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_config_option_is_read_before_and_after_the_command(command):
    """`agi-xmpp -c PATH CMD` and `agi-xmpp CMD -c PATH` (and --config) name the same file."""
    parser = cli.build_parser()
    assert parser.parse_args(["-c", "/x.conf", *command]).config == "/x.conf"
    assert parser.parse_args([*command, "-c", "/x.conf"]).config == "/x.conf"
    assert parser.parse_args([*command, "--config", "/x.conf"]).config == "/x.conf"
    assert parser.parse_args(command).config == cli.DEFAULT_CONFIG


def test_check_config_with_the_option_after_the_command(capsys, conf):
    """`agi-xmpp check-config -c PATH` reads PATH, as systemd units write it."""
    for argv in (["check-config", "-c", conf], ["-c", conf, "check-config"]):
        code, out, err = run(capsys, *argv)
        assert (code, err) == (0, "")
        assert out == f"{conf}: OK, 1 account(s), 1 directory entr(y/ies)\n"


def test_installed_command_takes_the_option_after_serve(tmp_path):
    """The installed entry point itself: `agi-xmpp serve -c PATH` is no usage error."""
    path = write(tmp_path / "empty.conf", "[general]\n")
    proc = subprocess.run([sys.executable, "-m", "agi_xmpp", "serve", "-c", path],
                          capture_output=True, text=True, timeout=60)
    assert "unrecognized arguments" not in proc.stderr
    assert proc.returncode == 2  # the configuration error below, not argparse's usage error


# -- 2. the directory: reads never write, writes touch only what they name -----------------------


def seeded_database(conf_path: str) -> Path:
    """The database a running service leaves: one [directory] row and one added row."""
    config = cli.load_config(conf_path)
    storage = Storage(config.general.database)
    storage.create_all()
    storage.directory_load_config([DirectoryEntry("201", "carol@localhost")])  # another file's
    storage.directory_put(DirectoryEntry("300", "dave@localhost"))
    storage.close()
    return Path(config.general.database.removeprefix("sqlite:///"))


@pytest.mark.parametrize("order", ["before", "after"])
def test_directory_list_leaves_the_database_byte_identical(capsys, conf, order):
    """`directory list` prints the rows, writes nothing, and drops no row another config loaded."""
    db = seeded_database(conf)
    before = sha256(db)
    argv = ["-c", conf, "directory", "list"] if order == "before" else ["directory", "list", "-c", conf]
    code, out, err = run(capsys, *argv)
    assert (code, err) == (0, "")
    assert sha256(db) == before
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["201", "carol@localhost"]
    assert lines[1].split()[:2] == ["300", "dave@localhost"]
    # 101 is in this file's [directory] but not yet in the database: shown, marked, not written
    assert lines[2].split()[:2] == ["101", "alice@localhost"] and "loaded when the service starts" in lines[2]
    assert [e.extension for e in Storage(cli.load_config(conf).general.database).directory_list()] == ["201", "300"]


def test_directory_list_without_a_database_creates_nothing(capsys, conf, tmp_path):
    """Listing before the service ever ran creates no database file (and no state directory)."""
    code, out, _ = run(capsys, "directory", "list", "-c", conf)
    assert code == 0
    assert "101" in out
    assert not (tmp_path / "state").exists()


def test_directory_add_and_remove_touch_only_the_named_row(capsys, conf):
    """`add` and `remove` change their own row; rows loaded from any configuration stay."""
    db = seeded_database(conf)
    code, out, err = run(capsys, "directory", "add", "102", "bob@localhost", "-c", conf)
    assert (code, out, err) == (0, "added 102 -> bob@localhost\n", "")
    code, out, err = run(capsys, "-c", conf, "directory", "remove", "300")
    assert (code, out, err) == (0, "removed 300\n", "")
    storage = Storage(f"sqlite:///{db}")
    assert [(e.extension, e.jid) for e in storage.directory_list()] == [
        ("102", "bob@localhost"), ("201", "carol@localhost")]
    storage.close()
    code, _, err = run(capsys, "directory", "remove", "999", "-c", conf)
    assert code == 1 and err == "agi-xmpp: no directory entry for extension 999\n"


# -- 4. plain answers to mistakes ----------------------------------------------------------------


def test_show_buddies_of_an_unknown_account_is_an_error(capsys, conf):
    """`show buddies nosuch` names the problem and the configured accounts, exit 1, no header."""
    code, out, err = run(capsys, "show", "buddies", "nosuch", "-c", conf)
    assert (code, out) == (1, "")
    assert err == "agi-xmpp: unknown account 'nosuch' (configured accounts: demo)\n"


@pytest.mark.parametrize("target", ["bob", "localhost", "example.com/phone"])
def test_send_to_a_domain_only_jid_is_refused(capsys, conf, target):
    """`send demo bob hi` is refused before anything is sent: 'bob' is a server's address."""
    code, out, err = run(capsys, "send", "demo", target, "hello", "-c", conf)
    assert (code, out) == (1, "")
    domain = target.partition("/")[0]
    assert err == (f"agi-xmpp: {target!r} is a server address (a JID without a user part), not a "
                   f"person: nobody would read the message. Did you mean {domain}@localhost? "
                   "(--to-server sends it anyway)\n")


def test_send_to_a_server_address_on_purpose_passes_the_check(capsys, tmp_path):
    """With --to-server the domain-only JID is sent on (here: to a port where no service listens)."""
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        path = write(tmp_path / "agi_xmpp.conf", f"[general]\nhttp_bind = 127.0.0.1:{port}\n"
                     "[demo]\nusername = asterisk@localhost\nsecret = x\n")
        code, _, err = run(capsys, "send", "demo", "gateway.localhost", "hello", "--to-server", "-c", path)
    assert code == 1 and err.startswith(f"agi-xmpp: cannot reach the running service at http://127.0.0.1:{port}/")


def test_send_to_an_unknown_account_is_an_error(capsys, conf):
    """`send nosuch ...` names the account before contacting the service."""
    code, _, err = run(capsys, "send", "nosuch", "bob@localhost", "hi", "-c", conf)
    assert code == 1 and err.startswith("agi-xmpp: unknown account 'nosuch'")


def test_serve_without_an_account_is_one_configuration_line(capsys, tmp_path):
    """`serve` with no account starts nothing (no private XMPP server): one line, exit 2."""
    path = write(tmp_path / "agi_xmpp.conf", f"[general]\nstate_dir = {tmp_path / 'state'}\n")
    code, out, err = run(capsys, "serve", "-c", path)
    assert (code, out) == (2, "")
    assert err == (f"agi-xmpp: configuration error: {path}: no XMPP account is configured: add an "
                   "account section (username, secret; see etc/agi_xmpp.conf) or xmpp_conf = "
                   "/etc/asterisk/xmpp.conf in [general]\n")
    assert not (tmp_path / "state").exists()
    code, _, err = run(capsys, "check-config", "-c", path)
    assert code == 2 and "no XMPP account is configured" in err


@pytest.mark.parametrize("key", ["agi_bind", "http_bind"])
def test_serve_on_a_taken_port_is_one_line(capsys, tmp_path, key):
    """A second service on the same port says which port is in use, in one line, exit 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write(tmp_path / "agi_xmpp.conf",
                     f"[general]\nstate_dir = {tmp_path}\n{key} = 127.0.0.1:{port}\n"
                     + ("agi_bind = 127.0.0.1:0\n" if key == "http_bind" else "")  # 4573 may be busy
                     + "[demo]\nusername = asterisk@localhost\nsecret = x\n")
        code, out, err = run(capsys, "serve", "-c", path)
    what = "FastAGI" if key == "agi_bind" else "HTTP"
    assert (code, out) == (1, "")
    assert err == (f"agi-xmpp: port {port} is in use ({what}, {key} = 127.0.0.1:{port}): is agi-xmpp "
                   f"already running? Stop it, or set {key} in {path}\n")


def test_check_config_reports_every_error(capsys, tmp_path):
    """check-config lists every problem of the file with its line, not only the first."""
    path = write(tmp_path / "agi_xmpp.conf", """\
[general]
log_level = loud
agi_bind = nowhere:99999
[asterisk]
username = asterisk
secret = x
port = 0
tls_verfy = no
[directory]
100 = not a jid
""")
    code, out, err = run(capsys, "check-config", "-c", path)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"agi-xmpp: configuration error: {path}:2: 'log_level' must be one of debug, info, warning, error, not 'loud'",
        f"agi-xmpp: configuration error: {path}:3: 'agi_bind': port must be a number from 0 to 65535, not '99999'",
        f"agi-xmpp: configuration error: {path}:5: 'username': expected user@domain, not 'asterisk': a JID needs its domain, e.g. username = asterisk@example.com (the XMPP domain of the account)",
        f"agi-xmpp: configuration error: {path}:7: 'port' must be a whole number from 1 to 65535, not '0'",
        f"agi-xmpp: configuration error: {path}:8: unknown key 'tls_verfy' in [asterisk] (did you mean 'tls_verify'?)",
        f"agi-xmpp: configuration error: {path}:10: directory entry '100': " + err.splitlines()[-1].split("directory entry '100': ")[1],
    ]


def test_check_config_reports_syntax_and_value_errors_together(capsys, tmp_path):
    """Lines the dialect cannot read are reported with the value errors of the lines it can."""
    path = write(tmp_path / "agi_xmpp.conf", """\
[general]
this line has no equals sign
log_format = fancy
[broken
username = ignored, the section header is bad
[asterisk]
username = asterisk@example.com
secret = x
[asterisk]
#frobnicate
""")
    code, out, err = run(capsys, "check-config", "-c", path)
    assert (code, out) == (2, "")
    prefix = f"agi-xmpp: configuration error: {path}"
    assert err.splitlines() == [
        f"{prefix}:2: expected 'key = value', a [section] header or a #include",
        f"{prefix}:3: 'log_format' must be one of console, json, not 'fancy'",
        f"{prefix}:4: malformed section header '[broken': expected [name] or [name](options)",
        f"{prefix}:9: section [asterisk] is defined twice (first at {path}:6); use [asterisk](+) to add to it",
        f"{prefix}:10: unknown directive '#frobnicate' (use #include or #tryinclude)",
    ]


# -- 5. importing an existing xmpp.conf ----------------------------------------------------------


def test_import_of_a_user_name_without_domain_suggests_the_jid(capsys, tmp_path):
    """A vendor xmpp.conf's `username=asterisk` gets the fix: asterisk@<serverhost>."""
    path = write(tmp_path / "xmpp.conf",
                 "[general]\n[asterisk]\ntype=client\nserverhost=xmpp.example.net\nusername=asterisk\nsecret=s\n")
    code, out, err = run(capsys, "import-xmpp-conf", path)
    assert (code, out) == (2, "")
    assert err == (f"agi-xmpp: configuration error: {path}:5: 'username': expected user@domain, not "
                   "'asterisk': a JID needs its domain, e.g. username = asterisk@xmpp.example.net\n")


def test_import_reminds_of_the_certificate_check(capsys, tmp_path):
    """A good import prints the accounts, and a note that a self-signed server needs cafile."""
    path = write(tmp_path / "xmpp.conf",
                 "[asterisk]\ntype=client\nserverhost=xmpp.example.net\nusername=asterisk@example.net\nsecret=s\n")
    code, out, err = run(capsys, "import-xmpp-conf", path)
    assert code == 0
    assert out.startswith("[asterisk]\nusername = asterisk@example.net\n")
    assert "cafile = " in err and "self-signed" in err


# -- 4. a port where something other than XMPP listens ---------------------------------------


async def test_a_port_that_does_not_speak_xmpp_is_named(tmp_path):
    """An account pointed at an HTTP port reads 'not an XMPP server', not just 'disconnected'."""

    async def http_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http_like, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    account = AccountConfig(name="demo", username="asterisk@localhost", secret="x",
                            serverhost="127.0.0.1", port=port)
    general = GeneralConfig(state_dir=str(tmp_path), agi_bind=BindAddress("127.0.0.1", 0))
    config = Config(path=None, general=general, accounts={"demo": account})
    async with server, running_services(config) as services:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            (row,) = services.pool.connections()
            if row["last_error"] or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
    assert row["state"] != "online"
    assert row["last_error"] == (f"127.0.0.1:{port} closed the connection without starting an XMPP stream: "
                                 "not an XMPP server (wrong host or port?)")
