"""Models on the real engine: the memory estimate against what the backend
really uses, and the whole path from a pull to a sandbox that runs the
pulled file with no network."""
from __future__ import annotations

import yaml

from launcher.commands.down import down
from launcher.commands.model import pull
from launcher.commands.up import up
from launcher.models.facts import estimate, gib, read_facts
from launcher.spec import resource_name
from tests.integration.conftest import MODEL, ca_bundle, ui_json, write_policy


def test_the_estimate_matches_the_backends_measured_memory(gateway, sandbox):
    result, _ = sandbox
    ui_json(result, "api/chat", {"messages": [{"role": "user", "content": "Tell me about the sea."}],
                                 "max_tokens": 32})
    measured = gateway.memory_usage(resource_name(result.name, "backend"))
    need = estimate(read_facts(MODEL), 2048)  # the quick-start policy's context_length
    print(f"estimate {gib(need.working)} working set (+{gib(need.weights)} weights), measured {gib(measured)}: "
          f"ratio {need.working / measured:.2f}")
    # The container is charged for its own memory, and for the weights' pages
    # only when it was the first to read them (else the host's hash did).
    assert 0.6 * need.working <= measured <= 1.4 * need.total


def test_a_pulled_model_runs_in_a_sandbox(gateway, tmp_path, monkeypatch):
    monkeypatch.setenv("SANDBOX_MODEL_DIR", str(tmp_path / "store"))
    path = write_policy(tmp_path)
    policy = yaml.safe_load(path.read_text())
    policy["models"][0]["path"] = "../models/to-be-pulled.gguf"
    del policy["models"][0]["sha256"]
    path.write_text("# Our policy: the comment stays.\n" + yaml.safe_dump(policy, sort_keys=False))
    pulled = pull(str(MODEL), policy=path)
    assert pulled.policy_updated == str(path) and pulled.contacts.requests == []
    text = path.read_text()
    assert text.startswith("# Our policy: the comment stays.\n") and str(pulled.path) in text
    result = up(gateway, path, ca_bundle=ca_bundle())
    try:
        assert result.prepared.policy.models[0].path == pulled.path
        assert ui_json(result, "api/chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    finally:
        down(gateway, result.name, volumes=True)
