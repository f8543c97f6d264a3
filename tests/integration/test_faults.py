"""Nothing lost, nothing injected: jabber_send under server crashes, outages, dead links and
killed services (docs/reliability.md), through a real Prosody.

Every test sends numbered bodies and checks, at the recipient, that each body arrived at least
once and that any copy seen twice carries the same stanza id both times (a retransmission the
receiver can drop, never a new message). Figures (recovery times, counts) are printed as
``FIGURE name {...}`` lines: run with ``-rP`` to see them; docs/reliability.md quotes them.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from fake_asterisk import agi_call
from service_harness import ServiceHarness, eventually, running_harness, service_config
from service_process import ServiceProcess
from structlog.testing import capture_logs
from xmpp_client import ReceivedMessage, XmppTestClient

from agi_xmpp.config import Config
from tools.local_prosody import LocalProsody

pytestmark = pytest.mark.integration

ACCOUNT = "asterisk"


# -- helpers ----------------------------------------------------------------------------------


def figure(name: str, **values: object) -> None:
    """Print a measured figure for docs/reliability.md (visible with ``pytest -rP``)."""
    print(f"FIGURE {name} {json.dumps(values, sort_keys=True)}")


@dataclasses.dataclass
class People:
    service_jid: str
    service_pw: str
    bob_jid: str
    bob_pw: str


def register_people(server: LocalProsody) -> People:
    tag = secrets.token_hex(3)
    service_pw, bob_pw = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    return People(
        server.register(f"asterisk-{tag}", service_pw), service_pw,
        server.register(f"bob-{tag}", bob_pw), bob_pw,
    )


def fast_config(server: LocalProsody, people: People, state_dir: Path, *, host: str | None = None,
                port: int | None = None, keepalive: int = 60, max_delay: int = 2) -> Config:
    """The in-process service on ``server`` (or a proxy in front of it), with a short back-off cap."""
    config = service_config(server, people.service_jid, people.service_pw, state_dir, name=ACCOUNT)
    account = config.accounts[ACCOUNT]
    if port is not None:
        account = dataclasses.replace(account, serverhost=host or "127.0.0.1", port=port)
    general = dataclasses.replace(
        config.general, keepalive_interval=keepalive, reconnect_max_delay=max_delay
    )
    return dataclasses.replace(config, general=general, accounts={ACCOUNT: account})


async def send_all(port: int, to: str, bodies: list[str], *, concurrency: int = 20,
                   on_done: Callable[[str], None] | None = None) -> list[str]:
    """jabber_send every body through FastAGI, ``concurrency`` calls at a time; the statuses."""
    gate = asyncio.Semaphore(concurrency)
    statuses = [""] * len(bodies)

    async def one(index: int, body: str) -> None:
        async with gate:
            result = await agi_call(port, "jabber_send", ACCOUNT, to, body)
        statuses[index] = result.variables.get("JABBER_SEND_STATUS", "")
        if on_done is not None:
            on_done(statuses[index])

    await asyncio.gather(*(one(i, body) for i, body in enumerate(bodies)))
    return statuses


async def receive_all(client: XmppTestClient, sender: str, bodies: Iterable[str],
                      timeout: float = 60.0) -> list[ReceivedMessage]:
    """Wait until every body has arrived from ``sender``; every message from it, in order."""
    wanted = set(bodies)

    def mine() -> list[ReceivedMessage]:
        return [m for m in client.messages if m.sender_bare == sender]

    try:
        await eventually(lambda: wanted <= {m.body for m in mine()}, timeout, "every body")
    except AssertionError:
        missing = sorted(wanted - {m.body for m in mine()})
        raise AssertionError(f"{len(missing)} of {len(wanted)} bodies never arrived: {missing[:10]}") from None
    return mine()


def check_delivery(messages: list[ReceivedMessage], bodies: list[str]) -> int:
    """Every body at least once, nothing else, and a duplicate only with the same id; returns
    how many duplicate copies the receiver saw (retransmissions it can drop by id)."""
    ids: dict[str, set[str]] = collections.defaultdict(set)
    for message in messages:
        ids[message.body].add(message.id)
    assert set(ids) == set(bodies), f"unexpected bodies: {sorted(set(ids) - set(bodies))[:10]}"
    injected = {body: got for body, got in ids.items() if len(got) != 1}
    assert not injected, f"bodies seen with different ids (a new message, not a retransmission): {injected}"
    assert all(message.id.startswith("agx-") for message in messages)
    return len(messages) - len(bodies)


async def pending_rows(svc: ServiceHarness) -> int:
    counts = await svc.services.storage.outbox_counts()
    return counts.get((ACCOUNT, "pending"), 0)


async def connect_bob(xmpp_client: Callable, server: LocalProsody, people: People) -> XmppTestClient:
    return await xmpp_client(people.bob_jid, people.bob_pw, server=server, timeout=30)


class StallingProxy:
    """A TCP proxy in front of a server whose path can go silent, as when a NAT or firewall
    drops a connection's state: after ``stall()`` every open connection forwards nothing, in
    either direction, and is never closed (no FIN, no RST) until ``close()``; new connections
    are refused until ``restore()``; after it, new connections work again."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.stalled = False
        self.connections = 0
        self._server: asyncio.base_events.Server | None = None
        self._live: list[list[asyncio.StreamWriter | bool]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> StallingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    def stall(self) -> None:
        self.stalled = True
        for pair in self._live:
            pair[2] = True  # silent from now on

    def restore(self) -> None:
        self.stalled = False

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pair in self._live:
            for writer in pair[:2]:
                writer.transport.abort()  # type: ignore[union-attr]
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.stalled:
            writer.transport.abort()
            return
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        pair: list[asyncio.StreamWriter | bool] = [writer, up_writer, False]
        self._live.append(pair)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst, pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, pair: list) -> None:
        try:
            while data := await src.read(65536):
                if not pair[2]:
                    dst.write(data)
        except ConnectionError:
            pass
        if not pair[2]:  # a healthy path passes the close on; a dead one stays silent
            dst.transport.abort()


