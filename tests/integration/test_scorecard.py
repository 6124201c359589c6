"""scripts/scorecard.py, the script behind docs/frontends.md, on the `chat`
recipe: it starts the UI in answer mode, chats in its page in a real
browser, reads the audit and writes its row into a document's table."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.integration.conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_scorecard_measures_a_ui_and_writes_its_table(tmp_path, quickstart_model):
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    document = tmp_path / "frontends.md"
    document.write_text("before\n<!-- scorecard:begin -->\nold table\n<!-- scorecard:end -->\nafter\n")
    measured = tmp_path / "runs.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "scorecard.py"), "--ui", "chat", "--idle", "1",
                           "--json", str(measured), "--write", str(document)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = json.loads(measured.read_text())
    assert (run["ui"], run["settings"], run["chat_answered"], run["error"]) == ("chat", "defaults", True, "")
    assert run["destinations"] == [] and run["page_requests"] == []  # our own recipe tries nothing
    # Its page in the locked window (`sandbox open`) asked the window's proxy for nothing either.
    assert run["window_requests"] == []
    text = document.read_text()
    assert "old table" not in text and text.startswith("before\n") and text.endswith("after\n")
    assert "| chat | defaults |" in text and "| answered | nothing | nothing | n/a | nothing |" in text


@pytest.mark.slow
def test_the_scorecard_document_step_passes_for_open_webuis_recipe(tmp_path, quickstart_model):
    """Open WebUI's vetted policy: a file uploaded with its own control is
    retrieved for the question, and nothing tried outward."""
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    measured = tmp_path / "runs.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "scorecard.py"), "--ui", "open-webui",
                           "--settings", "preset", "--idle", "1", "--json", str(measured)],
                          capture_output=True, text=True, timeout=1800)
    print(done.stdout)
    [run] = json.loads(measured.read_text())
    assert (run["settings"], run["chat_answered"], run["error"], run["document"]) == ("preset", True, "", "passed"), \
        done.stderr[-3000:]
    assert run["destinations"] == [] and run["page_requests"] == [] and run["window_requests"] == []
    assert done.returncode == 0 and "| passed | nothing |" in done.stdout, done.stderr[-3000:]
