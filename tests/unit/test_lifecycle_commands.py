"""`down`, `status`, `open` and `audit` on a quick-start sandbox that is up on
the stand-in engine: what each returns, what it removed there, and the
words of its errors; and the same through the command line."""
import json
from dataclasses import dataclass
from pathlib import Path

import docker.errors
import pytest
from typer.testing import CliRunner

import launcher.commands.open
from launcher import access
from launcher.cli import app
from launcher.commands.audit import INGRESS_KEPT, audit, follow
from launcher.commands.down import down
from launcher.commands.open import access_link, open_in_browser
from launcher.commands.status import status
from launcher.commands.up import UpResult, up
from launcher.engine import DockerGateway
from launcher.errors import NotFound
from launcher.spec import AUDIT_DIR, LABEL_SANDBOX
from tests.unit.fake_engine import FakeApi, FakeClient
from tests.unit.helpers import quickstart_policy

runner = CliRunner()
CONTAINERS = ["sandbox-minimal-ingress", "sandbox-minimal-frontend", "sandbox-minimal-backend",
              "sandbox-minimal-dns"]
# In the order `down` removes them: the ingress's own with the other parts, the one they are on after them.
NETWORKS = ["sandbox-minimal-ingress", "sandbox-minimal-internal"]
VOLUMES = ["sandbox-minimal-audit", "sandbox-minimal-data"]
SINK = "sandbox-minimal-dns"


@dataclass
class Sandbox:
    api: FakeApi
    policy: Path
    port: int
    first: UpResult

    def gateway(self) -> DockerGateway:
        return DockerGateway(client=FakeClient(self.api))  # each command has a gateway of its own

    def address(self, part: str) -> str:
        return self.api.containers_held[f"sandbox-minimal-{part}"]["NetworkSettings"]["Networks"][
            "sandbox-minimal-internal"]["IPAddress"]


class RefusingWrites(FakeApi):
    """An engine that no longer lets anything be written into a container."""

    def put_archive(self, container, path, data):
        raise docker.errors.APIError("container is marked for removal", explanation="container is marked for removal")


def sandbox_on(api: FakeApi, tmp_path, monkeypatch) -> Sandbox:
    policy, port = quickstart_policy(tmp_path, monkeypatch, api)
    first = up(DockerGateway(client=FakeClient(api)), policy, timeout=5)
    return Sandbox(api, policy, port, first)


@pytest.fixture
def sandbox(tmp_path, monkeypatch) -> Sandbox:
    return sandbox_on(FakeApi(), tmp_path, monkeypatch)


@pytest.fixture
def cli_engine(sandbox, monkeypatch) -> Sandbox:
    """The command line's commands talk to the sandbox's stand-in engine."""
    monkeypatch.setattr("launcher.cli._gateway", sandbox.gateway)
    return sandbox


# ---- down ------------------------------------------------------------------

def test_down_removes_the_sandboxs_containers_and_networks_ingress_first_and_keeps_its_volumes(sandbox):
    said = []
    before = len(sandbox.api.calls)
    result = down(sandbox.gateway(), "minimal", say=said.append)
    assert result == {"name": "minimal",
                      "removed": [f"container {c}" for c in CONTAINERS] + [f"network {n}" for n in NETWORKS]}
    removals = [(name, args[0]) for name, args, _ in sandbox.api.calls[before:] if name.startswith("remove_")]
    assert removals[0] == ("remove_container", "sandbox-minimal-ingress")
    # The network the others are on, once they are gone (the engine would refuse it before).
    assert removals[-1] == ("remove_network", "sandbox-minimal-internal")
    assert sandbox.api.containers_held == {} and sandbox.api.networks_held == {}
    assert sorted(sandbox.api.volumes_held) == VOLUMES  # the chat history and the audit records stay
    assert access.saved_token("minimal") == sandbox.first.token  # and the key to them
    assert "removing container sandbox-minimal-ingress" in said


def test_down_with_volumes_removes_the_data_the_audit_records_and_the_access_token(sandbox):
    token_file = access.token_file("minimal")
    result = down(sandbox.gateway(), None, volumes=True)  # the only sandbox: no need to name it
    assert result["removed"][-3:] == [f"volume {v}" for v in VOLUMES] + [f"access token {token_file}"]
    assert sandbox.api.volumes_held == {} and sandbox.api.containers_held == {}
    assert access.saved_token("minimal") is None and not token_file.exists()


