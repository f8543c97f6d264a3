"""The script registry: dialplan script names → the functions that answer them, with help text.

A script is ``fn(channel, services)``, registered under a case-insensitive name:

* ``async def``: runs as an ordinary asyncio task (``asyncio.timeout()``, ``TaskGroup`` and
  everything else a coroutine may use work as usual), and sets its variables itself;
* plain ``def``: for an answer that needs no waiting (``jabber_status`` reads a cache). The
  listener calls it straight from the transport callback that completed the environment block
  and sets the variables it returns, in order, before it closes the connection: no task, no
  coroutine. It must not block.

No I/O here, and no import of the listener: the scripts import this module and ``agi_channel``
(``Services``, the second argument, only for types: see ``scripts/base.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .agi_channel import Channel

__all__ = ["AsyncScriptFn", "PlainScriptFn", "Script", "ScriptRegistry"]

AsyncScriptFn = Callable[[Channel, Any], Awaitable[None]]
PlainScriptFn = Callable[[Channel, Any], Mapping[str, str] | None]


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    fn: AsyncScriptFn | PlainScriptFn
    help: str
    plain: bool  # a plain function: called from the callback, returns the variables to set


class ScriptRegistry:
    """Dialplan script names (case-insensitive) → ``Script``."""

    def __init__(self) -> None:
        self._scripts: dict[str, Script] = {}

    def script(self, name: str, *, help: str = "") -> Callable[[Any], Any]:
        """Register the decorated function (``async def`` or plain ``def``) as script ``name``."""
        key = name.lower()
        if not key or any(c in key for c in "/?& \t"):
            raise ValueError(f"not a usable script name: {name!r}")

        def register(fn: Any) -> Any:
            if not inspect.isfunction(fn) or inspect.isgeneratorfunction(fn) \
                    or inspect.isasyncgenfunction(fn):
                raise TypeError(f"script {name!r} must be an async def or a plain def function")
            if key in self._scripts:
                raise ValueError(f"script {name!r} is registered twice")
            plain = not inspect.iscoroutinefunction(fn)
            self._scripts[key] = Script(key, fn, inspect.cleandoc(help), plain)
            return fn

        return register

    def get(self, name: str) -> Script | None:
        return self._scripts.get(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._scripts

    def __iter__(self) -> Iterator[Script]:
        return iter(sorted(self._scripts.values(), key=lambda s: s.name))
