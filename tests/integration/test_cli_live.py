"""The CLI against a live sandbox: exit codes, and JSON a program can read."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from launcher.cli import app
from launcher.matrix import MATRIX
from tests.integration.conftest import poll

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args))


def test_status_json(sandbox):
    result, _ = sandbox
    run = invoke("status", result.name, "--json")
    assert run.exit_code == 0, run.output
    [report] = json.loads(run.stdout)["sandboxes"]
    assert report["healthy"] and report["url"] == result.url
    assert report["token"] == result.token and report["access_link"] == result.access_link


def test_open_prints_the_access_link(sandbox):
    result, _ = sandbox
    run = invoke("open", result.name, "--print")
    assert run.exit_code == 0, run.output
    assert run.stdout.strip() == result.access_link


def test_up_prints_the_access_link(sandbox):
    result, path = sandbox
    run = invoke("up", str(path))
    assert run.exit_code == 0, run.output
    assert f"open {result.access_link}" in run.stdout.splitlines()


def test_plan_of_a_running_sandbox_is_up_to_date(sandbox):
    _, path = sandbox
    run = invoke("plan", str(path))
    assert run.exit_code == 0, run.output
    assert run.stdout.splitlines()[-1].endswith("is up to date")
    actions = json.loads(invoke("plan", str(path), "--json").stdout)["actions"]
    assert {a["action"] for a in actions} == {"keep"}


def test_logs_of_a_part(sandbox):
    result, _ = sandbox
    run = invoke("logs", "ingress", "--sandbox", result.name, "--tail", "5")
    assert run.exit_code == 0 and "ingress: listening" in run.stdout
    run = invoke("logs", "nonsense", "--sandbox", result.name)
    assert run.exit_code == 1 and "no part named nonsense" in run.stderr


def test_audit_json_lists_what_was_looked_up(sandbox, docker_client):
    result, _ = sandbox
    docker_client.containers.get(f"sandbox-{result.name}-frontend").exec_run(
        ["python3", "-c", "import socket\ntry: socket.getaddrinfo('phone-home.example.net', 443)\nexcept OSError: pass"])
    # The sink notes the lookup in its summary on its own time (once a second): wait for it there.
    entry = poll(lambda: next((n for n in json.loads(invoke("audit", result.name, "--json").stdout)["names"]
                               if n["name"] == "phone-home.example.net"), None), "the lookup in the audit")
    assert entry["parts"] == ["frontend"]


def test_unknown_sandbox_is_a_message_not_a_traceback(docker_client):
    run = invoke("status", "no-such-sandbox")
    assert run.exit_code == 1
    assert run.stderr.strip() == "error: no sandbox named no-such-sandbox on this engine"


def test_up_again_reports_no_change_as_json(sandbox):
    result, path = sandbox
    run = invoke("up", str(path), "--json")
    assert run.exit_code == 0, run.output
    data = json.loads(run.stdout)
    assert data["ok"] and data["url"] == result.url and data["access_link"] == result.access_link
    assert {a["action"] for a in data["actions"]} == {"keep"}


def test_verify_prints_a_line_per_attack(sandbox):
    result, _ = sandbox
    run = invoke("verify", result.name)
    assert run.exit_code == 0, run.output
    lines = run.stdout.splitlines()
    assert sum(line.startswith(("PASS", "SKIP")) for line in lines) == len(MATRIX)
    assert lines[-1] == f"sandbox {result.name}: every attack was stopped"
