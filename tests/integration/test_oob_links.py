"""A chat whose whole body is one link carries XEP-0066 out-of-band data (xmpp_session)."""

from __future__ import annotations

from service_harness import running_harness, service_config

from agi_xmpp.jid import parse_jid


async def test_a_bare_link_gets_oob_and_text_around_a_link_does_not(prosody, xmpp_accounts, xmpp_client, tmp_path):
    """'https://…' alone → <x xmlns='jabber:x:oob'><url> with the same URL; 'see https://…' → none."""
    service_jid, service_pw = xmpp_accounts("asterisk")
    bob_jid, bob_pw = xmpp_accounts("bob")
    bob = await xmpp_client(bob_jid, bob_pw)
    oob: list[tuple[str, list[str]]] = []
    bob.xmpp.add_event_handler(
        "message", lambda m: oob.append((m["body"], [e.text for e in m.xml.iter("{jabber:x:oob}url")]))
    )
    config = service_config(prosody, service_jid, service_pw, tmp_path)
    async with running_harness(config) as svc:
        url = "https://upload.example.com/abc/voicemail-1.wav"
        await svc.pool.send("asterisk", parse_jid(bob_jid), url)
        await svc.pool.send("asterisk", parse_jid(bob_jid), f"see {url}")
        await bob.next_message(30, sender=service_jid)
        await bob.next_message(30, sender=service_jid)
    assert oob == [(url, [url]), (f"see {url}", [])]
