"""LocalProsody really runs a Prosody that clients can use, break and bring back."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from tools.local_prosody import LocalProsody, LocalProsodyError, ensure_demo, stop_demo

from xmpp_client import XmppConnectError, XmppTestClient  # tests/integration is on sys.path (rootdir-relative "prepend" import)

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that may never come counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_config_listens_on_loopback_only(prosody: LocalProsody) -> None:
    """The generated config binds 127.0.0.1 only, requires TLS, has no s2s, mam or limits."""
    text = prosody.config_path.read_text()
    assert 'interfaces = { "127.0.0.1" }' in text
    assert "c2s_require_encryption = true" in text
    assert 'modules_disabled = { "s2s" }' in text
    assert '"mam"' not in text and '"limits"' not in text
    assert "allow_registration = false" in text
    assert prosody.is_running and prosody.c2s_port != prosody.http_port
    assert prosody.muc_domain == "conference.localhost"
    assert prosody.upload_domain == "upload.localhost"


def test_certificate_covers_domain_and_components(prosody: LocalProsody) -> None:
    """A TLS handshake verified against cert_path succeeds for the domain and both components."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(prosody.cert_path, prosody.key_path)
    client_ctx = ssl.create_default_context(cafile=str(prosody.cert_path))
    for name in ("localhost", "conference.localhost", "upload.localhost", "example.org"):
        a, b = socket.socketpair()
        with a, b:
            worker = threading.Thread(target=_serve_handshake, args=(server_ctx, b))
            worker.start()
            try:
                with client_ctx.wrap_socket(a, server_hostname=name):
                    verified = True
            except ssl.SSLCertVerificationError:
                verified = False
            worker.join(5)
        assert verified == (name != "example.org"), name


def _serve_handshake(ctx: ssl.SSLContext, sock: socket.socket) -> None:
    try:
        ctx.wrap_socket(sock, server_side=True).close()
    except (ssl.SSLError, OSError):
        pass


async def test_two_users_exchange_messages_with_verified_tls(xmpp_accounts, xmpp_client) -> None:
    """Two registered users talk through Prosody, both verifying TLS against cert_path."""
    alice_jid, alice_pw = xmpp_accounts("alice")
    bob_jid, bob_pw = xmpp_accounts("bob")
    alice = await xmpp_client(alice_jid, alice_pw)
    bob = await xmpp_client(bob_jid, bob_pw)
    sent_id = alice.send_message(bob_jid, "hello bob, ünïcode & <xml>")
    got = await bob.next_message(timeout=5, sender=alice_jid)
    assert got.body == "hello bob, ünïcode & <xml>"
    assert got.sender_bare == alice_jid and got.type == "chat" and got.id == sent_id
    bob.send_message(alice.full_jid, "hi alice")
    assert (await alice.next_message(timeout=5, sender=bob_jid)).body == "hi alice"


async def test_presence_reaches_a_subscribed_contact(xmpp_accounts, xmpp_client) -> None:
    """After mutual subscription, show/status/priority changes reach the contact."""
    alice_jid, alice_pw = xmpp_accounts("alice")
    bob_jid, bob_pw = xmpp_accounts("bob")
    alice = await xmpp_client(alice_jid, alice_pw)
    bob = await xmpp_client(bob_jid, bob_pw)
    await alice.befriend(bob)
    bob.send_presence(show="dnd", status="in a meeting", priority=7)
    while True:
        pres = await alice.next_presence(timeout=5, sender=bob_jid, type="available")
        if pres.show == "dnd":
            break
    assert pres.status == "in a meeting" and pres.priority == 7
    bob.send_presence(show="unavailable")
    # (the subscription handshake may also have produced an unavailable from the bare JID)
    gone = await alice.next_presence(timeout=5, sender=bob.full_jid, type="unavailable")
    assert gone.sender == bob.full_jid


async def test_client_without_cafile_is_refused(prosody: LocalProsody, xmpp_accounts) -> None:
    """A verifying client with only the system CAs refuses the self-signed server."""
    jid, pw = xmpp_accounts("nocafile")
    client = XmppTestClient(jid, pw, host=prosody.host, port=prosody.c2s_port)
    with pytest.raises(XmppConnectError, match="certificate verification failed"):
        await client.connect(timeout=5)
    await client.disconnect()


