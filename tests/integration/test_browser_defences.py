"""A real headless Chromium on the PBX host attacks the real service from other origins.

The service (``agi-xmpp serve``, a real Prosody behind it, directory entry 101 → bob, device
``PJSIP/101``) listens on 127.0.0.1. An attacker's page is served by a second local HTTP server
(another port: a different origin, and "same-site" to the browser; then under ``localhost``:
cross-site). It tries what issue 10 saw work: ``fetch`` with text/plain, form and JSON bodies,
HTML form posts (``enctype="text/plain"`` forging a JSON body), DELETE, and reading the
directory, presence and the board. Afterwards: no message was sent or queued, the directory is
unchanged, and the page could read nothing. The DNS-rebinding case loads the service under a
name that resolves to 127.0.0.1 (Chromium's ``--host-resolver-rules``): refused by ``Host``.

Needs Debian's ``chromium`` (``tools/install-system-deps.sh --browser``, run by ``make test``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from aiohttp import web
from service_process import ServiceProcess, free_port

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TRUNK = "PJSIP/0900123456@trunk"

ATTACK_PAGE = """<!doctype html><html><body><pre id="result">running</pre>
<iframe name="sink1"></iframe><iframe name="sink2"></iframe><iframe name="sink3"></iframe>
<form id="f1" target="sink1" method="POST" enctype="text/plain" action="TARGET/api/messages">
<input type="hidden" name='{"account":"asterisk","to":"BOB","body":"csrf-form-plain","x":"' value='"}'></form>
<form id="f2" target="sink2" method="POST" enctype="text/plain" action="TARGET/api/directory">
<input type="hidden" name='{"extension":"101","jid":"BOB","device":"TRUNK","replace":true,"x":"' value='"}'></form>
<form id="f3" target="sink3" method="POST" action="TARGET/api/directory">
<input type="hidden" name="extension" value="101"><input type="hidden" name="jid" value="BOB">
<input type="hidden" name="device" value="TRUNK"><input type="hidden" name="replace" value="true"></form>
<script>
const target = "TARGET";
const message = JSON.stringify({account: "asterisk", to: "BOB", body: "csrf-fetch"});
const entry = JSON.stringify({extension: "101", jid: "BOB", device: "TRUNK", replace: true});
const results = {};
async function attempt(name, run) {
  try { results[name] = await run(); } catch (e) { results[name] = "blocked: " + e.message; }
}
async function send(path, init) {
  const r = await fetch(target + path, init);
  return r.type === "opaque" ? "opaque" : r.status + " " + await r.text();
}
function submitted(form, sink) {
  return new Promise(resolve => {
    const frame = document.getElementsByName(sink)[0];
    frame.onload = () => resolve("loaded");
    setTimeout(() => resolve("timeout"), 15000);
    document.getElementById(form).submit();
  });
}
(async () => {
  await attempt("text_plain_message", () => send("/api/messages", {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body: message}));
  await attempt("form_urlencoded_message", () => send("/api/messages", {method: "POST", mode: "no-cors", body: new URLSearchParams({to: "BOB", body: "csrf-form"})}));
  await attempt("json_message", () => send("/api/messages", {method: "POST", headers: {"Content-Type": "application/json"}, body: message}));
  await attempt("json_message_no_cors", () => send("/api/messages", {method: "POST", mode: "no-cors", headers: {"Content-Type": "application/json"}, body: message}));
  await attempt("text_plain_directory", () => send("/api/directory", {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body: entry}));
  await attempt("json_directory", () => send("/api/directory", {method: "POST", headers: {"Content-Type": "application/json"}, body: entry}));
  await attempt("delete_directory", () => send("/api/directory/101", {method: "DELETE"}));
  await attempt("delete_directory_no_cors", () => send("/api/directory/101", {method: "DELETE", mode: "no-cors"}));
  await attempt("read_directory", () => send("/api/directory", {}));
  await attempt("read_presence", () => send("/api/presence", {}));
  await attempt("read_board", () => send("/api/board", {}));
  await attempt("read_board_page", () => send("/", {}));
  await attempt("form_text_plain_message", () => submitted("f1", "sink1"));
  await attempt("form_text_plain_directory", () => submitted("f2", "sink2"));
  await attempt("form_urlencoded_directory", () => submitted("f3", "sink3"));
  document.getElementById("result").textContent = "RESULT " + JSON.stringify(results);
})();
</script></body></html>"""


def _chromium(url: str, profile: Path, *extra: str) -> str:
    """Load ``url`` in headless Chromium, let its scripts run, return the DOM."""
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={profile}", "--virtual-time-budget=60000", *extra, "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=False,
    )
    return proc.stdout


async def _attacker(page: str) -> tuple[web.AppRunner, int]:
    """The second local HTTP server: serves the attack page and records what it is asked."""
    async def index(_request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


@pytest.fixture
async def service(prosody, xmpp_accounts, tmp_path):
    jid, password = xmpp_accounts("asterisk")
    bob_jid, bob_password = xmpp_accounts("bob")
    svc = ServiceProcess(tmp_path / "svc", prosody, jid, password)
    with open(svc.config_path, "a") as conf:
        conf.write(f"\n[directory]\n101 = {bob_jid}, device=PJSIP/101\n")
    await svc.start()
    svc.bob = (bob_jid, bob_password)
    try:
        yield svc
    finally:
        await svc.close()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (tools/install-system-deps.sh --browser)")
@pytest.mark.parametrize("attacker_host", ["127.0.0.1", "localhost"])
async def test_pages_of_other_origins_cannot_send_or_rewrite_the_directory(service, xmpp_client, tmp_path, attacker_host):
    """From a page of another origin (same-site: another port; cross-site: localhost), no fetch
    or form post sends a message or changes the directory, and no read succeeds; a message sent
    afterwards with the token is the first bob gets."""
    bob_jid, bob_password = service.bob
    bob = await xmpp_client(bob_jid, bob_password)
    target = f"http://127.0.0.1:{service.http_port}"
    page = ATTACK_PAGE.replace("TARGET", target).replace("BOB", bob_jid).replace("TRUNK", TRUNK)
    runner, port = await _attacker(page)
    try:
        dom = await asyncio.to_thread(_chromium, f"http://{attacker_host}:{port}/", tmp_path / "profile")
    finally:
        await runner.cleanup()
    assert "RESULT " in dom, dom[-2000:]
    results = json.loads(dom.split("RESULT ", 1)[1].split("</pre>", 1)[0].replace("&amp;", "&").replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">"))
    print("FIGURE browser_attack", json.dumps({"attacker": attacker_host, **results}, sort_keys=True))
    # Every attempt ran; none of the reads returned data to the page.
    assert len(results) == 15
    for name in ("json_message", "json_directory", "delete_directory", "read_directory", "read_presence",
                 "read_board", "read_board_page"):
        assert results[name].startswith("blocked"), (name, results[name])
    for name in ("text_plain_message", "form_urlencoded_message", "json_message_no_cors",
                 "text_plain_directory", "delete_directory_no_cors"):
        assert results[name] in ("opaque",) or results[name].startswith("blocked"), (name, results[name])
    # Nothing was sent, queued or archived; the directory still says PJSIP/101.
    assert service.outbox_states() == {}
    status, entries = await service.http("GET", "/api/directory")
    assert status == 200
    assert [(e["extension"], e["device"]) for e in entries] == [("101", "PJSIP/101")]
    status, reply = await service.http("POST", "/api/messages", json={"account": "asterisk", "to": bob_jid, "body": "after"})
    assert (status, reply["status"]) == (200, "SUCCESS")
    assert (await bob.next_message(30, sender=service.jid)).body == "after"
    assert '"http_refused"' in service.log_text()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (tools/install-system-deps.sh --browser)")
async def test_dns_rebinding_name_gets_nothing(service, tmp_path):
    """A name that resolves to 127.0.0.1 (what DNS rebinding achieves) gets 421 for the board,
    its data and the API, in the browser; the real address still gets the board."""
    rule = "--host-resolver-rules=MAP rebind.evil.example 127.0.0.1"
    rebound = await asyncio.to_thread(_chromium, f"http://rebind.evil.example:{service.http_port}/api/board", tmp_path / "p1", rule)
    assert "unknown Host" in rebound and "extension" not in rebound
    page = await asyncio.to_thread(_chromium, f"http://rebind.evil.example:{service.http_port}/", tmp_path / "p2", rule)
    assert "unknown Host" in page and "Presence board" not in page
    board = await asyncio.to_thread(_chromium, f"http://127.0.0.1:{service.http_port}/", tmp_path / "p3")
    assert "Presence board" in board and "101" in board  # the board itself works on the PBX host
