"""The one place where logging is configured: structlog for our events, stdlib for libraries.

Secrets and message bodies never reach an ``info`` log: our own events do not carry them, and
``redact_secrets`` replaces them anyway should a key named like one slip through. slixmpp logs
whole stanzas (bodies included) at DEBUG, so its logger stays at WARNING unless we run at debug.

Repeated warnings and errors are rate limited (``RateLimiter``): a peer that can provoke an
error on demand (a forged roster push, a request during a database outage) must not be able to
fill the disk. The first ``burst`` events of a kind per ``window`` seconds are written; the rest
are counted, and the next one written after the window carries ``suppressed=N``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Hashable, MutableMapping
from typing import Any

import structlog

SECRET_KEYS = frozenset({"secret", "password", "token", "body", "message_body", "authorization"})


def redact_secrets(_logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace secret-looking values; bodies are kept only in debug events."""
    for key in SECRET_KEYS & event.keys():
        if key in ("body", "message_body") and method == "debug":
            continue
        event[key] = "[redacted]"
    return event


class RateLimiter:
    """At most ``burst`` events per key per ``window`` seconds; counts what it holds back.

    ``check(key)`` returns None to drop the event, else how many of that key were dropped since
    the last one let through (usually 0). Pure, clock injected; memory bounded by ``max_keys``.
    """

    def __init__(
        self,
        burst: int = 5,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 4096,
    ) -> None:
        self.burst = burst
        self.window = window
        self._clock = clock
        self._max_keys = max_keys
        self._windows: dict[Hashable, list[float]] = {}  # key -> [start, passed, dropped]
        self.dropped = 0  # every event held back, for tests and metrics

    def check(self, key: Hashable) -> int | None:
        now = self._clock()
        state = self._windows.get(key)
        if state is None or now - state[0] >= self.window:
            dropped = int(state[2]) if state is not None else 0
            if state is None and len(self._windows) >= self._max_keys:
                self._windows = {k: v for k, v in self._windows.items() if now - v[0] < self.window}
                if len(self._windows) >= self._max_keys:
                    self._windows.clear()
            self._windows[key] = [now, 1, 0]
            return dropped
        if state[1] < self.burst:
            state[1] += 1
            return 0
        state[2] += 1
        self.dropped += 1
        return None


_LIMITED_METHODS = frozenset({"warning", "warn", "error", "critical", "exception", "fatal"})
_limiter = RateLimiter()


def rate_limit_repeats(_logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop repeats of a warning/error event (same event name, level and exception type)."""
    exc_info = event.get("exc_info")
    if method not in _LIMITED_METHODS and not exc_info:
        return event
    exc_type = None
    if exc_info:
        if isinstance(exc_info, BaseException):
            exc_type = type(exc_info).__name__
        elif isinstance(exc_info, tuple) and exc_info and exc_info[0] is not None:
            exc_type = exc_info[0].__name__
        else:
            current = sys.exc_info()[0]
            exc_type = current.__name__ if current is not None else None
    dropped = _limiter.check((event.get("event"), method, exc_type))
    if dropped is None:
        raise structlog.DropEvent
    if dropped:
        event["suppressed"] = dropped
    return event


class RepeatFilter(logging.Filter):
    """The same for libraries' stdlib log records (slixmpp's tracebacks): warning and up."""

    def __init__(self, limiter: RateLimiter | None = None) -> None:
        super().__init__()
        self.limiter = limiter or _limiter

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        exc_type = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        dropped = self.limiter.check((record.name, record.levelno, str(record.msg)[:200], exc_type))
        if dropped is None:
            return False
        if dropped:
            record.msg = f"{record.msg} [{dropped} similar messages suppressed]"
        return True


def configure(level: str = "info", fmt: str = "console", stream: Any = None) -> None:
    """Configure structlog and the stdlib root logger (idempotent)."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            rate_limit_repeats,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=numeric, stream=stream or sys.stderr, format="%(levelname)s %(name)s: %(message)s", force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RepeatFilter())
    library_level = logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING
    for name in ("slixmpp", "panoramisk", "aiohttp.access", "asyncio"):
        logging.getLogger(name).setLevel(library_level)
