"""Reading Asterisk's voicemail spool and wording the chat notification (no network).

app_voicemail keeps a mailbox ``EXT@CONTEXT`` in ``<spool>/CONTEXT/EXT/<folder>/``: each message
is ``msgNNNN.txt`` (its metadata, an ini-like file) beside the recording in one or more formats
(``msgNNNN.wav``, ``.WAV``, ``.gsm`` ...). The number ``NNNN`` is *not* stable: when a message is
deleted, app_voicemail renumbers the rest of the folder. The stable key is ``msg_id`` in the
``.txt`` (app_voicemail.c ``generate_msg_id``: ``<origtime>-<counter>``), which is what we
remember as notified.

New messages are in ``INBOX``; an urgent one is in ``Urgent`` (``flag=Urgent``) until listened
to. Both are scanned; ``Old`` holds messages already heard, so never notified.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

#: Folders whose messages are new (unheard); app_voicemail.c ``mailbox_folders``.
NEW_FOLDERS = ("INBOX", "Urgent")
_MSG_TXT = re.compile(r"msg(\d{4,})\.txt")
#: Recording formats, best for a chat client first (wav plays everywhere; WAV is wav49/GSM).
_AUDIO_PREFERENCE = (".wav", ".mp3", ".ogg", ".opus", ".WAV", ".gsm", ".g722", ".ulaw", ".alaw")
_AUDIO_TYPES = {".wav": "audio/wav", ".WAV": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
                ".opus": "audio/ogg", ".gsm": "audio/x-gsm", ".g722": "audio/G722",
                ".ulaw": "audio/basic", ".alaw": "audio/x-alaw-basic"}  # fmt: skip
#: A msgNNNN.txt is a few hundred bytes; anything far bigger is not one.
_MAX_TXT_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Voicemail:
    """One message found in the spool."""

    mailbox: str  # EXT@CONTEXT
    msg_id: str
    folder: str  # INBOX or Urgent
    callerid: str
    origtime: int  # seconds since the epoch, 0 if unknown
    duration: int  # seconds
    urgent: bool
    recording: Path | None  # the best audio file beside the .txt, if any

    @property
    def content_type(self) -> str:
        return _AUDIO_TYPES.get(self.recording.suffix, "application/octet-stream") if self.recording else ""


@dataclass(frozen=True, slots=True)
class Counts:
    """What a ``MessageWaiting`` event says about the mailbox."""

    new: int
    old: int


def mailbox_dir(spool: str | Path, mailbox: str) -> Path:
    """``<spool>/CONTEXT/EXT`` for ``EXT@CONTEXT`` (``default`` when no context is given).

    Raises ValueError for a mailbox that could climb out of the spool."""
    ext, _, context = mailbox.partition("@")
    context = context or "default"
    for part in (ext, context):
        if not part or part in (".", "..") or "/" in part or "\0" in part:
            raise ValueError(f"bad mailbox {mailbox!r}")
    return Path(spool) / context / ext


def parse_message_txt(text: str) -> dict[str, str]:
    """The ``[message]`` keys of a msgNNNN.txt (``key=value`` lines; ``;`` comments)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith((";", "[")):
            continue
        key, eq, value = line.partition("=")
        if eq:
            values[key.strip().lower()] = value.strip()
    return values


def scan_mailbox(spool: str | Path, mailbox: str) -> list[Voicemail]:
    """Every new message of ``mailbox`` (INBOX and Urgent), oldest first.

    A folder that does not exist is an empty folder (app_voicemail creates them on first use).
    A ``.txt`` without ``msg_id`` (Asterisk before 12) is keyed by folder, number and origtime.
    Raises OSError when the mailbox directory exists but cannot be read."""
    base = mailbox_dir(spool, mailbox)
    found: list[Voicemail] = []
    for folder in NEW_FOLDERS:
        directory = base / folder
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        names_set = set(names)
        for name in sorted(names):
            match = _MSG_TXT.fullmatch(name)
            if not match:
                continue
            path = directory / name
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    values = parse_message_txt(f.read(_MAX_TXT_BYTES))
            except FileNotFoundError:
                continue  # renumbered or deleted while we looked
            stem = f"msg{match.group(1)}"
            origtime = non_negative_int(values.get("origtime"))
            msg_id = values.get("msg_id") or f"{folder}-{stem}-{origtime}"
            recording = next(
                (directory / (stem + ext) for ext in _AUDIO_PREFERENCE if stem + ext in names_set), None
            )
            found.append(
                Voicemail(
                    mailbox=mailbox,
                    msg_id=msg_id,
                    folder=folder,
                    callerid=values.get("callerid", ""),
                    origtime=origtime,
                    duration=non_negative_int(values.get("duration")),
                    urgent=folder == "Urgent" or "urgent" in values.get("flag", "").lower(),
                    recording=recording,
                )
            )
    found.sort(key=lambda v: (v.origtime, v.msg_id))
    return found


def check_spool(spool: str | Path) -> str | None:
    """None when the spool can be read, else one line saying why not (for one error at start)."""
    path = Path(spool)
    if not path.exists():
        return f"voicemail_spool {path} does not exist"
    if not path.is_dir():
        return f"voicemail_spool {path} is not a directory"
    if not os.access(path, os.R_OK | os.X_OK):
        return f"voicemail_spool {path} is not readable by this service (uid {os.getuid()})"
    return None


def describe_caller(callerid: str) -> str:
    """``"Bob" <2002>`` → ``Bob <2002>``; empty or ``Unknown`` → ``an unknown caller``."""
    text = callerid.strip().replace('"', "")
    text = re.sub(r"\s+", " ", text).strip()
    if not text or text.lower() in ("unknown", "<unknown>", "<>"):
        return "an unknown caller"
    return text


def format_notification(message: Voicemail, counts: Counts | None, *, tz: object = None) -> str:
    """The chat text for one new voicemail."""
    when = (
        datetime.fromtimestamp(message.origtime).astimezone(tz).strftime("%Y-%m-%d %H:%M %Z").strip()  # type: ignore[arg-type]
        if message.origtime
        else "an unknown time"
    )
    head = "Urgent voicemail" if message.urgent else "New voicemail"
    lines = [
        f"{head} from {describe_caller(message.callerid)} for {message.mailbox}",
        f"Left {when}, {message.duration} s long.",
    ]
    if counts is not None:
        lines.append(_counts_line(counts))
    return "\n".join(lines)


def format_event_only(mailbox: str, caller: str, counts: Counts | None) -> str:
    """The chat text when the files are already gone (``delete=yes``): what the event carries."""
    lines = [f"New voicemail from {describe_caller(caller)} for {mailbox} (sent by e-mail, not kept)."]
    if counts is not None:
        lines.append(_counts_line(counts))
    return "\n".join(lines)


def _counts_line(counts: Counts) -> str:
    return f"Mailbox: {counts.new} new, {counts.old} old."


def non_negative_int(value: str | None) -> int:
    """A count or time from a msgNNNN.txt or an AMI header; 0 when missing or not a number."""
    try:
        return max(0, int((value or "").strip()))
    except ValueError:
        return 0