def test_down_keeps_what_the_ingress_refused_on_the_audit_volume(sandbox):
    refusal = "ingress: refused no-token GET / peer=172.17.0.1"
    sandbox.api.add_log("sandbox-minimal-ingress", refusal, timestamp="2026-11-29T20:55:01.000000001Z")
    sandbox.api.add_log("sandbox-minimal-ingress", "ingress: listening")
    down(sandbox.gateway(), "minimal")
    kept = sandbox.api.file(SINK, f"{AUDIT_DIR}/{INGRESS_KEPT}")
    assert kept == f"2026-11-29T20:55:01.000000001Z {refusal}\n".encode()


def test_down_of_a_sandbox_half_gone_still_removes_it_and_says_what_was_not_kept(tmp_path, monkeypatch):
    sandbox = sandbox_on(RefusingWrites(), tmp_path, monkeypatch)
    sandbox.api.add_log("sandbox-minimal-ingress", "ingress: refused no-token GET /")
    said = []
    result = down(sandbox.gateway(), "minimal", say=said.append)
    assert [r for r in result["removed"] if r.startswith("container")] == [f"container {c}" for c in CONTAINERS]
    assert any(line.startswith("the ingress's refusals could not be kept: writing /audit/ingress-refused.log in "
                               "sandbox-minimal-dns: the Docker engine said: container is marked for removal")
               for line in said), said


def test_down_with_no_sandbox_on_the_engine_says_how_to_start_one():
    with pytest.raises(NotFound, match=r"^no sandbox is running on this engine: `sandbox up POLICY` starts one$"):
        down(DockerGateway(client=FakeClient()), None)


