"""benchmarks/suite.py's baseline, offline: the compose file written by hand
serves the model the way a sandbox does, so that its figures compare the
sandbox with the same model, not with another setup; and the table it prints."""
import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from benchmarks import suite
from launcher.policy.model import Model
from tests.unit.helpers import make_policy, make_spec


def by_hand(port=18181, **changes):
    values = dict(backend_image="sandbox-llama-cpp:aaa", frontend_image="sandbox-chat:bbb",
                  model=Path("/models/tiny.gguf"), alias="tiny", sha256="0" * 64, context_length=2048,
                  cpus=2.0, memory="2g", port=port, api_key="key-1")
    return suite.by_hand_compose(**{**values, **changes})


def test_the_by_hand_backend_serves_the_model_as_a_sandbox_does():
    spec = make_spec(make_policy(models=(Model("tiny", Path("/models/tiny.gguf"), "0" * 64, 2048, None),)))
    backend, frontend = (spec.container(p) for p in ("backend", "frontend"))
    services = by_hand()["services"]
    assert (json.loads(services["backend"]["environment"]["SANDBOX_BACKEND_CONFIG"])
            == json.loads(backend.env_value("SANDBOX_BACKEND_CONFIG")))
    assert services["backend"]["environment"]["SANDBOX_API_KEY"] == backend.env_value("SANDBOX_API_KEY")
    [mount] = backend.mounts
    assert services["backend"]["volumes"] == [f"{mount.source}:{mount.target}:ro"]
    assert (services["backend"]["cpus"], services["backend"]["mem_limit"]) == (backend.cpus, backend.memory)
    for name in ("OPENAI_API_BASE_URL", "OPENAI_API_KEY"):
        assert services["frontend"]["environment"][name] == frontend.env_value(name)


def test_the_by_hand_open_webui_is_told_what_a_sandboxs_is():
    """--policy policies/open-webui.yaml: the backend serves the embedding
    model on its second server as a sandbox's does, and Open WebUI is given
    the same offline switches, policy variables and embedding server; only
    the sandbox's own variables, its sign-in by the ingress's headers (by
    hand there is no ingress to send them) and the session key's value
    differ."""
    tiny = Model("tiny", Path("/models/tiny.gguf"), "0" * 64, 2048, None)
    policy = make_policy(models=(tiny, replace(tiny, alias="tiny-embed", role="embeddings")),
                         frontend=replace(make_policy().frontend, recipe="open-webui", user=1000, memory="2g",
                                          cpus=2.0, env=(("WEBUI_AUTH", "False"),)))
    spec = make_spec(policy)
    backend, frontend = (spec.container(p) for p in ("backend", "frontend"))
    services = by_hand(embedding_alias="tiny-embed", frontend_image="sandbox-open-webui:ccc",
                       frontend_env=suite.by_hand_frontend_env("open-webui", {"WEBUI_AUTH": "False"},
                                                               "tiny-embed", api_key="key-1"))["services"]
    assert (json.loads(services["backend"]["environment"]["SANDBOX_BACKEND_CONFIG"])
            == json.loads(backend.env_value("SANDBOX_BACKEND_CONFIG")))
    assert sorted(services["backend"]["volumes"]) == sorted(f"{m.source}:{m.target}:ro" for m in backend.mounts)
    theirs = dict(frontend.env)
    ours = services["frontend"]["environment"]
    sandbox_only = {name for name in theirs if name.startswith(("SANDBOX_", "WEBUI_AUTH_TRUSTED_"))} | {"HOME"}
    assert set(ours) == set(theirs) - sandbox_only
    assert {k: v for k, v in ours.items() if k != "WEBUI_SECRET_KEY"} == {
        k: v for k, v in theirs.items() if k in ours and k != "WEBUI_SECRET_KEY"}
    assert ours["WEBUI_SECRET_KEY"]


def test_the_benchmarked_policy_serves_every_model_from_the_benchmarks_file_on_no_gpu():
    policy = yaml.safe_load((Path(suite.ROOT) / "policies" / "open-webui.yaml").read_text())
    bench = suite.bench_policy(policy, "bench-1", 18300, Path("/m/q.gguf"))
    assert (bench["name"], bench["ingress"]["port"], bench["backend"]["gpu"]) == ("bench-1", 18300, "none")
    assert [m["path"] for m in bench["models"]] == ["/m/q.gguf", "/m/q.gguf"]
    assert (suite.chat_alias(bench), suite.embedding_alias(bench)) == ("smollm2", "smollm2-embed")
    assert isinstance(suite.frontend_of(bench), suite.OpenWebUIFrontend)
    quickstart = yaml.safe_load((Path(suite.ROOT) / "policies" / "quickstart.yaml").read_text())
    assert suite.embedding_alias(quickstart) is None
    assert isinstance(suite.frontend_of(quickstart), suite.ChatFrontend)


