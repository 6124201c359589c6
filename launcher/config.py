"""The per-user config file, $XDG_CONFIG_HOME/sandbox/config.yaml (else
~/.config/sandbox/config.yaml). It holds the user's own settings, never a
policy's: who may sign policies (`allowed_signers`) and where models are kept
(`model_dir`). A relative path in it is relative to the file's directory."""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from launcher.errors import SandboxError


class ConfigError(SandboxError):
    exit_code = 2


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sandbox" / "config.yaml"


def config_file_path(key: str) -> Path | None:
    """The path the config file gives for `key`, or None."""
    path = config_path()
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot be read ({e})") from None
    except RecursionError:  # composing YAML recurses once per level of nesting
        raise ConfigError(f"{path}: nested too deeply to be a config file") from None
    value = config.get(key) if isinstance(config, dict) else None
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: {key} must be a path")
    found = Path(value).expanduser()
    return found if found.is_absolute() else path.parent / found
