import pytest


@pytest.fixture(autouse=True)
def no_model_facts_kept(tmp_path, monkeypatch):
    # Each test starts with no model facts kept (launcher/models/facts.py), so
    # none depends on another's; SANDBOX_STATE_DIR, where a test sets it, wins.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
