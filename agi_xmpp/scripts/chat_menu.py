"""Interactive chat menus: chat_menu."""

from __future__ import annotations
