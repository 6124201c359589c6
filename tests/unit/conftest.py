import os
import sys
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def no_model_facts_kept(tmp_path, monkeypatch):
    # Each test starts with no model facts kept (launcher/models/facts.py), so
    # none depends on another's; SANDBOX_STATE_DIR, where a test sets it, wins.
    # One the integration tests set for their session (they run first in a
    # whole run) would win too: it goes.
    monkeypatch.delenv("SANDBOX_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


# A unit test writes only under its own tmp_path: a file it leaves in the
# checkout (a crash, another run at the same time, a read-only clone) is state
# the next run finds. Python reports every file it opens for writing, and every
# rename and mkdir, to an audit hook; what lands in the checkout fails the test.
# Files a subprocess writes are not seen.
CHECKOUT = Path(__file__).resolve().parents[2]
# What Python and the test tools keep there on their own.
TOOLS_OWN = {".venv", ".git", "__pycache__", ".pytest_cache", ".hypothesis"}
_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_written_in_checkout: list[str] | None = None


def _note_writes(event: str, args: tuple) -> None:
    if _written_in_checkout is None:
        return
    if event == "open" and args[2] & _WRITING or event == "os.mkdir":
        targets = args[:1]
    elif event == "os.rename":
        targets = args[:2]
    elif event in ("os.symlink", "os.link"):  # the first is what the link names
        targets = args[1:2]
    else:
        return
    for target in targets:
        if isinstance(target, int):
            continue
        path = Path(os.path.abspath(os.fsdecode(target)))
        if path.is_relative_to(CHECKOUT) and not TOOLS_OWN & set(path.relative_to(CHECKOUT).parts):
            _written_in_checkout.append(str(path))


sys.addaudithook(_note_writes)


@pytest.fixture(autouse=True)
def writes_nothing_into_the_checkout():
    global _written_in_checkout
    _written_in_checkout = []
    yield
    written, _written_in_checkout = _written_in_checkout, None
    assert not written, f"the test wrote into the checkout (write under tmp_path instead): {sorted(set(written))}"
