"""The one place where logging is configured: structlog for our events, stdlib for libraries.

Secrets and message bodies never reach an ``info`` log: our own events do not carry them, and
``redact_secrets`` replaces them anyway should a key named like one slip through. slixmpp logs
whole stanzas (bodies included) at DEBUG, so its logger stays at WARNING unless we run at debug.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
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
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=numeric, stream=stream or sys.stderr, format="%(levelname)s %(name)s: %(message)s", force=True)
    library_level = logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING
    for name in ("slixmpp", "panoramisk", "aiohttp.access", "asyncio"):
        logging.getLogger(name).setLevel(library_level)
