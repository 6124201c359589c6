"""Read a policy file into plain data, keeping where each value sits in it.

A policy is input, not trusted code (docs/threats.md): the file is size-limited,
must be UTF-8, and may not use anchors, aliases, custom tags, duplicate keys,
non-string keys or nesting deeper than MAX_DEPTH. Each of those is a Problem with a line and a column.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from launcher.errors import Problem

MAX_POLICY_BYTES = 256 * 1024
# Lists and mappings within each other; a policy's deepest value is 4 levels in.
MAX_DEPTH = 32

# Path of a value inside the document: ("backend", "gpu") or ("models", 0, "path").
FieldPath = tuple


@dataclass
class Document:
    """The parsed policy with the (line, column) of every value and key."""

    file: str
    data: object
    value_marks: dict = field(default_factory=dict)  # FieldPath -> (line, col)
    key_marks: dict = field(default_factory=dict)  # FieldPath -> (line, col) of the key

    def mark(self, path: FieldPath, prefer_key: bool = False) -> tuple[int, int]:
        """The place of `path`, or of its nearest parent that has one."""
        path = tuple(path)
        while True:
            if prefer_key and path in self.key_marks:
                return self.key_marks[path]
            if path in self.value_marks:
                return self.value_marks[path]
            if not path:
                return (1, 1)
            path = path[:-1]

    def problem(self, path: FieldPath, message: str, prefer_key: bool = False) -> Problem:
        line, col = self.mark(path, prefer_key)
        return Problem(self.file, line, col, dotted(path), message)


def dotted(path: FieldPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Invalid(Exception):
    def __init__(self, problem: Problem):
        self.problem = problem


def _at(node_or_mark) -> tuple[int, int]:
    mark = getattr(node_or_mark, "start_mark", node_or_mark)
    return (mark.line + 1, mark.column + 1)


def read(path: Path, name: str) -> tuple[bytes | None, list[Problem]]:
    """A policy file's bytes, read once and no further than the size limit
    (so that the limit is checked), or None and why not."""
    try:
        with open(path, "rb") as f:
            return f.read(MAX_POLICY_BYTES + 1), []
    except FileNotFoundError:
        return None, [Problem(name, 0, 0, "", "no such file")]
    except IsADirectoryError:
        return None, [Problem(name, 0, 0, "", "is a directory, not a policy file")]
    except OSError as e:
        return None, [Problem(name, 0, 0, "", f"cannot be read: {e.strerror}")]


def load(path: Path, display_name: str | None = None,
         raw: bytes | None = None) -> tuple[Document | None, list[Problem]]:
    """Parse one policy file, or `raw`, its bytes as read before (the bytes a
    signature was checked on are the bytes parsed). Returns the document, or
    None and its problems."""
    name = display_name or str(path)
    if raw is None:
        raw, problems = read(path, name)
        if raw is None:
            return None, problems
    if len(raw) > MAX_POLICY_BYTES:
        return None, [Problem(name, 0, 0, "", f"is larger than {MAX_POLICY_BYTES // 1024} KiB; "
                              "a policy is a short file")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        return None, [Problem(name, line, col, "", f"is not UTF-8 text (byte 0x{raw[e.start]:02x})")]
    return parse(text, name)


def parse(text: str, name: str) -> tuple[Document | None, list[Problem]]:
    try:
        problem = event_problem(text, name)
        if problem:
            return None, [problem]
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = _at(mark) if mark else (0, 0)
        return None, [Problem(name, line, col, "", f"is not valid YAML: {e.problem or e.context}")]
    except yaml.YAMLError as e:
        return None, [Problem(name, 0, 0, "", f"is not valid YAML: {e}")]
    if len(nodes) != 1 or nodes[0] is None:
        what = "is empty" if not nodes or nodes[0] is None else "holds several YAML documents; a policy is one"
        return None, [Problem(name, 1, 1, "", what)]
    doc = Document(name, None)
    try:
        doc.data = _convert(nodes[0], (), doc)
    except _Invalid as e:
        return None, [e.problem]
    return doc, []


def event_problem(text: str, name: str) -> Problem | None:
    """What the parser's events alone show is wrong, found before any node is
    built: an alias bomb ("billion laughs") never gets a chance to expand, and
    nesting deep enough to exhaust Python's stack (composing recurses once
    per level) is refused at the level that goes too deep."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            return Problem(name, *_at(event), "", "YAML aliases (*name) are not allowed in a policy")
        if getattr(event, "anchor", None):
            return Problem(name, *_at(event), "", "YAML anchors (&name) are not allowed in a policy")
        if isinstance(event, _OPENS):
            depth += 1
            if depth > MAX_DEPTH:
                return Problem(name, *_at(event), "", f"is nested more than {MAX_DEPTH} levels deep; "
                                                      "a policy is a few levels deep")
        elif isinstance(event, _CLOSES):
            depth -= 1
    return None


_OPENS = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSES = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
_constructor = SafeConstructor()


_PLAIN_TAGS = {yaml.MappingNode: "tag:yaml.org,2002:map", yaml.SequenceNode: "tag:yaml.org,2002:seq"}


def _convert(node, path: FieldPath, doc: Document):
    doc.value_marks[path] = _at(node)
    if type(node) in _PLAIN_TAGS and node.tag != _PLAIN_TAGS[type(node)]:
        raise _Invalid(Problem(doc.file, *_at(node), dotted(path), f"unsupported YAML tag {node.tag}"))
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node, path, doc)
            if not isinstance(key, str):
                raise _Invalid(Problem(doc.file, *_at(key_node), dotted(path),
                                       f"keys must be text; {key!r} is not"))
            if key in out:
                raise _Invalid(Problem(doc.file, *_at(key_node), dotted(path + (key,)),
                                       f"is given twice (first on line {doc.key_marks[path + (key,)][0]})"))
            doc.key_marks[path + (key,)] = _at(key_node)
            out[key] = _convert(value_node, path + (key,), doc)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, path + (i,), doc) for i, item in enumerate(node.value)]
    return _scalar(node, path, doc)


def _scalar(node, path: FieldPath, doc: Document):
    if not isinstance(node, yaml.ScalarNode):
        raise _Invalid(Problem(doc.file, *_at(node), dotted(path), "keys must be text"))
    try:
        return _constructor.construct_object(node, deep=True)
    except ConstructorError:
        raise _Invalid(Problem(doc.file, *_at(node), dotted(path),
                               f"unsupported YAML tag {node.tag}")) from None
