"""README.md's fenced code blocks, so tests run what the README says, as written."""

from __future__ import annotations

import textwrap
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def fenced_blocks(text: str | None = None) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block, in order; bodies dedented like the fence."""
    lines = (README.read_text() if text is None else text).splitlines()
    blocks: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].lstrip()
        if stripped.startswith("```"):
            language = stripped[3:].strip()
            body: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].lstrip().startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append((language, textwrap.dedent("\n".join(body))))
        i += 1
    return blocks


def section(title: str, text: str | None = None) -> str:
    """The README text under the heading ``title`` (any level), up to the next heading of that
    level or higher."""
    text = README.read_text() if text is None else text
    lines = text.splitlines()
    for n, line in enumerate(lines):
        if line.lstrip("#").strip() == title and line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out = []
            for later in lines[n + 1 :]:
                if later.startswith("#") and len(later) - len(later.lstrip("#")) <= level:
                    break
                out.append(later)
            return "\n".join(out)
    raise LookupError(f"README.md has no heading {title!r}")
