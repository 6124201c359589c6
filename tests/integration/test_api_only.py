"""A sandbox with no UI (`frontend: none`, policies/api-only.yaml) on the
real engine: the backend, its DNS sink and the ingress run, no front-end;
the official `openai` package chats and embeds through /v1/ with what
`sandbox env` prints; the front door's pages answer only that the sandbox
serves the API, and still refuse strangers."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

import pytest
import yaml

from launcher import access
from launcher.commands.down import down
from launcher.commands.env import api_env
from launcher.commands.status import status
from launcher.commands.up import up
from tests.integration.conftest import MODEL, ROOT, ca_bundle, free_port, labelled

openai = pytest.importorskip("openai")

POLICY = ROOT / "policies" / "api-only.yaml"


@pytest.fixture(scope="module")
def api_only(gateway, docker_client, tmp_path_factory, quickstart_model):
    """policies/api-only.yaml under a unique name and a free port, with the
    same model file as an embedding model too (any GGUF can serve them)."""
    policy = yaml.safe_load(POLICY.read_text())
    policy["name"] = f"it-{uuid.uuid4().hex[:8]}"
    policy["ingress"]["port"] = free_port()
    policy["models"][0]["path"] = str(MODEL)
    policy["models"].append({**policy["models"][0], "alias": "smollm2-embed", "role": "embeddings"})
    policy["backend"]["memory"] = "2g"
    path = tmp_path_factory.mktemp("policy") / f"{policy['name']}.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    said: list[str] = []
    result = up(gateway, path, ca_bundle=ca_bundle(), say=said.append)
    yield result, said
    down(gateway, result.name, volumes=True)
    assert labelled(docker_client, result.name) == {"containers": [], "networks": [], "volumes": []}


@pytest.fixture(scope="module")
def client(api_only, gateway):
    result, _ = api_only
    env = api_env(gateway, result.name)["env"]
    return openai.OpenAI(base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"], max_retries=0, timeout=120)


def test_it_runs_the_backend_the_sink_and_the_ingress_and_no_front_end(api_only, gateway, docker_client):
    result, said = api_only
    assert "waiting for the backend to load the model" in said, said  # no UI to wait for
    containers = labelled(docker_client, result.name)["containers"]
    assert containers == sorted(f"sandbox-{result.name}-{part}" for part in ("backend", "dns", "ingress"))
    [shown] = status(gateway, result.name)
    assert shown["api_only"] is True and shown["healthy"] is True, shown
    assert [p["part"] for p in shown["parts"]] == ["dns", "backend", "ingress"]


def test_ups_own_check_of_the_front_door_is_not_counted_as_a_call(api_only, gateway):
    """`up` asked /v1/models through the ingress before it returned; no
    test has called the API yet. The control that calls are counted at all
    is test_status_counts_its_api_calls."""
    result, _ = api_only
    [shown] = status(gateway, result.name)
    assert shown["api_calls"] == []


def test_env_gives_the_embedding_models_alias_and_a_call_naming_no_model_is_answered_with_the_alias(api_only, gateway):
    result, _ = api_only
    env = api_env(gateway, result.name)["env"]
    assert env["SANDBOX_EMBEDDING_MODEL"] == "smollm2-embed"
    for route, body, alias in (("chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
                                "smollm2"), ("embeddings", {"input": "a sentence"}, "smollm2-embed")):
        request = urllib.request.Request(f"{env['OPENAI_BASE_URL']}/{route}", data=json.dumps(body).encode(),
                                         headers={"Authorization": f"Bearer {env['OPENAI_API_KEY']}",
                                                  "Content-Type": "application/json"})
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=120) as answer:
            assert json.loads(answer.read())["model"] == alias, route


def test_the_openai_package_chats_through_the_api(client):
    assert [m.id for m in client.models.list()] == ["smollm2"]
    stream = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Say hello."}],
                                            max_tokens=8, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.strip()


def test_the_openai_package_embeds_with_the_embedding_model(client):
    answer = client.embeddings.create(model="smollm2-embed", input=["a sandboxed sentence", "another"])
    assert len(answer.data) == 2 and len(answer.data[0].embedding) > 0
    assert answer.data[0].embedding != answer.data[1].embedding


def test_its_pages_say_it_serves_only_the_api_and_refuse_strangers(api_only):
    result, _ = api_only
    with pytest.raises(urllib.error.HTTPError) as page:
        access.open_ui(result.url, result.token, timeout=30)
    body = page.value.read().decode()
    assert page.value.code == 404 and "x-sandbox-refused" not in {k.lower() for k in page.value.headers}
    assert "serves only the OpenAI-compatible API" in body and f"sandbox env {result.name}" in body
    with pytest.raises(urllib.error.HTTPError) as stranger:
        access.open_ui(result.url, None, timeout=30)
    assert stranger.value.code == 401 and stranger.value.headers["X-Sandbox-Refused"] == "no-token"
    assert "serves only" not in stranger.value.read().decode()


def test_status_counts_its_api_calls(api_only, gateway, client):
    result, _ = api_only

    def counted() -> dict:
        [shown] = status(gateway, result.name)
        assert "a private word" not in json.dumps(shown)
        return {(c["client"], c["model"]): c["calls"] for c in shown["api_calls"]}
    before = counted()
    client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "a private word"}],
                                   max_tokens=2)
    client.embeddings.create(model="smollm2-embed", input="a private word")
    deadline = time.monotonic() + 60
    while True:
        after = counted()
        if all(after.get(key, 0) > before.get(key, 0)
               for key in (("openai-python", "smollm2"), ("openai-python", "smollm2-embed"))):
            break
        assert time.monotonic() < deadline, (before, after)
        time.sleep(0.5)


def test_docker_reports_its_three_parts_healthy_the_ingress_by_the_backends_models(api_only, gateway, docker_client):
    """The ingress's own healthcheck asks the backend's /v1/models by the
    API's route (there is no UI); the sink's and the backend's their own."""
    from tests.integration.conftest import poll
    result, _ = api_only

    def health() -> dict:
        return {part: (docker_client.api.inspect_container(f"sandbox-{result.name}-{part}")["State"].get("Health")
                       or {}).get("Status") for part in ("dns", "backend", "ingress")}
    poll(lambda: set(health().values()) == {"healthy"}, lambda: f"every part healthy: {health()}", seconds=180)
    [report] = status(gateway, result.name)
    assert report["healthy"] and {p["part"]: p["health"] for p in report["parts"]} == {
        "dns": "healthy", "backend": "healthy", "ingress": "healthy"}
