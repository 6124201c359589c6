"""Fill in a model's `path` and `sha256` in a policy file in place, keeping
every comment, blank line and the order of keys: only the two values change
(or, when a key is missing, one line is added under the entry's alias)."""
from __future__ import annotations

import json
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import yaml

from launcher.errors import SandboxError
from launcher.policy.loader import event_problem
from launcher.private import replace_file

_PLAIN = re.compile(r"[A-Za-z0-9_./~+-][A-Za-z0-9_./~+ -]*")


class PolicyEditError(SandboxError):
    exit_code = 2


@dataclass(frozen=True)
class ModelEntry:
    index: int
    alias: str | None
    path: str | None
    sha256: str | None


def model_entry(policy_file: Path, alias: str | None) -> ModelEntry:
    """The models entry a pull is for: the one with `alias`, or the only one."""
    entries = _entries(policy_file.read_text(), policy_file)
    values = [{k.value: v for k, v in node.value if isinstance(v, yaml.ScalarNode)} for node in entries]
    if alias is not None:
        found = [i for i, v in enumerate(values) if v.get("alias") is not None and v["alias"].value == alias]
        if not found:
            known = ", ".join(v["alias"].value for v in values if "alias" in v) or "none"
            raise PolicyEditError(f"{policy_file}: no model with alias {alias} (aliases: {known})")
        index = found[0]
    elif len(values) == 1:
        index = 0
    else:
        raise PolicyEditError(f"{policy_file}: it names {len(values)} models; say which with --alias")
    v = values[index]
    return ModelEntry(index, _value(v, "alias"), _value(v, "path"), _value(v, "sha256"))


def set_model_file(policy_file: Path, entry: ModelEntry, path_text: str, sha256: str) -> None:
    text = policy_file.read_text()
    node = _entries(text, policy_file)[entry.index]
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement), in the text
    keys = {k.value: (k, v) for k, v in node.value}
    anchor_key = keys.get("alias", next(iter(keys.values())))[0] if keys else None
    if anchor_key is None:
        raise PolicyEditError(f"{policy_file}: models[{entry.index}] is empty; give it an alias first")
    indent = " " * anchor_key.start_mark.column
    insert_at = offsets[keys.get("alias", (anchor_key, anchor_key))[1].end_mark.line + 1]
    for key, value in (("path", path_text), ("sha256", sha256)):
        if key in keys:
            found = keys[key][1]
            edits.append((found.start_mark.index, found.end_mark.index, _scalar(value)))
        else:
            edits.append((insert_at, insert_at, f"{indent}{key}: {_scalar(value)}\n"))
    for start, end, replacement in sorted(edits, key=lambda e: e[0], reverse=True):
        text = text[:start] + replacement + text[end:]
    replace_file(policy_file, text, stat.S_IMODE(policy_file.stat().st_mode))


def _entries(text: str, policy_file: Path) -> list[yaml.MappingNode]:
    try:
        problem = event_problem(text, str(policy_file))
        if problem:
            raise PolicyEditError(str(problem))
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise PolicyEditError(f"{policy_file}: not valid YAML ({e})") from None
    models = None
    if isinstance(root, yaml.MappingNode):
        models = next((v for k, v in root.value if k.value == "models"), None)
    if not isinstance(models, yaml.SequenceNode) or not models.value:
        raise PolicyEditError(f"{policy_file}: it has no models list to fill in; add an entry with an alias")
    if not all(isinstance(n, yaml.MappingNode) for n in models.value):
        raise PolicyEditError(f"{policy_file}: each models entry must be a mapping")
    return list(models.value)


def _value(values: dict, key: str) -> str | None:
    node = values.get(key)
    return node.value if node is not None else None


def _scalar(value: str) -> str:
    """A YAML scalar for `value`: plain when that reads back the same, else quoted."""
    if _PLAIN.fullmatch(value) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value)
