"""An engine that stops answering (stopped, or dead in the middle of `up`) is
a one-line error that says so, from every call the gateway makes to it: the
SDK lets requests' and urllib3's connection errors through as they are, and
those are not the SDK's own errors."""
import ast
import io
from pathlib import Path

import pytest
import requests.exceptions
import urllib3.exceptions
from typer.testing import CliRunner

import launcher.engine
from launcher.cli import app
from launcher.engine import DockerGateway
from launcher.errors import DockerUnavailable
from launcher.images import ImageBuild
from launcher.plan import CREATE, Action, Plan
from launcher.spec import LABEL_PART, LABEL_SANDBOX
from tests.unit.fake_engine import FakeClient as Client
from tests.unit.helpers import make_spec

DEAD = [requests.exceptions.ConnectionError("('Connection aborted.', RemoteDisconnected('Remote end closed "
                                            "connection without response'))"),
        requests.exceptions.ReadTimeout("UnixHTTPConnectionPool(host='localhost', port=None): Read timed out."),
        urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead(0 bytes read)")]


class DeadApi:
    """The engine's API as the SDK gives it once the engine is gone: every
    request fails on the connection. What `answering` names still answers
    (the engine died after it)."""

    def __init__(self, error: Exception, answering: dict | None = None):
        self.error = error
        self.answering = answering or {}

    def __getattr__(self, name):
        if name in self.answering:
            return self.answering[name]

        def request(*args, **kwargs):
            raise self.error
        return request


SPEC = make_spec()
CALLS = {
    "engine": lambda g: g.state.engine(),
    "volume_sizes": lambda g: g.state.volume_sizes(),
    "volume_usage": lambda g: g.state.volume_usage("demo"),
    "image_present": lambda g: g.state.image_present("sandbox-x:1"),
    "image_id": lambda g: g.state.image_id("sandbox-x:1"),
    "put_tag": lambda g: g.state.put_tag("sandbox-x:1", "sha256:1"),
    "save_images": lambda g: list(g.state.save_images(["sandbox-x:1"])),
    "load_images": lambda g: g.state.load_images(io.BytesIO(b"images")),
    "observe": lambda g: g.state.observe("demo"),
    "subnets": lambda g: g.state.subnets(),
    "running_env": lambda g: g.state.running_env("demo", "backend", "KEY"),
    "sandboxes": lambda g: g.state.sandboxes(),
    "container_state": lambda g: g.state.container_state("sandbox-demo-backend"),
    "bind_sources": lambda g: g.state.bind_sources("sandbox-demo-backend"),
    "read_file": lambda g: g.containers.read_file("sandbox-demo-dns", "/audit/summary.json"),
    "write_file": lambda g: g.containers.write_file("sandbox-demo-dns", "/audit/x", b"x"),
    "memory_usage": lambda g: g.state.memory_usage("sandbox-demo-backend"),
    "logs": lambda g: list(g.containers.logs("sandbox-demo-backend")),
    "log_tail": lambda g: g.containers.log_tail("sandbox-demo-backend"),
    "addresses": lambda g: g.state.addresses("sandbox-demo-ingress"),
    "limits": lambda g: g.state.limits("sandbox-demo-backend"),
    "exec_in": lambda g: g.containers.exec_in("sandbox-demo-dns", ["true"]),
    "container_config": lambda g: g.state.container_config("sandbox-demo-frontend"),
    "container_pids": lambda g: g.state.container_pids("sandbox-demo-frontend"),
    "run_probe": lambda g: g.containers.run_probe("demo", "sandbox-probe:1", SPEC.container("frontend"), "{}"),
    "sweep_stale_builds": lambda g: g.build_proxy.sweep_stale_builds(),
    "remove_sandbox": lambda g: g.applier.remove_sandbox("demo", volumes=True),
    "apply": lambda g: g.applier.apply(SPEC, Plan(tuple(Action(CREATE, "container", c.name, "missing")
                                               for c in SPEC.containers))),
}


@pytest.mark.parametrize("error", DEAD, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("call", sorted(CALLS))
def test_every_call_to_an_engine_that_does_not_answer_says_so(call, error):
    with pytest.raises(DockerUnavailable) as raised:
        CALLS[call](DockerGateway(Client(DeadApi(error))))
    message = str(raised.value)
    assert "does not answer" in message and "\n" not in message, message


def test_a_build_whose_engine_dies_mid_stream_says_so(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY extra-ca.crt /\n")

    def build(**kwargs):
        yield {"stream": "Step 1/2 : FROM scratch\n"}
        raise DEAD[2]

    api = DeadApi(DEAD[0], {"build": build})
    with pytest.raises(DockerUnavailable, match="does not answer"):
        DockerGateway(Client(api)).builder.build(ImageBuild("sandbox-x:1", context=tmp_path))


def test_the_cli_prints_one_line_and_no_traceback_when_the_engine_dies_mid_command(monkeypatch):
    """The sandbox is listed, then the engine goes: `status` inspects its parts."""
    labels = {LABEL_SANDBOX: "demo", LABEL_PART: "backend"}
    api = DeadApi(DEAD[0], {
        "containers": lambda **kw: [{"Names": ["/sandbox-demo-backend"], "Labels": labels, "State": "running"}],
        "networks": lambda **kw: [], "volumes": lambda **kw: {"Volumes": []}})
    monkeypatch.setattr("launcher.cli._gateway", lambda: DockerGateway(Client(api)))
    result = CliRunner().invoke(app, ["status"])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.exception
    assert result.stderr.startswith("error: cannot talk to the Docker engine (") and "does not answer" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output, result.stderr


def engine_calls_outside_the_translation(source: str) -> list[int]:
    """Lines that call the engine (self.api..., api..., self.client...,
    docker....) outside a `with engine_call(...)` block."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def root(node):
        while isinstance(node, (ast.Attribute, ast.Call)):
            node = node.value if isinstance(node, ast.Attribute) else node.func
        return node

    def calls_engine(call: ast.Call) -> bool:
        target = call.func
        if not isinstance(target, ast.Attribute):
            return False
        chain = ast.unparse(target)
        return chain.startswith(("self.api.", "api.", "self.client.", "client.", "docker.from_env"))

    def translated(node) -> bool:
        while node in parents:
            node = parents[node]
            if isinstance(node, ast.With) and any(
                    isinstance(item.context_expr, ast.Call) and ast.unparse(item.context_expr.func) == "engine_call"
                    for item in node.items):
                return True
        return False

    return sorted(node.lineno for node in ast.walk(tree)
                  if isinstance(node, ast.Call) and calls_engine(node) and not translated(node) and root(node))


def test_every_call_to_the_engine_is_inside_the_one_translation():
    modules = sorted(Path(launcher.engine.__file__).parent.glob("*.py"))
    assert len(modules) > 1
    outside = {path.name: lines for path in modules
               if (lines := engine_calls_outside_the_translation(path.read_text()))}
    assert outside == {}
    # Control: the walk sees a call that is not.
    assert engine_calls_outside_the_translation("def f(self):\n    self.api.ping()\n") == [2]
    assert engine_calls_outside_the_translation("def f(api):\n    api.remove_network('n')\n") == [2]
