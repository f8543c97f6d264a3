"""Asterisk's ``.conf`` dialect: what ``main/config.c`` does around pyst2's line splitting.

pyst2's ``asterisk.config`` splits lines into ``[sections]`` and ``name = value`` items. This
module adds what Asterisk does and pyst2 does not: ``;-- --;`` block comments, ``\\;`` escapes,
``#include``/``#tryinclude`` (with wildcards), templates ``[name](!)``, inheritance
``[name](base)``, ``[name](+)``, ``+=``, and a file:line for every entry so errors can name it.
``config.py`` turns the sections into typed settings.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass

import asterisk.config as pyst2

from .errors import ConfigError

_ESCAPED_SEMICOLON = "\x00"  # stands in for "\;" while pyst2 splits off ';' comments
_MAX_INCLUDE_DEPTH = 10  # config.c gives up at the same depth
_HEADER = re.compile(r"\[([^\]]*)\]\s*(?:\((.*)\))?")
_DIRECTIVE = re.compile(r"#(\S*)\s*(.*)")
_BROKEN = "\x00broken"  # stands for the section of a bad header: its lines are skipped


class ConfigErrors(ConfigError):
    """Several problems in one configuration; ``errors`` lists them in file order."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = tuple(errors)
        first = self.errors[0]
        super().__init__(first.reason, path=first.path, line=first.line)
        self.args = ("\n".join(str(e) for e in self.errors),)

    def __str__(self) -> str:
        return str(self.args[0])


def raise_collected(errors: list[ConfigError]) -> None:
    """Raise nothing, the one error, or all of them as one ConfigErrors, in file order."""
    files = {e.path: n for n, e in reversed(list(enumerate(errors)))}  # first appearance
    ordered = sorted(errors, key=lambda e: (files[e.path], e.line or 0))
    if len(ordered) == 1:
        raise ordered[0]
    if ordered:
        raise ConfigErrors(ordered)


@dataclass(frozen=True, slots=True)
class Source:
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"

    def error(self, reason: str) -> ConfigError:
        return ConfigError(reason, path=self.path, line=self.line)


@dataclass(frozen=True, slots=True)
class _Header:
    template: bool = False
    append: bool = False
    bases: tuple[str, ...] = ()


@dataclass(slots=True)
class Entry:
    key: str  # lower-cased name
    name: str  # as written (directory extensions keep their case)
    value: str
    src: Source
    inherited: bool = False


@dataclass(slots=True)
class Section:
    name: str
    src: Source
    template: bool
    entries: list[Entry]


def _strip_comments(line: str, depth: int) -> tuple[str, int, bool]:
    """Drop ``;`` comments and ``;-- --;`` blocks (nesting) from one line, as config.c does.

    Returns the kept text (``\\;`` turned into a placeholder), the block depth after the line,
    and whether a block opened from depth 0 on this line.
    """
    out: list[str] = []
    opened = False
    i, resume = 0, 0
    while i < len(line):
        ch = line[i]
        if ch != ";":
            if depth == 0:
                out.append(ch)
            i += 1
        elif depth == 0 and out and out[-1] == "\\":
            out[-1] = _ESCAPED_SEMICOLON  # "\;" is a literal semicolon
            i += 1
        elif line.startswith(";--", i) and not line.startswith(";---", i):
            opened = opened or depth == 0
            depth += 1
            i = resume = i + 3
        elif depth > 0 and i >= resume + 2 and line[i - 2 : i] == "--":
            depth -= 1
            i = resume = i + 1
        elif depth == 0:
            break  # an ordinary comment: the rest of the line goes
        else:
            i += 1
    return "".join(out), depth, opened


