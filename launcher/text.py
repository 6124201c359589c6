"""Text that comes from a sandbox's parts or its image builds (log lines,
names a UI looked up, requests and bodies it sent, a RUN step's output) is
theirs to choose: escape what a terminal would obey (control characters, C1
codes, escape sequences such as an OSC 52 clipboard write) or show
misleadingly (bidirectional overrides and isolates) before printing it, as
text (`printable`) or as JSON (`json_text`)."""
from __future__ import annotations

import json
import re
from typing import Iterable, Iterator

# C0 and C1 controls and DEL; the bidirectional marks, embeddings, overrides
# and isolates ("Trojan Source"); lone surrogates, which no terminal encoding
# can even write.
_UNSAFE_CLASS = "\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE = re.compile(f"[\x00-\x1f{_UNSAFE_CLASS}]")
_UNSAFE_BUT_NEWLINE = re.compile(f"[\x00-\x09\x0b-\x1f{_UNSAFE_CLASS}]")
# In JSON, json.dumps escapes C0 controls itself, and its newlines between
# values are its own.
_UNSAFE_IN_JSON = re.compile(f"[{_UNSAFE_CLASS}]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, keep_newlines: bool = False) -> str:
    return (_UNSAFE_BUT_NEWLINE if keep_newlines else _UNSAFE).sub(_escape, text)


def one_line(text: str, limit: int = 200) -> str:
    """`text` as one line of at most about `limit` characters, for a value a
    file someone else made names (a model's name, a key): every character
    Python would not print as itself (controls, newlines, format characters
    such as U+200B and the bidirectional marks, separators, unassigned code
    points) escaped, and the rest cut off and counted. It looks at no more
    than `limit` characters of text of any length."""
    out, used = [], 0
    for at, char in enumerate(text):
        shown = char if char.isprintable() else (f"\\x{ord(char):02x}" if ord(char) < 0x100 else
                                                  f"\\u{ord(char):04x}" if ord(char) < 0x10000 else
                                                  f"\\U{ord(char):08x}")
        if used + len(shown) > limit:
            return "".join(out) + f"… ({len(text) - at} more characters)"
        out.append(shown)
        used += len(shown)
    return "".join(out)


def json_text(data: object, indent: int | None = 2) -> str:
    """`data` as JSON in which every character `printable` escapes is a JSON
    escape (\\u001b, \\u202e): programs read back exactly what the parts
    sent, and a terminal shown the JSON gets nothing to obey. Other text
    (café, 日本) stays as it is."""
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    # These characters can only stand inside a string, where \\uXXXX means the same.
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def json_records(lines: Iterable[str], key: str) -> Iterator[dict]:
    """The JSON objects among a part's log lines (the DNS sink's, the build
    proxy's) that carry `key`; other lines are skipped."""
    for line in lines:
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):  # json.loads recurses once per level of nesting
            continue
        if isinstance(entry, dict) and key in entry:
            yield entry
