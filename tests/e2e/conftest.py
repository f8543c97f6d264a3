"""Fixtures for the real-Asterisk-22 end-to-end tests.

* ``asterisk_lab`` (session): one running :class:`lab.AsteriskLab`. Builds the chroot with
  build_lab.sh when it is missing (a failed build is a test error). Skipped only when
  ``AGI_XMPP_SKIP_E2E=1``.
* ``lab`` (function): the same lab, with stored AMI events cleared before the test and every
  channel hung up (and gone) after it.
* ``dialplan`` (function): ``dialplan(text, **subs)`` writes extensions.conf (``@KEY@`` tokens
  replaced by ``subs``), runs ``dialplan reload``, checks every context loaded and clears stored
  events.

Every test under tests/e2e gets the ``e2e`` marker.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lab import AsteriskLab, build_lab, default_lab_dir, lab_is_built  # noqa: E402

E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def asterisk_lab() -> Iterator[AsteriskLab]:
    """A running Asterisk 22 (AMI connected) for the whole session."""
    if os.environ.get("AGI_XMPP_SKIP_E2E") == "1":
        pytest.skip("AGI_XMPP_SKIP_E2E=1: the real-Asterisk lab tests are switched off")
    root = default_lab_dir()
    if not lab_is_built(root):
        build_lab(root)  # LabError here is a test error, never a skip
    lab = AsteriskLab(root)
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()


@pytest.fixture
def lab(asterisk_lab: AsteriskLab) -> Iterator[AsteriskLab]:
    """The session lab, with no stored events before the test and no channels after it."""
    asterisk_lab.clear_events()
    try:
        yield asterisk_lab
    finally:
        asterisk_lab.hangup_all(timeout=20)


@pytest.fixture
def dialplan(lab: AsteriskLab) -> Callable[..., AsteriskLab]:
    """``dialplan(text, PORT=1234)``: load ``text`` (``@PORT@`` -> ``1234``) as extensions.conf."""

    def apply(text: str, **subs: object) -> AsteriskLab:
        for key, value in subs.items():
            text = text.replace(f"@{key}@", str(value))
        lab.set_dialplan(text)
        return lab

    return apply
