"""A sandbox with no UI (`frontend: none`): the policy that says so, the
spec and plan it makes (backend, DNS sink and ingress, no front-end), its
lock, and what `validate`, `up` and `status` say of it."""
import json
from dataclasses import replace

import yaml
from typer.testing import CliRunner

from launcher.cli import app
from launcher.commands.status import status
from launcher.commands.up import up
from launcher.engine import DockerGateway
from launcher.images import images_for
from launcher.lockfile import drift, make_lock
from launcher.plan import Observed, make_plan
from launcher.policy import check_policy_file
from launcher.render import kubernetes
from launcher.spec import API_HEALTH_PATH
from tests.conftest import FIXTURES
from tests.unit.fake_engine import FakeApi, FakeClient
from tests.unit.helpers import IMAGES, make_policy, make_spec, quickstart_policy

runner = CliRunner()
NO_UI = replace(IMAGES, frontend=None)


def api_only_policy():
    return make_policy(frontend=None)


def test_frontend_none_reads_as_a_policy_with_no_front_end(monkeypatch):
    monkeypatch.chdir(FIXTURES / "good")
    policy, problems = check_policy_file("api-only.yaml", check_port=False)
    assert problems == [] and policy.frontend is None and policy.api_only
    minimal, _ = check_policy_file("minimal.yaml", check_port=False)
    assert not minimal.api_only


def test_validate_says_the_sandbox_serves_only_the_api(monkeypatch):
    monkeypatch.chdir(FIXTURES / "good")
    result = runner.invoke(app, ["validate", "--no-port-check", "api-only.yaml"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ("api-only.yaml: ok (sandbox api-only, API only: frontend is none, so no front-end runs "
                             "and its front door serves only the OpenAI-compatible API at /v1/; `sandbox env "
                             "api-only` prints its address and token)\n")
    as_json = json.loads(runner.invoke(app, ["validate", "--json", "--no-port-check", "api-only.yaml"]).stdout)
    assert as_json["files"][0]["api_only"] is True


def test_the_spec_has_the_backend_the_sink_and_the_ingress_and_no_front_end():
    spec = make_spec(api_only_policy(), images=NO_UI)
    assert [c.part for c in spec.containers] == ["dns", "backend", "ingress"] and spec.api_only
    assert [v.part for v in spec.volumes] == ["audit"]  # no front-end, no data volume
    ingress = spec.container("ingress")
    # No upstream for pages: the ingress answers them itself (images/ingress/nginx.conf.template).
    assert ingress.env_value("SANDBOX_UPSTREAM") is None
    assert ingress.env_value("SANDBOX_API_UPSTREAM") == "backend:8000"
    assert ingress.env_value("SANDBOX_API_KEY") == spec.container("backend").env_value("SANDBOX_API_KEY")
    # `up` waits for the API's model list through the front door.
    assert spec.health_path == API_HEALTH_PATH == "/v1/models"
    assert not make_spec().api_only and make_spec().container("ingress").env_value("SANDBOX_UPSTREAM")


def test_no_front_end_image_is_built_or_locked(tmp_path):
    images = images_for(api_only_policy(), use_gpu=False, ca_bundle=None)
    assert images.frontend is None and [part for part, _ in images.by_part()] == ["dns", "backend", "ingress"]
    (tmp_path / "tiny.gguf").write_bytes(b"G" * 3)
    (tmp_path / "other.gguf").write_bytes(b"G" * 4)
    policy = replace(api_only_policy(), models=tuple(replace(m, path=tmp_path / f"{m.alias}.gguf")
                                                     for m in api_only_policy().models))
    lock = make_lock(policy, b"version: 1\n", NO_UI, {})
    assert sorted(lock["images"]) == ["backend", "dns", "ingress"]
    assert drift(lock, json.loads(json.dumps(lock))) == []
    # A lock of the same policy with a front-end says that it is gone.
    with_ui = make_lock(replace(policy, frontend=make_policy().frontend), b"version: 1\n", IMAGES, {})
    assert drift(with_ui, lock) == ["the frontend image: locked sandbox-chat:bbb, and the policy now has no frontend"]


def test_the_plan_makes_three_parts_and_removes_a_front_end_left_from_before():
    spec = make_spec(api_only_policy(), images=NO_UI)
    actions = [(a.verb, a.kind, a.name) for a in make_plan(spec, Observed()).actions]
    assert [a for a in actions if a[1] == "container"] == [("create", "container", "sandbox-demo-dns"),
                                                          ("create", "container", "sandbox-demo-backend"),
                                                          ("create", "container", "sandbox-demo-ingress")]
    assert ("build", "image", "sandbox-chat:bbb") not in actions
    # The same sandbox had a UI before: its front-end goes.
    from tests.unit.test_plan import observed_from
    before = observed_from(make_spec())
    verbs = {(a.verb, a.name) for a in make_plan(spec, before).changes}
    assert ("remove", "sandbox-demo-frontend") in verbs


def test_kubernetes_gets_no_front_end_pod():
    spec = make_spec(api_only_policy(), images=NO_UI)
    files = {m.target: m.source.rsplit("/", 1)[1] for m in spec.container("backend").mounts}
    objects = kubernetes.render(spec, kubernetes.KubeOptions(model_volume="models"), files)
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("Deployment", "frontend") not in kinds and ("Service", "frontend") not in kinds
    assert ("Deployment", "backend") in kinds and ("Deployment", "ingress") in kinds
    assert not any(o["kind"] == "PersistentVolumeClaim" for o in objects)


def test_up_waits_for_the_api_and_status_shows_a_healthy_sandbox_with_no_front_end(tmp_path, monkeypatch):
    api = FakeApi()
    path, port = quickstart_policy(tmp_path, monkeypatch, api, frontend="none")
    said, asked = [], []
    api.execs["sandbox-minimal-dns"] = lambda command: asked.append(command) or (0, "")
    result = up(DockerGateway(client=FakeClient(api)), path, timeout=5, say=said.append)
    assert result.to_dict()["api_only"] is True
    assert "waiting for the backend to load the model" in said
    [check] = asked  # the backend alone: no UI address to ask
    assert check[4] == "http://backend:8000/v1/models" and check[5] == ""
    assert "sandbox-minimal-frontend" not in api.containers_held
    [shown] = status(DockerGateway(client=FakeClient(api)), "minimal")
    assert shown["api_only"] is True and shown["healthy"] is True, shown
    assert [p["part"] for p in shown["parts"]] == ["dns", "backend", "ingress"]


def test_a_sandbox_whose_front_end_is_gone_is_not_taken_for_an_api_only_one(tmp_path, monkeypatch):
    api = FakeApi()
    path, _ = quickstart_policy(tmp_path, monkeypatch, api)
    up(DockerGateway(client=FakeClient(api)), path, timeout=5)
    api.containers_held.pop("sandbox-minimal-frontend")
    [shown] = status(DockerGateway(client=FakeClient(api)), "minimal")
    assert shown["api_only"] is False and shown["healthy"] is False
    assert {p["part"]: p["state"] for p in shown["parts"]}["frontend"] == "missing"
