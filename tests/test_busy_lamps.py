"""Chat presence → hint state mapping and the Setvar lines (agi_xmpp.busy_lamps)."""

from __future__ import annotations

import base64

from agi_xmpp.busy_lamps import DEVICE_STATES, lamp_state, setvar_actions
from agi_xmpp.presence import Show


def test_documented_mapping():
    """dnd → BUSY, offline → UNAVAILABLE, available → NOT_INUSE (docs/ami.md), every show mapped."""
    assert DEVICE_STATES[Show.DND] == "BUSY"
    assert DEVICE_STATES[Show.OFFLINE] == "UNAVAILABLE"
    assert DEVICE_STATES[Show.AVAILABLE] == "NOT_INUSE"
    assert set(DEVICE_STATES) == set(Show)


def test_setvar_writes_device_and_base64_presence_with_e_option():
    """A comma in the status survives: message base64-encoded, ``e`` option last."""
    actions = setvar_actions(lamp_state("2001", Show.DND, "Meeting, back at 3"))
    assert actions[0] == {"Variable": "DEVICE_STATE(Custom:2001)", "Value": "BUSY"}
    assert actions[1]["Variable"] == "PRESENCE_STATE(CustomPresence:2001)"
    state, subtype, message, options = actions[1]["Value"].split(",")
    assert (state, subtype, options) == ("dnd", "", "e")
    assert base64.b64decode(message).decode() == "Meeting, back at 3"


def test_offline_carries_no_stale_message_and_newlines_are_flattened():
    """Offline drops the old status text; a multi-line status becomes one line."""
    assert lamp_state("7", Show.OFFLINE, "gone fishing").message == ""
    assert lamp_state("7", Show.AWAY, "a\r\nb").message == "a b"