# -- (a) Prosody crashes in the middle of a burst ----------------------------------------------


@pytest.mark.slow
async def test_prosody_killed_mid_stream_of_1000_sends_loses_nothing(
    private_prosody, xmpp_client, tmp_path
):
    """Prosody SIGKILLed after 300 of 1,000 concurrent sends and back 5 s later: every call said
    SUCCESS or QUEUED and the recipient gets all 1,000 (duplicates only with the same id)."""
    people = register_people(private_prosody)
    bodies = [f"burst {n:04d}" for n in range(1000)]
    config = fast_config(private_prosody, people, tmp_path, max_delay=2)
    async with running_harness(config) as svc:
        done = 0
        killed = asyncio.Event()

        def on_done(_status: str) -> None:
            nonlocal done
            done += 1
            if done == 300:
                killed.set()

        sending = asyncio.create_task(send_all(svc.port, people.bob_jid, bodies, on_done=on_done))
        await killed.wait()
        private_prosody.kill()
        killed_at = time.monotonic()
        await asyncio.sleep(5)  # the outage itself: Prosody stays dead for 5 s
        await asyncio.to_thread(private_prosody.start)
        back_at = time.monotonic()
        await svc.wait_online(30)
        online_after = time.monotonic() - back_at
        statuses = await sending
        assert set(statuses) <= {"SUCCESS", "QUEUED"}, collections.Counter(statuses)
        await eventually(_no_pending(svc), 60, "every outbox row to be acknowledged")
        drained_after = time.monotonic() - back_at
        counters = dataclasses.asdict(svc.pool.counters)
    bob = await connect_bob(xmpp_client, private_prosody, people)
    messages = await receive_all(bob, people.service_jid, bodies, timeout=60)
    duplicates = check_delivery(messages, bodies)
    figure(
        "prosody_sigkill_1000",
        statuses=dict(collections.Counter(statuses)),
        outage_s=round(back_at - killed_at, 1),
        online_after_restart_s=round(online_after, 2),
        outbox_drained_after_restart_s=round(drained_after, 2),
        retransmitted=counters["retransmitted"],
        duplicates_seen_by_recipient=duplicates,
    )


def _no_pending(svc: ServiceHarness) -> Callable[[], object]:
    async def check() -> bool:
        return await pending_rows(svc) == 0

    return check


# -- (b) an outage longer than the back-off cap --------------------------------------------------


