"""What a build prints reaches the user's terminal escaped. A shared policy's
Dockerfile has a RUN step print an OSC 52 clipboard write, a C1 CSI and a
right-to-left override, then fail; `sandbox up` runs on a real
pseudo-terminal (where build lines go to the spinner) and everything it
writes there is read back."""
from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import yaml

from launcher.commands.down import down
from tests.integration.conftest import write_policy

# printf's octal escapes: ESC ] 52 ; c ; (base64 of "pwned") BEL, then U+009B
# and U+202E as UTF-8, as a program in the image would print them.
DOCKERFILE = """FROM debian:bookworm-slim
RUN printf '\\033]52;c;cHduZWQ=\\007 \\302\\23331m \\342\\200\\256txt.exe\\n'; exit 3
"""
RAW = (b"\x1b]52", b"\xc2\x9b", b"\xe2\x80\xae")
ESCAPED = b"\\x1b]52;c;cHduZWQ=\\x07 \\x9b31m \\u202etxt.exe"


def on_a_terminal(*args: str, timeout: float = 1200) -> tuple[int, bytes]:
    """Run the CLI with a pseudo-terminal as its stdin, stdout and stderr,
    and read all it writes there until it exits."""
    main, side = pty.openpty()
    run = subprocess.Popen([sys.executable, "-m", "launcher", *args], stdin=side, stdout=side, stderr=side,
                           env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "200"}, start_new_session=True)
    os.close(side)
    seen = b""
    deadline = time.monotonic() + timeout  # a guard against a hung build, not a wait for anything
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 5)
            if not ready:
                continue
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        return run.wait(timeout=60), seen
    finally:
        run.kill()
        os.close(main)


def test_a_builds_escape_sequences_reach_the_terminal_escaped(gateway, tmp_path):
    context = tmp_path / "ui"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE)
    path = write_policy(tmp_path, frontend={"build": {"context": "ui"}, "port": 8080, "health_path": "/health",
                                            "data": "/data"})
    name = yaml.safe_load(path.read_text())["name"]
    try:
        code, seen = on_a_terminal("up", str(path))
    finally:
        down(gateway, name, volumes=True)
    assert code == 1, seen.decode(errors="replace")
    assert b"returned a non-zero code: 3" in seen, seen.decode(errors="replace")
    # The step's output did come through (the control), escaped ...
    assert ESCAPED in seen, seen.decode(errors="replace")
    # ... and never raw, neither in the spinner nor in the error's last lines.
    assert [raw for raw in RAW if raw in seen] == [], seen
    assert b"Traceback" not in seen
