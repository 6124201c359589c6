"""Where the files that ship with the launcher live: the policy schema and the
image recipes, at the top of the source tree beside the package."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "schemas" / "policy.schema.json"
IMAGES_DIR = ROOT / "images"