async def test_outage_longer_than_backoff_cap_queues_then_delivers(
    private_prosody, xmpp_client, tmp_path
):
    """With Prosody down for 4x the back-off cap, sends are QUEUED, no retry waits longer than
    the cap, and once Prosody is back the session returns within the cap and delivers them."""
    cap = 2
    people = register_people(private_prosody)
    bodies = [f"while down {n}" for n in range(20)]
    async with running_harness(fast_config(private_prosody, people, tmp_path, max_delay=cap)) as svc:
        with capture_logs() as logs:
            private_prosody.kill()
            await eventually(lambda: not svc.pool.all_online(), 60, "the session to notice")
            statuses = await send_all(svc.port, people.bob_jid, bodies)
            await asyncio.sleep(4 * cap)  # the outage itself, long enough to reach the cap
            await asyncio.to_thread(private_prosody.start)
            back_at = time.monotonic()
            logged_before_back = len(logs)
            await svc.wait_online(60)
            online_after = time.monotonic() - back_at
            await eventually(_no_pending(svc), 60, "the queued rows to be acknowledged")
    assert statuses == ["QUEUED"] * len(bodies)
    delays = [e["delay"] for e in logs if e["event"] == "xmpp_reconnect_scheduled"]
    assert len(delays) >= 3 and max(delays) <= cap
    # The promise is that the next attempt comes at most `cap` seconds after the server returns
    # and succeeds: no attempt failed once it was back. At most one more wait may be scheduled
    # after `back_at`, by an attempt already under way while the server was still starting.
    # (How many seconds that took is the figure below; a busy machine stretches it.)
    retried_after_back = [e for e in logs[logged_before_back:] if e["event"] == "xmpp_reconnect_scheduled"]
    assert len(retried_after_back) <= 1, retried_after_back
    figure("reconnect_after_outage", backoff_cap_s=cap, online_after_server_back_s=round(online_after, 2))
    bob = await connect_bob(xmpp_client, private_prosody, people)
    duplicates = check_delivery(await receive_all(bob, people.service_jid, bodies), bodies)
    figure("outage_longer_than_cap", cap_s=cap, retry_delays_s=delays,
           online_after_server_back_s=round(online_after, 2), duplicates=duplicates)


# -- (c) the service itself is killed with a full outbox -----------------------------------------


@pytest.mark.slow
async def test_service_killed_with_500_queued_delivers_after_restart(
    private_prosody, xmpp_client, tmp_path
):
    """500 sends QUEUED while Prosody is down, then the service is SIGKILLed: after the service
    and Prosody come back, all 500 are delivered."""
    people = register_people(private_prosody)
    bodies = [f"queued {n:03d}" for n in range(500)]
    service = ServiceProcess(tmp_path / "service", private_prosody, people.service_jid,
                             people.service_pw, reconnect_max_delay=2)
    try:
        await service.start()
        private_prosody.kill()
        await service.wait_health(503, 10)
        statuses = await send_all(service.agi_port, people.bob_jid, bodies)
        assert statuses == ["QUEUED"] * len(bodies)
        service.kill()
        assert service.outbox_states() == {"pending": 500}
        await service.start(wait_online=False)  # Prosody still down
        await asyncio.to_thread(private_prosody.start)
        back_at = time.monotonic()
        await service.wait_health(200, 30)
        online_after = time.monotonic() - back_at
        await eventually(lambda: service.outbox_states() == {"acked": 500}, 30, "every row acked")
        drained_after = time.monotonic() - back_at
    finally:
        await service.close()
    bob = await connect_bob(xmpp_client, private_prosody, people)
    duplicates = check_delivery(await receive_all(bob, people.service_jid, bodies), bodies)
    figure("service_sigkill_500_queued", online_after_prosody_back_s=round(online_after, 2),
           drained_after_prosody_back_s=round(drained_after, 2), duplicates=duplicates)


