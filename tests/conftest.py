from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def private_hash_cache(tmp_path, monkeypatch):
    # Each test starts with no sha256 cache and no model facts kept, so none
    # depends on another's (SANDBOX_STATE_DIR, where set, still wins).
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
