"""Where the files that ship with the launcher live: the policy schema and the
image recipes. In a source checkout (or an editable install) they are at the
top of the tree beside the package; an installed wheel carries them as data
files under the environment's share/sandbox (pyproject.toml lists them)."""
from __future__ import annotations

import sys
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parent.parent
INSTALLED_ROOT = Path(sys.prefix) / "share" / "sandbox"
ROOT = SOURCE_ROOT if (SOURCE_ROOT / "schemas" / "policy.schema.json").is_file() else INSTALLED_ROOT
SCHEMA_PATH = ROOT / "schemas" / "policy.schema.json"
IMAGES_DIR = ROOT / "images"
