"""What every door of the engine shares: the one translation of what the
engine answers (or does not) into errors a user can act on, inside which
every call to the engine is made, and the few calls more than one door
makes (removing a container or a network, bounding a log)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import docker.errors
import urllib3.exceptions
from docker.types import LogConfig

from launcher.errors import DockerFailure, DockerUnavailable, NotFound
from launcher.text import one_line

Say = Callable[[str], None]

# What a call raises when the engine does not answer: the SDK's own errors,
# and the connection's, which the SDK lets through as they are (requests'
# are OSErrors; urllib3's, from a stream cut short, are not).
NO_ANSWER = (docker.errors.DockerException, OSError, urllib3.exceptions.HTTPError)


@contextmanager
def engine_call(what: str, missing_ok: bool = False):
    """The one translation of what the engine answers (or does not) into
    errors a user can act on; every call to the engine is made inside it.
    With `missing_ok`, a thing the engine does not have ends the block
    quietly, and the code after it says what that means."""
    try:
        yield
    except docker.errors.NotFound as e:
        if not missing_ok:
            raise NotFound(f"{what}: {e.explanation or e}") from None
    except docker.errors.APIError as e:
        raise DockerFailure(f"{what}: the Docker engine said: {e.explanation or e}") from None
    except NO_ANSWER as e:
        raise DockerUnavailable(f"{what}: the engine does not answer: {short(e)}") from None


def short(e: Exception) -> str:
    return one_line(str(e), limit=300)


def quiet(say: Say | None) -> Say:
    return say or (lambda _message: None)


def remove_container(api, name: str) -> None:
    with engine_call(f"removing container {name}", missing_ok=True):
        api.remove_container(name, force=True, v=False)


def remove_network(api, name: str) -> None:
    with engine_call(f"removing network {name}", missing_ok=True):
        info = api.inspect_network(name)
        # Something else joined it (a debugging container, say): detach it.
        for cid in (info.get("Containers") or {}):
            api.disconnect_container_from_network(cid, name, force=True)
        api.remove_network(info["Id"])


def bounded_log(max_size: str, max_files: int) -> LogConfig:
    return LogConfig(type=LogConfig.types.JSON, config={"max-size": max_size, "max-file": str(max_files)})
