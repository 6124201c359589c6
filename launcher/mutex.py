"""One command at a time per sandbox: two `up`s of one policy (or an `up` and
a `down`) in two shells wait for each other instead of racing for the same
networks and containers. A lock file per sandbox in the user's state
directory, held with flock: the kernel lets go of it when a process ends,
however it ends."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from typing import Callable, Iterator

from launcher.access import is_sandbox_name, state_dir
from launcher.private import private_directory


@contextmanager
def one_command_at_a_time(name: str, say: Callable[[str], None] | None = None) -> Iterator[None]:
    if not is_sandbox_name(name):  # no such sandbox can exist: nothing to guard
        yield
        return
    directory = private_directory(state_dir() / "locks")
    fd = os.open(directory / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if say:
                say(f"waiting for another sandbox command on {name} to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock
