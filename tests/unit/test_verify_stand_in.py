"""`verify` gathers its facts from a sandbox up on the stand-in engine: the
probe's result, the sink's records, the engine's configs, the backend's
exec, and the front door of a stand-in ingress on 127.0.0.1. A healthy
sandbox passes every row; a broken one fails those rows it breaks, and says
what `up` would change."""
import json
import time

import pytest
from typer.testing import CliRunner

import launcher.commands.verify
from launcher import build_records
from launcher.cli import app
from launcher.commands.up import up
from launcher.commands.verify import probe_result, verify
from launcher.engine import DockerGateway
from launcher.errors import DockerFailure, NotFound
from launcher.images import recipe_image
from launcher.spec import AUDIT_DIR, LABEL_HASH
from tests.unit.fake_engine import FakeApi, FakeClient
from tests.unit.fake_ingress import StandInIngress
from tests.unit.helpers import quickstart_policy

FRONTEND, SINK = "sandbox-minimal-frontend", "sandbox-minimal-dns"
# A front-end process as the host's /proc shows it: no capabilities, no new privileges, seccomp on.
PROCESS = {"command": "python3 server.py", "uid": ["65534"] * 4, "cap_eff": "0000000000000000",
           "no_new_privs": "1", "seccomp": "2"}


class Sink:
    """The sandbox's DNS and connection sink: every attempt the probe makes
    ends here and is recorded, as the sink writes its records."""

    def __init__(self, api: FakeApi, client: str):
        self.api, self.client = api, client
        self.connections: list[dict] = []
        self.destinations: list[dict] = []

    def lookup(self, name: str) -> str:
        now = time.time()
        self.api.add_log(SINK, json.dumps({"time": now, "client": self.client, "name": name, "type": "A"}))
        self.destinations.append({"client": self.client, "kind": "lookup", "where": name, "port": None,
                                  "count": 1, "first": now, "last": now})
        return "no-answer:Name or service not known"

    def take(self, protocol: str, address: str, port: int) -> str:
        self.connections.append({"time": time.time(), "client": self.client, "protocol": protocol,
                                 "address": address, "port": port})
        return "connected" if protocol == "tcp" else "timeout"

    def write(self) -> None:
        self.api.add_file(SINK, f"{AUDIT_DIR}/connections.jsonl",
                          "".join(json.dumps(c) + "\n" for c in self.connections).encode())
        self.api.add_file(SINK, f"{AUDIT_DIR}/summary.json", json.dumps(
            {"destinations": self.destinations, "more": {}, "dropped": {}}).encode())


def healthy_probe(sink: Sink, escapes: dict | None = None):
    """images/probe/probe.py as it runs in a sound sandbox: each way out ends
    at the sink. `escapes`: "proto host:port" attempts that got out instead."""
    escapes = escapes or {}

    def run(command: list) -> tuple[int, str, str]:
        request = json.loads(command[0])
        result = {
            "tcp": {f"{h}:{p}": sink.take("tcp", h, p) for h, p in request["tcp"]},
            "outside": {f"{proto} {h}:{p}": escapes.get(f"{proto} {h}:{p}") or f"via-sink:{sink.take(proto, h, p)}"
                        for h, p, proto in request["outside"]},
            "dns": {name: sink.lookup(name) for name in request["dns"]},
            "by_name": {},
            "ipv6": {f"[{a}]:{p}": {"disabled": True, "result": "error:Network is unreachable"}
                     for a, p in request["ipv6"]},
            "http": {f"{h}:{p} {line}": "error:Connection refused" for h, p, line in request["http"]},
            "self": {"raw_socket": "error:Operation not permitted", "write_root": "error:Read-only file system",
                     "docker_socket": []},
        }
        sink.write()
        return 0, json.dumps(result) + "\n", ""
    return run


class Up:
    def __init__(self, api, policy, port, first):
        self.api, self.policy, self.port, self.first = api, policy, port, first

    def gateway(self) -> DockerGateway:
        return DockerGateway(client=FakeClient(self.api))


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A quick-start sandbox up on the stand-in engine, its ingress answering
    on its port, and the host as verify reads it."""
    yield from up_on_the_stand_in(tmp_path, monkeypatch, probed=FRONTEND, processes=[4101, 4102])


def up_on_the_stand_in(tmp_path, monkeypatch, probed: str, processes: list[int], frontend: str | None = None):
    """The sandbox up, verify's probe answering from the container `probed`
    (whose processes verify reads), with `frontend` in place of the policy's."""
    api = FakeApi()
    policy, port = quickstart_policy(tmp_path, monkeypatch, api, frontend=frontend)
    first = up(DockerGateway(client=FakeClient(api)), policy, timeout=5)
    probe = recipe_image("probe", ca_bundle=None)
    build_records.save(probe.tag, [], api.add_image(probe.tag))  # built by the launcher before
    probed_ip = api.containers_held[probed]["NetworkSettings"]["Networks"]["sandbox-minimal-internal"]["IPAddress"]
    api.programs[probe.tag] = healthy_probe(Sink(api, probed_ip))
    api.execs["sandbox-minimal-backend"] = lambda command: (0, "EROFS EROFS EROFS\n")
    api.processes_held[probed] = processes
    monkeypatch.setattr(launcher.commands.verify, "container_process",
                        lambda pid, container_id: PROCESS if container_id == probed else None)
    monkeypatch.setattr(launcher.commands.verify, "host_ipv4_addresses", lambda: ["192.0.2.2"])
    monkeypatch.setattr(launcher.commands.verify, "host_resolvers", lambda: ["10.0.0.53"])
    monkeypatch.setattr(launcher.commands.verify, "route_localnet", lambda: {"all": "0", "lo": "0"})
    with StandInIngress("minimal", first.token, port=port):
        yield Up(api, policy, port, first)


