"""Integration tests run against the real Docker engine, real images and the
real quick-start model. They skip, saying why, when no engine answers; every
sandbox they make has a unique name and is removed by label afterwards."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "policies" / "quickstart.yaml"
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
QUICKSTART_ALIAS = yaml.safe_load(QUICKSTART.read_text())["models"][0]["alias"]
FIXTURES_BAD = ROOT / "tests" / "fixtures" / "bad"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def state_dir(tmp_path_factory):
    """Access tokens of the tests' sandboxes go to a directory of their own."""
    path = tmp_path_factory.mktemp("state")
    os.environ["SANDBOX_STATE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def quickstart_model() -> Path:
    if not MODEL.is_file():
        pytest.skip("the quick-start model is missing; run scripts/fetch-quickstart-model.sh")
    return MODEL


@pytest.fixture(scope="session")
def docker_client(quickstart_model):
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except Exception as e:  # any failure to reach the engine means: skip, with the reason
        pytest.skip(f"no Docker engine answers ({e.__class__.__name__}); .ci/run starts one")
    return client


@pytest.fixture(scope="session")
def gateway(docker_client):
    from launcher.engine import DockerGateway
    return DockerGateway(docker_client)


# Run in the backend's container: the server dies as in a crash, and Docker
# restarts the container by itself (its restart policy).
KILL_THE_SERVER = """
import os, signal
for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) == os.getpid():  # this script's own command line names the server too
        continue
    try:
        if b"llama_cpp.server" in open(f"/proc/{pid}/cmdline", "rb").read() or b"sandbox-backend" in open(
                f"/proc/{pid}/cmdline", "rb").read():
            os.kill(int(pid), signal.SIGKILL)
    except OSError:
        pass
"""


def backend_server_pids(container) -> list[int]:
    """The backend's server processes, as this machine numbers them (not
    its healthcheck, `sandbox-backend health`, which ends on its own every
    2 s and would be gone by the time it is signalled)."""
    top = container.top(ps_args="-eo pid,args")
    return [int(p[0]) for p in top["Processes"]
            if ("llama_cpp.server" in p[1] or "sandbox-backend" in p[1]) and not p[1].endswith(" health")]


def ca_bundle() -> Path | None:
    value = os.environ.get("SANDBOX_CA_BUNDLE")
    return Path(value) if value else None


def held_gateway(client):
    """A gateway with which `up` is held in its wait for the backend, however
    fast the model loads: its readiness check (READY_CHECK, in
    launcher/commands/up.py) does not answer until `.release` is set, and
    then answers "not yet". `.waiting` is set once `up` is there."""
    from launcher.commands.up import READY_CHECK
    from launcher.engine import DockerGateway
    from launcher.engine.containers import Containers

    class HeldGateway(DockerGateway):
        waiting, release = threading.Event(), threading.Event()

        def __init__(self, client):
            super().__init__(client)
            self.containers = HeldContainers(client.api)

    class HeldContainers(Containers):
        def exec_in(self, container, command, user=""):
            if READY_CHECK in command:
                HeldGateway.waiting.set()
                HeldGateway.release.wait()
                return 4, "held by the test"
            return super().exec_in(container, command, user)
    return HeldGateway(client)


# `sandbox up` as the user runs it, but held as held_gateway holds it, with a
# line on stderr once it is.
HELD_UP = """
import sys, threading
from launcher.commands.up import READY_CHECK
from launcher.engine.containers import Containers
exec_in = Containers.exec_in
def held(self, container, command, user=""):
    if READY_CHECK in command:
        print("held by the test", file=sys.stderr, flush=True)
        threading.Event().wait()
    return exec_in(self, container, command, user)
Containers.exec_in = held
from launcher.cli import main
main()
"""


def write_policy(directory: Path, **changes) -> Path:
    """The quick-start policy under a unique name and a free port, in `directory`."""
    policy = yaml.safe_load(QUICKSTART.read_text())
    policy["name"] = changes.pop("name", f"it-{uuid.uuid4().hex[:8]}")
    policy["ingress"]["port"] = free_port()
    policy["models"][0]["path"] = str(MODEL)
    for key, value in changes.items():
        policy[key] = value
    path = directory / f"{policy['name']}.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


@pytest.fixture
def own_model(tmp_path, quickstart_model):
    """A policy whose model is a copy of the quick-start model, free to be
    changed or deleted: (policy path, model path, sandbox name)."""
    model = tmp_path / "model.gguf"
    shutil.copyfile(quickstart_model, model)
    path = write_policy(tmp_path)
    policy = yaml.safe_load(path.read_text())
    policy["models"][0]["path"] = str(model)
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path, model, policy["name"]


def ui(result, path: str = "", payload: dict | None = None, timeout: float = 120):
    """A request to a running sandbox's UI as its owner (with its token);
    JSON in and out when `payload` is given."""
    from launcher.access import open_ui
    data = None if payload is None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    return open_ui(result.url + path, result.token, data=data, headers=headers, timeout=timeout)


def ui_json(result, path: str, payload: dict | None = None, timeout: float = 120) -> dict:
    with ui(result, path, payload, timeout) as response:
        return json.load(response)


def answered(reply: dict) -> str:
    """The text of a chat answer that the sandbox's model really wrote (the
    assistant's, from the quick-start model, at least one token): a reply
    merely present would pass on an empty or echoed answer."""
    assert reply["reply"]["role"] == "assistant", reply
    assert reply["model"] == f"/models/{QUICKSTART_ALIAS}.gguf", reply  # the backend names the file it serves
    assert reply["usage"]["completion_tokens"] >= 1 and isinstance(reply["reply"]["content"], str), reply
    return reply["reply"]["content"]


def poll(check, what="", seconds: float = 120):
    """Wait for `check()` to give something true, and give it: for what a part
    does in its own time (a record written, a container restarted).
    `what`: what is awaited, or a function saying what was seen instead."""
    deadline = time.monotonic() + seconds
    while not (found := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {what if isinstance(what, str) else what()}")
        time.sleep(0.2)
    return found


def labelled(client, name: str) -> dict[str, list[str]]:
    label = {"label": f"io.sandbox.name={name}"}
    return {  # sorted: the engine lists them in no set order
        "containers": sorted(c.name for c in client.containers.list(all=True, filters=label)),
        "networks": sorted(n.name for n in client.networks.list(filters=label)),
        "volumes": sorted(v.name for v in client.volumes.list(filters=label)),
    }


@pytest.fixture(scope="module")
def sandbox(gateway, docker_client, tmp_path_factory):
    """A running quick-start sandbox for the tests of one module."""
    from launcher.commands.down import down
    from launcher.commands.up import up
    path = write_policy(tmp_path_factory.mktemp("policy"))
    progress = []
    result = up(gateway, path, ca_bundle=ca_bundle(), say=progress.append)
    yield result, path
    down(gateway, result.name, volumes=True)
    assert labelled(docker_client, result.name) == {"containers": [], "networks": [], "volumes": []}


OTHER_USER = "sandbox-other-user"


@pytest.fixture(scope="session")
def other_user():
    """A second local user of this machine: a stranger (docs/threats.md)."""
    if os.geteuid() != 0:
        pytest.skip("making a second local user needs root")
    try:
        pwd.getpwnam(OTHER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER],
                       check=True)
    return pwd.getpwnam(OTHER_USER)


def open_webui_page(page, link: str, timeout_ms: int = 300_000, why_not=None):
    """Open WebUI's page opened at `link` (the access link) in Playwright's
    `page`, ready for a chat: its input shown, its what's-new dialog (shown
    on a first visit) closed. Where the input does not come, `why_not()`
    (if given) says why, as the test's failure. The link's response."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    response = page.goto(link)
    try:
        page.wait_for_selector("#chat-input", timeout=timeout_ms)
    except PlaywrightTimeout:
        if why_not is None:
            raise
        pytest.fail(why_not())
    whats_new = page.get_by_role("button", name="Okay, Let's Go!")
    if whats_new.is_visible():
        whats_new.click()
    return response
