"""A stand-in for the user's browser, for `sandbox open` to start through
$BROWSER: it records its command line as every local user can read it, its
PATH and $BROWSER
(/proc/PID/cmdline) and, when asked to open a file, that file's text and
mode, in the JSON file $RECORD names."""
from __future__ import annotations

import json
import sys
from pathlib import Path

SCRIPT = """#!PYTHON
import json, os, stat, sys, urllib.parse
record = {"cmdline": open("/proc/self/cmdline", "rb").read().decode().rstrip("\\0").split("\\0"),
          "path": os.environ.get("PATH", ""), "browser": os.environ.get("BROWSER")}
url = sys.argv[-1]
if url.startswith("file://"):
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    record.update(page=open(path).read(), mode=stat.S_IMODE(os.stat(path).st_mode),
                  directory_mode=stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode))
with open(os.environ["RECORD"] + ".part", "w") as f:  # whole or not there, for a test that waits for it
    json.dump(record, f)
os.replace(os.environ["RECORD"] + ".part", os.environ["RECORD"])
"""


def install(directory: Path) -> tuple[dict[str, str], Path]:
    """The environment that makes it the browser, and where it records."""
    browser = directory / "browser"
    browser.write_text(SCRIPT.replace("PYTHON", sys.executable))
    browser.chmod(0o700)
    record = directory / "record.json"
    return {"BROWSER": str(browser), "RECORD": str(record)}, record


def recorded(record: Path) -> dict:
    return json.loads(record.read_text())
