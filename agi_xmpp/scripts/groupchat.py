"""Group chat: jabber_join, jabber_leave, jabber_send_group."""

from __future__ import annotations
