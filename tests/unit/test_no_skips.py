"""Where CI runs (SANDBOX_TESTS_NO_SKIPS=1), a skip not in tests/conftest.py's
ALLOWED_SKIPS fails the run: a green run must not hide tests that proved nothing."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"
TESTS = '''
import pytest

def test_runs():
    pass

def test_without_gpu():
    pytest.skip("the engine has no NVIDIA runtime")
'''


def run(tmp_path, extra: str, no_skips: bool) -> int:
    shutil.copyfile(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_some.py").write_text(TESTS + extra)
    env = {**os.environ, "SANDBOX_TESTS_NO_SKIPS": "1" if no_skips else "0"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, timeout=120).returncode


def test_an_unexpected_skip_fails_the_run_in_ci(tmp_path):
    skip = '''
def test_needs_a_tool():
    pytest.skip("curl is not installed")
'''
    assert run(tmp_path, skip, no_skips=True) == 1
    # Elsewhere (a developer's machine) it stays a skip.
    assert run(tmp_path, skip, no_skips=False) == 0


def test_an_allowed_skip_does_not(tmp_path):
    assert run(tmp_path, "", no_skips=True) == 0
