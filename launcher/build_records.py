"""What each image build contacted through the build proxy, kept beside the
image (by its tag, which names its build inputs) in the owner's state
directory, for `sandbox audit`."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from launcher.access import state_dir


def record_path(tag: str) -> Path:
    return state_dir() / "builds" / (tag.replace("/", "_").replace(":", "_") + ".json")


def save(tag: str, contacts: list[dict]) -> None:
    path = record_path(tag)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"image": tag, "built": round(time.time()), "contacts": contacts}))
    os.replace(temporary, path)


def load(tag: str) -> dict | None:
    try:
        data = json.loads(record_path(tag).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