class _Reader:
    """Turns a file and everything it ``#include``s into the flat list of lines pyst2 parses."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.lines: list[str] = []
        self.sources: list[Source] = []
        self.headers: dict[int, _Header] = {}
        self.errors = errors  # a bad line is recorded and skipped, so every one is reported
        self._open: list[str] = []

    def read(self, path: str, section: str | None = None, depth: int = 0) -> str | None:
        """Read ``path``; lines before its first header belong to ``section``. Returns the last."""
        with open(path, "rb") as f:
            data = f.read()
        self._open.append(os.path.realpath(path))
        block_start: Source | None = None
        comment_depth = 0
        for number, raw in enumerate(data.split(b"\n"), 1):
            src = Source(path, number)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.errors.append(src.error("this line is not valid UTF-8"))
                continue
            if number == 1:
                text = text.removeprefix("\ufeff")
            if "\x00" in text:
                self.errors.append(src.error("this line contains a NUL character"))
                continue
            text, comment_depth, opened = _strip_comments(text, comment_depth)
            if opened:
                block_start = src
            text = text.strip()
            if not text:
                continue
            try:
                if text[0] == "[":
                    section = _BROKEN  # until the header is known to be good
                    section = self._header(text, src)
                elif section is _BROKEN:
                    continue  # the lines of a section whose header is wrong: already reported
                elif text[0] == "#":
                    section = self._directive(text, src, section, depth)
                elif section is None:
                    raise src.error("this line is not inside any [section]")
                elif "=" not in text:  # pyst2 would stop at it; say it here and go on
                    raise src.error("expected 'key = value', a [section] header or a #include")
                else:
                    self._emit(text, src)
            except ConfigError as exc:
                self.errors.append(exc)
        if comment_depth and block_start is not None:
            self.errors.append(block_start.error("block comment ';--' is never closed with '--;'"))
        self._open.pop()
        return section

    def _emit(self, text: str, src: Source) -> None:
        self.lines.append(text + "\n")
        self.sources.append(src)

    def _header(self, text: str, src: Source) -> str:
        match = _HEADER.fullmatch(text)
        if match is None:
            raise src.error(
                f"malformed section header {text!r}: expected [name] or [name](options)"
            )
        name = match[1].strip()
        if not name:
            raise src.error("empty section name")
        template = append = False
        bases: list[str] = []
        for option in match[2].split(",") if match[2] is not None else ():
            option = option.strip()
            if option == "!":
                template = True
            elif option == "+":
                append = True
            elif not option or option.startswith("+"):
                raise src.error(f"unsupported section option {option!r} in {text!r}")
            else:
                bases.append(option)
        self.headers[len(self.lines)] = _Header(template, append, tuple(bases))
        self._emit(f"[{name}]", src)
        return name

    def _directive(self, text: str, src: Source, section: str | None, depth: int) -> str | None:
        match = _DIRECTIVE.fullmatch(text)
        word, arg = (match[1].lower(), match[2].strip()) if match else ("", "")
        if word == "exec":
            raise src.error("#exec is not supported")
        if word not in ("include", "tryinclude"):
            raise src.error(f"unknown directive {text.split()[0]!r} (use #include or #tryinclude)")
        if len(arg) >= 2 and (arg[0], arg[-1]) in (('"', '"'), ("<", ">")):
            arg = arg[1:-1]
        if not arg:
            raise src.error(f"#{word} needs a file name")
        target = os.path.join(os.path.dirname(src.path), arg)  # absolute arg wins in join
        if glob.has_magic(target):
            matches = sorted(glob.glob(target))
        else:
            matches = [target] if os.path.exists(target) else []
        if not matches and word == "include":
            raise src.error(f"#include: file not found: {target}")
        if matches and depth + 1 > _MAX_INCLUDE_DEPTH:
            raise src.error(f"#include nested more than {_MAX_INCLUDE_DEPTH} deep")
        inner = section
        for match_path in matches:
            if os.path.realpath(match_path) in self._open:
                raise src.error(f"#include loop: {match_path} is already being read")
            try:
                inner = self.read(match_path, inner, depth + 1)
            except OSError as exc:
                raise src.error(f"#{word}: cannot read {match_path}: {exc.strerror}") from None
            if inner is _BROKEN:
                inner = section
        if inner != section and section is not None:
            # config.c: after an #include the including file goes on in its own category.
            self.headers[len(self.lines)] = _Header(append=True)
            self._emit(f"[{section}]", src)
        return section


class _Pyst2Lines(pyst2.Config):  # type: ignore[misc]
    """pyst2's parser fed the lines _Reader prepared, instead of a file it opens itself."""

    def __init__(self, lines: list[str]) -> None:
        self._prepared = lines
        super().__init__("<agi-xmpp>")

    def load(self) -> None:
        self.raw_lines = self._prepared


