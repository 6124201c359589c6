"""Text that comes from a sandbox's parts (log lines, names a UI looked up,
requests it sent) is the UI's to choose: escape what a terminal would obey
(control characters, escape sequences) or show misleadingly (bidirectional
overrides) before printing it."""
from __future__ import annotations

import json
import re
from typing import Iterable, Iterator

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, keep_newlines: bool = False) -> str:
    return (_UNSAFE_BUT_NEWLINE if keep_newlines else _UNSAFE).sub(_escape, text)


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