def verdicts(result) -> dict[str, str]:
    return {row.attack: row.verdict for row in result.rows}


def test_a_healthy_sandbox_passes_every_row(sandbox):
    said = []
    result = verify(sandbox.gateway(), "minimal", say=said.append)
    assert {a: v for a, v in verdicts(result).items() if v != "PASS"} == {"other sandboxes": "SKIP"}
    assert result.ok and result.drift == []
    assert "probing from the front-end's network" in said
    rows = {row.attack: row for row in result.rows}
    assert "EROFS EROFS EROFS; sha256 unchanged" in rows["write the weights"].result
    assert "sandbox-minimal-probe" not in sandbox.api.containers_held  # the probe ran, and is gone


def test_the_probe_runs_in_the_front_ends_network_as_neither_its_user_nor_root(sandbox):
    verify(sandbox.gateway(), "minimal")
    [(_, created)] = [(a, k) for name, a, k in sandbox.api.calls
                      if name == "create_container" and k.get("name") == "sandbox-minimal-probe"]
    assert created["host_config"]["network_mode"] == f"container:{FRONTEND}"
    assert created["user"] not in ("0", "0:0", "65534:65534") and created["host_config"]["read_only"] is True


def test_a_broken_sandbox_fails_the_rows_it_breaks_and_says_what_up_would_change(sandbox):
    api = sandbox.api
    frontend = api.containers_held[FRONTEND]
    frontend["HostConfig"].update(CapDrop=[], Privileged=True)  # someone ran it by hand
    frontend["Config"]["Labels"][LABEL_HASH] = "not-the-spec"
    api.execs["sandbox-minimal-backend"] = lambda command: (0, "WROTE EROFS EROFS\n")
    sink = Sink(api, "10.0.0.9")
    api.programs[recipe_image("probe", ca_bundle=None).tag] = healthy_probe(
        sink, escapes={"tcp 1.1.1.1:443": "route-via-live-gateway:172.18.0.1"})
    result = verify(sandbox.gateway(), "minimal")
    failed = {a for a, v in verdicts(result).items() if v == "FAIL"}
    assert {"privileges", "raw sockets", "write the weights", "raw IP egress"} <= failed
    assert not result.ok
    assert [line for line in result.drift if FRONTEND in line] and result.drift[0].startswith("recreate container")
    assert result.to_dict()["ok"] is False


def test_verify_of_a_sandbox_with_a_part_stopped_says_to_start_it(sandbox):
    sandbox.api.containers_held["sandbox-minimal-backend"]["State"]["Status"] = "exited"
    with pytest.raises(NotFound, match=r"^the backend of sandbox minimal is not running; `sandbox up` it first$"):
        verify(sandbox.gateway(), "minimal")
    with pytest.raises(NotFound, match="^no sandbox named other on this engine$"):
        verify(sandbox.gateway(), "other")


def test_a_probe_that_does_not_print_one_result_is_an_error_not_a_verdict(sandbox):
    sandbox.api.programs[recipe_image("probe", ca_bundle=None).tag] = lambda command: (
        0, '{"tcp": {}}\n{"tcp": {}}\n', "")
    with pytest.raises(DockerFailure, match=r"the probe did not print exactly one JSON result \(2 line\(s\)\)"):
        verify(sandbox.gateway(), "minimal")
    sandbox.api.programs[recipe_image("probe", ca_bundle=None).tag] = lambda command: (3, "", "Killed")
    with pytest.raises(DockerFailure, match=r"^the probe failed \(exit 3\): Killed$"):
        verify(sandbox.gateway(), "minimal")


@pytest.mark.parametrize("output", ["", "[]", "not json", "{}\n{}", '"text"'])
def test_only_one_json_object_is_a_probe_result(output):
    with pytest.raises(DockerFailure):
        probe_result(output)


def test_verify_on_the_command_line_prints_each_row_and_exits_by_the_verdicts(sandbox, monkeypatch):
    monkeypatch.setattr("launcher.cli._gateway", sandbox.gateway)
    healthy = CliRunner().invoke(app, ["verify", "--json"])
    assert healthy.exit_code == 0, healthy.output
    shown = json.loads(healthy.stdout)
    assert shown["ok"] is True and len(shown["rows"]) == 23
    sandbox.api.execs["sandbox-minimal-backend"] = lambda command: (0, "WROTE WROTE WROTE\n")
    broken = CliRunner().invoke(app, ["verify", "minimal"])
    assert broken.exit_code == 1
    assert "write the weights" in broken.stdout and "FAIL" in broken.stdout


BACKEND = "sandbox-minimal-backend"


@pytest.fixture
def api_only(tmp_path, monkeypatch):
    """The same sandbox with `frontend: none`: no front-end to probe from."""
    yield from up_on_the_stand_in(tmp_path, monkeypatch, probed=BACKEND, processes=[4101], frontend="none")


def test_an_api_only_sandbox_is_probed_from_its_backends_network_and_passes(api_only):
    said = []
    result = verify(api_only.gateway(), "minimal", say=said.append)
    assert {a: v for a, v in verdicts(result).items() if v != "PASS"} == {"other sandboxes": "SKIP"}
    assert "probing from the backend's network (there is no front-end)" in said
    [(_, created)] = [(a, k) for name, a, k in api_only.api.calls
                      if name == "create_container" and k.get("name") == "sandbox-minimal-probe"]
    assert created["host_config"]["network_mode"] == f"container:{BACKEND}"