def test_down_on_the_command_line_says_what_it_removed_then_that_nothing_is_left(cli_engine):
    first = runner.invoke(app, ["down", "minimal", "--json"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout) == {"ok": True, "name": "minimal",
                                        "removed": [f"container {c}" for c in CONTAINERS]
                                        + [f"network {n}" for n in NETWORKS]}
    again = runner.invoke(app, ["down", "minimal"])  # its volumes still name it
    assert (again.exit_code, again.stdout) == (0, "sandbox minimal: nothing to remove\n")
    gone = runner.invoke(app, ["down", "minimal", "--volumes"])
    assert (gone.exit_code, gone.stdout) == (0, "sandbox minimal removed\n")
    assert cli_engine.api.volumes_held == {}


# ---- status ----------------------------------------------------------------

def test_status_of_a_sandbox_that_is_up(sandbox):
    sandbox.api.add_file(SINK, f"{AUDIT_DIR}/counts.json", b'{"lookups": 2, "connections": 1}')
    [shown] = status(sandbox.gateway(), "minimal")
    link = f"http://127.0.0.1:{sandbox.port}/?sandbox_token={sandbox.first.token}"
    assert (shown["name"], shown["url"], shown["healthy"], shown["access_link"]) == (
        "minimal", f"http://127.0.0.1:{sandbox.port}/", True, link)
    assert [(p["part"], p["state"], p["container"]) for p in shown["parts"]] == [
        (c.rpartition("-")[2], "running", c) for c in reversed(CONTAINERS)]
    assert shown["policy"] == str(sandbox.policy) and shown["problems"] == []
    assert shown["attempts"] == 3  # as the sink counted them
    assert [(v["name"], v["limit_bytes"]) for v in shown["volumes"]] == [
        ("sandbox-minimal-audit", 256 * 2**20), ("sandbox-minimal-data", 4 * 2**30)]
    assert "memory_bytes" not in shown["parts"][0]


def test_status_counts_the_owners_api_calls_by_client_and_model_kept_and_logged(sandbox):
    assert status(sandbox.gateway(), "minimal")[0]["api_calls"] == []
    call = "ingress: api call route=chat/completions client=openai-python model=tiny status=200"
    sandbox.api.add_log("sandbox-minimal-ingress", call, timestamp="2026-12-01T03:00:00.000000001Z")
    sandbox.api.add_log("sandbox-minimal-ingress", "ingress: refused status=401 reason=no-token",
                        timestamp="2026-12-01T03:00:01.000000001Z")
    # Those of an ingress container that is gone were kept on the audit volume.
    kept = "2026-11-30T10:00:00.000000001Z ingress: api call route=models client=curl model=- status=200\n"
    sandbox.api.add_file(SINK, f"{AUDIT_DIR}/{INGRESS_KEPT}", kept.encode())
    [shown] = status(sandbox.gateway(), "minimal")
    assert shown["api_calls"] == [{"client": "curl", "model": "-", "calls": 1, "failed": 0},
                                  {"client": "openai-python", "model": "tiny", "calls": 1, "failed": 0}]
    # The audit's refusals are refusals only.
    assert [line.split(" reason=")[1] for line in audit(sandbox.gateway(), "minimal")["ingress_refused"]] == [
        "no-token"]
    # `down` keeps the calls with the refusals.
    down(sandbox.gateway(), "minimal")
    assert call in sandbox.api.file(SINK, f"{AUDIT_DIR}/{INGRESS_KEPT}").decode()


def test_status_with_memory_shows_what_each_running_part_uses_without_the_page_cache(sandbox):
    sandbox.api.memory_held["sandbox-minimal-backend"] = (300 * 2**20, 100 * 2**20)
    sandbox.api.containers_held["sandbox-minimal-frontend"]["State"]["Status"] = "exited"
    [shown] = status(sandbox.gateway(), memory=True)
    parts = {p["part"]: p for p in shown["parts"]}
    assert parts["backend"]["memory_bytes"] == 200 * 2**20
    assert "memory_bytes" not in parts["frontend"]  # a stopped part uses none
    assert shown["healthy"] is False


def test_status_lists_every_sandbox_and_one_whose_containers_are_gone(sandbox):
    sandbox.api.create_volume("sandbox-older-data", labels={LABEL_SANDBOX: "older"})
    shown = status(sandbox.gateway())
    assert [s["name"] for s in shown] == ["minimal", "older"]
    older = shown[1]
    assert {p["state"] for p in older["parts"]} == {"missing"}
    assert (older["healthy"], older["url"], older["access_link"]) == (False, None, None)


def test_status_with_no_sandbox_is_empty_and_a_sandbox_not_there_is_an_error(sandbox):
    assert status(DockerGateway(client=FakeClient())) == []
    with pytest.raises(NotFound, match="^no sandbox named other on this engine$"):
        status(sandbox.gateway(), "other")


def test_status_says_a_model_file_went_missing_while_the_sandbox_runs(sandbox, tmp_path):
    mount = sandbox.api.containers_held["sandbox-minimal-backend"]["Mounts"][0]
    mount["Source"] = str(tmp_path / "moved.gguf")
    [shown] = status(sandbox.gateway(), str(sandbox.policy))  # named by its policy file
    assert shown["problems"] == [f"model file missing: {tmp_path / 'moved.gguf'}"]
    assert shown["healthy"] is False


def test_status_on_the_command_line_exits_1_when_a_sandbox_is_not_healthy(cli_engine):
    healthy = runner.invoke(app, ["status"])
    assert healthy.exit_code == 0, healthy.output
    assert "minimal" in healthy.stdout and f"http://127.0.0.1:{cli_engine.port}/" in healthy.stdout
    cli_engine.api.add_log("sandbox-minimal-ingress",
                           "ingress: api call route=chat/completions client=curl model=tiny status=200")
    assert "1 from curl, model tiny" in runner.invoke(app, ["status"]).stdout
    as_json = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert [s["name"] for s in as_json["sandboxes"]] == ["minimal"]
    assert as_json["sandboxes"][0]["api_calls"] == [{"client": "curl", "model": "tiny", "calls": 1, "failed": 0}]
    assert as_json["sandboxes"][0]["token"] == cli_engine.first.token
    cli_engine.api.containers_held["sandbox-minimal-backend"]["State"]["Status"] = "exited"
    assert runner.invoke(app, ["status", "--memory"]).exit_code == 1
    missing = runner.invoke(app, ["status", "nosuch"])
    assert (missing.exit_code, missing.stderr) == (1, "error: no sandbox named nosuch on this engine\n")


# ---- open ------------------------------------------------------------------

def test_open_gives_the_link_with_the_sandboxs_token(sandbox):
    assert access_link(sandbox.gateway(), None) == (
        "minimal", f"http://127.0.0.1:{sandbox.port}/?sandbox_token={sandbox.first.token}")


def test_open_of_a_sandbox_that_is_not_running_says_to_start_it(sandbox):
    sandbox.api.containers_held["sandbox-minimal-ingress"]["State"]["Status"] = "exited"
    with pytest.raises(NotFound, match=r"^sandbox minimal is not running; `sandbox up` it first$"):
        access_link(sandbox.gateway(), "minimal")
    down(sandbox.gateway(), "minimal")
    with pytest.raises(NotFound, match="is not running"):
        access_link(sandbox.gateway(), "minimal")


def test_open_without_the_token_here_says_where_its_owner_keeps_it(sandbox):
    env = sandbox.api.containers_held["sandbox-minimal-ingress"]["Config"]["Env"]
    env[:] = [e for e in env if not e.startswith(f"{access.TOKEN_ENV}=")]  # started by another user
    access.forget_token("minimal")
    with pytest.raises(NotFound) as refused:
        access_link(sandbox.gateway(), "minimal")
    assert str(refused.value) == (f"no access token of sandbox minimal is readable here: it is kept in "
                                  f"{access.token_file('minimal')} of the user who started it")


def test_the_browser_is_given_a_page_only_its_owner_reads_never_the_link(monkeypatch):
    opened = []
    monkeypatch.setattr(launcher.commands.open.webbrowser, "open", lambda uri: opened.append(uri) or True)
    link = "http://127.0.0.1:8080/?sandbox_token=" + "t" * 43
    assert open_in_browser("minimal", link) is True
    [uri] = opened
    assert uri.startswith("file://") and "t" * 43 not in uri
    page = Path(uri.removeprefix("file://"))
    assert link in page.read_text() and page.stat().st_mode & 0o077 == 0


def test_open_on_the_command_line_prints_the_link_or_says_why_not(cli_engine, monkeypatch):
    link = f"http://127.0.0.1:{cli_engine.port}/?sandbox_token={cli_engine.first.token}"
    printed = runner.invoke(app, ["open", "--print"])
    assert (printed.exit_code, printed.stdout) == (0, link + "\n")
    monkeypatch.setattr(launcher.commands.open.webbrowser, "open", lambda uri: False)
    # The user's usual browser (the locked window has tests of its own).
    no_browser = runner.invoke(app, ["open", "minimal", "--system-browser"])
    assert no_browser.exit_code == 0 and no_browser.stdout == link + "\n"
    assert "no browser could be started here" in no_browser.stderr
    monkeypatch.setattr(launcher.commands.open.webbrowser, "open", lambda uri: True)
    opened = runner.invoke(app, ["open", "--system-browser"])
    assert opened.stdout == "" and opened.stderr.startswith("opened sandbox minimal in your usual browser: ")
    runner.invoke(app, ["down"])
    stopped = runner.invoke(app, ["open"])
    assert (stopped.exit_code, stopped.stderr) == (
        1, "error: sandbox minimal is not running; `sandbox up` it first\n")


# ---- audit -----------------------------------------------------------------

def summary(*destinations: dict, more: dict | None = None) -> bytes:
    return json.dumps({"destinations": list(destinations), "more": more or {}, "dropped": {}}).encode()


def test_audit_names_what_each_part_tried_and_what_the_ingress_refused(sandbox):
    frontend, backend = sandbox.address("frontend"), sandbox.address("backend")
    sandbox.api.add_file(SINK, f"{AUDIT_DIR}/summary.json", summary(
        {"client": frontend, "kind": "lookup", "where": "evil.example", "port": None, "count": 3,
         "first": 100.0, "last": 200.0},
        {"client": backend, "kind": "lookup", "where": "evil.example", "port": None, "count": 1,
         "first": 150.0, "last": 150.0},
        {"client": frontend, "kind": "tcp", "where": "1.1.1.1", "address": "1.1.1.1", "port": 443, "count": 2,
         "first": 100.0, "last": 110.0, "said": {"tls_server_name": "api.evil.example"}},
        more={backend: 7}))
    sandbox.api.add_file(SINK, f"{AUDIT_DIR}/connections.jsonl", (json.dumps(
        {"time": 110.0, "client": frontend, "protocol": "tcp", "address": "1.1.1.1", "port": 443,
         "tls_server_name": "api.evil.example"}) + "\n").encode())
    sandbox.api.add_log("sandbox-minimal-ingress", "ingress: refused no-token GET / peer=172.17.0.1",
                        timestamp="2026-11-29T20:55:01.000000000Z")
    sandbox.api.add_log("sandbox-minimal-ingress", f"ingress: refused proxy CONNECT x:443 peer={frontend}",
                        timestamp="2026-11-29T20:55:02.000000000Z")
    sandbox.api.add_log("sandbox-minimal-ingress", "ingress: listening")
    found = audit(sandbox.gateway())
    assert [(n["name"], n["parts"], n["count"]) for n in found["names"]] == [
        ("evil.example", ["backend", "frontend"], 4)]
    [where] = found["destinations"]
    assert (where["protocol"], where["address"], where["port"], where["count"], where["parts"], where["said"]) == (
        "tcp", "1.1.1.1", 443, 2, ["frontend"], ["TLS to api.evil.example"])
    assert [(c["part"], c["said"]) for c in found["connections"]] == [("frontend", "TLS to api.evil.example")]
    assert found["ingress_refused"] == ["refused no-token GET / peer=172.17.0.1"]
    # A part's own request is never passed off as a browser's.
    assert found["ingress_refused_from_parts"] == [
        {"part": "frontend", "line": f"refused proxy CONNECT x:443 peer={frontend}"}]
    assert found["not_itemised"] == {"backend": 7}


def test_audit_since_leaves_out_what_came_before(sandbox):
    sandbox.api.add_file(SINK, f"{AUDIT_DIR}/summary.json", summary(
        {"client": sandbox.address("frontend"), "kind": "lookup", "where": "old.example", "port": None,
         "count": 1, "first": 100.0, "last": 100.0}))
    sandbox.api.add_log("sandbox-minimal-ingress", "ingress: refused no-token GET /",
                        timestamp="2020-01-01T00:00:00.000000000Z")
    found = audit(sandbox.gateway(), "minimal", since=1_600_000_000.0)
    assert (found["names"], found["ingress_refused"]) == ([], [])


def test_audit_reads_refusals_kept_from_an_ingress_that_is_gone(sandbox):
    sandbox.api.add_log("sandbox-minimal-ingress", "ingress: refused no-token GET /kept",
                        timestamp="2026-11-29T20:55:01.000000000Z")
    down(sandbox.gateway(), "minimal")
    up(sandbox.gateway(), sandbox.policy, timeout=5)  # a new ingress, with a log of its own
    assert "sandbox-minimal-ingress" not in sandbox.api.logs_held
    assert audit(sandbox.gateway(), "minimal")["ingress_refused"] == ["refused no-token GET /kept"]


def test_audit_follow_yields_each_new_lookup_and_connection(sandbox):
    frontend = sandbox.address("frontend")
    sandbox.api.add_log(SINK, json.dumps({"time": 1.0, "client": frontend, "name": "evil.example", "type": "A"}))
    sandbox.api.add_log(SINK, json.dumps({"time": 2.0, "client": frontend, "protocol": "udp",
                                          "address": "8.8.8.8", "port": 53, "bytes": 40}))
    sandbox.api.add_log(SINK, "sink: started")
    followed = list(follow(sandbox.gateway()))
    assert [(e["part"], e.get("name"), e.get("protocol")) for e in followed] == [
        ("frontend", "evil.example", None), ("frontend", None, "udp")]
    assert followed[1]["said"] == "40 B"


def test_audit_on_the_command_line_as_json_and_text(cli_engine):
    cli_engine.api.add_file(SINK, f"{AUDIT_DIR}/summary.json", summary(
        {"client": cli_engine.address("frontend"), "kind": "lookup", "where": "evil.example", "port": None,
         "count": 1, "first": 100.0, "last": 100.0}))
    as_json = runner.invoke(app, ["audit", "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert [n["name"] for n in json.loads(as_json.stdout)["names"]] == ["evil.example"]
    text = runner.invoke(app, ["audit", "minimal"])
    assert text.exit_code == 0 and "evil.example" in text.stdout


# ---- up's starts ---------------------------------------------------------

class HeldSink(FakeApi):
    """An engine on which the sink's start is held until the backend's and the
    ingress's have begun: if up waited for the sink before those, it never ends."""

    def __init__(self):
        import threading
        super().__init__()
        self.others_begun = threading.Barrier(3, timeout=10)

    def start(self, container):
        if container in (SINK, "sandbox-minimal-backend", "sandbox-minimal-ingress"):
            self.others_begun.wait()  # broken (an error) when one of the three never comes
        super().start(container)


def test_up_creates_every_part_then_starts_the_front_end_only_once_the_sink_has_started(tmp_path, monkeypatch):
    api = HeldSink()
    sandbox_on(api, tmp_path, monkeypatch)
    order = [(name, kwargs.get("name") or args[0]) for name, args, kwargs in api.calls
             if name in ("create_container", "start")]
    creates = [i for i, (name, _) in enumerate(order) if name == "create_container"]
    starts = [target for name, target in order if name == "start"]
    assert len(creates) == 4 and max(creates) < min(i for i, (name, _) in enumerate(order) if name == "start")
    assert sorted(starts) == sorted(CONTAINERS)
    # The calls are recorded as they begin: the front-end's began after the
    # sink's ended, which was after the backend's and the ingress's began.
    assert starts[-1] == "sandbox-minimal-frontend"


class OneStartFails(FakeApi):
    def start(self, container):
        if container.endswith("-frontend"):
            raise docker.errors.APIError("driver failed programming external connectivity",
                                         explanation="driver failed programming external connectivity")
        super().start(container)


def test_a_part_that_fails_to_start_is_said_after_the_others_have_started(tmp_path, monkeypatch):
    from launcher.errors import SandboxError
    api = OneStartFails()
    with pytest.raises(SandboxError, match="starting container sandbox-minimal-frontend"):
        sandbox_on(api, tmp_path, monkeypatch)
    running = {name for name, held in api.containers_held.items() if held["State"]["Status"] == "running"}
    assert running == set(CONTAINERS) - {"sandbox-minimal-frontend"}


# ---- up's readiness check ----------------------------------------------------

def _ready_check(answer):
    """Execs in the sink: READY_CHECK answered by `answer`, the rest well."""
    from launcher.commands.up import READY_CHECK
    return lambda command: answer(command) if READY_CHECK in command else (0, "")


def test_up_asks_the_backend_with_the_front_ends_key_then_the_ui_from_inside_the_sandbox(tmp_path, monkeypatch):
    from launcher.commands.up import READY_CHECK
    api = FakeApi()
    asked = []
    api.execs[SINK] = _ready_check(lambda command: asked.append(command) or (0, ""))
    first = sandbox_on(api, tmp_path, monkeypatch).first
    [command] = asked
    key = first.prepared.spec.container("backend").env_value("SANDBOX_API_KEY")
    assert command[:3] == ["python3", "-c", READY_CHECK] and command[3] == key
    assert command[4] == "http://backend:8000/v1/models" and command[5] == "http://frontend:8080/health"
    execs = [kwargs.get("user") or args[2] for name, args, kwargs in api.calls if name == "exec_create"]
    assert execs == ["65534:65534"]  # as the sink runs once it has given up root


def test_up_says_the_backend_refused_its_key_with_the_backends_log(tmp_path, monkeypatch):
    from launcher.errors import NotReady
    api = FakeApi()
    api.execs[SINK] = _ready_check(lambda command: (3, "http://backend:8000/v1/models: 401"))
    with pytest.raises(NotReady, match="the backend did not become ready: it refused the front-end's API key"):
        sandbox_on(api, tmp_path, monkeypatch)


def test_up_asks_again_until_its_deadline_and_names_what_did_not_answer(tmp_path, monkeypatch):
    from launcher.errors import NotReady
    api = FakeApi()
    asked = []
    api.execs[SINK] = _ready_check(lambda command: asked.append(command[6]) or (4, "http://frontend:8080/health: 502"))
    policy, _ = quickstart_policy(tmp_path, monkeypatch, api)
    with pytest.raises(NotReady, match=r"the front-end did not become ready: timed out: no answer in time "
                                       r"\(http://frontend:8080/health: 502\)"):
        up(DockerGateway(client=FakeClient(api)), policy, timeout=0.5)
    assert len(asked) >= 1 and all(float(seconds) <= 30 for seconds in asked)


def test_a_part_that_stops_while_up_waits_ends_the_wait_at_once(tmp_path, monkeypatch):
    """The check is held (as a slow model holds it) while the front-end stops:
    the wait ends with the front-end's reason, not the check's deadline."""
    import threading

    from launcher.errors import NotReady
    api = FakeApi()
    held = threading.Event()

    def stopped_meanwhile(command):
        api.containers_held["sandbox-minimal-frontend"]["State"].update(Status="exited", ExitCode=1)
        held.wait(30)  # let go by the test once up has ended
        return 4, "held"
    api.execs[SINK] = _ready_check(stopped_meanwhile)
    policy, _ = quickstart_policy(tmp_path, monkeypatch, api)
    try:
        with pytest.raises(NotReady, match="the frontend did not become ready: it stopped"):
            up(DockerGateway(client=FakeClient(api)), policy, timeout=600)
    finally:
        held.set()


# ---- status right after up -------------------------------------------------

def _health_starting(api: FakeApi, container: str) -> None:
    api.containers_held[container]["State"]["Health"] = {"Status": "starting"}


def test_status_right_after_up_reads_a_part_the_engine_has_not_checked_yet_as_up_saw_it(sandbox):
    _health_starting(sandbox.api, "sandbox-minimal-backend")
    [report] = status(sandbox.gateway(), "minimal")
    backend = next(p for p in report["parts"] if p["part"] == "backend")
    assert backend["health"] == "healthy" and backend["health_by"] == "up" and report["healthy"]


def test_a_part_started_again_since_up_saw_it_is_not_read_as_ready(sandbox):
    _health_starting(sandbox.api, "sandbox-minimal-backend")
    sandbox.api.containers_held["sandbox-minimal-backend"]["State"]["StartedAt"] = "2030-01-01T00:00:00Z"
    [report] = status(sandbox.gateway(), "minimal")
    backend = next(p for p in report["parts"] if p["part"] == "backend")
    assert backend["health"] == "starting" and backend["health_by"] == "engine" and not report["healthy"]


def test_the_engines_verdict_is_read_over_what_up_saw(sandbox):
    sandbox.api.containers_held["sandbox-minimal-backend"]["State"]["Health"] = {"Status": "unhealthy"}
    [report] = status(sandbox.gateway(), "minimal")
    assert not report["healthy"]


def test_after_down_nothing_up_saw_is_kept(sandbox):
    from launcher.readiness import seen_ready
    assert seen_ready("minimal")
    down(sandbox.gateway(), "minimal")
    assert seen_ready("minimal") == {}


def test_a_part_that_restarts_while_up_waits_ends_the_wait(tmp_path, monkeypatch):
    from launcher.errors import NotReady
    api = FakeApi()

    def restarted_meanwhile(command):
        api.containers_held["sandbox-minimal-backend"]["RestartCount"] = 1
        return 4, "http://backend:8000/v1/models: no answer"
    api.execs[SINK] = _ready_check(restarted_meanwhile)
    policy, _ = quickstart_policy(tmp_path, monkeypatch, api)
    with pytest.raises(NotReady, match=r"the backend did not become ready: it stopped \(exit code 0, restarts 1\)"):
        up(DockerGateway(client=FakeClient(api)), policy, timeout=600)


def test_a_no_change_up_asks_only_the_front_door_but_a_part_started_anew_is_asked_again(sandbox):
    sandbox.api.calls.clear()
    up(sandbox.gateway(), sandbox.policy, timeout=5)
    assert "exec_create" not in sandbox.api.requests()
    sandbox.api.containers_held["sandbox-minimal-backend"]["State"]["StartedAt"] = "2030-01-01T00:00:00Z"
    up(sandbox.gateway(), sandbox.policy, timeout=5)
    assert "exec_create" in sandbox.api.requests()