def test_the_by_hand_ui_is_published_on_loopback_and_waits_for_the_backends_healthcheck():
    compose = by_hand(port=18181)
    assert compose["version"] == "2.4"
    frontend, backend = compose["services"]["frontend"], compose["services"]["backend"]
    assert frontend["ports"] == ["127.0.0.1:18181:8080"] and "ports" not in backend
    assert frontend["depends_on"] == {"backend": {"condition": "service_healthy"}}
    assert backend["healthcheck"]["interval"] == "1s"
    assert any("/v1/models" in part for part in backend["healthcheck"]["test"])
    assert "networks" not in compose  # compose's own default bridge network


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="needs docker-compose (Debian: apt-get install "
                                                                "docker-compose); .ci/run installs it")
@pytest.mark.parametrize("recipe", ["chat", "open-webui"])
def test_docker_compose_reads_the_by_hand_file(tmp_path, recipe):
    embedding = "tiny-embed" if recipe == "open-webui" else None
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(by_hand(embedding_alias=embedding,
                                           frontend_env=suite.by_hand_frontend_env(recipe, {}, embedding))))
    run = subprocess.run(["docker-compose", "-f", str(path), "config", "-q"], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stderr


def test_the_table_gives_each_figure_its_median_spread_and_ratio():
    def side(up, rate, down):
        return {"up": up, "ttft": 30.0, "rate": rate, "rate_bare": rate, "api_ttft": 25.0, "api_rate": rate + 2,
                "up_unchanged": 1.0, "down": down,
                "prepare": 0.1, "apply": 2.0, "ready": 1.0, "total": 3.1}
    rounds = [{"sandbox": side(4.0, 40.0, 0.8), "by_hand": side(2.0, 50.0, 1.6), "bare": {"ttft": 20.0, "rate": 80.0},
               "requests": {"sandbox": {"ttft_ms": [30.0, 31.0], "pieces_per_s": [40.0, 41.0]},
                            "by_hand": {"ttft_ms": [20.0], "pieces_per_s": [50.0]},
                            "bare": {"ttft_ms": [15.0], "pieces_per_s": [80.0]}}},
              {"sandbox": side(5.0, 44.0, 0.9), "by_hand": side(3.0, 55.0, 1.4), "bare": {"ttft": 20.0, "rate": 80.0},
               "requests": {"sandbox": {"ttft_ms": [29.0], "pieces_per_s": [39.0]},
                            "by_hand": {"ttft_ms": [21.0], "pieces_per_s": [55.0]},
                            "bare": {"ttft_ms": [16.0], "pieces_per_s": [81.0]}}}]
    result = {"rounds": 2, "requests": 2, "max_tokens": 64, "figures": suite.figures(rounds),
              "per_request": suite.per_request(rounds),
              "machine": {"cpus": 2, "engine": "20.10", "compose": "docker-compose 1.29.2"}}
    by_key = {f["figure"]: f for f in result["figures"]}
    assert by_key["up"]["sandbox"]["median"] == 4.5 and by_key["up"]["ratio"] == pytest.approx(4.5 / 2.5)
    assert by_key["rate_bare"]["ratio"] == pytest.approx(42.0 / 80.0)
    # The API at the front door is set against the bare backend's own figures.
    assert by_key["api_ttft"]["ratio"] == pytest.approx(25.0 / 20.0)
    assert by_key["api_rate"]["ratio"] == pytest.approx(44.0 / 80.0)
    assert by_key["up_unchanged"]["baseline"] is None
    text = suite.table(result)
    assert "| warm `up` until a one-token chat answers (s) | 4.50 (4.00-5.00) | 2.50 (2.00-3.00) | 1.80 |" in text
    assert "within the 1 s target" in text
    assert "time to first piece (ms): sandbox 30.0 (29.0-31.0), by hand 20.5 (20.0-21.0)" in text