async def test_service_killed_right_after_success_resends_unconfirmed(
    private_prosody, xmpp_client, tmp_path
):
    """Sends answered SUCCESS and the service SIGKILLed at once (before the server's
    confirmation could be recorded): after a restart every body reaches the recipient."""
    people = register_people(private_prosody)
    bodies = [f"in flight {n:02d}" for n in range(50)]
    service = ServiceProcess(tmp_path / "service", private_prosody, people.service_jid,
                             people.service_pw, reconnect_max_delay=2)
    try:
        await service.start()
        statuses = await send_all(service.agi_port, people.bob_jid, bodies, concurrency=10)
        service.kill()
        left = service.outbox_states().get("pending", 0)
        await service.start()
        await eventually(lambda: service.outbox_states() == {"acked": 50}, 30, "every row acked")
    finally:
        await service.close()
    assert statuses == ["SUCCESS"] * len(bodies)
    bob = await connect_bob(xmpp_client, private_prosody, people)
    duplicates = check_delivery(await receive_all(bob, people.service_jid, bodies), bodies)
    figure("service_sigkill_after_success", unconfirmed_at_kill=left, duplicates=duplicates)


@pytest.mark.parametrize("outage", ["killed", "hung"])
async def test_sigterm_during_an_outage_exits_promptly_and_keeps_the_queue(
    private_prosody, xmpp_client, tmp_path, outage
):
    """SIGTERM while Prosody is dead (or hung: TCP accepted, nothing answered) and messages are
    queued: the service exits cleanly within seconds, and after a restart they are delivered."""
    people = register_people(private_prosody)
    bodies = [f"queued before shutdown {n}" for n in range(20)]
    service = ServiceProcess(tmp_path / "service", private_prosody, people.service_jid,
                             people.service_pw, keepalive_interval=2, reconnect_max_delay=2)
    try:
        await service.start()
        if outage == "killed":
            private_prosody.kill()
        else:
            private_prosody.pause()
        await service.wait_health(503, 15)
        statuses = await send_all(service.agi_port, people.bob_jid, bodies)
        started = time.monotonic()
        status = service.terminate(timeout=15)
        exit_s = time.monotonic() - started
        if outage == "killed":
            await asyncio.to_thread(private_prosody.start)
        else:
            private_prosody.resume()
        await service.start()
        await eventually(lambda: service.outbox_states() == {"acked": 20}, 30, "every row acked")
    finally:
        await service.close()
    assert statuses == ["QUEUED"] * len(bodies)
    assert status == 0
    bob = await connect_bob(xmpp_client, private_prosody, people)
    duplicates = check_delivery(await receive_all(bob, people.service_jid, bodies), bodies)
    figure(f"sigterm_during_outage_{outage}", exit_s=round(exit_s, 2), duplicates=duplicates)


# -- (d) a link that goes silent -----------------------------------------------------------------


async def test_silent_link_is_detected_by_keepalive_and_replaced(
    private_prosody, xmpp_client, tmp_path
):
    """A path that goes silent without a FIN is noticed by the keepalive (a ping unanswered
    within its timeout); a send written into the dead link and one QUEUED meanwhile both arrive once a
    new connection works."""
    keepalive = 2  # keepalive_timeout = max(1, 2 / 3) = 1 s
    people = register_people(private_prosody)
    proxy = await StallingProxy(private_prosody.host, private_prosody.c2s_port).start()
    config = fast_config(private_prosody, people, tmp_path, port=proxy.port, keepalive=keepalive)
    bob = await connect_bob(xmpp_client, private_prosody, people)
    try:
        async with running_harness(config) as svc:
            with capture_logs() as logs:
                proxy.stall()
                stalled_at = time.monotonic()
                into_the_void = await svc.call("jabber_send", ACCOUNT, people.bob_jid, "into the void")
                await eventually(lambda: not svc.pool.all_online(), 60, "the dead link to be noticed")
                detected_after = time.monotonic() - stalled_at
                queued = await svc.call("jabber_send", ACCOUNT, people.bob_jid, "while offline")
                proxy.restore()
                restored_at = time.monotonic()
                await svc.wait_online(30)
                online_after = time.monotonic() - restored_at
                messages = await receive_all(bob, people.service_jid, ["into the void", "while offline"], 30)
                await eventually(_no_pending(svc), 60, "both rows to be acknowledged")
    finally:
        await proxy.close()
    assert into_the_void.variables["JABBER_SEND_STATUS"] == "SUCCESS"
    assert queued.variables["JABBER_SEND_STATUS"] == "QUEUED"
    assert any(e["event"] == "xmpp_keepalive_timeout" for e in logs)
    # Noticed by the keepalive itself (a ping unanswered), not by TCP; how soon is the figure
    # below, not an assertion: a busy machine delays it.
    resumed = [e["resumed"] for e in logs if e["event"] == "xmpp_session_online"]
    duplicates = check_delivery(messages, ["into the void", "while offline"])
    figure("silent_link", keepalive_interval_s=keepalive, detected_after_s=round(detected_after, 2),
           online_after_path_back_s=round(online_after, 2), resumed=resumed, duplicates=duplicates)


