"""The unit tests run shuffled (pytest-randomly), so that one that passes only
after another is found; the integration tests keep their written order, as
tests/conftest.py arranges."""
import os
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"
MODULE = '''
import os

def record(name):
    with open(os.environ["ORDER_LOG"], "a") as log:
        log.write(name + "\\n")
'''


def tree(tmp_path) -> dict[str, list[str]]:
    """Two integration and two unit modules of six tests each, with the
    conftest under test; the names of each part's tests as written."""
    (tmp_path / "conftest.py").write_bytes(CONFTEST.read_bytes())
    written = {"integration": [], "unit": []}
    for part in written:
        (tmp_path / part).mkdir()
        for module in ("test_a", "test_b"):
            names = [f"{part}_{module}_{n}" for n in range(6)]
            tests = "".join(f"\ndef test_{name}():\n    record({name!r})\n" for name in names)
            (tmp_path / part / f"{module}_{part}.py").write_text(MODULE + tests)
            written[part] += names
    return written


def run_order(tmp_path, *options: str) -> list[str]:
    log = tmp_path / "order.log"
    log.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options, str(tmp_path)],
                   cwd=tmp_path, env={**os.environ, "ORDER_LOG": str(log)}, check=True, capture_output=True,
                   timeout=120)
    return log.read_text().splitlines()


def test_unit_tests_are_shuffled_and_integration_tests_keep_their_order(tmp_path):
    written = tree(tmp_path)
    for seed in ("1", "2", "3"):
        ran = run_order(tmp_path, "-p", "randomly", f"--randomly-seed={seed}")
        assert ran[:12] == written["integration"], seed
        assert sorted(ran[12:]) == sorted(written["unit"]) and ran[12:] != written["unit"], seed
    # Control: without the shuffle, the unit tests too run as written, so the
    # check above sees an order that was changed.
    assert run_order(tmp_path, "-p", "no:randomly") == written["integration"] + written["unit"]
