"""The operator's surface of a running service: the agi-xmpp CLI and the HTTP API."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from agi_xmpp import cli
from agi_xmpp.state_files import read_token

from service_harness import running_harness, service_config, settle_presence

pytestmark = pytest.mark.integration


def write_config(path, config) -> str:
    """An agi_xmpp.conf that points the CLI at the harness's HTTP port and database."""
    general = config.general
    account = config.accounts["asterisk"]
    path.write_text(
        "[general]\n"
        f"http_bind = {general.http_bind.host}:{general.http_bind.port}\n"
        f"database = {general.database}\n"
        f"state_dir = {general.state_dir}\n"
        f"[asterisk]\nusername = {account.username}\nsecret = {account.secret}\n"
        f"serverhost = {account.serverhost}\nport = {account.port}\ncafile = {account.cafile}\n"
    )
    return str(path)


async def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``agi-xmpp ARGV`` in a thread (it makes blocking HTTP calls to our loop)."""
    code = await asyncio.to_thread(cli.main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
async def svc(prosody, xmpp_accounts, tmp_path):
    jid, password = xmpp_accounts("asterisk")
    config = service_config(prosody, jid, password, tmp_path)
    async with running_harness(config, http=True) as harness:
        harness.jid = jid
        harness.config_path = write_config(tmp_path / "agi_xmpp.conf", config)
        yield harness


def http_get(svc, path: str, *, token: bool = True) -> tuple[int, bytes]:
    """GET with the service's own API token (what the CLI sends), unless ``token=False``."""
    host, port = svc.config.general.http_bind
    request = urllib.request.Request(f"http://{host}:{port}{path}")
    if token:
        secret = read_token(svc.config.general.state_dir)
        request.add_header("Authorization", f"Bearer {secret}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_show_connections_mirrors_xmpp_show_connections(svc, capsys):
    """`show connections` lists each account and its state, like res_xmpp's CLI."""
    code, out, _ = await run_cli(capsys, "-c", svc.config_path, "show", "connections")
    assert code == 0
    assert "Jabber Users and their status:" in out
    assert f"[asterisk] {svc.jid}" in out and "- Connected" in out
    assert "Number of clients: 1" in out


async def test_show_buddies_gives_status_and_priority_per_resource(svc, capsys, xmpp_accounts, xmpp_client):
    """`show buddies` prints each contact's resources with status code and priority."""
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw, resource="desk")
    bob.subscribe(svc.jid)
    await settle_presence(svc, bob, f"{bob_jid}/desk", 3, show="away", status="lunch", priority=7)
    code, out, _ = await run_cli(capsys, "-c", svc.config_path, "show", "buddies", "asterisk")
    assert code == 0
    assert f"Buddy:\t{bob_jid}" in out
    assert "Resource: desk" in out and "Status: 3 (away)" in out and "Priority: 7" in out


async def test_send_command_goes_through_the_running_service(svc, capsys, xmpp_accounts, xmpp_client):
    """`agi-xmpp send` delivers through the service's session and prints the status."""
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    code, out, _ = await run_cli(capsys, "-c", svc.config_path, "send", "asterisk", bob_jid, "hello", "there")
    assert (code, out.strip()) == (0, "SUCCESS")
    assert (await bob.next_message(10, sender=svc.jid)).body == "hello there"


async def test_send_command_reports_a_bad_jid(svc, capsys):
    """A bad JID through the CLI is a clear error and exit code 1."""
    code, _, err = await run_cli(capsys, "-c", svc.config_path, "send", "asterisk", "not a jid", "hi")
    assert code == 1 and "invalid JID" in err


async def test_health_is_200_when_connected_and_metrics_count_messages(svc, xmpp_accounts):
    """/health is 200 with all accounts online; /metrics counts sent messages."""
    status, body = await asyncio.to_thread(http_get, svc, "/health")
    assert status == 200
    assert json.loads(body) == {"status": "ok", "accounts": {"asterisk": "online"}}
    bob_jid, _ = xmpp_accounts("bob")
    await svc.call("jabber_send", "asterisk", bob_jid, "metered")
    status, text = await asyncio.to_thread(http_get, svc, "/metrics")
    assert status == 200
    assert 'agi_xmpp_account_online{account="asterisk"} 1' in text.decode()
    assert "agi_xmpp_messages_sent_total 1" in text.decode()


