"""Chat presence → Asterisk hint state: the mapping, and the AMI ``Setvar`` lines that apply it.

No I/O here: ``ami_bridge`` sends what :func:`setvar_actions` returns.

Each directory entry's presence is written twice (docs/ami.md):

- ``DEVICE_STATE(Custom:<ext>)``: what ordinary BLF phones see through a hint such as
  ``exten => 2001,hint,PJSIP/2001&Custom:2001,CustomPresence:2001``. Asterisk aggregates the
  devices of a hint (main/devicestate.c ``ast_devstate_aggregate_add``): ``BUSY`` wins over
  ``NOT_INUSE``, and ``UNAVAILABLE`` counts only if *every* device is unavailable, so a chat user
  who is offline does not hide a registered, idle phone.
- ``PRESENCE_STATE(CustomPresence:<ext>)``: the presence half of the hint, shown by phones that
  subscribe to presence (some vendors only). Its value is ``state,subtype,message[,options]``;
  a comma in the status text would split the fields, so subtype and message are written
  base64-encoded with the ``e`` option (func_presencestate.c).

=========  ==============  ================
chat show  device state    presence state
=========  ==============  ================
available  NOT_INUSE       available
chat       NOT_INUSE       chat
away       NOT_INUSE       away
xa         UNAVAILABLE     xa
dnd        BUSY            dnd
offline    UNAVAILABLE     unavailable
unknown    UNAVAILABLE     unavailable
=========  ==============  ================

``away`` keeps the lamp idle (the person is near, just not at the keyboard); ``xa`` (extended
away) and offline mean nobody is there.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from .presence import Show

DEVICE_STATES: dict[Show, str] = {
    Show.AVAILABLE: "NOT_INUSE",
    Show.CHAT: "NOT_INUSE",
    Show.AWAY: "NOT_INUSE",
    Show.XA: "UNAVAILABLE",
    Show.DND: "BUSY",
    Show.OFFLINE: "UNAVAILABLE",
    Show.UNKNOWN: "UNAVAILABLE",
}
PRESENCE_STATES: dict[Show, str] = {
    Show.AVAILABLE: "available",
    Show.CHAT: "chat",
    Show.AWAY: "away",
    Show.XA: "xa",
    Show.DND: "dnd",
    Show.OFFLINE: "unavailable",
    Show.UNKNOWN: "unavailable",
}
#: AMI header values are one line; a status text is cut here before encoding.
MAX_MESSAGE_CHARS = 200


@dataclass(frozen=True, slots=True)
class LampState:
    """What one extension's hint should show."""

    extension: str
    device_state: str
    presence_state: str
    message: str


def lamp_state(extension: str, show: Show, message: str = "") -> LampState:
    message = " ".join(message.split())[:MAX_MESSAGE_CHARS] if show not in (Show.OFFLINE, Show.UNKNOWN) else ""
    return LampState(extension, DEVICE_STATES[show], PRESENCE_STATES[show], message)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def setvar_actions(state: LampState) -> list[dict[str, str]]:
    """The two AMI ``Setvar`` actions (headers without ``Action``) for ``state``."""
    return [
        {"Variable": f"DEVICE_STATE(Custom:{state.extension})", "Value": state.device_state},
        {
            "Variable": f"PRESENCE_STATE(CustomPresence:{state.extension})",
            # subtype (empty) and message base64-encoded, "e" says so
            "Value": f"{state.presence_state},,{_b64(state.message)},e",
        },
    ]
