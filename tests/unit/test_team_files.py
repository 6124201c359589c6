"""What a team's repository of policies uses: the schema's stable $id, the
editor modeline in each vetted policy, the pre-commit hook, and
`validate --strict` / `--no-model-files` from the command line."""
import json
import re
import shlex
import shutil
import subprocess

import pytest
import yaml
from typer.testing import CliRunner

from launcher.cli import app
from tests.conftest import FIXTURES

ROOT = FIXTURES.parents[1]

runner = CliRunner()
MODELINE = "# yaml-language-server: $schema=../schemas/policy.schema.json"


def test_the_schema_has_a_stable_id():
    schema = json.loads((ROOT / "schemas" / "policy.schema.json").read_text())
    assert schema["$id"] == "urn:sandbox:policy-schema:1"


@pytest.mark.parametrize("policy", sorted((ROOT / "policies").glob("*.yaml")), ids=lambda p: p.name)
def test_each_vetted_policy_names_the_schema_for_editors(policy):
    first = policy.read_text().splitlines()[0]
    assert first == MODELINE
    assert (policy.parent / first.split("$schema=")[1]).resolve() == ROOT / "schemas" / "policy.schema.json"


def test_the_pre_commit_hook_validates_policies_without_their_weights(tmp_path, monkeypatch):
    [hook] = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "sandbox-validate" and hook["language"] == "python"
    command = shlex.split(hook["entry"])
    assert command[:2] == ["sandbox", "validate"]

    assert re.search(hook["files"], "policies/team.yaml") and not re.search(hook["files"], "ci/config.yaml")
    # A team repository: a policy whose model is on nobody's disk here.
    policy = yaml.safe_load((ROOT / "policies" / "quickstart.yaml").read_text())
    policy["models"][0]["path"] = "/srv/models/not-here.gguf"
    (tmp_path / "team.yaml").write_text(yaml.safe_dump(policy))
    monkeypatch.chdir(tmp_path)
    passed = runner.invoke(app, [*command[1:], "team.yaml"])
    assert passed.exit_code == 0, passed.output
    policy["backend"]["gpu"] = "sometimes"
    (tmp_path / "team.yaml").write_text(yaml.safe_dump(policy))
    failed = runner.invoke(app, [*command[1:], "team.yaml"])
    assert failed.exit_code == 2 and "backend.gpu" in failed.stderr
    strict = runner.invoke(app, [*command[1:], "--strict", "team.yaml"])
    assert strict.exit_code == 2


@pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="needs ssh-keygen")
def test_validate_strict_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.delenv("SANDBOX_ALLOWED_SIGNERS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    policy = yaml.safe_load((ROOT / "policies" / "quickstart.yaml").read_text())
    policy["models"][0]["path"] = "/srv/models/not-here.gguf"
    (tmp_path / "team.yaml").write_text(yaml.safe_dump(policy))
    monkeypatch.chdir(tmp_path)
    missing = runner.invoke(app, ["validate", "--no-port-check", "--no-model-files", "--strict", "team.yaml"])
    assert missing.exit_code == 2
    assert "team.yaml --strict needs a lock: " in missing.stderr and "sandbox lock" in missing.stderr
    from launcher.lockfile import dump, sha256_bytes
    (tmp_path / "team.yaml.lock").write_bytes(dump({"lock": 1, "policy": {
        "file": "team.yaml", "sha256": sha256_bytes((tmp_path / "team.yaml").read_bytes())}}))
    unsigned = runner.invoke(app, ["validate", "--no-port-check", "--no-model-files", "--strict", "team.yaml"])
    assert unsigned.exit_code == 2 and "--strict needs a signature" in unsigned.stderr
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")], check=True)
    signed = runner.invoke(app, ["sign", "team.yaml", "--key", str(tmp_path / "key")])
    assert signed.exit_code == 0, signed.output
    ok = runner.invoke(app, ["validate", "--no-port-check", "--no-model-files", "--strict", "team.yaml"])
    assert ok.exit_code == 0, ok.output
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other_key = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    (tmp_path / "others").write_text(f"someone@example.org {other_key}\n")
    stranger = runner.invoke(app, ["validate", "--no-port-check", "--no-model-files", "--strict",
                                   "--allowed-signers", "others", "team.yaml"])
    assert stranger.exit_code == 2 and "who is not in" in stranger.stderr
    refused = runner.invoke(app, ["verify-signature", "team.yaml", "--allowed-signers", "others"])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
