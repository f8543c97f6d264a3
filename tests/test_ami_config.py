"""The [ami] keys added for issue 13 (config parsing)."""

from __future__ import annotations

import pytest

from agi_xmpp.config import load_config
from agi_xmpp.errors import ConfigError

BASE = """\
[general]
state_dir = {state}

[asterisk]
type = client
username = pbx@example.com
secret = x

[ami]
username = agi-xmpp
secret = s
"""


def test_defaults_and_values(tmp_path):
    """queue_pause, queue_pause_shows, call_limit and voicemail_delete parse, with defaults."""
    path = tmp_path / "a.conf"
    path.write_text(BASE.format(state=tmp_path))
    ami = load_config(str(path)).ami
    assert (ami.queue_pause, ami.queue_pause_shows, ami.call_limit, ami.voicemail_delete) == (False, ("dnd",), 5, False)
    path.write_text(BASE.format(state=tmp_path) + "queue_pause = yes\nqueue_pause_shows = dnd, xa\ncall_limit = 2\nvoicemail_delete = yes\n")
    ami = load_config(str(path)).ami
    assert (ami.queue_pause, ami.queue_pause_shows, ami.call_limit, ami.voicemail_delete) == (True, ("dnd", "xa"), 2, True)


def test_bad_pause_show_names_the_line(tmp_path):
    """An unknown show in queue_pause_shows is refused with file and line."""
    path = tmp_path / "a.conf"
    path.write_text(BASE.format(state=tmp_path) + "queue_pause_shows = dnd, lunch\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.line == 12 and "queue_pause_shows" in str(info.value)