def read_sections(path: str, errors: list[ConfigError] | None = None) -> list[Section]:
    """Parse ``path`` in Asterisk's dialect; sections in file order, templates resolved.

    Every problem is found: with ``errors`` given they are appended to it and the sections that
    could be read are returned (so ``config`` can check those too); without, all are raised.
    """
    if not os.path.exists(path):
        raise ConfigError("configuration file not found", path=path)
    if os.path.isdir(path):
        raise ConfigError("is a directory, not a configuration file", path=path)
    problems: list[ConfigError] = [] if errors is None else errors
    reader = _Reader(problems)
    try:
        reader.read(path)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=path) from None
    try:
        parsed = _Pyst2Lines(reader.lines)
    except pyst2.ParseError as exc:  # not expected: _Reader passes only lines pyst2 accepts
        number, reason = exc.args
        raise reader.sources[number - 1].error(reason) from None
    sections = _sections(parsed, reader, problems)
    if errors is None:
        raise_collected(problems)
    return sections


def _sections(parsed: _Pyst2Lines, reader: _Reader, errors: list[ConfigError]) -> list[Section]:

    sections: list[Section] = []
    by_name: dict[str, Section] = {}
    for category in parsed.categories:
        index = category.number - 1
        src, header = reader.sources[index], reader.headers[index]
        key = category.name.lower()
        section = by_name.get(key)
        if header.append:
            if section is None:
                errors.append(src.error(
                    f"[{category.name}](+) adds to a section that is not defined above"
                ))  # fmt: skip
                continue
            section.template |= header.template
        elif section is not None:
            first = section.src
            errors.append(src.error(
                f"section [{category.name}] is defined twice (first at {first}); "
                f"use [{category.name}](+) to add to it"
            ))  # fmt: skip
            continue
        else:
            section = by_name[key] = Section(category.name, src, header.template, [])
            sections.append(section)
        for base_name in header.bases:
            base = by_name.get(base_name.lower())
            if base is None or base is section:
                errors.append(src.error(
                    f"[{category.name}] inherits from [{base_name}], which is not defined above"
                ))  # fmt: skip
                continue
            section.entries.extend(
                Entry(e.key, e.name, e.value, e.src, inherited=True) for e in base.entries
            )
        for item in category.items:
            try:
                _add_item(section, item, reader.sources[item.number - 1])
            except ConfigError as exc:
                errors.append(exc)
    return sections


def _add_item(section: Section, item: pyst2.Item, src: Source) -> None:
    name = item.name.replace(_ESCAPED_SEMICOLON, ";")
    raw_value = item.value.replace(_ESCAPED_SEMICOLON, ";")
    append = name.endswith("+") and item.style != ">"
    if append:
        name = name[:-1].rstrip()
    name = name.removeprefix("\\")  # config.c: a leading backslash escapes the first character
    if not name:
        raise src.error("no key name before '='")
    key = name.lower()
    if append:  # "key += more" extends the last value of key, as config.c does
        for index in range(len(section.entries) - 1, -1, -1):
            previous = section.entries[index]
            if previous.key == key:
                value = (previous.value + raw_value).strip()
                section.entries[index] = Entry(key, previous.name, value, src)
                return
    section.entries.append(Entry(key, name, raw_value.strip(), src))
