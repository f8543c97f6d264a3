"""``check-config`` beyond syntax: the ``[ami]`` section and the directory's ``mailbox=`` entries
against what is on this machine (the voicemail spool, ``voicemail.conf``), as warnings.

Separate from ``config.py``, which only parses and converts: this module reads other files and
checks permissions, and is used by the CLI's ``check-config`` alone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable

from .conf_dialect import Section, read_sections
from .config import AmiConfig, Config, DirectoryEntry
from .errors import ConfigError
from .voicemail import check_spool, mailbox_dir


def ami_warnings(config: Config, entries: Iterable[DirectoryEntry]) -> list[str]:
    """What ``check-config`` says about ``[ami]`` once the file parsed: every problem with which
    the service would still start but an AMI feature would not work as meant.

    ``entries`` is the directory the service would serve (``[directory]`` and the database's).
    The spool is checked as the user running this, which should be the service's user.
    """
    entries = sorted(entries, key=lambda e: e.extension)
    sections = _raw_sections(config.path)
    ami_section = sections.get("ami")
    ami_keys = {e.key: e for e in ami_section.entries} if ami_section else {}
    written = {e.name: e for e in sections["directory"].entries} if "directory" in sections else {}

    def entry_at(extension: str) -> str:
        raw = written.get(extension)
        return f"{raw.src}: directory entry '{extension}'" if raw else f"directory entry '{extension}' (database)"

    def ami_at(key: str) -> str:
        if key in ami_keys:
            return str(ami_keys[key].src)
        return f"{ami_section.src}: [ami]" if ami_section else str(config.path)

    warnings: list[str] = []
    for extension, raw in written.items():
        mailbox = _written_option(raw.value, "mailbox")
        if mailbox and "@" not in mailbox:
            warnings.append(f"{raw.src}: directory entry '{extension}': mailbox={mailbox} has no "
                            f"@CONTEXT, taken as {mailbox}@default: write EXT@CONTEXT as the "
                            "mailbox is in voicemail.conf")
    with_mailbox = [e for e in entries if e.mailbox]
    usable = []  # the mailboxes the service can look for in the spool
    for entry in with_mailbox:
        try:
            mailbox_dir("/", entry.mailbox or "")
            usable.append(entry)
        except ValueError:
            warnings.append(f"{entry_at(entry.extension)}: mailbox={entry.mailbox} is not "
                            "EXT@CONTEXT of a mailbox: never notified")
    if config.ami is None:
        if with_mailbox:
            warnings.append(f"{entry_at(with_mailbox[0].extension)}: mailbox= is set but there is "
                            "no [ami] section: no voicemail is notified without it (docs/ami.md)")
        return warnings
    ami = config.ami
    if not entries:
        warnings.append(f"{ami_at('')}: the directory is empty: voicemail, click-to-call, busy "
                        "lamps and queue pause serve directory users only")
    owners: dict[str, list[str]] = {}
    for entry in with_mailbox:
        owners.setdefault(entry.mailbox or "", []).append(entry.extension)
    for mailbox, (owner, *others) in owners.items():
        for other in others:  # storage.directory_find_mailbox: the lowest extension wins
            warnings.append(f"{entry_at(other)}: mailbox={mailbox} is also directory entry "
                            f"'{owner}'s: only '{owner}' (the lowest extension) is notified")
    if with_mailbox and not ami.voicemail_delete:
        warnings.extend(_spool_warnings(ami.voicemail_spool, ami_at("voicemail_spool"), usable, entry_at))
    warnings.extend(_voicemail_conf_warnings(config, ami, usable, entry_at))
    if not with_mailbox and ami.voicemail_upload:
        warnings.append(f"{ami_at('voicemail_upload')}: voicemail_upload = yes but no directory "
                        "entry has a mailbox=: there is nothing to upload")
    if entries and "originate_context" not in ami_keys:
        # Click-to-call is always on for directory users; the default is FreePBX's context,
        # which a plain Asterisk does not have (the Originate then fails for every call).
        warnings.append(f"{ami_at('originate_context')} has no originate_context: click-to-call "
                        "dials numbers in 'from-internal' (FreePBX's context); set it to the "
                        "context your users' phones dial from (dialplan/agi-xmpp-click-to-call.conf)")
    return warnings


def _spool_warnings(
    spool: str, where: str, with_mailbox: list[DirectoryEntry], entry_at: Callable[[str], str]
) -> list[str]:
    problem = check_spool(spool)
    if problem:
        return [f"{where}: {problem}: voicemail is not notified (docs/ami.md: who can read the spool)"]
    warnings = []
    for entry in with_mailbox:
        path = mailbox_dir(spool, entry.mailbox or "")
        # app_voicemail creates <context>/<mailbox> with the first message: a missing one is
        # normal (a missing context too: it is not created at load, seen in the Asterisk 22 lab).
        if os.path.isdir(str(path)) and not os.access(str(path), os.R_OK | os.X_OK):
            warnings.append(f"{entry_at(entry.extension)}: mailbox={entry.mailbox}: {path} is not "
                            f"readable by uid {os.getuid()}: its voicemail is not notified")
    return warnings


_VOICEMAIL_NOT_CONTEXTS = frozenset({"general", "zonemessages"})


def _voicemail_conf_warnings(
    config: Config, ami: AmiConfig, with_mailbox: list[DirectoryEntry], entry_at: Callable[[str], str]
) -> list[str]:
    """Each mailbox= against voicemail.conf next to the configuration (/etc/asterisk), when that
    file is there and readable: the context and mailbox exist, and ``delete=yes`` is matched."""
    if not config.path or not with_mailbox:
        return []
    path = os.path.join(os.path.dirname(os.path.abspath(config.path)), "voicemail.conf")
    if not os.access(path, os.R_OK):
        return []  # not on the PBX, or not readable by this user: nothing to compare with
    try:
        sections = [s for s in read_sections(path, []) if not s.template]
    except ConfigError:
        return []
    contexts = {s.name: s for s in sections if s.name.lower() not in _VOICEMAIL_NOT_CONTEXTS}
    general = next((s for s in sections if s.name.lower() == "general"), None)
    delete_all = bool(general) and any(e.key == "delete" and _is_yes(e.value) for e in general.entries)
    warnings = []
    for entry in with_mailbox:
        box, _, context = (entry.mailbox or "").partition("@")
        where = f"{entry_at(entry.extension)}: mailbox={entry.mailbox}"
        if context not in contexts:
            known = ", ".join(sorted(contexts)) or "none"
            warnings.append(f"{where}: {path} has no context [{context}] (contexts: {known})")
            continue
        line = next((e for e in contexts[context].entries if e.name == box), None)
        if line is None:
            warnings.append(f"{where}: {path} has no mailbox {box} in [{context}]")
            continue
        # voicemail.conf: mailbox => password,name,email,pager,options (options split by | or ,)
        options = line.value.split(",", 4)[4:] or [""]
        deleted = delete_all or any(
            o.strip().lower().startswith("delete=") and _is_yes(o.partition("=")[2])
            for o in re.split(r"[|,]", options[0])
        )
        if deleted and not ami.voicemail_delete:
            warnings.append(f"{where}: {path} deletes its messages (delete=yes) before the event: "
                            "set voicemail_delete = yes in [ami], or its voicemail is not notified")
    return warnings


def _is_yes(value: str) -> bool:
    return value.strip().lower() in ("yes", "true", "y", "t", "1", "on")


def _raw_sections(path: str | None) -> dict[str, Section]:
    """The file's own [ami] and [directory] as written (which keys were given, on which line)."""
    if not path:
        return {}
    found: dict[str, Section] = {}
    for section in read_sections(path, []):  # it parsed already: no new errors
        if not section.template and section.name.lower() in ("ami", "directory"):
            found[section.name.lower()] = section
    return found


def _written_option(value: str, name: str) -> str | None:
    """``name=`` of a ``[directory]`` value as written (``JID, device=..., mailbox=...``)."""
    for option in value.split(",")[1:]:
        key, eq, setting = (s.strip() for s in option.partition("="))
        if eq and key.lower() == name:
            return setting
    return None
