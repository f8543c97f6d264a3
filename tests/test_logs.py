"""Logs cannot be filled on demand: repeated warnings, errors and tracebacks are rate limited."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from fakes import FakeClock

from agi_xmpp import logs


def test_rate_limiter_passes_a_burst_then_counts():
    """burst events per key per window pass; the rest are counted and reported with the next."""
    clock = FakeClock()
    limiter = logs.RateLimiter(burst=3, window=60, clock=clock)
    assert [limiter.check("k") for _ in range(10)] == [0, 0, 0] + [None] * 7
    assert limiter.check("other") == 0  # keys are independent
    clock.now += 60
    assert limiter.check("k") == 7  # the first of the new window carries the count
    assert limiter.check("k") == 0


def test_rate_limiter_memory_is_bounded():
    """Thousands of distinct keys never grow the table past max_keys."""
    limiter = logs.RateLimiter(burst=1, window=60, clock=FakeClock(), max_keys=100)
    for n in range(10_000):
        assert limiter.check(n) == 0
    assert len(limiter._windows) <= 100


@pytest.fixture
def output(monkeypatch):
    """Configure logging as the service does, into a buffer, with a fresh limiter and clock."""
    clock = FakeClock()
    monkeypatch.setattr(logs, "_limiter", logs.RateLimiter(clock=clock))
    stream = io.StringIO()
    logs.configure("info", "json", stream=stream)
    yield stream, clock
    logs.configure("info", "console")


def test_a_storm_of_tracebacks_writes_a_few(output):
    """200 identical failures with tracebacks (a database outage, forged stanzas) write 5
    events; the first after the window says how many were suppressed."""
    stream, clock = output
    log = structlog.get_logger("agi_xmpp.test")
    for _ in range(200):
        try:
            raise ConnectionError("database is down")
        except ConnectionError:
            log.exception("agi_script_failed", script="jabber_send")
    log.info("routine_event")  # info events are never limited
    lines = stream.getvalue().splitlines()
    assert len(lines) == 6
    assert sum("Traceback" in line for line in lines) == 5
    clock.now += 61
    try:
        raise ConnectionError("database is down")
    except ConnectionError:
        log.exception("agi_script_failed", script="jabber_send")
    last = json.loads(stream.getvalue().splitlines()[-1])
    assert last["suppressed"] == 195


def test_different_errors_are_limited_separately(output):
    """Another event (or another exception type) still gets through while one is suppressed."""
    stream, _ = output
    log = structlog.get_logger("agi_xmpp.test")
    for _ in range(50):
        log.warning("http_refused", reason="host")
    log.warning("connection_budget_full", listener="agi")
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events.count("http_refused") == 5 and events.count("connection_budget_full") == 1


def test_library_tracebacks_are_limited_too(output):
    """A library's stdlib log records (slixmpp's "Error processing stanza") are limited alike."""
    stream, _ = output
    library = logging.getLogger("slixmpp.xmlstream.xmlstream")
    for _ in range(100):
        try:
            raise ValueError("forged roster push")
        except ValueError:
            library.exception("Error handling {jabber:client}iq stanza")
    text = stream.getvalue()
    assert text.count("Error handling") == 5
    assert text.count("Traceback") == 5
