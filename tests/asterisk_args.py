"""Asterisk's FastAGI argument parser, ported line by line from res_agi.c's parse_args().

The tests use it to check that what we send arrives exactly as meant: the fuzz tests quote any
text and parse it back, and the fake Asterisk reads our commands with it.
"""

from __future__ import annotations

MAX_ARGS = 128  # res_agi.c


def parse_args(line: bytes) -> list[bytes]:
    """A line-by-line port of res_agi.c parse_args(), rewriting a C string in place.

    ``line`` is what agi_handle_command() gets: the fgets() buffer with the trailing newline cut
    off, read as a C string (so it ends at the first NUL).
    """
    s = bytearray(line.split(b"\0", 1)[0]) + b"\0"
    argv: list[int] = []  # start offsets into s
    x = 0
    quoted = escaped = False
    whitespace = True
    cur = 0
    i = 0
    while s[i]:
        c = s[i]
        normal = False
        if c == ord('"'):
            if escaped:  # "If it's escaped, put a literal quote"
                normal = True
            else:
                quoted = not quoted
                if quoted and whitespace:  # starting a quote off white space starts a word
                    argv.append(cur)
                    x += 1
                    whitespace = False
                escaped = False
        elif c in (ord(" "), ord("\t")):
            if not quoted and not escaped:
                whitespace = True
                s[cur] = 0
                cur += 1
            else:
                normal = True
        elif c == ord("\\"):
            if escaped:
                normal = True
            else:
                escaped = True
        else:
            normal = True
        if normal:
            skip = False
            if whitespace:
                if x >= MAX_ARGS - 1:  # "Too many arguments, truncating": break out of switch
                    skip = True
                else:
                    argv.append(cur)
                    x += 1
                    whitespace = False
            if not skip:
                s[cur] = c
                cur += 1
                escaped = False
        i += 1
    s[cur] = 0
    assert x <= MAX_ARGS - 1, "argv[x] = NULL would write past argv[MAX_ARGS]"
    return [bytes(s[start : s.index(0, start)]) for start in argv]


def parse_command_line(line: str) -> list[str]:
    """The words Asterisk reads from one command line (text, without its newline)."""
    return [word.decode("utf-8", errors="surrogateescape") for word in parse_args(line.encode("utf-8", errors="surrogateescape"))]
