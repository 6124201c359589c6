"""`sandbox env`: the settings of a running sandbox's API (/v1/) for the
shell, on a quick-start sandbox up on the stand-in engine; and the same
through the command line, whose `export` lines a real shell runs."""
import json
import subprocess

import pytest
from typer.testing import CliRunner

from launcher import access
from launcher.cli import app
from launcher.commands.down import down
from launcher.commands.env import api_env
from launcher.commands.up import up
from launcher.engine import DockerGateway
from launcher.errors import NotFound
from launcher.spec import BACKEND_CONFIG_ENV
from tests.unit.fake_engine import FakeApi, FakeClient
from tests.unit.helpers import quickstart_policy

runner = CliRunner()


@pytest.fixture
def running(tmp_path, monkeypatch):
    """(engine, port, key) of quick-start sandbox `minimal`, up, the key its
    API token (made of its access token, opening the API only); the command
    line talks to that engine."""
    api = FakeApi()
    policy, port = quickstart_policy(tmp_path, monkeypatch, api)
    result = up(DockerGateway(client=FakeClient(api)), policy, timeout=5)
    monkeypatch.setattr("launcher.cli._gateway", lambda: DockerGateway(client=FakeClient(api)))
    key = access.api_token(result.token)
    assert key != result.token and result.token not in key
    return api, port, key


def test_env_gives_the_api_address_the_token_and_the_policys_model_names(running):
    api, port, token = running
    assert api_env(DockerGateway(client=FakeClient(api)), None) == {
        "name": "minimal", "models": ["tiny"], "embedding_model": None,
        "env": {"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1", "OPENAI_API_KEY": token}}


def test_env_gives_the_embedding_models_alias_where_there_is_one(running):
    api, port, token = running
    env = api.containers_held["sandbox-minimal-backend"]["Config"]["Env"]
    [at] = [i for i, e in enumerate(env) if e.startswith(f"{BACKEND_CONFIG_ENV}=")]
    config = json.loads(env[at].partition("=")[2])
    config["embeddings"] = {"port": 8081, "model": {**config["models"][0], "model_alias": "embed", "embedding": True}}
    env[at] = f"{BACKEND_CONFIG_ENV}={json.dumps(config)}"
    printed = runner.invoke(app, ["env"])
    assert printed.stdout == (f"# sandbox minimal's API; models: tiny; embedding model: embed\n"
                              f"export OPENAI_BASE_URL=http://127.0.0.1:{port}/v1\n"
                              f"export OPENAI_API_KEY={token}\n"
                              f"export SANDBOX_EMBEDDING_MODEL=embed\n")
    as_json = json.loads(runner.invoke(app, ["env", "--json"]).stdout)
    assert as_json["embedding_model"] == as_json["env"]["SANDBOX_EMBEDDING_MODEL"] == "embed"
    assert (as_json["env"]["OPENAI_BASE_URL"], as_json["env"]["OPENAI_API_KEY"]) == (f"http://127.0.0.1:{port}/v1",
                                                                                     token)


def test_env_names_the_sandbox_as_every_command_does(running, tmp_path):
    api, port, token = running
    gateway = DockerGateway(client=FakeClient(api))
    [policy] = tmp_path.glob("*.yaml")
    assert api_env(gateway, "minimal") == api_env(gateway, str(policy)) == api_env(gateway, None)
    with pytest.raises(NotFound, match=r"^sandbox other is not running; `sandbox up` it first$"):
        api_env(gateway, "other")


def test_env_of_a_sandbox_that_is_down_or_not_ours_says_why(running):
    api, _, _ = running
    gateway = DockerGateway(client=FakeClient(api))
    env = api.containers_held["sandbox-minimal-ingress"]["Config"]["Env"]
    env[:] = [e for e in env if not e.startswith(f"{access.TOKEN_ENV}=")]  # started by another user
    access.forget_token("minimal")
    with pytest.raises(NotFound, match="no access token of sandbox minimal is readable here"):
        api_env(gateway, "minimal")
    down(gateway, "minimal")
    with pytest.raises(NotFound, match="is not running"):
        api_env(gateway, "minimal")


def test_the_shell_runs_what_env_prints(running):
    _, port, token = running
    printed = runner.invoke(app, ["env"])
    assert printed.exit_code == 0, printed.output
    assert printed.stdout == (f"# sandbox minimal's API; models: tiny\n"
                              f"export OPENAI_BASE_URL=http://127.0.0.1:{port}/v1\n"
                              f"export OPENAI_API_KEY={token}\n")
    shell = subprocess.run(["sh", "-c", 'eval "$1"; printf "%s\\n" "$OPENAI_BASE_URL" "$OPENAI_API_KEY"',
                            "sh", printed.stdout], capture_output=True, text=True, timeout=30)
    assert shell.stdout == f"http://127.0.0.1:{port}/v1\n{token}\n"
    as_json = runner.invoke(app, ["env", "minimal", "--json"])
    assert json.loads(as_json.stdout)["env"] == {"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
                                                 "OPENAI_API_KEY": token}


def test_env_errors_are_one_line(running):
    runner.invoke(app, ["down"])
    stopped = runner.invoke(app, ["env"])
    assert (stopped.exit_code, stopped.stderr) == (1, "error: sandbox minimal is not running; `sandbox up` it first\n")
    assert stopped.stdout == ""
    as_json = runner.invoke(app, ["env", "--json"])
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["ok"] is False


def test_env_says_the_token_is_printed_in_its_help():
    shown = runner.invoke(app, ["env", "--help"])
    assert "API token" in shown.stdout and "OPENAI_API_KEY" in shown.stdout