async def test_unverified_client_connects(prosody: LocalProsody, xmpp_accounts) -> None:
    """With verification explicitly off (tls_verify = no) the same server is accepted."""
    jid, pw = xmpp_accounts("noverify")
    client = XmppTestClient(jid, pw, host=prosody.host, port=prosody.c2s_port, verify=False)
    await client.connect(timeout=5)
    assert client.is_connected
    await client.disconnect()


async def test_wrong_password_is_refused(prosody: LocalProsody, xmpp_accounts) -> None:
    """SCRAM authentication with a wrong password fails cleanly (no hang)."""
    jid, _ = xmpp_accounts("wrongpw")
    client = XmppTestClient.for_prosody(prosody, jid, "not-the-password")
    with pytest.raises(XmppConnectError, match="authentication failed"):
        await client.connect(timeout=5)
    await client.disconnect()


async def test_prosodyctl_path_registers_non_ascii_accounts(prosody: LocalProsody,
                                                            xmpp_client) -> None:
    """Names and passwords outside the fast path go through prosodyctl and still log in."""
    jid = prosody.register("Zoë-test", "pässwörd ü")
    assert jid == "zoë-test@localhost"
    client = await xmpp_client(jid, "pässwörd ü")
    assert client.is_connected


async def test_kill_and_restart_keeps_accounts_and_ports(private_prosody: LocalProsody,
                                                         xmpp_client) -> None:
    """After SIGKILL, restart() serves the same ports and data: old accounts still log in."""
    server = private_prosody
    alice_jid = server.register("alice", "alice-pw")
    port, old_pid = server.c2s_port, server.pid
    alice = await xmpp_client(alice_jid, "alice-pw", server=server)
    server.kill()
    assert not server.is_running
    assert server.pidfile.exists()  # a crash leaves the pidfile behind
    for _ in range(100):
        if not alice.is_connected:
            break
        await asyncio.sleep(0.02)
    assert not alice.is_connected
    server.restart()
    assert server.is_running and server.c2s_port == port and server.pid != old_pid
    again = await xmpp_client(alice_jid, "alice-pw", server=server)
    assert again.is_connected


async def test_pause_hangs_the_server_and_resume_delivers(private_prosody: LocalProsody,
                                                          xmpp_client) -> None:
    """SIGSTOP: nothing is delivered and new sessions cannot start; SIGCONT: all resumes."""
    server = private_prosody
    alice_jid = server.register("alice", "pw-a")
    bob_jid = server.register("bob", "pw-b")
    alice = await xmpp_client(alice_jid, "pw-a", server=server)
    bob = await xmpp_client(bob_jid, "pw-b", server=server)
    server.pause()
    assert server.is_paused and server.is_running
    alice.send_message(bob_jid, "sent while paused")
    await bob.no_message(0.5)
    late = XmppTestClient.for_prosody(server, bob_jid, "pw-b", resource="late")
    with pytest.raises(XmppConnectError, match="no session within"):
        await late.connect(timeout=1.0)  # TCP connects, stream features never come
    await late.disconnect(wait=0.1)
    server.resume()
    assert not server.is_paused
    got = await bob.next_message(timeout=5, sender=alice_jid)
    assert got.body == "sent while paused"


async def test_muc_room_join_and_groupchat(prosody: LocalProsody, xmpp_accounts,
                                           xmpp_client) -> None:
    """Anyone can create a room on the MUC component; occupants get each other's messages."""
    alice_jid, alice_pw = xmpp_accounts("alice")
    bob_jid, bob_pw = xmpp_accounts("bob")
    alice = await xmpp_client(alice_jid, alice_pw)
    bob = await xmpp_client(bob_jid, bob_pw)
    room = f"room-{os.getpid()}-{time.monotonic_ns()}@{prosody.muc_domain}"
    await alice.join_room(room, "alice")
    await bob.join_room(room, "bob")  # no lock: a second occupant can join a new room at once
    alice.send_group_message(room, "hello room")
    got = await bob.next_message(timeout=5, sender=room, mtype="groupchat")
    assert got.body == "hello room" and got.sender == f"{room}/alice"


async def test_http_file_share_upload(prosody: LocalProsody, xmpp_accounts,
                                      xmpp_client) -> None:
    """XEP-0363: a slot from upload.<domain> accepts a PUT and serves the file over plain http."""
    jid, pw = xmpp_accounts("uploader")
    client = await xmpp_client(jid, pw)
    data = b"RIFF fake voicemail bytes"
    url = await client.xmpp.plugin["xep_0363"].upload_file(
        "vm.wav", size=len(data), content_type="audio/x-wav",
        input_file=io.BytesIO(data), domain=prosody.domain, timeout=5,
    )
    assert url.startswith(f"http://127.0.0.1:{prosody.http_port}/file_share/")
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == data


