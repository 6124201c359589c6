from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def private_hash_cache(tmp_path, monkeypatch):
    # Each test starts with no sha256 cache, so none depends on another's.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
