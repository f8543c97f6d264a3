"""Dialplan scripts: importing this package registers every script in ``registry``."""

from importlib import import_module

from .base import registry

# Each module registers its scripts on import; add a feature module here.
SCRIPT_MODULES = ("core", "groupchat", "routing", "chat_menu")

for _name in SCRIPT_MODULES:
    import_module(f"{__name__}.{_name}")

__all__ = ["registry"]