def test_leftover_from_crashed_run_is_killed_on_start(tmp_path: Path) -> None:
    """A Prosody left running on the same workdir by a dead process is killed on start()."""
    c2s, http = _free_port(), _free_port()
    script = (
        "import sys; from tools.local_prosody import LocalProsody; "
        f"p = LocalProsody(sys.argv[1], c2s_port={c2s}, http_port={http}, detach=True); "
        "p.start(); print(p.pid)"
    )
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=30, check=True)
    orphan_pid = int(out.stdout.strip())
    os.kill(orphan_pid, 0)  # its owner is gone, it still runs
    server = LocalProsody(tmp_path, c2s_port=c2s, http_port=http)
    try:
        server.start()
        assert server.is_running and server.pid != orphan_pid
        assert not _alive(orphan_pid), f"leftover prosody {orphan_pid} still alive"
    finally:
        server.stop()
    assert not server.is_running


def test_context_manager_starts_and_stops(tmp_path: Path) -> None:
    """`with LocalProsody(dir) as p:` serves c2s inside the block and nothing after it."""
    with LocalProsody(tmp_path) as server:
        assert server.is_running
        with socket.create_connection(("127.0.0.1", server.c2s_port), timeout=1):
            pass
        port = server.c2s_port
    assert not server.is_running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


def test_start_returns_once_c2s_accepts_connections(tmp_path: Path) -> None:
    """start() returns only when the c2s port accepts connections (how long it takes is for
    make bench, not a test)."""
    with LocalProsody(tmp_path) as server:
        socket.create_connection(("127.0.0.1", server.c2s_port), timeout=30).close()


async def test_ensure_demo_is_idempotent_and_usable(tmp_path: Path) -> None:
    """ensure_demo starts once, reuses the running server and passwords, and its accounts work."""
    c2s, http = _free_port(), _free_port()
    demo = ensure_demo(tmp_path, c2s_port=c2s, http_port=http)
    try:
        assert demo.jid == "asterisk@localhost" and demo.port == c2s and demo.host == "127.0.0.1"
        assert set(demo.users) == {"alice", "bob"}
        saved = json.loads(demo.accounts_file.read_text())
        assert saved["passwords"]["asterisk"] == demo.password
        assert (demo.accounts_file.stat().st_mode & 0o777) == 0o600
        again = ensure_demo(tmp_path, c2s_port=c2s, http_port=http)
        assert again.prosody.pid == demo.prosody.pid and again.password == demo.password
        service = XmppTestClient(demo.jid, demo.password, host=demo.host, port=demo.port,
                                 cafile=demo.cafile)
        alice_jid, alice_pw = demo.users["alice"]
        alice = XmppTestClient(alice_jid, alice_pw, host=demo.host, port=demo.port,
                               cafile=demo.cafile)
        await service.connect(5)
        await alice.connect(5)
        alice.send_message(demo.jid, "call 100")
        assert (await service.next_message(5, sender=alice_jid)).body == "call 100"
        await asyncio.gather(service.disconnect(), alice.disconnect())
        assert "cafile = " in demo.account_conf()
    finally:
        assert stop_demo(tmp_path, c2s_port=c2s, http_port=http)
    assert not demo.prosody.is_running


def test_failed_start_raises_with_log_tail(tmp_path: Path) -> None:
    """When Prosody dies during start-up, start() raises LocalProsodyError quoting its output."""
    server = LocalProsody(tmp_path, extra_config="this is not lua {")
    with pytest.raises(LocalProsodyError, match="exited with status") as failure:
        server.start()
    assert "prosody.cfg.lua" in str(failure.value)  # Prosody's own complaint is quoted
    assert not server.is_running


def test_optional_mam_and_limits_load(tmp_path: Path) -> None:
    """mam=True and limits=True produce a config Prosody starts with."""
    with LocalProsody(tmp_path, mam=True, limits=True) as server:
        text = server.config_path.read_text()
        assert '"mam"' in text and '"limits"' in text and 'rate = "10kb/s"' in text
    assert "error" not in server.log_path.read_text().lower()