async def test_health_is_503_when_an_account_is_down(prosody, xmpp_accounts, tmp_path):
    """/health answers 503 naming the account whose session is not connected."""
    jid, _ = xmpp_accounts("asterisk")
    config = service_config(prosody, jid, "wrong-password", tmp_path)
    async with running_harness(config, http=True, wait_online=False) as svc:
        status, body = await asyncio.to_thread(http_get, svc, "/health")
    assert status == 503
    assert json.loads(body)["status"] == "degraded"


async def test_directory_commands_edit_the_database(tmp_path, capsys):
    """directory add/list/remove work on the database without a running service."""
    path = tmp_path / "agi_xmpp.conf"
    path.write_text(f"[general]\nstate_dir = {tmp_path}\n")
    base = ["-c", str(path), "directory"]
    assert cli.main([*base, "add", "100", "Alice@Example.com", "--mailbox", "100@default"]) == 0
    assert cli.main([*base, "add", "100", "bob@example.com"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert cli.main([*base, "add", "10 0", "bob@example.com"]) == 1
    assert cli.main([*base, "list"]) == 0
    out = capsys.readouterr().out
    assert "alice@example.com" in out and "device=PJSIP/100" in out and "mailbox=100@default" in out
    assert cli.main([*base, "remove", "100"]) == 0
    assert cli.main([*base, "remove", "100"]) == 1


def test_check_config_reports_file_and_line(tmp_path, capsys):
    """check-config exits 2 and names file:line for bad configuration, 0 for good."""
    bad = tmp_path / "bad.conf"
    bad.write_text("[general]\nagi_bind = 127.0.0.1:notaport\n")
    assert cli.main(["-c", str(bad), "check-config"]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    good = tmp_path / "good.conf"
    good.write_text("[general]\n[a]\nusername = a@example.com\nsecret = x\n")
    assert cli.main(["-c", str(good), "check-config"]) == 0


def test_import_xmpp_conf_prints_accounts(tmp_path, capsys):
    """import-xmpp-conf turns res_xmpp client sections into agi_xmpp.conf accounts."""
    conf = tmp_path / "xmpp.conf"
    conf.write_text(
        "[general]\nautoprune = no\n[asterisk]\ntype = client\nserverhost = talk.example.com\n"
        "username = asterisk@example.com/pbx\nsecret = pw\nbuddy = bob@example.com\n"
    )
    assert cli.main(["import-xmpp-conf", str(conf)]) == 0
    out = capsys.readouterr().out
    assert "[asterisk]" in out and "serverhost = talk.example.com" in out and "bob@example.com" in out


def test_show_without_a_running_service_is_a_clear_error(tmp_path, capsys):
    """`show connections` with nothing listening says it cannot reach the service."""
    path = tmp_path / "c.conf"
    path.write_text("[general]\nhttp_bind = 127.0.0.1:1\n")
    assert cli.main(["-c", str(path), "show", "connections"]) == 1
    assert "cannot reach the running service" in capsys.readouterr().err




async def test_presence_board_and_its_data(prosody, xmpp_accounts, xmpp_client, tmp_path):
    """GET / serves the board page; /api/board gives each extension's availability to anyone on
    loopback, /api/presence (token) adds the JID and status text."""
    from agi_xmpp.config import DirectoryEntry

    jid, password = xmpp_accounts("asterisk")
    bob_jid, bob_pw = xmpp_accounts("bob")
    directory = (DirectoryEntry("201", bob_jid), DirectoryEntry("202", "nobody@localhost"))
    config = service_config(prosody, jid, password, tmp_path, directory=directory)
    async with running_harness(config, http=True) as svc:
        bob = await xmpp_client(bob_jid, bob_pw)
        bob.subscribe(jid)
        await settle_presence(svc, bob, bob_jid, 5, show="dnd", status="<b>in a meeting</b>")
        status, page = await asyncio.to_thread(http_get, svc, "/", token=False)
        assert status == 200 and b"Presence board" in page and b"api/board" in page
        status, board = await asyncio.to_thread(http_get, svc, "/api/board", token=False)
        assert status == 200
        assert {e["extension"]: e for e in json.loads(board)["entries"]}["201"] == {
            "extension": "201", "code": 5, "show": "dnd"}  # no JID, no status text without the token
        status, body = await asyncio.to_thread(http_get, svc, "/api/presence")
    assert status == 200
    entries = {e["extension"]: e for e in json.loads(body)["entries"]}
    assert entries["201"]["show"] == "dnd" and entries["201"]["message"] == "<b>in a meeting</b>"
    assert entries["202"]["code"] == 7
