"""Calls that follow chat: presence_route and call_notify."""

from __future__ import annotations
