"""The model store: one per-user directory of GGUF files, each with a small
sidecar saying where it came from. Partial downloads live in `.partial/`
and never under a model's final name.

Where: $SANDBOX_MODEL_DIR, else `model_dir:` in the config file
(launcher/config.py), else $XDG_DATA_HOME/sandbox/models, else
~/.local/share/sandbox/models. The backend mounts a model file from here
read-only, as from anywhere else."""
from __future__ import annotations

import json
import os
from pathlib import Path

from launcher.config import config_file_path
from launcher.private import write_private

MODEL_DIR_ENV = "SANDBOX_MODEL_DIR"
PROVENANCE_SUFFIX = ".provenance.json"


def store_dir() -> Path:
    if os.environ.get(MODEL_DIR_ENV):
        return Path(os.environ[MODEL_DIR_ENV]).expanduser()
    configured = config_file_path("model_dir")
    if configured:
        return configured
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sandbox" / "models"


def partial_dir(store: Path) -> Path:
    return store / ".partial"


def provenance_path(model: Path) -> Path:
    return model.with_name(model.name + PROVENANCE_SUFFIX)


def read_provenance(model: Path) -> dict | None:
    try:
        data = json.loads(provenance_path(model).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def write_provenance(model: Path, provenance: dict) -> None:
    write_private(provenance_path(model), json.dumps(provenance, indent=2, sort_keys=True) + "\n")


def models_in(store: Path) -> list[Path]:
    if not store.is_dir():
        return []
    return sorted(p for p in store.iterdir() if p.is_file() and p.suffix == ".gguf")


def find_by_sha256(store: Path, sha256: str) -> Path | None:
    """A model in the store that its sidecar says has these bytes."""
    for model in models_in(store):
        if (read_provenance(model) or {}).get("sha256") == sha256:
            return model
    return None


def find_by_source(store: Path, source: str) -> Path | None:
    for model in models_in(store):
        if (read_provenance(model) or {}).get("source") == source:
            return model
    return None


def policy_path_text(model: Path) -> str:
    """How a policy should name a model in the store: under the home
    directory as ~/..., so that one policy works for every teammate."""
    home = Path.home()
    try:
        return "~/" + model.relative_to(home).as_posix()
    except ValueError:
        return str(model)
