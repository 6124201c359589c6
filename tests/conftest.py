import itertools
import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


# pytest-randomly shuffles every test, which finds a unit test that passes
# only after another. Integration tests keep their written order: they share
# one engine, and a test there may take for granted what the one before it
# built. The shuffle of the rest is left as it is.
INTEGRATION = Path(__file__).parent / "integration"
_WRITTEN_ORDER = pytest.StashKey[int]()
_collected = itertools.count()


def _keeps_written_order(item) -> bool:
    return item.path.is_relative_to(INTEGRATION)


def pytest_itemcollected(item):
    item.stash[_WRITTEN_ORDER] = next(_collected)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    shuffled = iter([item for item in items if not _keeps_written_order(item)])
    written = sorted(items, key=lambda item: item.stash[_WRITTEN_ORDER])
    items[:] = [item if _keeps_written_order(item) else next(shuffled) for item in written]


@pytest.fixture(autouse=True)
def private_hash_cache(tmp_path, monkeypatch):
    # Each test starts with no sha256 cache, so none depends on another's.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


# A skip is a test that proved nothing. Where SANDBOX_TESTS_NO_SKIPS=1 (.ci/run
# sets it) every skip fails the run, but for the reasons listed here: what the
# machine kind that runs CI cannot have. Each entry is the start of a skip's
# reason, in one place, so that a new one is a decision, not an accident.
ALLOWED_SKIPS = (
    "the engine has no NVIDIA runtime",  # test_gpu.py: no GPU on CI's machines
    "this engine's storage cannot bound volume sizes",  # test_volumes.py: the enforcing path
    "this engine's storage bounds volume sizes",  # test_volumes.py: the refusing path, on XFS with quotas
)


def _unexpected_skips(terminalreporter) -> list[str]:
    out = []
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not reason.removeprefix("Skipped: ").startswith(ALLOWED_SKIPS):
            out.append(f"{report.nodeid}: {reason}")
    return out


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if os.environ.get("SANDBOX_TESTS_NO_SKIPS") != "1":
        return
    unexpected = _unexpected_skips(terminalreporter)
    if unexpected:
        terminalreporter.section("skips not allowed here (tests/conftest.py's ALLOWED_SKIPS)", red=True)
        for line in unexpected:
            terminalreporter.write_line(line)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("SANDBOX_TESTS_NO_SKIPS") == "1":
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and _unexpected_skips(reporter) and session.exitstatus == 0:
            session.exitstatus = 1