async def test_hung_server_is_abandoned_by_the_watchdog_and_retried(
    private_prosody, xmpp_client, tmp_path
):
    """A server that accepts TCP but never answers (SIGSTOP) is noticed by the keepalive, each
    hung negotiation is abandoned by the watchdog, and the session returns once the server
    does; a message sent meanwhile is QUEUED and delivered."""
    people = register_people(private_prosody)
    config = fast_config(private_prosody, people, tmp_path, keepalive=2, max_delay=1)
    async with running_harness(config) as svc:
        session = svc.pool.sessions[ACCOUNT]
        session._negotiation_timeout = 2.0  # the watchdog (20 s in production), shortened
        with capture_logs() as logs:
            private_prosody.pause()
            try:
                await eventually(lambda: not svc.pool.all_online(), 60, "the hung server to be noticed")
                queued = await svc.call("jabber_send", ACCOUNT, people.bob_jid, "during the hang")
                await eventually(
                    lambda: any("timed out" in str(e.get("error")) for e in logs
                                if e["event"] == "xmpp_connect_failed"),
                    15, "the negotiation watchdog to fire",
                )
            finally:
                private_prosody.resume()
            resumed_at = time.monotonic()
            await svc.wait_online(30)
            online_after = time.monotonic() - resumed_at
            await eventually(_no_pending(svc), 60, "the queued row to be acknowledged")
    assert queued.variables["JABBER_SEND_STATUS"] == "QUEUED"
    bob = await connect_bob(xmpp_client, private_prosody, people)
    duplicates = check_delivery(await receive_all(bob, people.service_jid, ["during the hang"]),
                                ["during the hang"])
    watchdog = sum(1 for e in logs if e["event"] == "xmpp_connect_failed" and "timed out" in str(e.get("error")))
    figure("hung_server", watchdog_aborts=watchdog, online_after_resume_s=round(online_after, 2),
           duplicates=duplicates)


# -- (e) a resumption the server refuses ----------------------------------------------------------


async def test_refused_resumption_falls_back_to_a_fresh_session_and_resends(
    private_prosody, xmpp_client, tmp_path
):
    """After a Prosody restart the old stream id is unknown: the resumption is refused, the
    session starts fresh (resumed=False) and the messages QUEUED meanwhile are sent."""
    people = register_people(private_prosody)
    bodies = [f"after restart {n}" for n in range(10)]
    async with running_harness(fast_config(private_prosody, people, tmp_path)) as svc:
        client = svc.pool.sessions[ACCOUNT]._client
        assert client is not None
        old_stream = client.plugin["xep_0198"].sm_id
        assert old_stream, "the server offered no resumable stream"
        refused: list[object] = []
        client.add_event_handler("sm_failed", refused.append)
        with capture_logs() as logs:
            await asyncio.to_thread(private_prosody.stop)
            await eventually(lambda: not svc.pool.all_online(), 60, "the session to notice")
            statuses = await send_all(svc.port, people.bob_jid, bodies)
            await asyncio.to_thread(private_prosody.start)
            await svc.wait_online(30)
            await eventually(_no_pending(svc), 60, "the queued rows to be acknowledged")
        new_stream = client.plugin["xep_0198"].sm_id
    assert statuses == ["QUEUED"] * len(bodies)
    assert refused, "no resumption was attempted and refused"
    assert [e["resumed"] for e in logs if e["event"] == "xmpp_session_online"] == [False]
    assert new_stream and new_stream != old_stream
    bob = await connect_bob(xmpp_client, private_prosody, people)
    duplicates = check_delivery(await receive_all(bob, people.service_jid, bodies), bodies)
    figure("refused_resumption", duplicates=duplicates)
