"""running_services: what started is stopped again, also when a later part fails to start."""

from __future__ import annotations

import pytest

from agi_xmpp import services as services_module
from agi_xmpp.config import Config, GeneralConfig
from agi_xmpp.services import running_services


async def test_a_failed_start_closes_what_had_started(tmp_path, monkeypatch):
    """The XMPP pool failing to start still closes the storage opened before it (no leak)."""
    closed: list[str] = []

    async def pool_start_fails(self) -> None:
        raise RuntimeError("pool would not start")

    original_aclose = services_module.AsyncStorage.aclose

    async def recording_aclose(self) -> None:
        closed.append("storage")
        await original_aclose(self)

    monkeypatch.setattr(services_module.XmppPool, "start", pool_start_fails)
    monkeypatch.setattr(services_module.AsyncStorage, "aclose", recording_aclose)
    config = Config(path=None, general=GeneralConfig(state_dir=str(tmp_path / "state")), accounts={}, directory=())
    with pytest.raises(RuntimeError, match="pool would not start"):
        async with running_services(config):
            pass  # pragma: no cover - never reached
    assert closed == ["storage"]
