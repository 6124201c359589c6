"""down / up: nothing labelled stays behind but the front-end's data, the chat
history survives, and a changed policy recreates only what changed."""
from __future__ import annotations

import pytest
import yaml

from launcher.commands.down import down
from launcher.commands.prepare import prepare
from launcher.commands.up import up
from tests.integration.conftest import ca_bundle, labelled, ui_json, write_policy


def chat(result, text: str) -> dict:
    return ui_json(result, "api/chat", {"messages": [{"role": "user", "content": text}], "max_tokens": 8})


def history(result) -> list[dict]:
    return ui_json(result, "api/history", timeout=30)["messages"]


def test_down_keeps_only_the_data_and_up_brings_the_history_back(gateway, docker_client, tmp_path):
    path = write_policy(tmp_path)
    first = up(gateway, path, ca_bundle=ca_bundle())
    name = first.name
    try:
        chat(first, "remember the word pelican")
        assert history(first)[0] == {"role": "user", "content": "remember the word pelican"}

        down(gateway, name)
        assert labelled(docker_client, name) == {"containers": [], "networks": [],
                                                 "volumes": [f"sandbox-{name}-data"]}

        second = up(gateway, path, ca_bundle=ca_bundle())
        assert history(second)[0]["content"] == "remember the word pelican"
    finally:
        down(gateway, name, volumes=True)
    assert labelled(docker_client, name) == {"containers": [], "networks": [], "volumes": []}


def test_changed_policy_recreates_only_what_changed(gateway, docker_client, tmp_path):
    path = write_policy(tmp_path)
    result = up(gateway, path, ca_bundle=ca_bundle())
    try:
        ids = {c.name: c.id for c in docker_client.containers.list(filters={"label": f"io.sandbox.name={result.name}"})}
        policy = yaml.safe_load(path.read_text())
        policy["backend"]["cpus"] = 1
        path.write_text(yaml.safe_dump(policy, sort_keys=False))
        changes = [(a.verb, a.name) for a in prepare(gateway, path, ca_bundle()).plan.changes]
        assert changes == [("recreate", f"sandbox-{result.name}-backend")]
        up(gateway, path, ca_bundle=ca_bundle())
        after = {c.name: c.id for c in docker_client.containers.list(filters={"label": f"io.sandbox.name={result.name}"})}
        assert after[f"sandbox-{result.name}-frontend"] == ids[f"sandbox-{result.name}-frontend"]
        assert after[f"sandbox-{result.name}-ingress"] == ids[f"sandbox-{result.name}-ingress"]
        assert after[f"sandbox-{result.name}-backend"] != ids[f"sandbox-{result.name}-backend"]
        # The kept front-end still holds the key the new backend takes.
        assert chat(result, "hello")["reply"]["content"] is not None
    finally:
        down(gateway, result.name, volumes=True)


def test_a_backend_that_cannot_start_is_named_with_its_last_log_lines(gateway, tmp_path):
    from launcher.errors import NotReady
    from tests.conftest import FIXTURES
    # A GGUF header and nothing else: it passes the checks, and llama.cpp cannot load it.
    path = write_policy(tmp_path)
    policy = yaml.safe_load(path.read_text())
    policy["models"][0].update(path=str(FIXTURES / "models" / "tiny.gguf"),
                               sha256="6557bfe90bc69cc8e556ef3f823215ef596d6c54d7c0999dac422ed0327461b9")
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    try:
        with pytest.raises(NotReady) as failure:
            up(gateway, path, ca_bundle=ca_bundle(), timeout=120)
        assert failure.value.part == "backend"
        assert failure.value.log_tail, "the error carries the backend's last log lines"
        assert "did not become ready" in str(failure.value)
    finally:
        down(gateway, policy["name"], volumes=True)
